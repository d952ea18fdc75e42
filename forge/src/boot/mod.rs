//! Boot stage: the initramfs (our `forge-init` plus the modules it loads),
//! GRUB for BIOS (boot.img in the MBR, core.img in BIOS-BOOT) and x86-64
//! UEFI (`/EFI/boot/bootx64.efi`), and the main `grub.cfg` rendered from a
//! template ([`esp`] decides what goes on the ESP). Everything is produced as
//! bytes placed by the image stage.

pub mod esp;
pub mod grub;
pub mod initramfs;

/// Everything the boot chain needs besides the plan.
#[derive(Clone)]
pub struct BootConfig {
    pub grub: std::sync::Arc<grub::Images>,
    /// The main grub.cfg template (minijinja).
    pub template: String,
    pub os_name: String,
    /// The initramfs for the payload's kernel.
    pub initramfs: Vec<u8>,
}

impl std::fmt::Debug for BootConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootConfig")
            .field("os_name", &self.os_name)
            .field("initramfs", &self.initramfs.len())
            .finish()
    }
}

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
