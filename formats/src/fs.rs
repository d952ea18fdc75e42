//! Recognizing a filesystem by its superblock: type, label, UUID and the
//! size it says it has. forge's `inspect` reports these; forge-init finds
//! `LABEL=` devices with them.

use crate::{fat, le16, le32, le64, need, text_field, uuid_string, Error, Result};

/// Bytes from the start of a partition that [`probe`] needs (FAT32 boot
/// sector, ext2/3/4 and erofs superblocks at 1024, squashfs at 0).
pub const PROBE_BYTES: usize = 2048;
/// Where the btrfs superblock lives (see [`probe_btrfs`]).
pub const BTRFS_SUPERBLOCK_OFFSET: u64 = 65536;
/// Bytes of the btrfs superblock [`probe_btrfs`] needs.
pub const BTRFS_PROBE_BYTES: usize = 4096;

const EXT_MAGIC: u16 = 0xEF53;
const EROFS_MAGIC: u32 = 0xE0F5_E1E2;
const EXT_COMPAT_HAS_JOURNAL: u32 = 0x4;
const EXT_INCOMPAT_EXTENTS: u32 = 0x40;
const EXT_INCOMPAT_64BIT: u32 = 0x80;
const EXT_INCOMPAT_FLEX_BG: u32 = 0x200;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Vfat,
    Ext2,
    Ext3,
    Ext4,
    Erofs,
    Squashfs,
    Btrfs,
}

