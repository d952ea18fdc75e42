//! Boot stage: the initramfs (our `forge-init` plus the modules it loads),
//! GRUB for BIOS (boot.img in the MBR, core.img in BIOS-BOOT; x86-64 only)
//! and UEFI (`/EFI/boot/bootx64.efi`, `/EFI/boot/bootaa64.efi` on arm64),
//! and the main `grub.cfg` rendered from a
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
