//! The GUID partition table (UEFI 2.10 §5.3), as read from a disk: header,
//! entry array and the checks a reader must make before trusting either.
//!
//! ```text
//! header (at LBA 1, the backup at the disk's last LBA)
//!   0  signature "EFI PART"        40  first usable LBA
//!   8  revision                    48  last usable LBA
//!  12  header size (≥ 92)          56  disk GUID
//!  16  header CRC32                72  entry array LBA
//!  24  this header's LBA           80  number of entries
//!  32  the other header's LBA      84  entry size (128 × 2^n)
//!                                  88  entry array CRC32
//! entry (the first 128 bytes; larger entries are zero-padded)
//!   0  type GUID   16  partition GUID   32  first LBA   40  last LBA
//!  48  attributes  56  name (UTF-16LE, 36 units)
//! ```
//!
//! Hostile input is expected: every size is bounded before anything is
//! allocated ([`MAX_ARRAY_BYTES`]), every offset checked against the disk,
//! and [`check_entries`] reports entries past the disk, outside the usable
//! area, reversed or overlapping.

use crate::{le32, le64, need, Error, Result};

const FORMAT: &str = "GPT header";
pub const SIGNATURE: &[u8; 8] = b"EFI PART";
/// The header's size in revision 1.0 (the CRC covers `header_size` bytes).
pub const HEADER_BYTES: usize = 92;
/// The smallest entry (larger ones are 128 × 2^n, per UEFI).
pub const MIN_ENTRY_BYTES: u32 = 128;
/// The largest entry array this reader accepts. UEFI asks for at least
/// 16 KiB; no tool writes more than a few times that.
pub const MAX_ARRAY_BYTES: u64 = 1 << 20;

