//! Just enough GPT for the initramfs: partition GUIDs and names by number,
//! and growing the last partition (ROOT) to the end of a larger disk.

use crate::sys::BlockDev;
use crate::Result;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

const SECTOR: u64 = 512;

struct Header {
    raw: [u8; 92],
    part_start: u64,
    num_parts: u32,
    part_size: u32,
}

fn read_header(f: &std::fs::File) -> Option<Header> {
    let mut raw = [0u8; 92];
    f.read_exact_at(&mut raw, SECTOR).ok()?;
    if &raw[0..8] != b"EFI PART" {
        return None;
    }
    Some(Header {
        raw,
        part_start: u64::from_le_bytes(raw[72..80].try_into().unwrap()),
        num_parts: u32::from_le_bytes(raw[80..84].try_into().unwrap()),
        part_size: u32::from_le_bytes(raw[84..88].try_into().unwrap()),
    })
}

fn entry(d: &BlockDev) -> Option<Vec<u8>> {
    let parent = d.parent.as_ref()?;
    let f = std::fs::File::open(parent).ok()?;
    let h = read_header(&f)?;
    let idx = d.partition? as u64 - 1;
    let mut e = vec![0u8; h.part_size as usize];
    f.read_exact_at(&mut e, h.part_start * SECTOR + idx * h.part_size as u64).ok()?;
    Some(e)
}

pub fn guid_string(b: &[u8]) -> String {
    format!(
        "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{}",
        u32::from_le_bytes(b[0..4].try_into().unwrap()),
        u16::from_le_bytes(b[4..6].try_into().unwrap()),
        u16::from_le_bytes(b[6..8].try_into().unwrap()),
        b[8],
        b[9],
        b[10..16].iter().map(|x| format!("{x:02x}")).collect::<String>()
    )
}

pub fn partuuid(d: &BlockDev) -> Option<String> {
    entry(d).map(|e| guid_string(&e[16..32]))
}

