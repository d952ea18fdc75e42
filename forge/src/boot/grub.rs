//! GRUB from Debian's module packages, without root or loop devices:
//! `grub-mkimage` (through duct) makes the images, and this module does what
//! `grub-bios-setup` does to a disk file: boot.img's code goes into the MBR
//! (the partition table and disk signature stay), learning the LBA of
//! core.img, which goes into BIOS-BOOT with its first sector's block list
//! pointing at the rest.
//!
//! Per architecture ([`crate::arch::Arch`]): x86-64 gets the BIOS pair and
//! `x86_64-efi`; arm64 only `arm64-efi` (no BIOS code; the layout's
//! BIOS-BOOT partition stays empty, as upstream's). The modules of the
//! build machine's own architecture come from its installed GRUB packages;
//! another architecture's (`grub-efi-arm64-bin` on an x86-64 machine) are
//! downloaded by apt for that architecture and unpacked into the cache
//! ([`module_dirs`]), so no root and no foreign package installation is
//! needed (`grub-mkimage` is architecture-neutral: it assembles the
//! target's `kernel.img` and modules).

use crate::arch::{Arch, Firmware};
use crate::layout::{DiskPlan, PartitionPlan};
use crate::tools::{self, Tool};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub const MKIMAGE: Tool = Tool { program: "grub-mkimage", package: "grub-common" };
const PC_DIR: &str = "/usr/lib/grub/i386-pc";
const PC_PACKAGE: &str = "grub-pc-bin";

/// Modules built into both images (no module files are needed on the ESP).
const COMMON_MODULES: &[&str] = &[
    "part_gpt",
    "part_msdos",
    "fat",
    "ext2",
    "normal",
    "linux",
    "search",
    "search_label",
    "search_fs_uuid",
    "search_fs_file",
    "configfile",
    "test",
    "echo",
    "cat",
    "loadenv",
    "serial",
    "terminal",
    "gzio",
    "sleep",
    "boot",
    "halt",
    "reboot",
    "ls",
    "minicmd",
];
const PC_MODULES: &[&str] = &["biosdisk"];
const EFI_MODULES: &[&str] = &["efi_gop", "all_video"];

/// The config embedded in both images: find the ESP by its label and read
/// the main config from it.
pub fn early_config(esp_label: &str) -> String {
    format!("search --no-floppy --label {esp_label} --set root\nset prefix=($root)/flatcar/grub\n")
}

/// GRUB for the BIOS: the MBR's boot code and the core image.
pub struct BiosImages {
    pub boot_img: Vec<u8>,
    pub core_img: Vec<u8>,
}

/// GRUB for UEFI: the loader and where it goes on the ESP.
pub struct EfiImage {
    /// `EFI/boot/bootx64.efi`, `EFI/boot/bootaa64.efi`.
    pub path: &'static str,
    pub bytes: Vec<u8>,
}

pub struct Images {
    /// None when no firmware of the build is a BIOS.
    pub bios: Option<BiosImages>,
    /// None when no firmware of the build is UEFI.
    pub efi: Option<EfiImage>,
}

/// Where GRUB's module directories for one build are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleDirs {
    pub arch: Arch,
    /// `i386-pc` (BIOS; x86-64 only).
    pub pc: Option<PathBuf>,
    /// `<arch>-efi`.
    pub efi: Option<PathBuf>,
    /// Debian packages and versions the modules came from, when downloaded.
    pub downloaded: Vec<String>,
}

