//! `inspect` on a disk whose GPT CRCs are made right after mutation, so
//! that mutations reach the partitions: filesystems (FAT, ext4/erofs probe),
//! the OEM partition and dm-verity.
//!
//! The input is a sparse disk (most of an image is zero, and FAT32 needs
//! 33 MiB): a little-endian u32 disk size in sectors (capped at 256 MiB),
//! then records `u32 byte offset, u16 length, bytes`. The records are
//! written into a sparse temp file; then the primary GPT's entry-array and
//! header CRCs are recomputed, and the backup's (at the primary's backup
//! LBA, or the last sector). `fuzz/seeds/inspect_gpt_fixed/` holds a disk
//! made by forge's own writers (GPT, FAT32 ESP and OEM, verity-protected
//! USR, ext4 ROOT); `cargo test -p forge --test hostile_images` checks it.
#![no_main]

use forge_formats::gpt::{crc32, MAX_ARRAY_BYTES};
use libfuzzer_sys::fuzz_target;
use std::fs::File;
use std::os::unix::fs::FileExt;

const SECTOR: u64 = 512;
const MAX_SECTORS: u64 = (256 << 20) / SECTOR;

fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn le64(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// Recomputes the CRCs of the header at `lba` (when it has the signature
/// and a sane size); returns its backup LBA.
fn fix(f: &File, lba: u64, sectors: u64) -> Option<u64> {
    if lba >= sectors {
        return None;
    }
    let mut h = [0u8; 512];
    f.read_exact_at(&mut h, lba * SECTOR).ok()?;
    if &h[0..8] != b"EFI PART" {
        return None;
    }
    let (entries_lba, n, size) = (le64(&h, 72), le32(&h, 80) as u64, le32(&h, 84) as u64);
    let bytes = n * size;
    if bytes <= MAX_ARRAY_BYTES
        && entries_lba < sectors
        && entries_lba * SECTOR + bytes <= sectors * SECTOR
    {
        let mut a = vec![0u8; bytes as usize];
        if f.read_exact_at(&mut a, entries_lba * SECTOR).is_ok() {
            h[88..92].copy_from_slice(&crc32(&a).to_le_bytes());
        }
    }
    let hs = (le32(&h, 12) as usize).clamp(92, 512);
    h[16..20].fill(0);
    let c = crc32(&h[..hs]);
    h[16..20].copy_from_slice(&c.to_le_bytes());
    f.write_all_at(&h, lba * SECTOR).ok()?;
    Some(le64(&h, 32))
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let sectors = (le32(data, 0) as u64).clamp(3, MAX_SECTORS);
    let size = sectors * SECTOR;
    // One scratch file for every run (created empty again each time).
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let path = DIR.get_or_init(|| tempfile::tempdir().expect("temp dir")).path().join("disk.img");
    let f = File::create(&path).expect("create");
    f.set_len(size).expect("set_len");
    let mut rest = &data[4..];
    while rest.len() >= 6 {
        let off = le32(rest, 0) as u64;
        let len = u16::from_le_bytes([rest[4], rest[5]]) as usize;
        let bytes = &rest[6..(6 + len).min(rest.len())];
        rest = &rest[6 + bytes.len()..];
        let n = bytes.len().min(size.saturating_sub(off) as usize);
        if n > 0 {
            f.write_all_at(&bytes[..n], off).expect("write");
        }
    }
    let backup = fix(&f, 1, sectors);
    let last = sectors - 1;
    match backup {
        Some(b) if b < sectors && b != 1 => {
            fix(&f, b, sectors);
        }
        _ => {
            fix(&f, last, sectors);
        }
    }
    drop(f);
    if let Ok(r) = forge::inspect::inspect(&path) {
        let _ = forge::inspect::render(&r);
    }
});
