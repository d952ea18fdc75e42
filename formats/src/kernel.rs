//! Linux kernel images as boot loaders take them, recognized by their
//! headers: the x86 bzImage (the setup header's `HdrS` magic, the version
//! string it points to) and the arm64 `Image` (the `ARM\x64` magic of the
//! arm64 boot protocol; the version from the `Linux version …` banner,
//! which an uncompressed Image carries as plain text). The machine is given
//! as an ELF machine number (`EM_X86_64` 62, `EM_AARCH64` 183), the way
//! programs in the payload name theirs.

use crate::{le16, le32, need, Error, Result};

/// `EM_X86_64`.
pub const EM_X86_64: u16 = 62;
/// `EM_AARCH64`.
pub const EM_AARCH64: u16 = 183;

const FORMAT: &str = "kernel image";

/// What a kernel image says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelImage {
    /// The ELF machine number of the architecture it runs on.
    pub machine: u16,
    /// The format, for messages: "x86 bzImage", "arm64 Image".
    pub format: &'static str,
    /// The release (`uname -r`), e.g. `6.1.0-57-cloud-arm64`.
    pub version: String,
}

/// Recognizes a bzImage or an arm64 Image and reads its release.
pub fn parse(b: &[u8]) -> Result<KernelImage> {
    if b.len() >= 0x210 && &b[0x202..0x206] == b"HdrS" {
        let off = le16(b, 0x20e) as usize + 0x200;
        let s = b
            .get(off..)
            .ok_or_else(|| Error::new(FORMAT, "x86 bzImage: the version string is past the end"))?;
        let end = s.iter().take(256).position(|c| *c == 0 || *c == b' ').ok_or_else(|| {
            Error::new(FORMAT, "x86 bzImage: the version string is not terminated")
        })?;
        return Ok(KernelImage {
            machine: EM_X86_64,
            format: "x86 bzImage",
            version: version(&s[..end], "x86 bzImage")?,
        });
    }
    if b.len() >= 64 && le32(b, 0x38) == 0x644d_5241 {
        // "Linux version 6.1.0-57-cloud-arm64 (debian-kernel@…) …"
        let banner = b"Linux version ";
        let at = b.windows(banner.len()).position(|w| w == banner).ok_or_else(|| {
            Error::new(FORMAT, "arm64 Image without a 'Linux version' banner (compressed?)")
        })?;
        let s = &b[at + banner.len()..];
        let end = s.iter().take(256).position(|c| *c == 0 || *c == b' ').ok_or_else(|| {
            Error::new(FORMAT, "arm64 Image: the version banner is not terminated")
        })?;
        return Ok(KernelImage {
            machine: EM_AARCH64,
            format: "arm64 Image",
            version: version(&s[..end], "arm64 Image")?,
        });
    }
    need(FORMAT, b, 0x210)?;
    Err(Error::new(
        FORMAT,
        "neither an x86 bzImage (no HdrS setup header) nor an arm64 Image (no ARM\\x64 magic)",
    ))
}

fn version(s: &[u8], what: &str) -> Result<String> {
    let v = std::str::from_utf8(s)
        .map_err(|_| Error::new(FORMAT, format!("{what}: the version is not UTF-8")))?;
    if v.is_empty() || v == "." || v == ".." || v.contains('/') {
        return Err(Error::new(FORMAT, format!("{what}: version {v:?} is not a directory name")));
    }
    Ok(v.to_string())
}

/// The ELF machine number of an ELF file (`e_machine`), None for anything
/// else.
pub fn elf_machine(b: &[u8]) -> Option<u16> {
    if b.len() < 20 || &b[..4] != b"\x7fELF" || b[5] != 1 {
        return None;
    }
    Some(le16(b, 18))
}

/// The machine of a PE/COFF executable (an EFI application), as the PE
/// header names it (`0x8664` x86-64, `0xaa64` arm64), None for anything else.
pub fn pe_machine(b: &[u8]) -> Option<u16> {
    if b.len() < 0x40 || &b[..2] != b"MZ" {
        return None;
    }
    let off = le32(b, 0x3c) as usize;
    let h = b.get(off..off.checked_add(6)?)?;
    (&h[..4] == b"PE\0\0").then(|| le16(h, 4))
}

/// The ELF machine number an EFI machine type stands for.
pub fn pe_to_elf_machine(pe: u16) -> Option<u16> {
    match pe {
        0x8664 => Some(EM_X86_64),
        0xaa64 => Some(EM_AARCH64),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bzimage(version: &str) -> Vec<u8> {
        let mut b = vec![0u8; 0x400];
        b[0x202..0x206].copy_from_slice(b"HdrS");
        b[0x20e..0x210].copy_from_slice(&0x100u16.to_le_bytes());
        b[0x300..0x300 + version.len()].copy_from_slice(version.as_bytes());
        b
    }

    fn arm64_image(banner: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 0x200];
        b[0x38..0x3c].copy_from_slice(b"ARM\x64");
        b.extend_from_slice(banner);
        b
    }

    #[test]
    fn bzimage_and_arm64_image() {
        let k = parse(&bzimage("6.1.0-28-cloud-amd64 (debian-kernel@lists.debian.org)")).unwrap();
        assert_eq!((k.machine, k.version.as_str()), (EM_X86_64, "6.1.0-28-cloud-amd64"));
        let k =
            parse(&arm64_image(b"\0Linux version 6.1.0-57-cloud-arm64 (gcc) #1 SMP\0")).unwrap();
        assert_eq!((k.machine, k.version.as_str()), (EM_AARCH64, "6.1.0-57-cloud-arm64"));
        assert_eq!(k.format, "arm64 Image");
    }

    #[test]
    fn anything_else_is_an_error() {
        let e = parse(&[0u8; 0x400]).unwrap_err().to_string();
        assert!(e.contains("neither an x86 bzImage"), "{e}");
        assert!(parse(b"short").unwrap_err().to_string().contains("bytes given"));
        let e = parse(&arm64_image(b"gzip-compressed")).unwrap_err().to_string();
        assert!(e.contains("banner"), "{e}");
        let e = parse(&bzimage("../etc")).unwrap_err().to_string();
        assert!(e.contains("not a directory name"), "{e}");
        // A version offset past the end is an error, not a panic.
        let mut b = bzimage("x");
        b[0x20e..0x210].copy_from_slice(&0xfff0u16.to_le_bytes());
        assert!(parse(&b).is_err());
    }

    #[test]
    fn elf_and_pe_machines() {
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[5] = 1;
        elf[18..20].copy_from_slice(&EM_AARCH64.to_le_bytes());
        assert_eq!(elf_machine(&elf), Some(EM_AARCH64));
        assert_eq!(elf_machine(b"#!/bin/sh\n"), None);
        let mut pe = vec![0u8; 0x100];
        pe[..2].copy_from_slice(b"MZ");
        pe[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
        pe[0x80..0x84].copy_from_slice(b"PE\0\0");
        pe[0x84..0x86].copy_from_slice(&0xaa64u16.to_le_bytes());
        assert_eq!(pe_machine(&pe), Some(0xaa64));
        assert_eq!(pe_to_elf_machine(0xaa64), Some(EM_AARCH64));
        pe[0x3c..0x40].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(pe_machine(&pe), None);
    }
}