pub fn partlabel(d: &BlockDev) -> Option<String> {
    let e = entry(d)?;
    let units: Vec<u16> = e[56..128]
        .chunks(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|u| *u != 0)
        .collect();
    Some(String::from_utf16_lossy(&units))
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
const BLKPG: libc::c_ulong = 0x1269;
const BLKPG_RESIZE_PARTITION: libc::c_int = 3;
const EXT4_IOC_RESIZE_FS: libc::c_ulong = 0x4008_6610;

#[repr(C)]
struct BlkpgPartition {
    start: i64,
    length: i64,
    pno: libc::c_int,
    devname: [u8; 64],
    volname: [u8; 64],
}

#[repr(C)]
struct BlkpgIoctlArg {
    op: libc::c_int,
    flags: libc::c_int,
    datalen: libc::c_int,
    data: *mut libc::c_void,
}

/// If ROOT is the last partition and the disk has grown, moves the backup
/// GPT to the end, extends ROOT to the last usable sector, tells the kernel,
/// and grows the mounted ext4 filesystem. Returns (old, new) sizes in bytes.
pub fn grow_root(root: &Path, mountpoint: &Path) -> Result<Option<(u64, u64)>> {
    let name = root.file_name().unwrap().to_string_lossy().into_owned();
    let d = crate::sys::block_devices()
        .into_iter()
        .find(|d| d.name == name)
        .ok_or("ROOT is not a known block device")?;
    let (Some(parent), Some(pno)) = (d.parent.clone(), d.partition) else { return Ok(None) };
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&parent)
        .map_err(|e| format!("{}: {e}", parent.display()))?;
    let mut disk_bytes = 0u64;
    if unsafe { libc::ioctl(f.as_raw_fd(), BLKGETSIZE64, &mut disk_bytes) } != 0 {
        return Err(format!("BLKGETSIZE64: {}", std::io::Error::last_os_error()));
    }
    let last_lba = disk_bytes / SECTOR - 1;
    let h = read_header(&f).ok_or("no GPT on the disk")?;
    let array_bytes = h.num_parts as u64 * h.part_size as u64;
    let array_sectors = array_bytes.div_ceil(SECTOR);
    let new_last_usable = last_lba - array_sectors - 1;
    let mut array = vec![0u8; array_bytes as usize];
    f.read_exact_at(&mut array, h.part_start * SECTOR).map_err(|e| e.to_string())?;
    let ps = h.part_size as usize;
    let idx = (pno - 1) as usize;
    let e = &array[idx * ps..(idx + 1) * ps];
    let first = u64::from_le_bytes(e[32..40].try_into().unwrap());
    let last = u64::from_le_bytes(e[40..48].try_into().unwrap());
    // Only when ROOT is the partition that ends last and the disk has room.
    let max_end = (0..h.num_parts as usize)
        .map(|i| u64::from_le_bytes(array[i * ps + 40..i * ps + 48].try_into().unwrap()))
        .max()
        .unwrap_or(0);
    if last != max_end || last >= new_last_usable {
        return Ok(None);
    }
    let old_bytes = (last - first + 1) * SECTOR;
    array[idx * ps + 40..idx * ps + 48].copy_from_slice(&new_last_usable.to_le_bytes());
    let array_crc = crc32(&array);

    let backup_array_lba = last_lba - array_sectors;
    let mut primary = h.raw;
    primary[32..40].copy_from_slice(&last_lba.to_le_bytes());
    primary[48..56].copy_from_slice(&new_last_usable.to_le_bytes());
    primary[88..92].copy_from_slice(&array_crc.to_le_bytes());
    primary[16..20].copy_from_slice(&[0; 4]);
    let c = crc32(&primary);
    primary[16..20].copy_from_slice(&c.to_le_bytes());
    let mut backup = primary;
    backup[24..32].copy_from_slice(&last_lba.to_le_bytes());
    backup[32..40].copy_from_slice(&1u64.to_le_bytes());
    backup[72..80].copy_from_slice(&backup_array_lba.to_le_bytes());
    backup[16..20].copy_from_slice(&[0; 4]);
    let c = crc32(&backup);
    backup[16..20].copy_from_slice(&c.to_le_bytes());

    let w = |buf: &[u8], lba: u64| {
        f.write_all_at(buf, lba * SECTOR).map_err(|e| format!("writing the GPT: {e}"))
    };
    w(&array, backup_array_lba)?;
    w(&backup, last_lba)?;
    w(&array, h.part_start)?;
    w(&primary, 1)?;
    // Protective MBR: the 0xEE record covers the whole (grown) disk.
    let mut mbr = [0u8; 16];
    f.read_exact_at(&mut mbr, 446).map_err(|e| e.to_string())?;
    if mbr[4] == 0xEE {
        let size = (last_lba).min(u32::MAX as u64) as u32;
        f.write_all_at(&size.to_le_bytes(), 446 + 12).map_err(|e| e.to_string())?;
    }
    f.sync_all().map_err(|e| e.to_string())?;

    let new_bytes = (new_last_usable - first + 1) * SECTOR;
    let mut part = BlkpgPartition {
        start: (first * SECTOR) as i64,
        length: new_bytes as i64,
        pno: pno as i32,
        devname: [0; 64],
        volname: [0; 64],
    };
    let mut arg = BlkpgIoctlArg {
        op: BLKPG_RESIZE_PARTITION,
        flags: 0,
        datalen: std::mem::size_of::<BlkpgPartition>() as i32,
        data: &mut part as *mut _ as *mut libc::c_void,
    };
    if unsafe { libc::ioctl(f.as_raw_fd(), BLKPG, &mut arg) } != 0 {
        return Err(format!("BLKPG resize partition {pno}: {}", std::io::Error::last_os_error()));
    }
    // ext4 online resize to the new partition size (in filesystem blocks).
    let m = std::fs::File::open(mountpoint).map_err(|e| e.to_string())?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::fstatfs(m.as_raw_fd(), &mut st) };
    let bs = st.f_bsize as u64;
    let mut blocks: u64 = new_bytes / bs;
    if unsafe { libc::ioctl(m.as_raw_fd(), EXT4_IOC_RESIZE_FS, &mut blocks) } != 0 {
        return Err(format!(
            "EXT4_IOC_RESIZE_FS to {blocks} blocks: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(Some((old_bytes, new_bytes)))
}
