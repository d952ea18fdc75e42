//! device-mapper through its ioctls (no dmsetup/veritysetup in the initramfs).
//!
//! The structures are `struct dm_ioctl` and `struct dm_target_spec` of
//! `<linux/dm-ioctl.h>` (interface version 4), laid out with `#[repr(C)]`;
//! the tests check their sizes and field offsets against the kernel ABI.

use crate::{say, Result};
use forge_formats::verity::Superblock;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::mem::{offset_of, size_of};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

const DM_NAME_LEN: usize = 128;
const DM_UUID_LEN: usize = 129;
const DM_MAX_TYPE_NAME: usize = 16;
const DM_VERSION_MAJOR: u32 = 4;
const DM_READONLY_FLAG: u32 = 1 << 0;

/// `struct dm_ioctl`: the header of every device-mapper ioctl.
#[repr(C)]
#[derive(Clone, Copy)]
struct DmIoctl {
    version: [u32; 3],
    /// Bytes of the whole buffer, this header included.
    data_size: u32,
    /// Where the payload (target specs) starts, from the start of the header.
    data_start: u32,
    target_count: u32,
    open_count: i32,
    flags: u32,
    event_nr: u32,
    padding: u32,
    dev: u64,
    name: [u8; DM_NAME_LEN],
    uuid: [u8; DM_UUID_LEN],
    data: [u8; 7],
}

/// `struct dm_target_spec`, followed by the target's NUL-terminated parameters.
#[repr(C)]
#[derive(Clone, Copy)]
struct DmTargetSpec {
    sector_start: u64,
    length: u64,
    status: i32,
    /// From the start of this spec to the next one (or the end of the data).
    next: u32,
    target_type: [u8; DM_MAX_TYPE_NAME],
}

const HEADER_SIZE: usize = size_of::<DmIoctl>();
const SPEC_SIZE: usize = size_of::<DmTargetSpec>();

/// `_IOWR(DM_IOCTL, nr, struct dm_ioctl)`.
const fn ioctl_request(nr: u32) -> u32 {
    const IOC_READ_WRITE: u32 = 3;
    const DM_IOCTL: u32 = 0xfd;
    (IOC_READ_WRITE << 30) | ((HEADER_SIZE as u32) << 16) | (DM_IOCTL << 8) | nr
}
// The command numbers: the order of the command enum in <linux/dm-ioctl.h>.
const DM_DEV_CREATE: u32 = ioctl_request(3);
const DM_DEV_SUSPEND: u32 = ioctl_request(6);
const DM_TABLE_LOAD: u32 = ioctl_request(9);

fn as_bytes<T: Copy>(v: &T) -> &[u8] {
    // SAFETY: T is a #[repr(C)] struct of integers and byte arrays with no
    // padding (checked by the tests), so every byte is initialized.
    unsafe { std::slice::from_raw_parts(v as *const T as *const u8, size_of::<T>()) }
}

/// A request buffer: the header (named `name`, with `flags`), then `payload`.
fn request(name: &str, flags: u32, target_count: u32, payload: &[u8]) -> Result<Vec<u8>> {
    if name.is_empty() || name.len() >= DM_NAME_LEN {
        return Err(format!("device-mapper name '{name}' must be 1 to {} bytes", DM_NAME_LEN - 1));
    }
    let mut h = DmIoctl {
        version: [DM_VERSION_MAJOR, 0, 0],
        data_size: (HEADER_SIZE + payload.len()) as u32,
        data_start: HEADER_SIZE as u32,
        target_count,
        open_count: 0,
        flags,
        event_nr: 0,
        padding: 0,
        dev: 0,
        name: [0; DM_NAME_LEN],
        uuid: [0; DM_UUID_LEN],
        data: [0; 7],
    };
    h.name[..name.len()].copy_from_slice(name.as_bytes());
    let mut b = as_bytes(&h).to_vec();
    b.extend_from_slice(payload);
    Ok(b)
}

