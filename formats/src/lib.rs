//! The formats both sides of the project read: the image engine (`forge`),
//! which writes and inspects images on the host, and `forge-init`, the
//! initramfs's PID 1, which reads the same structures from block devices at
//! boot. One parser for each, so the two cannot drift apart.
//!
//! Everything here is a pure function on a byte slice or a `&str`: no I/O,
//! no dependencies beyond `std` (forge-init is a static binary). Callers read
//! the bytes and add the path they came from to any error.
//!
//! - [`verity`]: the dm-verity superblock (format version 1).
//! - [`fat`]: the FAT32 boot sector (BPB): geometry, volume ID, label.
//! - [`gpt`]: the GUID partition table: header, entries, CRCs and the
//!   checks a reader of a hostile disk makes.
//! - [`fs`]: recognizing a filesystem by its superblock (vfat, ext2/3/4,
//!   erofs, squashfs, btrfs): type, label, UUID, size.
//! - [`kernel`]: kernel images (x86 bzImage, arm64 Image): machine and release;
//!   the machine of ELF and PE/COFF (EFI) executables.
//! - [`modules`]: `modules.dep` and `modules.builtin`.
//! - [`os_release`]: `os-release`-style `KEY=value` files.
//! - [`cmdline`]: the kernel command line, with the kernel's quoting rules.

pub mod cmdline;
pub mod fat;
pub mod fs;
pub mod gpt;
pub mod kernel;
pub mod modules;
pub mod os_release;
pub mod verity;

use std::fmt;

/// A parse error: which format, and what is wrong with the input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    /// The structure being parsed, e.g. "dm-verity superblock".
    pub format: &'static str,
    pub message: String,
}

impl Error {
    pub fn new(format: &'static str, message: impl Into<String>) -> Error {
        Error { format, message: message.into() }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.format, self.message)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

/// Fails unless `b` holds at least `len` bytes.
pub(crate) fn need(format: &'static str, b: &[u8], len: usize) -> Result<()> {
    if b.len() < len {
        return Err(Error::new(format, format!("{} bytes given, {len} needed", b.len())));
    }
    Ok(())
}

pub(crate) fn le16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

pub(crate) fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}

pub(crate) fn le64(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// A fixed-size text field (label, algorithm name): the bytes up to the
/// trailing NULs and spaces, `None` when that leaves nothing.
pub(crate) fn text_field(b: &[u8]) -> Option<String> {
    let t = String::from_utf8_lossy(b).trim_end_matches(['\0', ' ']).to_string();
    (!t.is_empty()).then_some(t)
}

/// A UUID stored as 16 bytes in order (ext4, erofs, btrfs, dm-verity), in
/// the usual lower-case 8-4-4-4-12 form.
pub fn uuid_string(b: &[u8; 16]) -> String {
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// A GUID as GPT stores it (first three fields little-endian), in the usual
/// lower-case 8-4-4-4-12 form, as the kernel shows a PARTUUID.
pub fn guid_string(b: &[u8; 16]) -> String {
    let mut be = *b;
    be[0..4].reverse();
    be[4..6].reverse();
    be[6..8].reverse();
    uuid_string(&be)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_and_guid_strings() {
        let b: [u8; 16] = core::array::from_fn(|i| i as u8);
        assert_eq!(uuid_string(&b), "00010203-0405-0607-0809-0a0b0c0d0e0f");
        assert_eq!(guid_string(&b), "03020100-0504-0706-0809-0a0b0c0d0e0f");
    }

    #[test]
    fn text_fields() {
        assert_eq!(text_field(b"ROOT\0\0\0\0"), Some("ROOT".into()));
        assert_eq!(text_field(b"EFI-SYSTEM "), Some("EFI-SYSTEM".into()));
        assert_eq!(text_field(b"\0\0\0"), None);
        assert_eq!(text_field(b"   "), None);
    }

    #[test]
    fn short_input_is_an_error() {
        let e = need("x", &[0; 3], 4).unwrap_err();
        assert_eq!(e.to_string(), "x: 3 bytes given, 4 needed");
    }
}
