//! Boot stage: the initramfs (our `forge-init` plus the modules it loads),
//! GRUB for BIOS (boot.img in the MBR, core.img in BIOS-BOOT) and x86-64
//! UEFI (`/EFI/boot/bootx64.efi`), and the main `grub.cfg` rendered from a
//! template. Everything is produced as bytes placed by the image stage.

pub mod grub;
pub mod initramfs;

/// Reads the version string of an x86 bzImage (`HdrS` setup header).
pub fn kernel_version(bz: &[u8]) -> Option<String> {
    if bz.len() < 0x210 || &bz[0x202..0x206] != b"HdrS" {
        return None;
    }
    let off = u16::from_le_bytes([bz[0x20e], bz[0x20f]]) as usize + 0x200;
    let s = bz.get(off..)?;
    let end = s.iter().position(|b| *b == 0 || *b == b' ')?;
    Some(String::from_utf8_lossy(&s[..end]).into_owned())
}