impl Kind {
    /// The name `mount -t` and `blkid` use.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Vfat => "vfat",
            Kind::Ext2 => "ext2",
            Kind::Ext3 => "ext3",
            Kind::Ext4 => "ext4",
            Kind::Erofs => "erofs",
            Kind::Squashfs => "squashfs",
            Kind::Btrfs => "btrfs",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fs {
    pub kind: Kind,
    /// The label, `None` when unset.
    pub label: Option<String>,
    /// As `blkid` shows it (FAT: the volume ID, `XXXX-XXXX`).
    pub uuid: Option<String>,
    /// The size the filesystem says it has.
    pub size_bytes: u64,
}

/// Recognizes the filesystem whose first bytes are `head` (at least
/// [`PROBE_BYTES`]). `Ok(None)`: none of the known superblocks (btrfs is
/// checked separately, by [`probe_btrfs`]); an error: a known signature with
/// impossible values.
pub fn probe(head: &[u8]) -> Result<Option<Fs>> {
    need("filesystem probe", head, PROBE_BYTES)?;
    if fat::is_fat32(head) {
        let bs = fat::BootSector::parse(head)?;
        return Ok(Some(Fs {
            kind: Kind::Vfat,
            label: bs.label().map(str::to_string),
            uuid: Some(bs.volume_id_string()),
            size_bytes: bs.size_bytes(),
        }));
    }
    let sb = &head[1024..];
    if le16(sb, 56) == EXT_MAGIC {
        return ext(sb).map(Some);
    }
    if le32(sb, 0) == EROFS_MAGIC {
        let bits = sb[12];
        if !(9..=16).contains(&bits) {
            return Err(Error::new("erofs superblock", format!("block size of 2^{bits} bytes")));
        }
        return Ok(Some(Fs {
            kind: Kind::Erofs,
            label: text_field(&sb[64..80]),
            uuid: Some(uuid_string(sb[48..64].try_into().unwrap())),
            size_bytes: le32(sb, 36) as u64 * (1u64 << bits),
        }));
    }
    if &head[0..4] == b"hsqs" {
        return Ok(Some(Fs {
            kind: Kind::Squashfs,
            label: None,
            uuid: None,
            size_bytes: le64(head, 40),
        }));
    }
    Ok(None)
}

/// ext2/3/4 from the superblock `sb` (the bytes at 1024).
fn ext(sb: &[u8]) -> Result<Fs> {
    let compat = le32(sb, 92);
    let incompat = le32(sb, 96);
    let kind = if incompat & (EXT_INCOMPAT_EXTENTS | EXT_INCOMPAT_64BIT | EXT_INCOMPAT_FLEX_BG) != 0
    {
        Kind::Ext4
    } else if compat & EXT_COMPAT_HAS_JOURNAL != 0 {
        Kind::Ext3
    } else {
        Kind::Ext2
    };
    let log = le32(sb, 24);
    if log > 6 {
        return Err(Error::new("ext superblock", format!("block size of 1024 << {log} bytes")));
    }
    let mut blocks = le32(sb, 4) as u64;
    if incompat & EXT_INCOMPAT_64BIT != 0 {
        blocks |= (le32(sb, 0x150) as u64) << 32;
    }
    let size_bytes = blocks.checked_mul(1024u64 << log).ok_or_else(|| {
        Error::new("ext superblock", format!("{blocks} blocks of 1024 << {log} bytes"))
    })?;
    Ok(Fs {
        kind,
        label: text_field(&sb[120..136]),
        uuid: Some(uuid_string(sb[104..120].try_into().unwrap())),
        size_bytes,
    })
}

/// Recognizes btrfs from the bytes at [`BTRFS_SUPERBLOCK_OFFSET`] (at least
/// [`BTRFS_PROBE_BYTES`]).
pub fn probe_btrfs(sb: &[u8]) -> Result<Option<Fs>> {
    need("btrfs probe", sb, BTRFS_PROBE_BYTES)?;
    if &sb[64..72] != b"_BHRfS_M" {
        return Ok(None);
    }
    Ok(Some(Fs {
        kind: Kind::Btrfs,
        label: text_field(&sb[299..299 + 256]),
        uuid: Some(uuid_string(sb[32..48].try_into().unwrap())),
        size_bytes: le64(sb, 0x70),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext_head(incompat: u32, compat: u32, label: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; PROBE_BYTES];
        let sb = &mut b[1024..];
        sb[4..8].copy_from_slice(&1000u32.to_le_bytes());
        sb[24..28].copy_from_slice(&2u32.to_le_bytes()); // 4096-byte blocks
        sb[56..58].copy_from_slice(&EXT_MAGIC.to_le_bytes());
        sb[92..96].copy_from_slice(&compat.to_le_bytes());
        sb[96..100].copy_from_slice(&incompat.to_le_bytes());
        sb[104..120].copy_from_slice(&[0x11; 16]);
        sb[120..120 + label.len()].copy_from_slice(label);
        sb[0x150..0x154].copy_from_slice(&1u32.to_le_bytes());
        b
    }

    #[test]
    fn ext_kinds_labels_sizes() {
        let fs = probe(&ext_head(0x2c2, 0x3c, b"ROOT")).unwrap().unwrap();
        assert_eq!(fs.kind, Kind::Ext4);
        assert_eq!(fs.label.as_deref(), Some("ROOT"));
        assert_eq!(fs.uuid.as_deref(), Some("11111111-1111-1111-1111-111111111111"));
        // 64bit: the high word counts.
        assert_eq!(fs.size_bytes, ((1u64 << 32) + 1000) * 4096);
        let fs = probe(&ext_head(0x2, 0x4, b"OEM")).unwrap().unwrap();
        assert_eq!((fs.kind, fs.size_bytes), (Kind::Ext3, 1000 * 4096));
        let fs = probe(&ext_head(0x2, 0, b"")).unwrap().unwrap();
        assert_eq!((fs.kind, fs.label), (Kind::Ext2, None));
        let mut bad = ext_head(0x2, 0, b"");
        bad[1024 + 24] = 40;
        assert!(probe(&bad).unwrap_err().to_string().contains("1024 << 40"));
        // 2^64 - 1 blocks of 64 KiB: an error, not an overflow.
        let mut huge = ext_head(0x80, 0, b"");
        huge[1024 + 24] = 6;
        huge[1024 + 4..1024 + 8].fill(0xff);
        huge[1024 + 0x150..1024 + 0x154].fill(0xff);
        assert!(probe(&huge).unwrap_err().to_string().contains("blocks of 1024 << 6"));
    }

    #[test]
    fn erofs() {
        let mut b = vec![0u8; PROBE_BYTES];
        let sb = &mut b[1024..];
        sb[0..4].copy_from_slice(&EROFS_MAGIC.to_le_bytes());
        sb[12] = 12;
        sb[36..40].copy_from_slice(&300u32.to_le_bytes());
        sb[48..64].copy_from_slice(&[0xa5; 16]);
        sb[64..70].copy_from_slice(b"USR-A\0");
        let fs = probe(&b).unwrap().unwrap();
        assert_eq!(fs.kind.as_str(), "erofs");
        assert_eq!(fs.label.as_deref(), Some("USR-A"));
        assert_eq!(fs.size_bytes, 300 * 4096);
        b[1024 + 12] = 40;
        assert!(probe(&b).is_err());
    }

    #[test]
    fn vfat_squashfs_nothing() {
        let mut b = vec![0u8; PROBE_BYTES];
        b[..512].copy_from_slice(&fat::sample_sector(b"EFI-SYSTEM "));
        let fs = probe(&b).unwrap().unwrap();
        assert_eq!(fs.kind, Kind::Vfat);
        assert_eq!(fs.label.as_deref(), Some("EFI-SYSTEM"));
        assert_eq!(fs.uuid.as_deref(), Some("1234-ABCD"));
        let mut b = vec![0u8; PROBE_BYTES];
        b[0..4].copy_from_slice(b"hsqs");
        b[40..48].copy_from_slice(&12345u64.to_le_bytes());
        assert_eq!(probe(&b).unwrap().unwrap().size_bytes, 12345);
        assert_eq!(probe(&[0u8; PROBE_BYTES]).unwrap(), None);
        assert!(probe(&[0u8; 1000]).is_err());
    }

    #[test]
    fn btrfs() {
        let mut s = vec![0u8; BTRFS_PROBE_BYTES];
        assert_eq!(probe_btrfs(&s).unwrap(), None);
        s[64..72].copy_from_slice(b"_BHRfS_M");
        s[0x70..0x78].copy_from_slice(&(1u64 << 30).to_le_bytes());
        s[299..303].copy_from_slice(b"DATA");
        let fs = probe_btrfs(&s).unwrap().unwrap();
        assert_eq!(
            (fs.kind, fs.label.as_deref(), fs.size_bytes),
            (Kind::Btrfs, Some("DATA"), 1 << 30)
        );
    }
}