/// GRUB's module directories for `arch` and `firmware`: the installed
/// packages' for the build machine's own architecture (checked: a missing
/// package is an error naming it), downloaded into the cache for another.
pub fn module_dirs(
    arch: Arch,
    firmware: &[Firmware],
    cache: &crate::recipe::Cache,
    log: &dyn Fn(&str),
) -> Result<ModuleDirs> {
    let (efi_format, efi_package) = arch.grub_efi();
    let bios = firmware.contains(&Firmware::Bios);
    let uefi = firmware.contains(&Firmware::Uefi);
    if bios && !arch.has_bios() {
        bail!("{arch} has no BIOS firmware");
    }
    if Arch::host() == Some(arch) {
        let efi_dir = format!("/usr/lib/grub/{efi_format}");
        let mut need = vec![MKIMAGE];
        let linux_mod = match arch {
            Arch::Amd64 => "/usr/lib/grub/x86_64-efi/linux.mod",
            Arch::Arm64 => "/usr/lib/grub/arm64-efi/linux.mod",
        };
        if bios {
            need.push(Tool { program: "/usr/lib/grub/i386-pc/boot.img", package: PC_PACKAGE });
        }
        if uefi {
            need.push(Tool { program: linux_mod, package: efi_package });
        }
        tools::require(&need)?;
        return Ok(ModuleDirs {
            arch,
            pc: bios.then(|| PathBuf::from(PC_DIR)),
            efi: uefi.then(|| PathBuf::from(efi_dir)),
            downloaded: Vec::new(),
        });
    }
    tools::require(&[MKIMAGE])?;
    let mut wanted = Vec::new();
    if bios {
        wanted.push(PC_PACKAGE);
    }
    if uefi {
        wanted.push(efi_package);
    }
    let (root, debs) = crate::recipe::unpacked(cache, arch, "grub", &wanted, log)
        .with_context(|| format!("GRUB's {arch} modules ({})", wanted.join(", ")))?;
    let dir = |f: &str| -> Result<PathBuf> {
        let d = root.join("usr/lib/grub").join(f);
        if !d.join("kernel.img").exists() {
            bail!("{}: no GRUB kernel.img in the downloaded package", d.display());
        }
        Ok(d)
    };
    Ok(ModuleDirs {
        arch,
        pc: if bios { Some(dir("i386-pc")?) } else { None },
        efi: if uefi { Some(dir(efi_format)?) } else { None },
        downloaded: debs.iter().map(|d| format!("{} {}", d.name, d.version)).collect(),
    })
}

/// Runs grub-mkimage for the BIOS (i386-pc) and the architecture's EFI
/// platform, as `dirs` has them.
pub fn make_images(dirs: &ModuleDirs, esp_label: &str, scratch: &Path) -> Result<Images> {
    let tmp = tempfile::Builder::new().prefix(".grub-").tempdir_in(scratch)?;
    let cfg = tmp.path().join("early.cfg");
    std::fs::write(&cfg, early_config(esp_label))?;
    let mk = |format: &str, dir: &Path, extra: &[&str], out: &str| -> Result<Vec<u8>> {
        let o = tmp.path().join(out);
        let mut args: Vec<String> = vec![
            "-O".into(),
            format.into(),
            "-d".into(),
            dir.display().to_string(),
            "-c".into(),
            cfg.display().to_string(),
            "-p".into(),
            "/flatcar/grub".into(),
            "-o".into(),
            o.display().to_string(),
        ];
        args.extend(COMMON_MODULES.iter().chain(extra).map(|s| s.to_string()));
        crate::fs::run(
            crate::tools::cmd(tools::path(MKIMAGE)?, &args),
            &format!("grub-mkimage -O {format}"),
        )?;
        Ok(std::fs::read(&o)?)
    };
    let bios = match &dirs.pc {
        Some(pc) => {
            let core_img = mk("i386-pc", pc, PC_MODULES, "core.img")?;
            let p = pc.join("boot.img");
            let boot_img = std::fs::read(&p)
                .with_context(|| format!("{}: reading GRUB's boot.img", p.display()))?;
            if boot_img.len() != 512 {
                bail!("{} is {} bytes, expected 512", p.display(), boot_img.len());
            }
            Some(BiosImages { boot_img, core_img })
        }
        None => None,
    };
    let efi = match &dirs.efi {
        Some(d) => {
            let path = dirs.arch.efi_loader();
            let name = path.rsplit('/').next().unwrap_or(path);
            let bytes = mk(dirs.arch.grub_efi().0, d, EFI_MODULES, name)?;
            // What grub-mkimage made must be the architecture's EFI program.
            let machine = forge_formats::kernel::pe_machine(&bytes)
                .and_then(forge_formats::kernel::pe_to_elf_machine);
            if machine != Some(dirs.arch.elf_machine()) {
                bail!(
                    "grub-mkimage -O {}: the loader is not an {} EFI program",
                    dirs.arch.grub_efi().0,
                    dirs.arch
                );
            }
            Some(EfiImage { path, bytes })
        }
        None => None,
    };
    Ok(Images { bios, efi })
}

