//! The architectures an image is built for, and every name each one goes
//! by: Debian's (`amd64`, `arm64`: packages, apt, the command line, the
//! cache), systemd's (`x86-64`, `arm64`: `ARCHITECTURE=` of an
//! extension-release file, boot-test files), Rust's target triple, the GNU
//! triplet (multiarch directories, cross compilers), GRUB's EFI platform and
//! the removable-media EFI loader path. What differs between architectures
//! is here, as data; the pipeline asks, it does not match on names.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Arch {
    #[serde(rename = "amd64", alias = "x86-64", alias = "x86_64")]
    Amd64,
    #[serde(rename = "arm64", alias = "aarch64")]
    Arm64,
}

impl Arch {
    pub const ALL: [Arch; 2] = [Arch::Amd64, Arch::Arm64];

    /// Debian's name: packages (`linux-image-cloud-arm64`), apt, the CLI.
    pub fn debian(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// The name reports, logs and file names use (Debian's), as
    /// `Firmware::name` of the boot tests.
    pub fn name(self) -> &'static str {
        self.debian()
    }

    /// systemd's name (`ARCHITECTURE=` in os-release and extension-release).
    pub fn systemd(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86-64",
            Arch::Arm64 => "arm64",
        }
    }

    /// Rust's target triple.
    pub fn rust_target(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64-unknown-linux-gnu",
            Arch::Arm64 => "aarch64-unknown-linux-gnu",
        }
    }

    /// The GNU triplet: Debian's multiarch directory and the prefix of its
    /// cross tools (`aarch64-linux-gnu-gcc`).
    pub fn gnu_triplet(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64-linux-gnu",
            Arch::Arm64 => "aarch64-linux-gnu",
        }
    }

    /// GRUB's EFI platform (`grub-mkimage -O`, `/usr/lib/grub/<it>/`), and
    /// the Debian package that holds its modules.
    pub fn grub_efi(self) -> (&'static str, &'static str) {
        match self {
            Arch::Amd64 => ("x86_64-efi", "grub-efi-amd64-bin"),
            Arch::Arm64 => ("arm64-efi", "grub-efi-arm64-bin"),
        }
    }

    /// Where UEFI firmware looks for the loader on removable media (and on a
    /// disk without boot entries, as a fresh cloud server's).
    pub fn efi_loader(self) -> &'static str {
        match self {
            Arch::Amd64 => "EFI/boot/bootx64.efi",
            Arch::Arm64 => "EFI/boot/bootaa64.efi",
        }
    }

    /// Whether the architecture has PC BIOS firmware (GRUB's i386-pc).
    pub fn has_bios(self) -> bool {
        self == Arch::Amd64
    }

    /// The ELF machine number (`e_machine`) of its programs.
    pub fn elf_machine(self) -> u16 {
        match self {
            Arch::Amd64 => forge_formats::kernel::EM_X86_64,
            Arch::Arm64 => forge_formats::kernel::EM_AARCH64,
        }
    }

    pub fn from_elf_machine(m: u16) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.elf_machine() == m)
    }

    /// The machine this program runs on, if it is one of ours.
    pub fn host() -> Option<Arch> {
        if cfg!(target_arch = "x86_64") {
            Some(Arch::Amd64)
        } else if cfg!(target_arch = "aarch64") {
            Some(Arch::Arm64)
        } else {
            None
        }
    }

    /// Any of its names: `amd64`, `x86-64`, `x86_64`, `arm64`, `aarch64`.
    pub fn parse(s: &str) -> Result<Arch> {
        match s {
            "amd64" | "x86-64" | "x86_64" => Ok(Arch::Amd64),
            "arm64" | "aarch64" => Ok(Arch::Arm64),
            _ => bail!("unknown architecture '{s}' (known: amd64, arm64)"),
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.debian())
    }
}

impl std::str::FromStr for Arch {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Arch> {
        Arch::parse(s)
    }
}

/// The firmware a machine starts the image with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    /// PC BIOS (GRUB's i386-pc: boot.img in the MBR, core.img in BIOS-BOOT).
    Bios,
    /// UEFI (GRUB as the removable-media loader on the ESP).
    Uefi,
}

impl Firmware {
    pub fn name(self) -> &'static str {
        match self {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
        }
    }

    /// Whether `arch` has this firmware.
    pub fn on(self, arch: Arch) -> bool {
        self == Firmware::Uefi || arch.has_bios()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_parses_back() {
        for a in Arch::ALL {
            for n in [a.debian(), a.systemd()] {
                assert_eq!(Arch::parse(n).unwrap(), a);
                let j: Arch = serde_json::from_str(&format!("\"{n}\"")).unwrap();
                assert_eq!(j, a);
            }
            assert_eq!(Arch::from_elf_machine(a.elf_machine()), Some(a));
            assert!(a.rust_target().starts_with(a.gnu_triplet().split('-').next().unwrap()));
        }
        assert_eq!(Arch::parse("x86_64").unwrap(), Arch::Amd64);
        assert_eq!(Arch::parse("aarch64").unwrap(), Arch::Arm64);
        let e = Arch::parse("riscv64").unwrap_err().to_string();
        assert!(e.contains("unknown architecture 'riscv64'") && e.contains("amd64, arm64"), "{e}");
        assert_eq!(serde_json::to_string(&Arch::Arm64).unwrap(), "\"arm64\"");
        assert!(Arch::Amd64.has_bios() && !Arch::Arm64.has_bios());
    }
}
