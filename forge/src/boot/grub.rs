//! GRUB from Debian's module packages, without root or loop devices:
//! `grub-mkimage` (through duct) makes the images, and this module does what
//! `grub-bios-setup` does to a disk file: boot.img's code goes into the MBR
//! (the partition table and disk signature stay), learning the LBA of
//! core.img, which goes into BIOS-BOOT with its first sector's block list
//! pointing at the rest.

use crate::layout::{DiskPlan, PartitionPlan};
use crate::tools::{self, Tool};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

pub const MKIMAGE: Tool = Tool { program: "grub-mkimage", package: "grub-common" };
const PC_DIR: &str = "/usr/lib/grub/i386-pc";
const EFI_DIR: &str = "/usr/lib/grub/x86_64-efi";

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

pub struct Images {
    pub boot_img: Vec<u8>,
    pub core_img: Vec<u8>,
    pub efi: Vec<u8>,
}

/// Runs grub-mkimage for i386-pc and x86_64-efi.
pub fn make_images(esp_label: &str, scratch: &Path) -> Result<Images> {
    tools::require(&[
        MKIMAGE,
        Tool { program: "/usr/lib/grub/i386-pc/boot.img", package: "grub-pc-bin" },
        Tool { program: "/usr/lib/grub/x86_64-efi/linux.mod", package: "grub-efi-amd64-bin" },
    ])?;
    let tmp = tempfile::Builder::new().prefix(".grub-").tempdir_in(scratch)?;
    let cfg = tmp.path().join("early.cfg");
    std::fs::write(&cfg, early_config(esp_label))?;
    let mk = |format: &str, dir: &str, extra: &[&str], out: &str| -> Result<Vec<u8>> {
        let o = tmp.path().join(out);
        let mut args: Vec<String> = vec![
            "-O".into(),
            format.into(),
            "-d".into(),
            dir.into(),
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
    let core_img = mk("i386-pc", PC_DIR, PC_MODULES, "core.img")?;
    let efi = mk("x86_64-efi", EFI_DIR, EFI_MODULES, "bootx64.efi")?;
    let boot_img =
        std::fs::read(format!("{PC_DIR}/boot.img")).context("reading GRUB's boot.img")?;
    if boot_img.len() != 512 {
        bail!("{PC_DIR}/boot.img is {} bytes, expected 512", boot_img.len());
    }
    Ok(Images { boot_img, core_img, efi })
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