/// CRC-32 (IEEE 802.3, reflected, as UEFI uses it).
pub fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 { (c >> 1) ^ 0xEDB8_8320 } else { c >> 1 };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc = TABLE[((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub header_size: u32,
    pub current_lba: u64,
    pub backup_lba: u64,
    pub first_usable: u64,
    pub last_usable: u64,
    /// As stored (mixed-endian; see [`crate::guid_string`]).
    pub disk_guid: [u8; 16],
    /// First sector of the partition entry array.
    pub entries_lba: u64,
    pub num_entries: u32,
    pub entry_size: u32,
    pub entries_crc: u32,
}

impl Header {
    /// Parses and checks the header in the sector `b` (512 bytes or more)
    /// that was read from LBA `lba`: signature, size, CRC, that it says it
    /// is at `lba`, entry size and array size bounded, a usable area. Where
    /// it lies on the disk is [`Header::check_disk`]'s business.
    pub fn parse(b: &[u8], lba: u64) -> Result<Header> {
        need(FORMAT, b, 512)?;
        let bad = |m: String| Err(Error::new(FORMAT, m));
        if &b[0..8] != SIGNATURE {
            return bad(format!("no \"EFI PART\" signature at sector {lba}"));
        }
        let header_size = le32(b, 12);
        if (header_size as usize) < HEADER_BYTES || header_size as usize > b.len() {
            return bad(format!(
                "header size {header_size} (must be {HEADER_BYTES} to {})",
                b.len()
            ));
        }
        let mut raw = b[..header_size as usize].to_vec();
        let stored = le32(&raw, 16);
        raw[16..20].fill(0);
        let crc = crc32(&raw);
        if crc != stored {
            return bad(format!(
                "header CRC 0x{stored:08x} does not match its contents (0x{crc:08x})"
            ));
        }
        let h = Header {
            header_size,
            current_lba: le64(b, 24),
            backup_lba: le64(b, 32),
            first_usable: le64(b, 40),
            last_usable: le64(b, 48),
            disk_guid: b[56..72].try_into().unwrap(),
            entries_lba: le64(b, 72),
            num_entries: le32(b, 80),
            entry_size: le32(b, 84),
            entries_crc: le32(b, 88),
        };
        if h.current_lba != lba {
            return bad(format!("read at sector {lba}, it says it is at sector {}", h.current_lba));
        }
        if h.entry_size < MIN_ENTRY_BYTES
            || !h.entry_size.is_multiple_of(MIN_ENTRY_BYTES)
            || !(h.entry_size / MIN_ENTRY_BYTES).is_power_of_two()
        {
            return bad(format!("entries of {} bytes (must be 128 × 2^n)", h.entry_size));
        }
        if h.array_bytes() > MAX_ARRAY_BYTES {
            return bad(format!(
                "entry array of {} × {} bytes (at most {MAX_ARRAY_BYTES} bytes are read)",
                h.num_entries, h.entry_size
            ));
        }
        if h.first_usable > h.last_usable.saturating_add(1) {
            return bad(format!(
                "first usable sector {} after the last usable sector {}",
                h.first_usable, h.last_usable
            ));
        }
        if h.entries_lba < 2 {
            return bad(format!("entry array at sector {}", h.entries_lba));
        }
        Ok(h)
    }

    /// Checks that the usable area, the other header and the entry array
    /// lie on a disk of `disk_sectors` sectors of `sector` bytes; an error
    /// says the disk looks truncated.
    pub fn check_disk(&self, disk_sectors: u64, sector: u64) -> Result<()> {
        let array_end = self.entries_lba.checked_add(self.array_sectors(sector));
        let need = self
            .last_usable
            .max(self.backup_lba)
            .saturating_add(1)
            .max(array_end.unwrap_or(u64::MAX));
        if need > disk_sectors {
            return Err(Error::new(
                FORMAT,
                format!(
                    "it describes a disk of at least {need} sectors; the disk has {disk_sectors} (truncated?)"
                ),
            ));
        }
        Ok(())
    }

    pub fn array_bytes(&self) -> u64 {
        self.num_entries as u64 * self.entry_size as u64
    }

    pub fn array_sectors(&self, sector: u64) -> u64 {
        self.array_bytes().div_ceil(sector)
    }

    /// Checks the entry array's CRC; `array` is [`Header::array_bytes`] long.
    pub fn check_array(&self, array: &[u8]) -> Result<()> {
        if array.len() as u64 != self.array_bytes() {
            return Err(Error::new(
                "GPT entry array",
                format!("{} bytes, the header says {}", array.len(), self.array_bytes()),
            ));
        }
        let crc = crc32(array);
        if crc != self.entries_crc {
            return Err(Error::new(
                "GPT entry array",
                format!(
                    "CRC 0x{:08x} in the header does not match the entries (0x{crc:08x})",
                    self.entries_crc
                ),
            ));
        }
        Ok(())
    }

    /// The used entries of `array` (type GUID not zero), numbered from 1.
    pub fn entries(&self, array: &[u8]) -> Vec<Entry> {
        array
            .chunks_exact(self.entry_size as usize)
            .enumerate()
            .filter_map(|(i, e)| {
                Entry::parse(e).map(|mut e| {
                    e.number = i as u32 + 1;
                    e
                })
            })
            .collect()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Index in the array plus one (the kernel's partition number).
    pub number: u32,
    /// As stored (mixed-endian; see [`crate::guid_string`]).
    pub type_guid: [u8; 16],
    pub guid: [u8; 16],
    pub first_lba: u64,
    pub last_lba: u64,
    pub attributes: u64,
    pub name: String,
}

impl Entry {
    /// One entry (at least 128 bytes); `None` when unused (zero type GUID).
    /// `number` is left 0.
    pub fn parse(e: &[u8]) -> Option<Entry> {
        if e.len() < MIN_ENTRY_BYTES as usize || e[0..16].iter().all(|b| *b == 0) {
            return None;
        }
        let units: Vec<u16> = e[56..128]
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|u| *u != 0)
            .collect();
        Some(Entry {
            number: 0,
            type_guid: e[0..16].try_into().unwrap(),
            guid: e[16..32].try_into().unwrap(),
            first_lba: le64(e, 32),
            last_lba: le64(e, 40),
            attributes: le64(e, 48),
            name: String::from_utf16_lossy(&units),
        })
    }

    /// Sectors covered (0 when the entry is reversed).
    pub fn sectors(&self) -> u64 {
        if self.last_lba < self.first_lba {
            0
        } else {
            (self.last_lba - self.first_lba).saturating_add(1)
        }
    }
}

/// What is wrong with the entries of a table whose header is `h`, on a disk
/// of `disk_sectors`: entries reversed, past the disk's end, outside the
/// usable area, or overlapping another. One message per problem, naming
/// the partition numbers and sectors.
pub fn check_entries(h: &Header, entries: &[Entry], disk_sectors: u64) -> Vec<String> {
    let mut out = Vec::new();
    let mut ok = Vec::new();
    for e in entries {
        let n = e.number;
        if e.last_lba < e.first_lba {
            out.push(format!(
                "partition {n}: last sector {} before its first sector {}",
                e.last_lba, e.first_lba
            ));
        } else if e.last_lba >= disk_sectors {
            out.push(format!(
                "partition {n}: sectors {}–{} go past the end of the disk ({disk_sectors} sectors)",
                e.first_lba, e.last_lba
            ));
        } else if e.first_lba < h.first_usable || e.last_lba > h.last_usable {
            out.push(format!(
                "partition {n}: sectors {}–{} are outside the usable area {}–{}",
                e.first_lba, e.last_lba, h.first_usable, h.last_usable
            ));
            ok.push(e);
        } else {
            ok.push(e);
        }
    }
    ok.sort_by_key(|e| (e.first_lba, e.number));
    // Each entry against the furthest-reaching one before it.
    let mut reach: Option<&Entry> = None;
    for e in ok {
        if let Some(r) = reach {
            if e.first_lba <= r.last_lba {
                out.push(format!(
                    "partitions {} ({}–{}) and {} ({}–{}) overlap",
                    r.number, r.first_lba, r.last_lba, e.number, e.first_lba, e.last_lba
                ));
            }
        }
        if reach.is_none_or(|r| e.last_lba > r.last_lba) {
            reach = Some(e);
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A sealed header for a disk of `sectors`, 128 entries of `entry_size`.
    pub(crate) fn header(
        lba: u64,
        other: u64,
        sectors: u64,
        entry_size: u32,
        array: &[u8],
    ) -> Vec<u8> {
        let arr_sectors = array.len() as u64 / 512;
        let mut b = vec![0u8; 512];
        b[0..8].copy_from_slice(SIGNATURE);
        b[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        b[12..16].copy_from_slice(&92u32.to_le_bytes());
        b[24..32].copy_from_slice(&lba.to_le_bytes());
        b[32..40].copy_from_slice(&other.to_le_bytes());
        b[40..48].copy_from_slice(&(2 + arr_sectors).to_le_bytes());
        b[48..56].copy_from_slice(&(sectors - 2 - arr_sectors).to_le_bytes());
        b[56..72].copy_from_slice(&[0x42; 16]);
        let entries_lba = if lba == 1 { 2 } else { sectors - 1 - arr_sectors };
        b[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        b[80..84].copy_from_slice(&((array.len() as u32) / entry_size).to_le_bytes());
        b[84..88].copy_from_slice(&entry_size.to_le_bytes());
        b[88..92].copy_from_slice(&crc32(array).to_le_bytes());
        seal(&mut b);
        b
    }

    pub(crate) fn seal(b: &mut [u8]) {
        b[16..20].fill(0);
        let c = crc32(&b[..92]);
        b[16..20].copy_from_slice(&c.to_le_bytes());
    }

    fn entry(first: u64, last: u64, name: &str) -> Vec<u8> {
        let mut e = vec![0u8; 128];
        e[0..16].copy_from_slice(&[1; 16]);
        e[16..32].copy_from_slice(&[2; 16]);
        e[32..40].copy_from_slice(&first.to_le_bytes());
        e[40..48].copy_from_slice(&last.to_le_bytes());
        for (i, u) in name.encode_utf16().enumerate() {
            e[56 + 2 * i..58 + 2 * i].copy_from_slice(&u.to_le_bytes());
        }
        e
    }

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn reads_256_byte_entries() {
        let mut array = vec![0u8; 128 * 256];
        array[256..384].copy_from_slice(&entry(2048, 4095, "ROOT"));
        array[256 + 200] = 0xAA; // the entry's tail is not looked at
        let b = header(1, 9999, 10_000, 256, &array);
        let h = Header::parse(&b, 1).unwrap();
        h.check_disk(10_000, 512).unwrap();
        assert_eq!((h.entry_size, h.num_entries, h.array_sectors(512)), (256, 128, 64));
        h.check_array(&array).unwrap();
        let e = h.entries(&array);
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].number, e[0].name.as_str(), e[0].sectors()), (2, "ROOT", 2048));
        assert!(check_entries(&h, &e, 10_000).is_empty());
    }

    #[test]
    fn rejects_bad_headers() {
        let array = vec![0u8; 128 * 128];
        let good = header(1, 9999, 10_000, 128, &array);
        let err = |b: &[u8], lba| Header::parse(b, lba).unwrap_err().to_string();
        let h = Header::parse(&good, 1).unwrap();
        let e = h.check_disk(100, 512).unwrap_err().to_string();
        assert!(e.contains("at least 10000 sectors; the disk has 100 (truncated?)"), "{e}");
        assert!(err(&good, 9999).contains("it says it is at sector 1"));
        let mut b = good.clone();
        b[0] = b'X';
        assert!(err(&b, 1).contains("signature"));
        let mut b = good.clone();
        b[100] ^= 1; // outside the 92 bytes: ignored
        Header::parse(&b, 1).unwrap();
        b[40] ^= 1;
        assert!(err(&b, 1).contains("header CRC"));
        for (size, count) in [(0u32, 128u32), (64, 128), (136, 128), (384, 4), (128, 1 << 20)] {
            let mut b = good.clone();
            b[80..84].copy_from_slice(&count.to_le_bytes());
            b[84..88].copy_from_slice(&size.to_le_bytes());
            seal(&mut b);
            let e = err(&b, 1);
            assert!(e.contains("entries of") || e.contains("entry array of"), "{e}");
        }
        let mut b = good.clone();
        b[72..80].copy_from_slice(&u64::MAX.to_le_bytes());
        seal(&mut b);
        let h = Header::parse(&b, 1).unwrap();
        assert!(h.check_disk(10_000, 512).unwrap_err().to_string().contains("truncated"));
        let mut b = good.clone();
        b[40..48].copy_from_slice(&9999u64.to_le_bytes());
        seal(&mut b);
        assert!(err(&b, 1).contains("first usable sector 9999 after"));
        let mut b = good.clone();
        b[12..16].copy_from_slice(&600u32.to_le_bytes());
        assert!(err(&b, 1).contains("header size 600"));
        assert!(err(&good[..100], 1).contains("100 bytes given"));
    }

    #[test]
    fn array_crc() {
        let mut array = vec![0u8; 128 * 128];
        let h = Header::parse(&header(1, 9999, 10_000, 128, &array), 1).unwrap();
        h.check_array(&array).unwrap();
        array[5] = 1;
        assert!(h.check_array(&array).unwrap_err().to_string().contains("CRC"));
        assert!(h.check_array(&array[..512]).unwrap_err().to_string().contains("512 bytes"));
    }

    #[test]
    fn entry_problems() {
        let array = vec![0u8; 128 * 128];
        let h = Header::parse(&header(1, 9999, 10_000, 128, &array), 1).unwrap();
        let mk =
            |n, first, last| Entry { number: n, ..Entry::parse(&entry(first, last, "x")).unwrap() };
        let es = vec![
            mk(1, 2048, 4095),
            mk(2, 4000, 5000),   // overlaps 1
            mk(3, 6000, 5999),   // reversed
            mk(4, 9000, 20_000), // past the disk
            mk(5, 10, 20),       // before the first usable sector
            mk(6, 7000, 7000),
            mk(7, 7000, u64::MAX), // past the disk
        ];
        let p = check_entries(&h, &es, 10_000);
        assert_eq!(p.len(), 5, "{p:?}");
        assert!(p.iter().any(|m| m.contains("partitions 1 (2048–4095) and 2 (4000–5000) overlap")));
        assert!(p.iter().any(|m| m.contains("partition 3: last sector 5999 before")));
        assert!(p.iter().any(|m| m.contains("partition 4: sectors 9000–20000 go past the end")));
        assert!(p.iter().any(|m| m.contains("partition 5: sectors 10–20 are outside the usable")));
        assert!(p.iter().any(|m| m.contains("partition 7:")));
        assert_eq!(es[2].sectors(), 0);
        assert_eq!(mk(8, 0, u64::MAX).sectors(), u64::MAX);
    }
}
