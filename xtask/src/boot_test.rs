//! `cargo xtask boot-test`: boots an image in QEMU as its platform would,
//! against a fake metadata service, and checks it.

use crate::progress::logger;
use crate::util::repo_root;
use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// flatcar_production_<platform>_image.bin or .bin.bz2
    pub image: PathBuf,
    #[arg(long, default_value = "hetzner")]
    pub platform: String,
    /// Firmware QEMU boots the image with.
    #[arg(long, value_enum)]
    pub firmware: Firmware,
    /// Disk size the image is grown to, in GiB.
    #[arg(long, default_value_t = 20)]
    pub disk_gib: u64,
    /// Seconds to wait for each boot.
    #[arg(long, default_value_t = 900)]
    pub timeout: u64,
    /// Skip the negative boots (no OEM grub.cfg; a flipped byte in USR-A).
    #[arg(long)]
    pub no_negative: bool,
    /// QEMU accelerator (TCG by default: nested KVM is unreliable here).
    #[arg(long, default_value = "tcg")]
    pub accel: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Firmware {
    Bios,
    Uefi,
}

impl From<Firmware> for forge::boottest::Firmware {
    fn from(f: Firmware) -> Self {
        match f {
            Firmware::Bios => forge::boottest::Firmware::Bios,
            Firmware::Uefi => forge::boottest::Firmware::Uefi,
        }
    }
}

pub fn run(a: Args) -> Result<()> {
    let p = forge::oem::load(&repo_root().join("oem"), &a.platform)?;
    let firmware = forge::boottest::Firmware::from(a.firmware);
    let cfg = forge::boottest::Config {
        image: a
            .image
            .canonicalize()
            .with_context(|| format!("{}: not found", a.image.display()))?,
        oem_id: p.oem_id().to_string(),
        firmware,
        disk_bytes: a.disk_gib << 30,
        responder: std::env::current_exe()?,
        timeout: std::time::Duration::from_secs(a.timeout),
        negative: !a.no_negative,
        accel: a.accel.clone(),
    };
    let log = logger();
    let out = forge::boottest::run(&cfg, &log)?;
    let fw = firmware.name();
    let failed = out.checks.iter().filter(|c| !c.ok).count();
    println!("boot-test {fw}: {} passed, {failed} failed", out.checks.len() - failed);
    if let Some(s) = out.boot_secs {
        println!(
            "boot-test {fw}: boot time {s:.1}s (power-on to the boot report, TCG={})",
            a.accel == "tcg"
        );
    }
    for l in &out.serial_logs {
        println!("boot-test {fw}: serial log {}", l.display());
    }
    if !out.ok() {
        bail!("boot test failed ({failed} checks)");
    }
    Ok(())
}
