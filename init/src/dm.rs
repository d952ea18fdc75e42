//! device-mapper through its ioctls (no dmsetup/veritysetup in the initramfs).

use crate::{say, Result};
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

const DM_IOCTL_SIZE: usize = 312;
const DM_NAME_OFF: usize = 48;
const DM_READONLY_FLAG: u32 = 1;

fn ioctl_nr(nr: u32) -> libc::c_ulong {
    ((3u32 << 30) | ((DM_IOCTL_SIZE as u32) << 16) | (0xfd << 8) | nr) as libc::c_ulong
}
const DM_DEV_CREATE: u32 = 3;
const DM_DEV_SUSPEND: u32 = 6;
const DM_TABLE_LOAD: u32 = 9;

fn header(name: &str, data_size: usize, target_count: u32, flags: u32) -> Vec<u8> {
    let mut b = vec![0u8; data_size.max(DM_IOCTL_SIZE)];
    b[0..4].copy_from_slice(&4u32.to_ne_bytes());
    let len = b.len() as u32;
    b[12..16].copy_from_slice(&len.to_ne_bytes());
    b[16..20].copy_from_slice(&(DM_IOCTL_SIZE as u32).to_ne_bytes());
    b[20..24].copy_from_slice(&target_count.to_ne_bytes());
    b[28..32].copy_from_slice(&flags.to_ne_bytes());
    b[DM_NAME_OFF..DM_NAME_OFF + name.len()].copy_from_slice(name.as_bytes());
    b
}

fn call(ctl: &File, nr: u32, buf: &mut [u8], what: &str) -> Result<()> {
    let r = unsafe { libc::ioctl(ctl.as_raw_fd(), ioctl_nr(nr), buf.as_mut_ptr()) };
    if r != 0 {
        return Err(format!("device-mapper {what}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Creates a read-only dm-verity device `name` over `dev` and returns its node.
pub fn setup_verity(name: &str, dev: &Path, hash_offset: u64, root_hash: &str) -> Result<PathBuf> {
    // The on-disk superblock gives the salt and the data size; both are
    // covered by the trusted root hash, so reading them from disk is safe.
    let f = File::open(dev).map_err(|e| format!("{}: {e}", dev.display()))?;
    let mut sb = [0u8; 512];
    f.read_exact_at(&mut sb, hash_offset)
        .map_err(|e| format!("{}: reading the verity superblock: {e}", dev.display()))?;
    if &sb[0..8] != b"verity\0\0" {
        return Err(format!("{}: no dm-verity superblock at offset {hash_offset}", dev.display()));
    }
    let data_block = u32::from_le_bytes(sb[64..68].try_into().unwrap());
    let hash_block = u32::from_le_bytes(sb[68..72].try_into().unwrap());
    let data_blocks = u64::from_le_bytes(sb[72..80].try_into().unwrap());
    let salt_len = u16::from_le_bytes([sb[80], sb[81]]) as usize;
    let alg = String::from_utf8_lossy(&sb[32..64]).trim_end_matches('\0').to_string();
    let salt: String = sb[88..88 + salt_len.min(256)].iter().map(|b| format!("{b:02x}")).collect();
    let hash_start = hash_offset / hash_block as u64 + 1;
    let sectors = data_blocks * data_block as u64 / 512;
    let params = format!(
        "1 {d} {d} {data_block} {hash_block} {data_blocks} {hash_start} {alg} {root_hash} {salt} 1 ignore_zero_blocks",
        d = dev.display()
    );
    say!("dm-verity table: 0 {sectors} verity {params}");

    let ctl = OpenOptions::new().read(true).write(true).open("/dev/mapper/control").or_else(|_| {
        // devtmpfs names it /dev/mapper/control once dm_mod is loaded.
        OpenOptions::new().read(true).write(true).open("/dev/device-mapper")
    });
    let ctl = ctl.map_err(|e| format!("/dev/mapper/control: {e} (is dm_mod loaded?)"))?;

    let mut b = header(name, DM_IOCTL_SIZE, 0, 0);
    call(&ctl, DM_DEV_CREATE, &mut b, "create")?;
    let devno = u64::from_ne_bytes(b[40..48].try_into().unwrap());
    let minor = (devno & 0xff) | ((devno >> 12) & !0xff);

    let mut p = params.into_bytes();
    p.push(0);
    while (40 + p.len()) % 8 != 0 {
        p.push(0);
    }
    let size = DM_IOCTL_SIZE + 40 + p.len();
    let mut b = header(name, size, 1, DM_READONLY_FLAG);
    let spec = &mut b[DM_IOCTL_SIZE..];
    spec[0..8].copy_from_slice(&0u64.to_ne_bytes());
    spec[8..16].copy_from_slice(&sectors.to_ne_bytes());
    spec[20..24].copy_from_slice(&((40 + p.len()) as u32).to_ne_bytes());
    spec[24..30].copy_from_slice(b"verity");
    spec[40..40 + p.len()].copy_from_slice(&p);
    call(&ctl, DM_TABLE_LOAD, &mut b, "table load (verity)")?;

    let mut b = header(name, DM_IOCTL_SIZE, 0, 0);
    call(&ctl, DM_DEV_SUSPEND, &mut b, "resume")?;
    let node = PathBuf::from(format!("/dev/dm-{minor}"));
    for _ in 0..100 {
        if node.exists() {
            return Ok(node);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Err(format!("{} did not appear", node.display()))
}

/// Reads a device end to end (dm-verity checks every block it returns).
pub fn read_all(dev: &Path) -> std::result::Result<u64, String> {
    let mut f = File::open(dev).map_err(|e| format!("{}: {e}", dev.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        match f.read(&mut buf) {
            Ok(0) => return Ok(n),
            Ok(k) => n += k as u64,
            Err(e) => return Err(format!("read error at byte {n}: {e}")),
        }
    }
}
