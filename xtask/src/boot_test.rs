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
    /// Firmware to boot with (repeatable; default: every one the boot test
    /// declares that the architecture has: arm64 has no BIOS).
    #[arg(long, value_enum)]
    pub firmware: Vec<Firmware>,
    /// The image's architecture: amd64 or arm64 (also x86-64, x86_64,
    /// aarch64). Default: read from the image (the EFI loader on its ESP,
    /// EFI/boot/bootx64.efi or EFI/boot/bootaa64.efi); the boot test must
    /// declare it.
    #[arg(long)]
    pub arch: Option<forge::arch::Arch>,
    /// Disk size the image is grown to, in GiB (default: the boot test's
    /// machine.disk_bytes, or its machine_arch's for the architecture).
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
    /// Keep the decoded image in this directory for other boot-test runs
    /// given the same one (running at the same time or later): the image is
    /// decoded once, not once per run. Nothing removes it but you.
    #[arg(long)]
    pub shared_disks: Option<PathBuf>,
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
    let file = forge_boottest::spec::path(&oem, &a.platform);
    let spec = forge_boottest::spec::load_for(&oem, &a.platform)?.ok_or_else(|| {
        anyhow!("platform {} declares no boot test: {} does not exist", a.platform, file.display())
    })?;
    let spec = spec.select(&a.variant).with_context(|| format!("{}", file.display()))?;
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
    let log = logger();
    let arch = match a.arch {
        Some(x) => x,
        None => {
            let x = forge_boottest::disk::image_arch(&image)?;
            if !spec.arch.contains(&x) {
                bail!(
                    "{}: the image {} is for {x} (its ESP holds {}), which the boot test does not declare (arch: {})",
                    file.display(),
                    image.display(),
                    x.efi_loader(),
                    spec.arch.iter().map(|a| a.name()).collect::<Vec<_>>().join(", ")
                );
            }
            log(&format!("boot-test: the image is for {x} (its ESP holds {})", x.efi_loader()));
            x
        }
    };
    let mut firmwares: Vec<forge_boottest::Firmware> = if a.firmware.is_empty() {
        spec.firmwares(arch)
    } else {
        a.firmware.iter().map(|x| (*x).into()).collect()
    };
    if !spec.arch.contains(&arch) {
        bail!(
            "{}: does not declare {arch} (arch: {})",
            file.display(),
            spec.arch.iter().map(|a| a.name()).collect::<Vec<_>>().join(", ")
        );
    }
    for f in &firmwares {
        forge_boottest::run::check_declared(&spec, arch, *f)?;
    }
    let spec = match &a.userdata {
        Some(u) => {
            let t = forge_boottest::run::try_userdata(&spec, arch, u)?;
            firmwares.retain(|f| t.boots[0].runs_on(arch, *f));
            firmwares.truncate(1);
            t
        }
        None => spec,
    };
    let needed = spec.artifacts_for(arch, &firmwares, !a.no_negative);
    let artifacts = build_artifacts(&spec, arch, &needed, a.cache_dir.as_deref(), &log)?;
    if a.artifacts_only {
        for (name, path) in &artifacts {
            println!("{name} {}", path.display());
        }
        return Ok(());
    }
    let log_dir = image.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
    // Several firmwares: the image is decoded once for all of them (in a
    // scratch directory beside it, removed at the end) unless the caller
    // shares its own directory.
    let scratch = match (&a.shared_disks, firmwares.len()) {
        (None, 2..) => Some(forge::outdir::scratch_dir(&log_dir)?),
        _ => None,
    };
    let shared_disks =
        a.shared_disks.clone().or_else(|| scratch.as_ref().map(|t| t.path().to_path_buf()));
    let mut reports = Vec::new();
    for fw in &firmwares {
        let opts = forge_boottest::Options {
            image: image.clone(),
            platform: a.platform.clone(),
            arch,
            firmware: *fw,
            responder: std::env::current_exe().context("locating this program")?,
            timeout: a.timeout.map(std::time::Duration::from_secs),
            disk_bytes: a.disk_gib.map(|g| g << 30),
            negative: !a.no_negative,
            accel: a.accel.clone(),
            log_dir: Some(log_dir.clone()),
            keep: a.keep,
            artifacts: artifacts.clone(),
            shared_disks: shared_disks.clone(),
        };
        let report = forge_boottest::run(&spec, &opts, &log).unwrap_or_else(|e| {
            // Set-up failed before any boot: still a report, with one failed check.
            Report {
                platform: a.platform.clone(),
                firmware: *fw,
                arch,
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
        let file = log_dir.join(report_name(&image, arch, *fw, a.userdata.is_some()));
        write_json(&file, serde_json::to_string_pretty(&report)?)?;
        if a.userdata.is_some() {
            print_console(&report);
        }
        print_summary(&report, &file, a.accel == "tcg");
        reports.push(report);
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

/// `<image stem>.<arch>-<firmware>.[userdata.]boot-test.json`
fn report_name(
    image: &Path,
    arch: forge::arch::Arch,
    fw: forge_boottest::Firmware,
    userdata: bool,
) -> String {
    format!(
        "{}.{}-{}.{}boot-test.json",
        forge_boottest::run::stem(image),
        arch.name(),
        fw.name(),
        if userdata { "userdata." } else { "" }
    )
}

/// Builds (or takes from the cache) the artifacts `names` of the boot test
/// for `arch`: extensions against the demo payload (what the tested images
/// are built from; a mismatch shows as an extension systemd-sysext
/// refuses), root trees packed as tarballs beside their payload directory.
fn build_artifacts(
    spec: &forge_boottest::BootTest,
    arch: forge::arch::Arch,
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
                let base = crate::payload::build(None, cache, arch).with_context(what)?;
                let c = forge::recipe::Cache { root: crate::util::cache_dir(cache) };
                let req = forge::sysext::Request {
                    sysext_dir: parent.to_path_buf(),
                    name: ext.to_string(),
                    epoch: crate::build_image::default_epoch(&base)?,
                    base,
                    cache: &c,
                    arch,
                    recipe_epoch: crate::util::recipe_epoch()?,
                    seed: forge::seed::Seed::new(forge::seed::DEFAULT_SEED.to_string()),
                    release_extra: Vec::new(),
                };
                forge::sysext::build_cached(&req, log, &|_, _, _| {}).with_context(what)?.path
            }
            Artifact::RootfsTar(_) => {
                let recipe = forge::recipe::Recipe::load(&dir, arch).with_context(what)?;
                if recipe.kind != "rootfs" {
                    bail!(
                        "{}: the recipe is a {}, not a rootfs (its file `kind`)",
                        what(),
                        recipe.kind
                    );
                }
                let root = crate::payload::build(Some(&dir), cache, arch).with_context(what)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use forge::arch::Arch;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn args(argv: &[&str]) -> Args {
        use clap::Parser;
        Cli::try_parse_from(std::iter::once("boot-test").chain(argv.iter().copied())).unwrap().args
    }

    #[test]
    fn arch_takes_any_of_its_names_and_defaults_to_the_images() {
        assert_eq!(args(&["i", "--arch", "aarch64"]).arch, Some(Arch::Arm64));
        assert_eq!(args(&["i", "--arch", "arm64"]).arch, Some(Arch::Arm64));
        assert_eq!(args(&["i", "--arch", "x86-64"]).arch, Some(Arch::Amd64));
        assert_eq!(args(&["i", "--arch", "amd64"]).arch, Some(Arch::Amd64));
        assert_eq!(args(&["i"]).arch, None);
        use clap::Parser;
        let e = Cli::try_parse_from(["boot-test", "i", "--arch", "sparc"]).err().unwrap();
        assert!(e.to_string().contains("unknown architecture 'sparc'"), "{e}");
    }

    #[test]
    fn reports_are_named_per_arch_and_firmware() {
        let i = Path::new("/o/flatcar_production_hetzner_image.bin.bz2");
        use forge_boottest::Firmware as F;
        assert_eq!(
            report_name(i, Arch::Arm64, F::Uefi, false),
            "flatcar_production_hetzner_image.arm64-uefi.boot-test.json"
        );
        assert_eq!(
            report_name(i, Arch::Amd64, F::Bios, true),
            "flatcar_production_hetzner_image.amd64-bios.userdata.boot-test.json"
        );
    }

    /// A disk whose ESP holds `arch`'s EFI loader (a PE header for its
    /// machine); None without sfdisk.
    fn image(dir: &Path, arch: Arch) -> Option<PathBuf> {
        let sfdisk = forge::tools::find("sfdisk")?;
        let path = dir.join(format!("flatcar_production_hetzner_image-{arch}.bin"));
        let f = forge::io::sparse::create(&path, 66 << 20).unwrap();
        let script =
            "label: gpt\nstart=2048, size=131072, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\n";
        forge::cmd!(sfdisk, "--quiet", &path).stdin_bytes(script).run().unwrap();
        let mut pe = vec![0u8; 0x80];
        pe[..2].copy_from_slice(b"MZ");
        pe[0x3c] = 0x40;
        pe[0x40..0x44].copy_from_slice(b"PE\0\0");
        let machine: u16 = if arch == Arch::Arm64 { 0xaa64 } else { 0x8664 };
        pe[0x44..0x46].copy_from_slice(&machine.to_le_bytes());
        let mut t = forge::fs::tree::Dir::new();
        t.add_file(arch.efi_loader(), forge::fs::tree::Source::Bytes(pe)).unwrap();
        let params = forge::fs::fat::FatParams {
            label: None,
            volume_id: 1,
            size_bytes: 64 << 20,
            hidden_sectors: 2048,
            epoch: 0,
        };
        forge::fs::fat::build(&t, &params, &f, 1 << 20).unwrap();
        Some(path)
    }

    /// An oem folder with hetzner's platform.json and a boot test of amd64 and arm64.
    fn oem_with_arm64(dir: &Path) -> PathBuf {
        let oem = dir.join("oem");
        std::fs::create_dir_all(oem.join("hetzner")).unwrap();
        std::fs::copy(
            repo_root().join("oem/hetzner/platform.json"),
            oem.join("hetzner/platform.json"),
        )
        .unwrap();
        let t = serde_json::json!({
            "arch": ["amd64", "arm64"],
            "firmware": ["bios", "uefi"],
            "machine": { "memory_mib": 1024, "disk_bytes": 1073741824u64 },
            "machine_arch": { "arm64": { "disk_bytes": 42949672960u64 } },
            "nics": [{ "mac": "52:54:00:12:34:56", "hostfwd": [22] }],
            "disks": [{ "source": "image", "device": "scsi-hd" }],
            "boots": [{ "variant": "a", "until": ["END"], "checks": [{ "name": "s", "observe": "serial", "contains": "x" }] }]
        });
        std::fs::write(oem.join("hetzner/boot-test.json"), t.to_string()).unwrap();
        oem
    }

    #[test]
    fn the_arch_must_be_declared_and_have_the_firmware() {
        let tmp = tempfile::tempdir().unwrap();
        let img = tmp.path().join("image.bin");
        std::fs::write(&img, b"").unwrap();
        let img = img.to_str().unwrap();
        // The repository's QEMU boot test declares amd64 only.
        let e = run(args(&[img, "--platform", "qemu", "--arch", "aarch64", "--artifacts-only"]))
            .unwrap_err();
        let file = repo_root().join("oem/qemu/boot-test.json");
        assert_eq!(
            format!("{e:#}"),
            format!("{}: does not declare arm64 (arch: amd64)", file.display())
        );
        let oem = oem_with_arm64(tmp.path());
        let oem = oem.to_str().unwrap();
        let e = run(args(&[img, "--oem-dir", oem, "--arch", "arm64", "--firmware", "bios"]))
            .unwrap_err();
        assert_eq!(
            format!("{e:#}"),
            format!(
                "{}/hetzner/boot-test.json: arm64 does not boot with bios (its firmwares: uefi)",
                oem
            )
        );
    }

    #[test]
    fn the_images_arch_is_read_from_its_esp() {
        let tmp = tempfile::tempdir().unwrap();
        let Some(arm) = image(tmp.path(), Arch::Arm64) else {
            println!("skipped: needs sfdisk (fdisk)");
            return;
        };
        let amd = image(tmp.path(), Arch::Amd64).unwrap();
        let (arm, amd) = (arm.to_str().unwrap(), amd.to_str().unwrap());
        // Not declared by the repository's QEMU boot test: an error naming it.
        let e = format!(
            "{:#}",
            run(args(&[arm, "--platform", "qemu", "--artifacts-only"])).unwrap_err()
        );
        let file = repo_root().join("oem/qemu/boot-test.json");
        assert_eq!(
            e,
            format!(
                "{}: the image {arm} is for arm64 (its ESP holds EFI/boot/bootaa64.efi), which the boot test does not declare (arch: amd64)",
                file.display()
            )
        );
        // Declared: each image is taken for what its ESP says (nothing to build).
        let oem = oem_with_arm64(tmp.path());
        let oem = oem.to_str().unwrap();
        run(args(&[arm, "--oem-dir", oem, "--artifacts-only"])).unwrap();
        run(args(&[amd, "--oem-dir", oem, "--artifacts-only"])).unwrap();
        // An image without an ESP cannot tell: --arch.
        let blank = tmp.path().join("blank.bin");
        std::fs::write(&blank, vec![0u8; 1 << 20]).unwrap();
        let e = format!(
            "{:#}",
            run(args(&[blank.to_str().unwrap(), "--oem-dir", oem, "--artifacts-only"]))
                .unwrap_err()
        );
        assert!(
            e.contains("blank.bin: the image's architecture") && e.contains("pass --arch"),
            "{e}"
        );
    }
}