// Offsets in boot.img (grub/include/grub/i386/pc/boot.h).
const BPB_START: usize = 0x3;
const BPB_END: usize = 0x5a;
const KERNEL_SECTOR: usize = 0x5c;
const DRIVE_CHECK: usize = 0x66;
const MBR_CODE_END: usize = 440;
// The block list at the end of core.img's first sector (diskboot.img).
const BLOCKLIST_START: usize = 0x200 - 12;

/// Installs GRUB for BIOS into the image: boot.img into the MBR boot code
/// area, core.img into the BIOS boot partition (type `bios`), which is
/// returned.
pub fn install_bios<'a>(
    image: &File,
    plan: &'a DiskPlan,
    boot_img: &[u8],
    core_img: &[u8],
) -> Result<&'a PartitionPlan> {
    let bios = plan
        .partitions
        .iter()
        .find(|p| Some(p.type_guid) == crate::layout::type_guid("bios"))
        .context("the layout has no BIOS boot partition (type bios) for GRUB's core.img")?;
    let sectors = core_img.len().div_ceil(512) as u64;
    if sectors > bios.blocks {
        bail!(
            "core.img ({} B) does not fit partition {} ({})",
            core_img.len(),
            bios.number,
            bios.label
        );
    }
    if sectors < 2 {
        bail!("core.img is too small");
    }
    let mut mbr = [0u8; 512];
    image.read_exact_at(&mut mbr, 0)?;
    let mut code = [0u8; MBR_CODE_END];
    code.copy_from_slice(&boot_img[..MBR_CODE_END]);
    // Keep whatever BPB the disk has (a protective MBR has none: zeros).
    code[BPB_START..BPB_END].copy_from_slice(&mbr[BPB_START..BPB_END]);
    code[KERNEL_SECTOR..KERNEL_SECTOR + 8].copy_from_slice(&bios.first_block.to_le_bytes());
    // Hard disk: replace the drive-number check's jump with NOPs, as
    // grub-bios-setup does for buggy BIOSes that pass a wrong drive.
    code[DRIVE_CHECK] = 0x90;
    code[DRIVE_CHECK + 1] = 0x90;
    image.write_all_at(&code, 0)?;

    let mut core = core_img.to_vec();
    core.resize((sectors * 512) as usize, 0);
    let bl = &mut core[BLOCKLIST_START..BLOCKLIST_START + 12];
    bl[0..8].copy_from_slice(&(bios.first_block + 1).to_le_bytes());
    bl[8..10].copy_from_slice(&((sectors - 1) as u16).to_le_bytes());
    image.write_all_at(&core, plan.offset(bios))?;
    Ok(bios)
}

/// One A/B slot as the main config sees it.
#[derive(Clone, Debug, Serialize)]
pub struct Slot {
    pub letter: String,
    pub partuuid: String,
}

/// What the main `grub.cfg` template is rendered with.
#[derive(Clone, Debug, Serialize)]
pub struct ConfigContext {
    pub generator: String,
    pub os_name: String,
    pub timeout: u32,
    pub base_args: String,
    pub console_bios: String,
    pub console_efi: String,
    pub console_arm64: String,
    pub slots: Vec<Slot>,
}

impl ConfigContext {
    /// Upstream's defaults for the command line and consoles; the root
    /// filesystem is found by its label `root_label`.
    pub fn flatcar(os_name: &str, root_label: &str, slots: Vec<Slot>) -> ConfigContext {
        ConfigContext {
            generator: "forge".into(),
            os_name: os_name.into(),
            timeout: 1,
            base_args: format!(
                "rootflags=rw mount.usrflags=ro consoleblank=0 root=LABEL={root_label}"
            ),
            console_bios: "console=ttyS0,115200n8 console=tty0".into(),
            console_efi: "console=ttyS0,115200n8 console=tty0".into(),
            console_arm64: "console=ttyAMA0,115200n8 acpi=force".into(),
            slots,
        }
    }
}

pub fn render_config(template: &str, ctx: &ConfigContext) -> Result<String> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.add_template("grub.cfg", template).context("parsing the grub.cfg template")?;
    let out = env
        .get_template("grub.cfg")?
        .render(minijinja::value::Serde(ctx))
        .context("rendering the grub.cfg template")?;
    Ok(out)
}
