//! Just enough GPT for the initramfs: partition GUIDs and names by number,
//! and growing the last partition (ROOT) to the end of a larger disk.
//!
//! The arithmetic ([`Header::parse`], [`plan_growth`]) is pure and tested on
//! the host; [`write_growth`] writes a plan to any file, [`grow_root`] adds
//! the block-device ioctls.

use crate::sys::BlockDev;
use crate::Result;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

pub const SECTOR: u64 = 512;
/// The GPT header's size (revision 1.0); the CRC covers exactly these bytes.
const HEADER_BYTES: usize = 92;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    raw: [u8; HEADER_BYTES],
    pub current_lba: u64,
    pub backup_lba: u64,
    pub first_usable: u64,
    pub last_usable: u64,
    /// First sector of the partition entry array.
    pub entries_lba: u64,
    pub num_entries: u32,
    pub entry_size: u32,
}

fn le64(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

impl Header {
    /// Parses and checks a GPT header sector read from LBA `lba` (signature,
    /// CRC, where it says it is, entry size 128 × 2^n, an entry array of at
    /// most [`forge_formats::gpt::MAX_ARRAY_BYTES`]), with forge-formats'
    /// parser; growth rewrites it, so only revision 1.0's 92 bytes are taken.
    pub fn parse(b: &[u8], lba: u64) -> Result<Header> {
        let h = forge_formats::gpt::Header::parse(b, lba).map_err(|e| e.to_string())?;
        if h.header_size as usize != HEADER_BYTES {
            return Err(format!(
                "GPT header of {} bytes (only {HEADER_BYTES} is supported)",
                h.header_size
            ));
        }
        Ok(Header {
            raw: b[..HEADER_BYTES].try_into().unwrap(),
            current_lba: h.current_lba,
            backup_lba: h.backup_lba,
            first_usable: h.first_usable,
            last_usable: h.last_usable,
            entries_lba: h.entries_lba,
            num_entries: h.num_entries,
            entry_size: h.entry_size,
        })
    }

    pub fn array_bytes(&self) -> u64 {
        self.num_entries as u64 * self.entry_size as u64
    }

    pub fn array_sectors(&self) -> u64 {
        self.array_bytes().div_ceil(SECTOR)
    }

    /// Byte offset of the entry array (an error when it overflows).
    fn array_offset(&self) -> Result<u64> {
        self.entries_lba
            .checked_mul(SECTOR)
            .ok_or_else(|| format!("GPT entry array at sector {}", self.entries_lba))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub guid: [u8; 16],
    pub first_lba: u64,
    pub last_lba: u64,
    pub name: String,
}

/// One entry of the partition array (at least 128 bytes).
pub fn parse_entry(e: &[u8]) -> Entry {
    let units: Vec<u16> = e[56..128]
        .chunks(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|u| *u != 0)
        .collect();
    Entry {
        guid: e[16..32].try_into().unwrap(),
        first_lba: le64(e, 32),
        last_lba: le64(e, 40),
        name: String::from_utf16_lossy(&units),
    }
}

fn read_header(f: &File, disk: &Path, lba: u64) -> Result<Header> {
    let mut raw = [0u8; SECTOR as usize];
    let at = lba.checked_mul(SECTOR).ok_or_else(|| format!("{}: sector {lba}", disk.display()))?;
    f.read_exact_at(&mut raw, at)
        .map_err(|e| format!("{}: reading the GPT header at sector {lba}: {e}", disk.display()))?;
    Header::parse(&raw, lba).map_err(|e| format!("{}: {e}", disk.display()))
}

/// The header at `lba` and its entry array, CRC checked.
fn read_table_at(f: &File, disk: &Path, lba: u64) -> Result<(Header, Vec<u8>)> {
    let h = read_header(f, disk, lba)?;
    let at = h.array_offset().map_err(|e| format!("{}: {e}", disk.display()))?;
    // Bounded by Header::parse.
    let mut array = vec![0u8; h.array_bytes() as usize];
    f.read_exact_at(&mut array, at)
        .map_err(|e| format!("{}: reading the GPT entries: {e}", disk.display()))?;
    let crc = crc32(&array);
    if crc != u32::from_le_bytes(h.raw[88..92].try_into().unwrap()) {
        return Err(format!("{}: the GPT entry array's CRC does not match", disk.display()));
    }
    Ok((h, array))
}

/// The primary GPT (growth rewrites it, so it must be valid).
fn read_table(f: &File, disk: &Path) -> Result<(Header, Vec<u8>)> {
    read_table_at(f, disk, 1)
}

/// The primary GPT or, when it is corrupt, the backup at the disk's last
/// sector, as the kernel does.
fn read_either(f: &File, disk: &Path) -> Result<(Header, Vec<u8>)> {
    read_table(f, disk).or_else(|primary| {
        let mut g = f;
        let size = g.seek(SeekFrom::End(0)).map_err(|e| format!("{}: {e}", disk.display()))?;
        let last = (size / SECTOR).checked_sub(1).ok_or_else(|| primary.clone())?;
        read_table_at(f, disk, last).map_err(|backup| format!("{primary}; backup: {backup}"))
    })
}

/// Entry `number` (from 1) of the GPT on `f`, `None` when there is no such
/// entry or the table cannot be read.
fn read_entry(f: &File, disk: &Path, number: u32) -> Option<Entry> {
    let (h, array) = read_either(f, disk).ok()?;
    let idx = number.checked_sub(1)?;
    if idx >= h.num_entries {
        return None;
    }
    let ps = h.entry_size as usize;
    Some(parse_entry(&array[idx as usize * ps..(idx as usize + 1) * ps]))
}

fn entry(d: &BlockDev) -> Option<Entry> {
    let parent = d.parent.as_ref()?;
    let f = File::open(parent).ok()?;
    read_entry(&f, parent, d.partition?)
}

pub fn partuuid(d: &BlockDev) -> Option<String> {
    entry(d).map(|e| forge_formats::guid_string(&e.guid))
}

pub fn partlabel(d: &BlockDev) -> Option<String> {
    entry(d).map(|e| e.name)
}

pub use forge_formats::gpt::crc32;

/// What growing the last partition to the end of a larger disk writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Growth {
    /// The disk's last sector: the backup header goes there.
    pub last_lba: u64,
    /// The new last usable sector, where the partition now ends.
    pub last_usable: u64,
    /// Where the backup entry array goes (right before the backup header).
    pub backup_array_lba: u64,
    pub primary: [u8; HEADER_BYTES],
    pub backup: [u8; HEADER_BYTES],
    /// The entry array with the partition's new end (both copies).
    pub array: Vec<u8>,
    pub entries_lba: u64,
    pub first_lba: u64,
    pub old_bytes: u64,
    pub new_bytes: u64,
}

fn seal(h: &mut [u8; HEADER_BYTES]) {
    h[16..20].fill(0);
    let c = crc32(h);
    h[16..20].copy_from_slice(&c.to_le_bytes());
}

/// Plans growing partition `pno` to the end of a disk of `disk_bytes`, given
/// the primary header `h` and its entry `array`. `None` when there is
/// nothing to do: the partition is not the one that ends last, or the disk
/// has no room after it. The partition then ends at the new last usable
/// sector (no alignment: the filesystem is grown by whole blocks inside it),
/// and the backup array and header move to the disk's end.
pub fn plan_growth(h: &Header, array: &[u8], pno: u32, disk_bytes: u64) -> Result<Option<Growth>> {
    if array.len() as u64 != h.array_bytes() {
        return Err(format!(
            "GPT entry array of {} bytes, header says {}",
            array.len(),
            h.array_bytes()
        ));
    }
    let idx =
        pno.checked_sub(1).filter(|i| *i < h.num_entries).ok_or_else(|| {
            format!("partition {pno} is not in the GPT ({} entries)", h.num_entries)
        })? as usize;
    let ps = h.entry_size as usize;
    let sectors = disk_bytes / SECTOR;
    // Room for the backup array and header after the partitions.
    let Some(last_usable) = sectors.checked_sub(h.array_sectors() + 2) else {
        return Err(format!("a disk of {disk_bytes} bytes cannot hold a GPT"));
    };
    let last_lba = sectors - 1;
    let mut array = array.to_vec();
    let e = parse_entry(&array[idx * ps..(idx + 1) * ps]);
    let max_end = (0..h.num_entries as usize).map(|i| le64(&array, i * ps + 40)).max().unwrap_or(0);
    if e.last_lba != max_end || e.last_lba >= last_usable || e.first_lba > e.last_lba {
        return Ok(None);
    }
    array[idx * ps + 40..idx * ps + 48].copy_from_slice(&last_usable.to_le_bytes());
    let array_crc = crc32(&array);
    let backup_array_lba = last_lba - h.array_sectors();

    let mut primary = h.raw;
    primary[32..40].copy_from_slice(&last_lba.to_le_bytes()); // backup (alternate) LBA
    primary[48..56].copy_from_slice(&last_usable.to_le_bytes());
    primary[88..92].copy_from_slice(&array_crc.to_le_bytes());
    let mut backup = primary;
    seal(&mut primary);
    backup[24..32].copy_from_slice(&last_lba.to_le_bytes()); // its own LBA
    backup[32..40].copy_from_slice(&1u64.to_le_bytes()); // the primary's
    backup[72..80].copy_from_slice(&backup_array_lba.to_le_bytes());
    seal(&mut backup);
    Ok(Some(Growth {
        last_lba,
        last_usable,
        backup_array_lba,
        primary,
        backup,
        array,
        entries_lba: h.entries_lba,
        first_lba: e.first_lba,
        old_bytes: (e.last_lba - e.first_lba + 1) * SECTOR,
        new_bytes: (last_usable - e.first_lba + 1) * SECTOR,
    }))
}

/// Writes a planned growth to `f` (the disk `disk`): backup array and
/// header first, then the primary ones, then the protective MBR's size.
pub fn write_growth(f: &File, disk: &Path, g: &Growth) -> Result<()> {
    let w = |buf: &[u8], lba: u64, what: &str| {
        f.write_all_at(buf, lba * SECTOR)
            .map_err(|e| format!("{}: writing the {what} at sector {lba}: {e}", disk.display()))
    };
    w(&g.array, g.backup_array_lba, "backup GPT entries")?;
    w(&g.backup, g.last_lba, "backup GPT header")?;
    w(&g.array, g.entries_lba, "primary GPT entries")?;
    w(&g.primary, 1, "primary GPT header")?;
    // Protective MBR: the 0xEE record covers the whole (grown) disk.
    let mut mbr = [0u8; 16];
    f.read_exact_at(&mut mbr, 446)
        .map_err(|e| format!("{}: reading the protective MBR: {e}", disk.display()))?;
    if mbr[4] == 0xEE {
        let size = g.last_lba.min(u32::MAX as u64) as u32;
        f.write_all_at(&size.to_le_bytes(), 446 + 12)
            .map_err(|e| format!("{}: writing the protective MBR: {e}", disk.display()))?;
    }
    f.sync_all().map_err(|e| format!("{}: sync: {e}", disk.display()))
}

/// Filesystem blocks of `block_size` that fit in a partition of `bytes`.
pub fn fs_blocks(bytes: u64, block_size: u64) -> u64 {
    bytes / block_size
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
    let name = root.file_name().unwrap_or_default().to_string_lossy().into_owned();
    let d = crate::sys::block_devices()
        .into_iter()
        .find(|d| d.name == name)
        .ok_or_else(|| format!("{}: not in /sys/class/block", root.display()))?;
    let (Some(disk), Some(pno)) = (d.parent.clone(), d.partition) else { return Ok(None) };
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&disk)
        .map_err(|e| format!("{}: {e}", disk.display()))?;
    let mut disk_bytes = 0u64;
    if unsafe { libc::ioctl(f.as_raw_fd(), BLKGETSIZE64, &mut disk_bytes) } != 0 {
        return Err(format!(
            "{}: BLKGETSIZE64: {}",
            disk.display(),
            std::io::Error::last_os_error()
        ));
    }
    let (h, array) = read_table(&f, &disk)?;
    let Some(g) =
        plan_growth(&h, &array, pno, disk_bytes).map_err(|e| format!("{}: {e}", disk.display()))?
    else {
        return Ok(None);
    };
    write_growth(&f, &disk, &g)?;

    let mut part = BlkpgPartition {
        start: (g.first_lba * SECTOR) as i64,
        length: g.new_bytes as i64,
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
        return Err(format!(
            "{}: BLKPG resize partition {pno}: {}",
            disk.display(),
            std::io::Error::last_os_error()
        ));
    }
    // ext4 online resize to the new partition size (in filesystem blocks).
    let m = File::open(mountpoint).map_err(|e| format!("{}: {e}", mountpoint.display()))?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(m.as_raw_fd(), &mut st) } != 0 {
        return Err(format!(
            "{}: statfs: {}",
            mountpoint.display(),
            std::io::Error::last_os_error()
        ));
    }
    let mut blocks = fs_blocks(g.new_bytes, st.f_bsize as u64);
    if unsafe { libc::ioctl(m.as_raw_fd(), EXT4_IOC_RESIZE_FS, &mut blocks) } != 0 {
        return Err(format!(
            "{}: EXT4_IOC_RESIZE_FS to {blocks} blocks: {}",
            mountpoint.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(Some((g.old_bytes, g.new_bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpt::disk::LogicalBlockSize;
    use gpt::partition_types;

    const MIB: u64 = 1 << 20;

    /// A disk image file of `size` with an ESP (1 MiB at 1 MiB) and ROOT
    /// (the rest), written by the `gpt` crate as forge's table writer does.
    fn disk(dir: &Path, size: u64, root_last: Option<u64>) -> (std::path::PathBuf, u64) {
        let path = dir.join("disk.img");
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.set_len(size).unwrap();
        let mut f2 = f.try_clone().unwrap();
        gpt::mbr::ProtectiveMBR::with_lb_size(((size / SECTOR) - 1) as u32)
            .overwrite_lba0(&mut f2)
            .unwrap();
        let mut g = gpt::GptConfig::new()
            .writable(true)
            .logical_block_size(LogicalBlockSize::Lb512)
            .create_from_device(f, None)
            .unwrap();
        g.add_partition_at("EFI-SYSTEM", 1, 2048, 2048, partition_types::EFI, 0).unwrap();
        let last = root_last.unwrap_or(g.header().last_usable);
        g.add_partition_at("ROOT", 2, 4096, last - 4096 + 1, partition_types::LINUX_FS, 0).unwrap();
        g.write_inplace().unwrap();
        (path, last)
    }

    fn read(path: &Path) -> (File, Header, Vec<u8>) {
        let f = OpenOptions::new().read(true).write(true).open(path).unwrap();
        let (h, a) = read_table(&f, path).unwrap();
        (f, h, a)
    }

    #[test]
    fn header_and_entries() {
        let d = tempfile::tempdir().unwrap();
        let (path, last) = disk(d.path(), 64 * MIB, None);
        let (_, h, a) = read(&path);
        let sectors = 64 * MIB / SECTOR;
        assert_eq!((h.current_lba, h.backup_lba), (1, sectors - 1));
        assert_eq!((h.num_entries, h.entry_size, h.entries_lba), (128, 128, 2));
        assert_eq!(h.array_sectors(), 32);
        // Last usable: before the backup array (32 sectors) and header.
        assert_eq!(h.last_usable, sectors - 34);
        assert_eq!(last, h.last_usable);
        let root = parse_entry(&a[128..256]);
        assert_eq!((root.name.as_str(), root.first_lba, root.last_lba), ("ROOT", 4096, last));
        let g = gpt::GptConfig::new().open(&path).unwrap();
        let want = g.partitions()[&2].part_guid.to_string();
        assert_eq!(forge_formats::guid_string(&root.guid), want);

        let f = File::open(&path).unwrap();
        let e = read_entry(&f, &path, 2).unwrap();
        assert_eq!(e, root);
        assert_eq!(read_entry(&f, &path, 129), None);
        assert_eq!(read_entry(&f, &path, 0), None);

        let sector = |raw: &[u8]| {
            let mut s = [0u8; 512];
            s[..raw.len()].copy_from_slice(raw);
            s
        };
        let mut bad = sector(&h.raw);
        bad[0] = b'X';
        assert!(Header::parse(&bad, 1).unwrap_err().contains("signature"));
        let mut bad = sector(&h.raw);
        bad[12] = 96;
        reseal(&mut bad, 96);
        assert!(Header::parse(&bad, 1).unwrap_err().contains("96 bytes"));
        let mut bad = sector(&h.raw);
        bad[40] ^= 1;
        assert!(Header::parse(&bad, 1).unwrap_err().contains("CRC"));
    }

    fn reseal(b: &mut [u8], len: usize) {
        b[16..20].fill(0);
        let c = crc32(&b[..len]);
        b[16..20].copy_from_slice(&c.to_le_bytes());
    }

    /// Hostile tables: a header whose array offset overflows, a corrupt
    /// array, a huge entry count: errors (or no entry), never a panic or a
    /// huge allocation.
    #[test]
    fn hostile_tables() {
        let d = tempfile::tempdir().unwrap();
        let (path, _) = disk(d.path(), 64 * MIB, None);
        let f = OpenOptions::new().read(true).write(true).open(&path).unwrap();
        let mut hdr = [0u8; 512];
        f.read_exact_at(&mut hdr, SECTOR).unwrap();
        let write = |b: &[u8; 512]| f.write_all_at(b, SECTOR).unwrap();

        let mut b = hdr;
        b[72..80].copy_from_slice(&(u64::MAX / 4).to_le_bytes()); // × 512 overflows
        reseal(&mut b, 92);
        write(&b);
        assert!(read_table(&f, &path).unwrap_err().contains("entry array at sector"));
        assert_eq!(read_entry(&f, &path, 2).unwrap().name, "ROOT"); // from the backup

        let mut b = hdr;
        b[80..84].copy_from_slice(&u32::MAX.to_le_bytes());
        reseal(&mut b, 92);
        write(&b);
        assert!(read_table(&f, &path).unwrap_err().contains("entry array of"));

        write(&hdr);
        read_table(&f, &path).unwrap();
        let good = read_entry(&f, &path, 2).unwrap();
        f.write_all_at(&[0xAA], 2 * SECTOR + 300).unwrap();
        assert!(read_table(&f, &path).unwrap_err().contains("CRC"));
        // Lookups fall back to the backup, as the kernel does; growth does not.
        assert_eq!(read_entry(&f, &path, 2), Some(good));
        let last = 64 * MIB / SECTOR - 1;
        f.write_all_at(b"X", last * SECTOR).unwrap();
        assert_eq!(read_entry(&f, &path, 2), None);
        assert!(read_either(&f, &path).unwrap_err().contains("backup"));
    }

    #[test]
    fn grows_root_to_the_end_of_a_larger_disk() {
        let d = tempfile::tempdir().unwrap();
        let (path, old_last) = disk(d.path(), 64 * MIB, None);
        // The disk grows to 100 MiB + 7 sectors + a partial sector.
        let size = 100 * MIB + 7 * SECTOR + 100;
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(size).unwrap();
        let (f, h, a) = read(&path);
        let g = plan_growth(&h, &a, 2, size).unwrap().expect("room to grow");
        let sectors = size / SECTOR; // the partial sector is not usable
        assert_eq!(g.last_lba, sectors - 1);
        assert_eq!(g.last_usable, sectors - 1 - 32 - 1);
        assert_eq!(g.backup_array_lba, sectors - 1 - 32);
        assert_eq!(g.old_bytes, (old_last - 4096 + 1) * SECTOR);
        assert_eq!(g.new_bytes, (g.last_usable - 4096 + 1) * SECTOR);
        // The ext4 resize target stays inside the partition (no rounding up).
        let blocks = fs_blocks(g.new_bytes, 4096);
        assert!(blocks * 4096 <= g.new_bytes && (blocks + 1) * 4096 > g.new_bytes);
        write_growth(&f, &path, &g).unwrap();

        // An independent reader accepts both copies (signatures, CRCs, the
        // backup at the disk's end) and sees ROOT to the last usable sector.
        let disk = gpt::GptConfig::new().only_valid_headers(true).open(&path).unwrap();
        let ph = disk.primary_header().unwrap();
        let bh = disk.backup_header().unwrap();
        assert_eq!((ph.backup_lba, ph.last_usable), (g.last_lba, g.last_usable));
        assert_eq!(
            (bh.current_lba, bh.backup_lba, bh.part_start),
            (g.last_lba, 1, g.backup_array_lba)
        );
        assert_eq!(ph.first_usable, h.first_usable);
        let p = disk.partitions();
        assert_eq!((p[&2].first_lba, p[&2].last_lba), (4096, g.last_usable));
        assert_eq!((p[&1].first_lba, p[&1].last_lba), (2048, 4095));
        let mut mbr = [0u8; 4];
        f.read_exact_at(&mut mbr, 446 + 12).unwrap();
        assert_eq!(u32::from_le_bytes(mbr) as u64, g.last_lba);

        // Grown once: nothing more to do.
        let (_, h, a) = read(&path);
        assert_eq!(plan_growth(&h, &a, 2, size).unwrap(), None);
    }

    #[test]
    fn leaves_alone_what_it_must_not_grow() {
        let d = tempfile::tempdir().unwrap();
        let (path, _) = disk(d.path(), 64 * MIB, None);
        let (_, h, a) = read(&path);
        // Same disk: no room.
        assert_eq!(plan_growth(&h, &a, 2, 64 * MIB).unwrap(), None);
        // Not the partition that ends last.
        assert_eq!(plan_growth(&h, &a, 1, 128 * MIB).unwrap(), None);
        // No such partition.
        assert!(plan_growth(&h, &a, 200, 128 * MIB).unwrap_err().contains("partition 200"));
        // A disk too small for a GPT.
        assert!(plan_growth(&h, &a, 2, 10 * SECTOR).unwrap_err().contains("cannot hold a GPT"));
        // ROOT ending before the last usable sector of the same disk grows.
        let (path, last) = disk(d.path(), 64 * MIB, Some(100_000));
        let (_, h, a) = read(&path);
        let g = plan_growth(&h, &a, 2, 64 * MIB).unwrap().unwrap();
        assert_eq!(last, 100_000);
        assert_eq!(g.last_usable, h.last_usable);
    }

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }
}