/// The payload of a one-target table load: the spec, then the parameters,
/// NUL-terminated and padded so the next spec would be 8-byte aligned.
fn target(sectors: u64, kind: &str, params: &str) -> Result<Vec<u8>> {
    if kind.is_empty() || kind.len() >= DM_MAX_TYPE_NAME {
        return Err(format!("device-mapper target type '{kind}' is too long"));
    }
    let mut p = params.as_bytes().to_vec();
    p.push(0);
    while !(SPEC_SIZE + p.len()).is_multiple_of(8) {
        p.push(0);
    }
    let mut spec = DmTargetSpec {
        sector_start: 0,
        length: sectors,
        status: 0,
        next: (SPEC_SIZE + p.len()) as u32,
        target_type: [0; DM_MAX_TYPE_NAME],
    };
    spec.target_type[..kind.len()].copy_from_slice(kind.as_bytes());
    let mut b = as_bytes(&spec).to_vec();
    b.extend_from_slice(&p);
    Ok(b)
}

/// The device number the kernel returned in a DM_DEV_CREATE reply.
fn reply_dev(buf: &[u8]) -> u64 {
    let o = offset_of!(DmIoctl, dev);
    u64::from_ne_bytes(buf[o..o + 8].try_into().unwrap())
}

/// The minor of a kernel `dev_t` (new_encode_dev: minor bits 0-7 and 20-31).
fn dev_minor(devno: u64) -> u64 {
    (devno & 0xff) | ((devno >> 12) & !0xff)
}

/// The verity target for `dev` (data and hash on the same device, the
/// superblock `sb` at `hash_offset`): its length in 512-byte sectors and its
/// parameter string, as `veritysetup open` would load it.
pub fn verity_table(
    dev: &Path,
    sb: &Superblock,
    hash_offset: u64,
    root_hash: &str,
) -> Result<(u64, String)> {
    let hb = sb.hash_block_size as u64;
    if !hash_offset.is_multiple_of(hb) {
        return Err(format!(
            "{}: verity hash offset {hash_offset} is not a multiple of the hash block size {hb}",
            dev.display()
        ));
    }
    // The tree starts in the hash block after the superblock's.
    let hash_start = hash_offset / hb + 1;
    let sectors = sb.data_bytes() / 512;
    let params = format!(
        "{} {d} {d} {} {} {} {hash_start} {} {root_hash} {} 1 ignore_zero_blocks",
        sb.hash_type,
        sb.data_block_size,
        sb.hash_block_size,
        sb.data_blocks,
        sb.algorithm,
        sb.salt_hex(),
        d = dev.display()
    );
    Ok((sectors, params))
}

const CONTROL: &str = "/dev/mapper/control";

