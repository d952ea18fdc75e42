//! The dm-verity superblock, on-disk format version 1 (as `veritysetup
//! format` writes it and `veritysetup open` reads it): 512 bytes at the hash
//! offset, all numbers little-endian.
//!
//! ```text
//!   0  signature "verity\0\0"     32  algorithm (NUL-padded, 32 bytes)
//!   8  version (1)                64  data block size
//!  12  hash type (1: normal)      68  hash block size
//!  16  UUID (16 bytes)            72  data blocks (u64)
//!                                 80  salt size (u16, at most 256)
//!                                 88  salt (256 bytes)
//! ```

use crate::{le16, le32, le64, need, Error, Result};

pub const MAGIC: &[u8; 8] = b"verity\0\0";
/// Bytes the superblock occupies (the rest of its hash block is zero).
pub const SUPERBLOCK_BYTES: usize = 512;
pub const MAX_SALT: usize = 256;
const FORMAT: &str = "dm-verity superblock";

/// Whether `b` starts with the superblock's signature.
pub fn has_magic(b: &[u8]) -> bool {
    b.starts_with(MAGIC)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    /// 1: normal (the only type the kernel's verity target and veritysetup
    /// write with a superblock); 0: Chrome OS.
    pub hash_type: u32,
    pub uuid: [u8; 16],
    /// Kernel crypto name, e.g. "sha256".
    pub algorithm: String,
    pub data_block_size: u32,
    pub hash_block_size: u32,
    pub data_blocks: u64,
    pub salt: Vec<u8>,
}

fn check_block_size(what: &str, n: u32) -> Result<()> {
    if n < 512 || !n.is_power_of_two() {
        return Err(Error::new(
            FORMAT,
            format!("{what} block size {n} is not a power of two ≥ 512"),
        ));
    }
    Ok(())
}

impl Superblock {
    /// Parses the superblock at the start of `b` (at least 512 bytes).
    pub fn parse(b: &[u8]) -> Result<Superblock> {
        need(FORMAT, b, SUPERBLOCK_BYTES)?;
        if !has_magic(b) {
            return Err(Error::new(FORMAT, "no \"verity\" signature"));
        }
        let version = le32(b, 8);
        if version != 1 {
            return Err(Error::new(FORMAT, format!("version {version} (only 1 is supported)")));
        }
        let salt_len = le16(b, 80) as usize;
        if salt_len > MAX_SALT {
            return Err(Error::new(
                FORMAT,
                format!("salt of {salt_len} bytes (at most {MAX_SALT})"),
            ));
        }
        let algorithm =
            crate::text_field(&b[32..64]).ok_or_else(|| Error::new(FORMAT, "no hash algorithm"))?;
        let data_block_size = le32(b, 64);
        let hash_block_size = le32(b, 68);
        check_block_size("data", data_block_size)?;
        check_block_size("hash", hash_block_size)?;
        Ok(Superblock {
            hash_type: le32(b, 12),
            uuid: b[16..32].try_into().unwrap(),
            algorithm,
            data_block_size,
            hash_block_size,
            data_blocks: le64(b, 72),
            salt: b[88..88 + salt_len].to_vec(),
        })
    }

    /// The 512 bytes on disk.
    pub fn to_bytes(&self) -> Result<[u8; SUPERBLOCK_BYTES]> {
        if self.salt.len() > MAX_SALT {
            return Err(Error::new(
                FORMAT,
                format!("salt of {} bytes (at most {MAX_SALT})", self.salt.len()),
            ));
        }
        if self.algorithm.is_empty() || self.algorithm.len() > 32 {
            return Err(Error::new(
                FORMAT,
                format!("algorithm name '{}' must be 1 to 32 bytes", self.algorithm),
            ));
        }
        check_block_size("data", self.data_block_size)?;
        check_block_size("hash", self.hash_block_size)?;
        let mut b = [0u8; SUPERBLOCK_BYTES];
        b[0..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&1u32.to_le_bytes());
        b[12..16].copy_from_slice(&self.hash_type.to_le_bytes());
        b[16..32].copy_from_slice(&self.uuid);
        b[32..32 + self.algorithm.len()].copy_from_slice(self.algorithm.as_bytes());
        b[64..68].copy_from_slice(&self.data_block_size.to_le_bytes());
        b[68..72].copy_from_slice(&self.hash_block_size.to_le_bytes());
        b[72..80].copy_from_slice(&self.data_blocks.to_le_bytes());
        b[80..82].copy_from_slice(&(self.salt.len() as u16).to_le_bytes());
        b[88..88 + self.salt.len()].copy_from_slice(&self.salt);
        Ok(b)
    }

    /// Bytes of data the tree covers.
    pub fn data_bytes(&self) -> u64 {
        self.data_blocks * self.data_block_size as u64
    }

    /// The salt as lower-case hex ("-" when empty, as dm-verity's table wants).
    pub fn salt_hex(&self) -> String {
        if self.salt.is_empty() {
            return "-".into();
        }
        self.salt.iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Superblock {
        Superblock {
            hash_type: 1,
            uuid: [0xab; 16],
            algorithm: "sha256".into(),
            data_block_size: 4096,
            hash_block_size: 4096,
            data_blocks: 260_094,
            salt: vec![7; 32],
        }
    }

    #[test]
    fn roundtrip_and_layout() {
        let sb = sample();
        let b = sb.to_bytes().unwrap();
        // Offsets as veritysetup writes them.
        assert_eq!(&b[0..8], b"verity\0\0");
        assert_eq!(le32(&b, 8), 1);
        assert_eq!(&b[32..38], b"sha256");
        assert_eq!(le32(&b, 64), 4096);
        assert_eq!(le64(&b, 72), 260_094);
        assert_eq!(le16(&b, 80), 32);
        assert_eq!(&b[88..120], &[7; 32]);
        assert!(b[120..].iter().all(|x| *x == 0));
        assert_eq!(Superblock::parse(&b).unwrap(), sb);
        assert_eq!(sb.data_bytes(), 260_094 * 4096);
        assert_eq!(sb.salt_hex(), "07".repeat(32));
    }

    #[test]
    fn rejects_bad_input() {
        let good = sample().to_bytes().unwrap();
        let err = |b: &[u8]| Superblock::parse(b).unwrap_err().to_string();
        assert_eq!(err(&good[..100]), "dm-verity superblock: 100 bytes given, 512 needed");
        let mut b = good;
        b[0] = b'V';
        assert!(err(&b).contains("no \"verity\" signature"));
        let mut b = good;
        b[8] = 2;
        assert!(err(&b).contains("version 2"));
        let mut b = good;
        b[80..82].copy_from_slice(&257u16.to_le_bytes());
        assert!(err(&b).contains("salt of 257 bytes"));
        let mut b = good;
        b[64..68].copy_from_slice(&0u32.to_le_bytes());
        assert!(err(&b).contains("data block size 0"));
        let mut b = good;
        b[68..72].copy_from_slice(&4095u32.to_le_bytes());
        assert!(err(&b).contains("hash block size 4095"));
        let mut b = good;
        b[32..64].fill(0);
        assert!(err(&b).contains("no hash algorithm"));
        let mut sb = sample();
        sb.salt = vec![0; 300];
        assert!(sb.to_bytes().is_err());
    }

    #[test]
    fn magic() {
        assert!(has_magic(b"verity\0\0rest"));
        assert!(!has_magic(b"verity"));
        assert!(!has_magic(&[0; 512]));
    }
}
