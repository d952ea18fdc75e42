//! The FAT32 boot sector (BIOS parameter block): enough to find the FAT,
//! the data area and the root directory, and the volume ID and label.

use crate::{le16, le32, need, Error, Result};

const FORMAT: &str = "FAT32 boot sector";

/// Whether the first sector `b` is a FAT32 boot sector (boot signature and
/// the "FAT32" file-system type string).
pub fn is_fat32(b: &[u8]) -> bool {
    b.len() >= 512 && b[510] == 0x55 && b[511] == 0xAA && &b[82..87] == b"FAT32"
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootSector {
    pub bytes_per_sector: u16,
    pub sectors_per_cluster: u8,
    pub reserved_sectors: u16,
    pub fats: u8,
    pub total_sectors: u32,
    pub sectors_per_fat: u32,
    pub root_cluster: u32,
    pub volume_id: u32,
    /// The 11-byte label, trailing spaces removed ("NO NAME" when unset).
    pub label: String,
}

impl BootSector {
    /// Parses the boot sector at the start of `b` (at least 512 bytes).
    pub fn parse(b: &[u8]) -> Result<BootSector> {
        need(FORMAT, b, 512)?;
        if !is_fat32(b) {
            return Err(Error::new(FORMAT, "no 0x55AA boot signature with \"FAT32\" type"));
        }
        let bad = |m: String| Err(Error::new(FORMAT, m));
        let bytes_per_sector = le16(b, 11);
        if !matches!(bytes_per_sector, 512 | 1024 | 2048 | 4096) {
            return bad(format!("{bytes_per_sector} bytes per sector"));
        }
        let sectors_per_cluster = b[13];
        if !sectors_per_cluster.is_power_of_two() {
            return bad(format!("{sectors_per_cluster} sectors per cluster"));
        }
        let reserved_sectors = le16(b, 14);
        if reserved_sectors == 0 {
            return bad("no reserved sectors".into());
        }
        let fats = b[16];
        if fats == 0 {
            return bad("no FATs".into());
        }
        let total_sectors = match le16(b, 19) {
            0 => le32(b, 32),
            n => n as u32,
        };
        let sectors_per_fat = le32(b, 36);
        if sectors_per_fat == 0 {
            return bad("FAT of 0 sectors".into());
        }
        Ok(BootSector {
            bytes_per_sector,
            sectors_per_cluster,
            reserved_sectors,
            fats,
            total_sectors,
            sectors_per_fat,
            root_cluster: le32(b, 44),
            volume_id: le32(b, 67),
            label: crate::text_field(&b[71..82]).unwrap_or_default(),
        })
    }

    /// The label, unless unset (blank or "NO NAME").
    pub fn label(&self) -> Option<&str> {
        (!self.label.is_empty() && self.label != "NO NAME").then_some(self.label.as_str())
    }

    /// The volume ID as tools show it (`XXXX-XXXX`, what `UUID=` matches).
    pub fn volume_id_string(&self) -> String {
        format!("{:04X}-{:04X}", self.volume_id >> 16, self.volume_id & 0xffff)
    }

    pub fn size_bytes(&self) -> u64 {
        self.total_sectors as u64 * self.bytes_per_sector as u64
    }

    /// Byte offset of the first FAT.
    pub fn fat_offset(&self) -> u64 {
        self.reserved_sectors as u64 * self.bytes_per_sector as u64
    }

    /// Byte offset of cluster 2, the start of the data area.
    pub fn data_offset(&self) -> u64 {
        (self.reserved_sectors as u64 + self.fats as u64 * self.sectors_per_fat as u64)
            * self.bytes_per_sector as u64
    }

    pub fn cluster_bytes(&self) -> u64 {
        self.sectors_per_cluster as u64 * self.bytes_per_sector as u64
    }
}

#[cfg(test)]
pub(crate) fn sample_sector(label: &[u8; 11]) -> [u8; 512] {
    let mut b = [0u8; 512];
    b[11..13].copy_from_slice(&512u16.to_le_bytes());
    b[13] = 8;
    b[14..16].copy_from_slice(&32u16.to_le_bytes());
    b[16] = 2;
    b[32..36].copy_from_slice(&262_144u32.to_le_bytes());
    b[36..40].copy_from_slice(&256u32.to_le_bytes());
    b[44..48].copy_from_slice(&2u32.to_le_bytes());
    b[67..71].copy_from_slice(&0x1234_abcdu32.to_le_bytes());
    b[71..82].copy_from_slice(label);
    b[82..90].copy_from_slice(b"FAT32   ");
    b[510] = 0x55;
    b[511] = 0xAA;
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_geometry_and_label() {
        let bs = BootSector::parse(&sample_sector(b"EFI-SYSTEM ")).unwrap();
        assert_eq!(bs.label(), Some("EFI-SYSTEM"));
        assert_eq!(bs.volume_id_string(), "1234-ABCD");
        assert_eq!(bs.size_bytes(), 128 << 20);
        assert_eq!(bs.fat_offset(), 32 * 512);
        assert_eq!(bs.data_offset(), (32 + 2 * 256) * 512);
        assert_eq!(bs.cluster_bytes(), 4096);
        assert_eq!(bs.root_cluster, 2);
        let unset = BootSector::parse(&sample_sector(b"NO NAME    ")).unwrap();
        assert_eq!(unset.label, "NO NAME");
        assert_eq!(unset.label(), None);
    }

    #[test]
    fn rejects_bad_input() {
        let err = |b: &[u8]| BootSector::parse(b).unwrap_err().to_string();
        let mut b = sample_sector(b"X          ");
        b[510] = 0;
        assert!(err(&b).contains("boot signature"));
        let mut b = sample_sector(b"X          ");
        b[11..13].copy_from_slice(&500u16.to_le_bytes());
        assert!(err(&b).contains("500 bytes per sector"));
        let mut b = sample_sector(b"X          ");
        b[13] = 3;
        assert!(err(&b).contains("3 sectors per cluster"));
        let mut b = sample_sector(b"X          ");
        b[16] = 0;
        assert!(err(&b).contains("no FATs"));
        assert!(err(&b[..511]).contains("511 bytes given"));
    }
}