fn call(ctl: &File, request: u32, buf: &mut [u8], what: &str) -> Result<()> {
    let r = unsafe { libc::ioctl(ctl.as_raw_fd(), request as libc::c_ulong, buf.as_mut_ptr()) };
    if r != 0 {
        return Err(format!("{CONTROL}: {what}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Creates a read-only dm-verity device `name` over `dev` and returns its node.
pub fn setup_verity(name: &str, dev: &Path, hash_offset: u64, root_hash: &str) -> Result<PathBuf> {
    // The on-disk superblock gives the salt and the data size; both are
    // covered by the trusted root hash, so reading them from disk is safe.
    let f = File::open(dev).map_err(|e| format!("{}: {e}", dev.display()))?;
    let mut b = [0u8; forge_formats::verity::SUPERBLOCK_BYTES];
    f.read_exact_at(&mut b, hash_offset).map_err(|e| {
        format!("{}: reading the verity superblock at offset {hash_offset}: {e}", dev.display())
    })?;
    let sb = Superblock::parse(&b)
        .map_err(|e| format!("{}: at offset {hash_offset}: {e}", dev.display()))?;
    let (sectors, params) = verity_table(dev, &sb, hash_offset, root_hash)?;
    say!("dm-verity table: 0 {sectors} verity {params}");

    let ctl = OpenOptions::new().read(true).write(true).open(CONTROL).or_else(|_| {
        // devtmpfs names it /dev/mapper/control once dm_mod is loaded.
        OpenOptions::new().read(true).write(true).open("/dev/device-mapper")
    });
    let ctl = ctl.map_err(|e| format!("{CONTROL}: {e} (is dm_mod loaded?)"))?;

    let mut b = request(name, 0, 0, &[])?;
    call(&ctl, DM_DEV_CREATE, &mut b, &format!("creating device {name}"))?;
    let minor = dev_minor(reply_dev(&b));

    let mut b = request(name, DM_READONLY_FLAG, 1, &target(sectors, "verity", &params)?)?;
    call(&ctl, DM_TABLE_LOAD, &mut b, &format!("loading the verity table of {name}"))?;

    let mut b = request(name, 0, 0, &[])?;
    call(&ctl, DM_DEV_SUSPEND, &mut b, &format!("resuming {name}"))?;
    let node = PathBuf::from(format!("/dev/dm-{minor}"));
    for _ in 0..100 {
        if node.exists() {
            return Ok(node);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Err(format!("{} (device-mapper {name}) did not appear", node.display()))
}

/// Reads a device end to end (dm-verity checks every block it returns).
pub fn read_all(dev: &Path) -> Result<u64> {
    let mut f = File::open(dev).map_err(|e| format!("{}: {e}", dev.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        match f.read(&mut buf) {
            Ok(0) => return Ok(n),
            Ok(k) => n += k as u64,
            Err(e) => return Err(format!("{}: read error at byte {n}: {e}", dev.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sizes and offsets of `struct dm_ioctl` in <linux/dm-ioctl.h>.
    #[test]
    fn dm_ioctl_matches_the_kernel_abi() {
        assert_eq!(size_of::<DmIoctl>(), 312);
        assert_eq!(offset_of!(DmIoctl, version), 0);
        assert_eq!(offset_of!(DmIoctl, data_size), 12);
        assert_eq!(offset_of!(DmIoctl, data_start), 16);
        assert_eq!(offset_of!(DmIoctl, target_count), 20);
        assert_eq!(offset_of!(DmIoctl, open_count), 24);
        assert_eq!(offset_of!(DmIoctl, flags), 28);
        assert_eq!(offset_of!(DmIoctl, event_nr), 32);
        assert_eq!(offset_of!(DmIoctl, padding), 36);
        assert_eq!(offset_of!(DmIoctl, dev), 40);
        assert_eq!(offset_of!(DmIoctl, name), 48);
        assert_eq!(offset_of!(DmIoctl, uuid), 48 + 128);
        assert_eq!(offset_of!(DmIoctl, data), 48 + 128 + 129);
        // No padding anywhere: the fields add up to the size.
        assert_eq!(12 + 7 * 4 + 8 + 128 + 129 + 7, 312);
    }

    /// Sizes and offsets of `struct dm_target_spec`.
    #[test]
    fn dm_target_spec_matches_the_kernel_abi() {
        assert_eq!(size_of::<DmTargetSpec>(), 40);
        assert_eq!(offset_of!(DmTargetSpec, sector_start), 0);
        assert_eq!(offset_of!(DmTargetSpec, length), 8);
        assert_eq!(offset_of!(DmTargetSpec, status), 16);
        assert_eq!(offset_of!(DmTargetSpec, next), 20);
        assert_eq!(offset_of!(DmTargetSpec, target_type), 24);
        assert_eq!(8 + 8 + 4 + 4 + 16, 40);
    }

    /// The request numbers dmsetup uses (`_IOWR(0xfd, cmd, struct dm_ioctl)`).
    #[test]
    fn ioctl_requests() {
        assert_eq!(DM_DEV_CREATE, 0xc138_fd03);
        assert_eq!(DM_DEV_SUSPEND, 0xc138_fd06);
        assert_eq!(DM_TABLE_LOAD, 0xc138_fd09);
    }

    /// The constants above against the installed kernel header, when there is one.
    #[test]
    fn constants_match_linux_dm_ioctl_h() {
        let path = "/usr/include/linux/dm-ioctl.h";
        let Ok(h) = std::fs::read_to_string(path) else {
            println!("skipped: {path} not installed (package linux-libc-dev)");
            return;
        };
        let define = |name: &str| -> String {
            h.lines()
                .find_map(|l| {
                    l.strip_prefix("#define ")?.strip_prefix(name)?.strip_prefix(['\t', ' '])
                })
                .unwrap_or_else(|| panic!("{path}: no #define {name}"))
                .trim()
                .to_string()
        };
        assert_eq!(define("DM_NAME_LEN"), DM_NAME_LEN.to_string());
        assert_eq!(define("DM_UUID_LEN"), DM_UUID_LEN.to_string());
        assert_eq!(define("DM_MAX_TYPE_NAME"), DM_MAX_TYPE_NAME.to_string());
        assert_eq!(define("DM_VERSION_MAJOR"), DM_VERSION_MAJOR.to_string());
        assert_eq!(define("DM_READONLY_FLAG"), "(1 << 0) /* In/Out */");
        assert_eq!(define("DM_IOCTL"), "0xfd");
        // The command enum: count entries from DM_VERSION_CMD = 0.
        let start = h.find("DM_VERSION_CMD = 0").expect("command enum");
        let cmds: Vec<&str> = h[start..]
            .split('}')
            .next()
            .unwrap()
            .split(',')
            .filter_map(|c| {
                c.split_whitespace().find(|w| w.starts_with("DM_") && w.ends_with("_CMD"))
            })
            .collect();
        assert_eq!(cmds.first(), Some(&"DM_VERSION_CMD"), "{path}: command enum {cmds:?}");
        let nr = |name: &str| {
            cmds.iter().position(|c| *c == name).unwrap_or_else(|| panic!("{path}: no {name}"))
                as u32
        };
        assert_eq!(ioctl_request(nr("DM_DEV_CREATE_CMD")), DM_DEV_CREATE);
        assert_eq!(ioctl_request(nr("DM_DEV_SUSPEND_CMD")), DM_DEV_SUSPEND);
        assert_eq!(ioctl_request(nr("DM_TABLE_LOAD_CMD")), DM_TABLE_LOAD);
    }

    #[test]
    fn request_buffers() {
        let b = request("usr", DM_READONLY_FLAG, 0, &[]).unwrap();
        assert_eq!(b.len(), 312);
        let u32_at = |b: &[u8], o: usize| u32::from_ne_bytes(b[o..o + 4].try_into().unwrap());
        assert_eq!(u32_at(&b, 0), 4);
        assert_eq!(u32_at(&b, 12), 312);
        assert_eq!(u32_at(&b, 16), 312);
        assert_eq!(u32_at(&b, 28), 1);
        assert_eq!(&b[48..52], b"usr\0");
        assert!(request(&"x".repeat(128), 0, 0, &[]).is_err());

        let t = target(2048, "verity", "1 /dev/sda3").unwrap();
        // 40-byte spec + "1 /dev/sda3\0" (12) padded to a multiple of 8.
        assert_eq!(t.len(), 56);
        assert_eq!(u32_at(&t, 20), 56);
        assert_eq!(u64::from_ne_bytes(t[8..16].try_into().unwrap()), 2048);
        assert_eq!(&t[24..31], b"verity\0");
        assert_eq!(&t[40..52], b"1 /dev/sda3\0");
        let b = request("usr", DM_READONLY_FLAG, 1, &t).unwrap();
        assert_eq!(b.len(), 312 + 56);
        assert_eq!(u32_at(&b, 12), 368);
        assert_eq!(u32_at(&b, 20), 1);
        assert_eq!(&b[312..], &t[..]);
    }

    #[test]
    fn device_numbers() {
        let mut b = request("usr", 0, 0, &[]).unwrap();
        // dev_t 253:0 and 253:300 as the kernel encodes them (new_encode_dev).
        b[40..48].copy_from_slice(&(253u64 << 8).to_ne_bytes());
        assert_eq!(dev_minor(reply_dev(&b)), 0);
        let minor = 300u64;
        let enc = (minor & 0xff) | (253 << 8) | ((minor & !0xff) << 12);
        assert_eq!(dev_minor(enc), 300);
    }

    #[test]
    fn verity_table_line() {
        let sb = Superblock {
            hash_type: 1,
            uuid: [0; 16],
            algorithm: "sha256".into(),
            data_block_size: 4096,
            hash_block_size: 4096,
            data_blocks: 260_096,
            salt: vec![0xab; 32],
        };
        let dev = Path::new("/dev/sda3");
        let (sectors, params) = verity_table(dev, &sb, 1_065_353_216, "ff").unwrap();
        assert_eq!(sectors, 260_096 * 8);
        assert_eq!(
            params,
            format!(
                "1 /dev/sda3 /dev/sda3 4096 4096 260096 260097 sha256 ff {} 1 ignore_zero_blocks",
                "ab".repeat(32)
            )
        );
        let e = verity_table(dev, &sb, 1000, "ff").unwrap_err();
        assert!(e.starts_with("/dev/sda3: verity hash offset 1000"), "{e}");
    }
}
