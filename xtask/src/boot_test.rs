//! `cargo xtask boot-test`: boots an image in QEMU as its platform declares
//! in `oem/<id>/boot-test.json` (the `forge-boottest` crate), prints a
//! summary and writes the structured reports as JSON.

use crate::progress::logger;
use crate::util::repo_root;
use anyhow::{anyhow, bail, Context, Result};
use clap::ValueEnum;
use forge_boottest::run::{BootReport, Report};
use std::path::{Path, PathBuf};

/// Shown under `--help`.
const TRY_HELP: &str = "\
Trying your own user-data before uploading it:
  cargo xtask boot-test --platform hetzner --userdata my.ign [--keep] IMAGE
boots only the image as built (the boot test's first boot, a fresh disk),
serving the file byte for byte wherever the platform serves user-data
(hetzner: the fake metadata service's /hetzner/v1/userdata; qemu: the fw_cfg
entry opt/org.flatcar-linux/config), with one check: the boot reaches its
first `until` marker (the demo payload's FORGE-REPORT end; an Ignition
config forge-init refuses stops at `forge-init: refusing to boot` and
fails). It prints forge-init's and Ignition's console lines and the serial
log's path. --keep leaves the VM running afterwards and prints the ssh
command (the test key) and the forwarded ports; Enter stops it.";

#[derive(clap::Args)]
#[command(after_help = TRY_HELP)]
pub struct Args {
    /// flatcar_production_<platform>_image.bin, compressed (.bz2, .gz, .zst,
    /// .xz) or qcow2; or the output directory of build-image (the platform's
    /// image file in it is used)
    pub image: PathBuf,
    #[arg(long, default_value = "hetzner")]
    pub platform: String,
    /// Where platform folders live (default: oem/ in the checkout).
    #[arg(long)]
    pub oem_dir: Option<PathBuf>,
    /// Firmware to boot with (repeatable; default: every one the boot test declares).
    #[arg(long, value_enum)]
    pub firmware: Vec<Firmware>,
    /// Architecture: amd64 or arm64 (also x86-64, x86_64, aarch64);
    /// repeatable; default: every one the boot test declares.
    #[arg(long)]
    pub arch: Vec<forge::arch::Arch>,
    /// Disk size the image is grown to, in GiB (default: the boot test's machine.disk_bytes).
    #[arg(long)]
    pub disk_gib: Option<u64>,
    /// Seconds to wait for each boot (default: the boot test's machine.timeout_seconds).
    #[arg(long)]
    pub timeout: Option<u64>,
    /// Skip the boots the boot test marks negative.
    #[arg(long)]
    pub no_negative: bool,
    /// Run only the boots of this variant (repeatable; default: all). A boot
    /// of the previous boot's disk needs that boot selected too.
    #[arg(long)]
    pub variant: Vec<String>,
    /// QEMU accelerator (TCG by default: nested KVM is unreliable here).
    #[arg(long, default_value = "tcg")]
    pub accel: String,
    /// Boot only the image as built with this user-data file, checking only
    /// that it reaches its marker (one firmware: the first given or declared).
    #[arg(long)]
    pub userdata: Option<PathBuf>,
    /// Leave the last boot's VM running after its checks, until Enter (with
    /// --userdata: the one boot; else e.g. with --variant NAME and one --firmware).
    #[arg(long)]
    pub keep: bool,
    /// Build the artifacts the selected boots serve (`artifacts` in the
    /// boot test: extensions, container tarballs), print where they are,
    /// and boot nothing.
    #[arg(long)]
    pub artifacts_only: bool,
    /// Cache for payloads and artifacts (default: $FORGE_CACHE or .cache/).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Also write every report, as one JSON array, to this file. Each report
    /// is always written beside the serial logs as
    /// `<image stem>.<arch>-<firmware>.boot-test.json`.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Firmware {
    Bios,
    Uefi,
}

impl From<Firmware> for forge_boottest::Firmware {
    fn from(f: Firmware) -> Self {
        match f {
            Firmware::Bios => forge_boottest::Firmware::Bios,
            Firmware::Uefi => forge_boottest::Firmware::Uefi,
        }
    }
}

pub fn run(a: Args) -> Result<()> {
    let oem = a.oem_dir.clone().unwrap_or_else(|| repo_root().join("oem"));
    let platform = forge::oem::load(&oem, &a.platform)?;
    let spec = forge_boottest::spec::load_for(&oem, &a.platform)?.ok_or_else(|| {
        anyhow!(
            "platform {} declares no boot test: {} does not exist",
            a.platform,
            forge_boottest::spec::path(&oem, &a.platform).display()
        )
    })?;
    let spec = spec
        .select(&a.variant)
        .with_context(|| format!("{}", forge_boottest::spec::path(&oem, &a.platform).display()))?;
    let arches: Vec<forge_boottest::Arch> =
        if a.arch.is_empty() { spec.arch.clone() } else { a.arch.clone() };
    let mut firmwares: Vec<forge_boottest::Firmware> = if a.firmware.is_empty() {
        spec.firmware.clone()
    } else {
        a.firmware.iter().map(|x| (*x).into()).collect()
    };
    let spec = match &a.userdata {
        Some(u) => {
            firmwares.truncate(1);
            forge_boottest::run::try_userdata(&spec, arches[0], u)?
        }
        None => spec,
    };
    let log = logger();
    let needed: std::collections::BTreeSet<String> =
        arches.iter().flat_map(|x| spec.artifacts_for(*x, &firmwares, !a.no_negative)).collect();
    let artifacts = build_artifacts(&spec, &needed, a.cache_dir.as_deref(), &log)?;
    if a.artifacts_only {
        for (name, path) in &artifacts {
            println!("{name} {}", path.display());
        }
        return Ok(());
    }
    let image = if a.image.is_dir() {
        let name = forge::artifacts::disk_name(&platform.image_name, platform.compression);
        let f = a.image.join(&name);
        if !f.exists() {
            bail!(
                "{}: no {name} in it (the image {} declares)",
                a.image.display(),
                platform.file().display()
            );
        }
        f
    } else {
        a.image.clone()
    };
    let image = image.canonicalize().with_context(|| format!("{}: not found", image.display()))?;
    let log_dir = image.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
    let mut reports = Vec::new();
    for arch in &arches {
        for fw in &firmwares {
            let opts = forge_boottest::Options {
                image: image.clone(),
                platform: a.platform.clone(),
                arch: *arch,
                firmware: *fw,
                responder: std::env::current_exe().context("locating this program")?,
                timeout: a.timeout.map(std::time::Duration::from_secs),
                disk_bytes: a.disk_gib.map(|g| g << 30),
                negative: !a.no_negative,
                accel: a.accel.clone(),
                log_dir: Some(log_dir.clone()),
                keep: a.keep,
                artifacts: artifacts.clone(),
            };
            let report = forge_boottest::run(&spec, &opts, &log).unwrap_or_else(|e| {
                // Set-up failed before any boot: still a report, with one failed check.
                Report {
                    platform: a.platform.clone(),
                    firmware: *fw,
                    arch: *arch,
                    image: image.clone(),
                    boots: vec![BootReport {
                        variant: "set-up".into(),
                        negative: false,
                        seconds: None,
                        stopped_at: None,
                        serial_log: PathBuf::new(),
                        power_off: None,
                        checks: vec![forge_boottest::check::CheckResult {
                            name: "the boot test was set up".into(),
                            ok: false,
                            detail: format!("{e:#}"),
                        }],
                    }],
                }
            });
            let file = log_dir.join(format!(
                "{}.{}-{}.{}boot-test.json",
                forge_boottest::run::stem(&image),
                arch.name(),
                fw.name(),
                if a.userdata.is_some() { "userdata." } else { "" }
            ));
            write_json(&file, serde_json::to_string_pretty(&report)?)?;
            if a.userdata.is_some() {
                print_console(&report);
            }
            print_summary(&report, &file, a.accel == "tcg");
            reports.push(report);
        }
    }
    if let Some(j) = &a.json {
        write_json(j, serde_json::to_string_pretty(&reports)?)?;
        println!("boot-test: reports written to {}", j.display());
    }
    let failed: usize = reports.iter().map(Report::failed).sum();
    if reports.iter().any(|r| !r.ok()) {
        bail!("boot test failed ({failed} checks)");
    }
    Ok(())
}

/// Builds (or takes from the cache) the artifacts `names` of the boot test:
/// extensions against the demo payload (what the tested images are built
/// from; a mismatch shows as an extension systemd-sysext refuses), root
/// trees packed as tarballs beside their payload directory.
fn build_artifacts(
    spec: &forge_boottest::BootTest,
    names: &std::collections::BTreeSet<String>,
    cache: Option<&Path>,
    log: &dyn Fn(&str),
) -> Result<std::collections::BTreeMap<String, PathBuf>> {
    use forge_boottest::spec::Artifact;
    let mut out = std::collections::BTreeMap::new();
    for name in names {
        let a = &spec.artifacts[name];
        let dir = spec.root().join(a.recipe());
        let what = || format!("{}: artifact {name} ({})", spec.file.display(), dir.display());
        let path = match a {
            Artifact::Sysext(_) => {
                let (Some(parent), Some(ext)) =
                    (dir.parent(), dir.file_name().and_then(|n| n.to_str()))
                else {
                    bail!("{}: not an extension folder", what());
                };
                let base = crate::payload::build(None, cache).with_context(what)?;
                let c = forge::recipe::Cache { root: crate::util::cache_dir(cache) };
                let req = forge::sysext::Request {
                    sysext_dir: parent.to_path_buf(),
                    name: ext.to_string(),
                    epoch: crate::build_image::default_epoch(&base)?,
                    base,
                    cache: &c,
                    recipe_epoch: crate::util::recipe_epoch()?,
                    seed: forge::seed::Seed::new(forge::seed::DEFAULT_SEED.to_string()),
                };
                forge::sysext::build_cached(&req, log, &|_, _, _| {}).with_context(what)?.path
            }
            Artifact::RootfsTar(_) => {
                let recipe = forge::recipe::Recipe::load(&dir).with_context(what)?;
                if recipe.kind != "rootfs" {
                    bail!(
                        "{}: the recipe is a {}, not a rootfs (its file `kind`)",
                        what(),
                        recipe.kind
                    );
                }
                let root = crate::payload::build(Some(&dir), cache).with_context(what)?;
                let tar = root.parent().unwrap_or(&root).join("rootfs.tar");
                if !tar.is_file() {
                    forge::recipe::pack_tar(&root, &tar, crate::util::recipe_epoch()?)
                        .with_context(what)?;
                }
                tar
            }
        };
        log(&format!("boot-test: artifact {name}: {}", path.display()));
        out.insert(name.clone(), path);
    }
    Ok(out)
}

/// forge-init's and Ignition's lines of each boot's serial log.
fn print_console(r: &Report) {
    for b in &r.boots {
        let Ok(bytes) = std::fs::read(&b.serial_log) else { continue };
        println!("--- {}: forge-init and Ignition on the console:", b.serial_log.display());
        for l in String::from_utf8_lossy(&bytes).lines() {
            let l = l.trim_end_matches('\r');
            if ["forge-init: ", "ignition: "].iter().any(|p| l.contains(p)) {
                println!("{l}");
            }
        }
        println!("---");
    }
}

/// Writes `text` (pretty JSON) atomically.
fn write_json(file: &Path, mut text: String) -> Result<()> {
    text.push('\n');
    let tmp = file.with_extension(format!("json.{}.partial", std::process::id()));
    std::fs::write(&tmp, text).with_context(|| format!("{}: cannot write", tmp.display()))?;
    std::fs::rename(&tmp, file)
        .with_context(|| format!("{}: cannot rename to {}", tmp.display(), file.display()))
}

fn print_summary(r: &Report, file: &Path, tcg: bool) {
    let tag = format!("boot-test {} {}-{}", r.platform, r.arch.name(), r.firmware.name());
    for b in &r.boots {
        let n = b.checks.len();
        let ok = b.checks.iter().filter(|c| c.ok).count();
        let time = b.seconds.map(|s| format!("{s:.1}s")).unwrap_or_else(|| "-".into());
        println!(
            "{tag}: {:<18} {:>7} to {:<28} {ok}/{n} checks passed",
            b.variant,
            time,
            b.stopped_at.as_deref().map(|s| format!("{s:?}")).unwrap_or_else(|| "no marker".into())
        );
        for c in b.checks.iter().filter(|c| !c.ok) {
            println!("{tag}: {} FAIL {} — {}", b.variant, c.name, c.detail);
        }
        if !b.serial_log.as_os_str().is_empty() {
            println!("{tag}: {} serial log {}", b.variant, b.serial_log.display());
        }
    }
    println!(
        "{tag}: {} passed, {} failed (times are power-on to the marker{}); report {}",
        r.passed(),
        r.failed(),
        if tcg { ", under TCG" } else { "" },
        file.display()
    );
}
