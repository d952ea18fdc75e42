//! The CLI: argument parsing and progress output only; the work is done by
//! the `forge` library.

mod bench;
mod deps;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use forge::image::{self, BuildRequest};
use forge::layout::IdPolicy;
use forge::seed::Seed;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;
use uuid::Uuid;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Rootless Flatcar-style OS image builder", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build a disk image for a platform from a payload directory.
    BuildImage(BuildArgs),
    /// Show the partitions, filesystems, OEM content and verity state of an image.
    Inspect {
        image: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Build (or reuse from the cache) a payload from a recipe (default: the demo payload).
    Payload {
        #[arg(long)]
        recipe: Option<PathBuf>,
        #[arg(long)]
        cache_dir: Option<PathBuf>,
    },
    /// Boot an image in QEMU as its platform would, against a fake metadata service, and check it.
    BootTest {
        /// flatcar_production_<platform>_image.bin or .bin.bz2
        image: PathBuf,
        #[arg(long, default_value = "hetzner")]
        platform: String,
        #[arg(long, value_parser = ["bios", "uefi"])]
        firmware: String,
        /// Disk size the image is grown to, in GiB.
        #[arg(long, default_value_t = 20)]
        disk_gib: u64,
        /// Seconds to wait for each boot.
        #[arg(long, default_value_t = 900)]
        timeout: u64,
        /// Skip the negative boots (no OEM grub.cfg; a flipped byte in USR-A).
        #[arg(long)]
        no_negative: bool,
        /// QEMU accelerator (TCG by default: nested KVM is unreliable here).
        #[arg(long, default_value = "tcg")]
        accel: String,
    },
    /// Compress a raw disk image (zero-aware, on every core) and write its DIGESTS.
    Compress {
        input: PathBuf,
        output: PathBuf,
        /// none, bz2, gz, zst or xz.
        #[arg(long, default_value = "bz2")]
        format: String,
        /// The format's level (default: the stock tool's: bz2 9, gz 6, zst 3, xz 6).
        #[arg(long)]
        level: Option<u32>,
        /// Skip the full decode-and-compare before publishing.
        #[arg(long)]
        no_verify: bool,
    },
    /// (internal) Serve one request of the fake metadata service on stdin/stdout.
    #[command(hide = true)]
    MetadataRespond {
        #[arg(long)]
        values: PathBuf,
        #[arg(long)]
        log: Option<PathBuf>,
    },
    /// Install (as root) or name the missing host packages, then run the test suite.
    Test {
        /// Skip building the Hetzner image from the demo payload and booting it (BIOS and UEFI).
        #[arg(long)]
        no_boot: bool,
        /// Extra arguments for `cargo test`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        cargo_args: Vec<String>,
    },
    /// Build the SDK container image (forge-sdk:latest) from sdk/ with podman (or docker).
    SdkImage {
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        /// Container engine (default: podman if present, else docker).
        #[arg(long)]
        engine: Option<String>,
    },
    /// Check the host tools; with --install (as root), apt-get the missing ones.
    Deps {
        #[arg(long)]
        install: bool,
    },
    /// Benchmarks, printed side by side with a reference tool run in the same process.
    Bench {
        #[command(subcommand)]
        which: bench::Which,
    },
}

#[derive(Args, Clone)]
pub struct BuildArgs {
    /// Platform: `generic`, or a folder under the OEM directory.
    #[arg(long, default_value = "generic")]
    platform: String,
    /// Where platform folders live (default: oem/ in the checkout).
    #[arg(long)]
    oem_dir: Option<PathBuf>,
    /// Payload directory (root tree with usr/, usr/lib/os-release, usr/boot/vmlinuz).
    /// Default for platform builds: the demo payload, built from Debian packages and cached.
    #[arg(long)]
    base: Option<PathBuf>,
    /// Cache for downloads, built tools and payloads (default: $FORGE_CACHE or .cache/).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Keep the uncompressed image beside the compressed one.
    #[arg(long)]
    keep_raw: bool,
    /// Skip the checks before publishing (GPT, fsck, verity, full decode of the compressed disk).
    #[arg(long)]
    no_verify: bool,
    /// Where the artifacts go.
    #[arg(long, default_value = "out")]
    output_dir: PathBuf,
    /// Layout name (default: the platform's; `base` for generic).
    #[arg(long)]
    layout: Option<String>,
    /// Layout file (default: layouts/disk_layout.json of this checkout).
    #[arg(long)]
    layout_file: Option<PathBuf>,
    /// Seed for every derived GUID, UUID and salt.
    #[arg(long, default_value = forge::seed::DEFAULT_SEED)]
    seed: String,
    /// Timestamp for all files (default: $SOURCE_DATE_EPOCH, else the payload's os-release mtime).
    #[arg(long)]
    epoch: Option<i64>,
    /// Disk GUID (default: upstream's placeholder 00000000-0000-0000-0000-000000000001).
    #[arg(long)]
    disk_guid: Option<Uuid>,
    /// Override a partition GUID: LABEL=UUID (repeatable).
    #[arg(long = "part-uuid", value_parser = parse_label_uuid)]
    part_uuids: Vec<(String, Uuid)>,
    /// Override a filesystem UUID: LABEL=UUID (repeatable).
    #[arg(long = "fs-uuid", value_parser = parse_label_uuid)]
    fs_uuids: Vec<(String, Uuid)>,
}

fn parse_label_uuid(s: &str) -> Result<(String, Uuid), String> {
    let (l, u) = s.split_once('=').ok_or("expected LABEL=UUID")?;
    Ok((l.to_string(), Uuid::parse_str(u).map_err(|e| e.to_string())?))
}

/// The checkout this binary was built from (layouts/, oem/ live there).
pub fn repo_root() -> PathBuf {
    if let Some(r) = std::env::var_os("FORGE_REPO") {
        return PathBuf::from(r);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

pub fn main_with<I: IntoIterator<Item = OsString>>(args: I) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    let r = match cli.cmd {
        Cmd::BuildImage(a) => build_image(&a),
        Cmd::Inspect { image, json } => inspect(&image, json),
        Cmd::Bench { which } => bench::run(which),
        Cmd::Test { no_boot, cargo_args } => run_tests(no_boot, &cargo_args),
        Cmd::BootTest { image, platform, firmware, disk_gib, timeout, no_negative, accel } => {
            boot_test(&image, &platform, &firmware, disk_gib, timeout, !no_negative, &accel)
        }
        Cmd::MetadataRespond { values, log } => metadata_respond(&values, log.as_deref()),
        Cmd::Compress { input, output, format, level, no_verify } => {
            compress_cmd(&input, &output, &format, level, !no_verify)
        }
        Cmd::Payload { recipe, cache_dir } => demo_payload(recipe.as_deref(), cache_dir.as_deref())
            .map(|p| println!("{}", p.display())),
        Cmd::Deps { install } => deps::ensure(install),
        Cmd::SdkImage { cache_dir, engine } => sdk_image(cache_dir.as_deref(), engine.as_deref()),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn logger() -> impl Fn(&str) {
    let start = Instant::now();
    move |m: &str| {
        let line = format!("[{:>7.2}s] {m}", start.elapsed().as_secs_f64());
        // Above the progress bar, if one is drawn, not through it.
        match BAR.lock().unwrap().as_ref() {
            Some((_, b)) if !b.is_finished() => b.println(line),
            _ => eprintln!("{line}"),
        }
    }
}

/// Ends the progress bar's line, if one was drawn, before a summary.
fn end_bars() {
    if let Some((_, b)) = BAR.lock().unwrap().take() {
        b.finish();
        eprintln!();
    }
}

/// The progress bar being drawn, and its step.
static BAR: std::sync::Mutex<Option<(String, indicatif::ProgressBar)>> =
    std::sync::Mutex::new(None);

pub fn default_epoch(base: &Path) -> Result<i64> {
    if let Some(v) = std::env::var_os("SOURCE_DATE_EPOCH").filter(|v| !v.is_empty()) {
        let s = v.to_string_lossy();
        return s.trim().parse().map_err(|_| anyhow!("SOURCE_DATE_EPOCH={s} is not an integer"));
    }
    let m = std::fs::metadata(base.join(forge::payload::OS_RELEASE)).with_context(|| {
        format!("payload {}: missing {}", base.display(), forge::payload::OS_RELEASE)
    })?;
    use std::os::unix::fs::MetadataExt;
    Ok(m.mtime())
}

fn ids(a: &BuildArgs) -> IdPolicy {
    IdPolicy {
        seed: Seed::new(a.seed.clone()),
        partition_uuids: a.part_uuids.iter().cloned().collect(),
        fs_uuids: a.fs_uuids.iter().cloned().collect(),
        disk_guid: a.disk_guid,
    }
}

fn print_stages(stages: &[(String, std::time::Duration)]) {
    for (name, d) in stages {
        eprintln!("  {:<16} {:>8.3}s", name, d.as_secs_f64());
    }
}

pub fn build_image(a: &BuildArgs) -> Result<()> {
    let layout_file =
        a.layout_file.clone().unwrap_or_else(|| repo_root().join("layouts/disk_layout.json"));
    let log = logger();
    if a.platform == "generic" {
        let base =
            a.base.clone().ok_or_else(|| anyhow!("--platform generic needs --base PAYLOAD_DIR"))?;
        let req = BuildRequest {
            payload: base.clone(),
            layout_file,
            layout: a.layout.clone().unwrap_or_else(|| "base".into()),
            output_dir: a.output_dir.clone(),
            image_name: "flatcar_production_image.bin".into(),
            ids: ids(a),
            epoch: match a.epoch {
                Some(e) => e,
                None => default_epoch(&base)?,
            },
            oem: None,
            esp_extra: Vec::new(),
            boot: None,
            verify: !a.no_verify,
            publish: true,
        };
        let bars = progress_bars();
        let out = image::build(&req, &log, &forge::progress::reporter(bars.as_ref(), &log))?;
        end_bars();
        eprintln!("\nbuilt {}", out.image.display());
        eprintln!("  size {} B, {} B allocated (non-zero)", out.plan.total_bytes(), out.allocated);
        if let Some(v) = &out.verity_file {
            eprintln!("  verity {}", v.display());
        }
        print_stages(&out.stages);
        return Ok(());
    }
    let platform = forge::oem::load(
        &a.oem_dir.clone().unwrap_or_else(|| repo_root().join("oem")),
        &a.platform,
    )?;
    deps::ensure_build()?;
    let base = match &a.base {
        Some(b) => b.clone(),
        None => demo_payload(None, a.cache_dir.as_deref())?,
    };
    let epoch = match a.epoch {
        Some(e) => e,
        None => default_epoch(&base)?,
    };
    let init = init_binary(&log)?;
    let req = forge::platform::PlatformRequest {
        platform,
        payload: base,
        layout_file,
        layout: a.layout.clone(),
        output_dir: a.output_dir.clone(),
        ids: ids(a),
        epoch,
        init,
        initramfs_modules: forge::platform::read_list(
            &repo_root().join("boot/initramfs-modules.txt"),
        )?,
        grub_template: std::fs::read_to_string(repo_root().join("boot/grub.cfg.j2"))
            .context("boot/grub.cfg.j2")?,
        keep_raw: a.keep_raw,
        threads: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        sdk_version: env!("CARGO_PKG_VERSION").into(),
        verify: !a.no_verify,
        progress: progress_bars(),
    };
    let out = forge::platform::build(&req, &log)?;
    end_bars();
    eprintln!("\nbuilt {} ({} B)", out.disk.path.display(), out.disk.bytes);
    eprintln!(
        "  raw image {} B, {} B non-zero{}",
        out.build.plan.total_bytes(),
        out.build.allocated,
        if out.raw_kept {
            format!(", kept at {}", out.build.image.display())
        } else {
            String::new()
        }
    );
    eprintln!("  digests {}", out.disk.digests_path.display());
    eprintln!("  version {}", out.version_txt.display());
    print_stages(&out.stages);
    Ok(())
}

/// The static forge-init binary: $FORGE_INIT, or built from this workspace.
pub fn init_binary(log: &dyn Fn(&str)) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("FORGE_INIT") {
        return Ok(PathBuf::from(p));
    }
    let target = "x86_64-unknown-linux-gnu";
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    log("boot: building forge-init (static)");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let st = std::process::Command::new(cargo)
        .args([
            "rustc",
            "--quiet",
            "--release",
            "-p",
            "forge-init",
            "--target",
            target,
            "--",
            "-C",
            "target-feature=+crt-static",
        ])
        .current_dir(repo_root())
        .env("CARGO_TARGET_DIR", &target_dir)
        .status()
        .context("running cargo to build forge-init")?;
    if !st.success() {
        bail!("building forge-init failed");
    }
    Ok(target_dir.join(target).join("release/forge-init"))
}

fn inspect(image: &Path, json: bool) -> Result<()> {
    let r = forge::inspect::inspect(image)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", forge::inspect::render(&r));
    }
    let bad: Vec<String> = r
        .partitions
        .iter()
        .filter(|p| p.verity.as_ref().and_then(|v| v.matches) == Some(false))
        .map(|p| p.label.clone())
        .collect();
    if !bad.is_empty() {
        bail!("dm-verity root hash mismatch on {}", bad.join(", "));
    }
    Ok(())
}

fn run_tests(no_boot: bool, extra: &[String]) -> Result<()> {
    deps::ensure(true)?;
    let log = logger();
    let init = init_binary(&log)?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut args = vec!["test".to_string(), "--workspace".into(), "--no-fail-fast".into()];
    args.extend(extra.iter().cloned());
    let st = std::process::Command::new(&cargo)
        .args(&args)
        .current_dir(repo_root())
        .env("FORGE_INIT", &init)
        .status()?;
    let unit_ok = st.success();
    if no_boot {
        if !unit_ok {
            bail!("tests failed");
        }
        return Ok(());
    }
    // The main job, fresh, then both boot tests of its output.
    let out_dir = repo_root().join("target/ci-hetzner");
    let _ = std::fs::remove_dir_all(&out_dir);
    log("test: building the Hetzner image from the demo payload");
    let st = std::process::Command::new(std::env::current_exe()?)
        .args(["build-image", "--platform", "hetzner", "--output-dir"])
        .arg(&out_dir)
        .env("FORGE_INIT", &init)
        .status()?;
    if !st.success() {
        bail!("building the Hetzner image failed");
    }
    let image = out_dir.join("flatcar_production_hetzner_image.bin.bz2");
    let (mut passed, mut failed) = (0usize, 0usize);
    let mut report = |name: &str, ok: bool, detail: String| {
        println!(
            "[{}] {} {name}{}",
            if ok { "ok" } else { "!!" },
            if ok { "PASS" } else { "FAIL" },
            if detail.is_empty() { detail } else { format!(" — {detail}") }
        );
        if ok {
            passed += 1
        } else {
            failed += 1
        }
    };
    let artifacts = [
        "flatcar_production_hetzner_image.bin.bz2",
        "flatcar_production_hetzner_image.bin.bz2.DIGESTS",
        "version.txt",
    ];
    let same = |a: &Path, b: &Path| -> Result<bool> {
        for f in artifacts {
            if std::fs::read(a.join(f)).with_context(|| a.join(f).display().to_string())?
                != std::fs::read(b.join(f)).with_context(|| b.join(f).display().to_string())?
            {
                return Ok(false);
            }
        }
        Ok(true)
    };
    // Rebuild elsewhere, later: identical bytes.
    std::thread::sleep(std::time::Duration::from_secs(1));
    let again = repo_root().join("target/ci-hetzner-again");
    let _ = std::fs::remove_dir_all(&again);
    let st = std::process::Command::new(std::env::current_exe()?)
        .args(["build-image", "--platform", "hetzner", "--output-dir"])
        .arg(&again)
        .env("FORGE_INIT", &init)
        .status()?;
    report(
        "rebuild in another directory gives byte-identical .bin.bz2, .DIGESTS and version.txt",
        st.success() && same(&out_dir, &again)?,
        String::new(),
    );
    // The whole build as an unprivileged user (uid 65534), payload included,
    // from a fresh cache seeded only with downloads and the afterburn binary.
    if unsafe { libc::geteuid() } == 0 {
        let base = repo_root().join("target/ci-nobody");
        let _ = std::fs::remove_dir_all(&base);
        let cache = base.join("cache");
        std::fs::create_dir_all(&cache)?;
        let root_cache = cache_dir(None);
        for d in ["apt", "debs", "crates"] {
            duct::cmd!("cp", "-a", root_cache.join(d), &cache).run()?;
        }
        let _ = std::fs::remove_dir_all(cache.join("crates/target"));
        let init_copy = base.join("forge-init");
        std::fs::copy(&init, &init_copy)?;
        duct::cmd!("chown", "-R", "65534:65534", &base).run()?;
        let out = base.join("out");
        let st = std::process::Command::new("setpriv")
            .args([
                "--reuid",
                "65534",
                "--regid",
                "65534",
                "--clear-groups",
                "env",
                "HOME=/nonexistent",
            ])
            .arg(format!("FORGE_INIT={}", init_copy.display()))
            .arg(format!("FORGE_CACHE={}", cache.display()))
            .arg(std::env::current_exe()?)
            .args(["build-image", "--platform", "hetzner", "--output-dir"])
            .arg(&out)
            .status()?;
        let owner_ok = std::fs::metadata(out.join(artifacts[0]))
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 65534)
            .unwrap_or(false);
        report("the whole build as uid 65534 (payload from packages included) gives the root build's bytes", st.success() && owner_ok && same(&out_dir, &out)?, String::new());
    } else {
        println!("not root: the unprivileged-build check (setpriv to uid 65534) is not run");
    }
    for fw in ["bios", "uefi"] {
        log(&format!("test: boot test ({fw})"));
        let o = std::process::Command::new(std::env::current_exe()?)
            .args(["boot-test"])
            .arg(&image)
            .args(["--firmware", fw])
            .output()?;
        let text =
            format!("{}{}", String::from_utf8_lossy(&o.stderr), String::from_utf8_lossy(&o.stdout));
        print!("{text}");
        let (p, f) = (
            text.lines().filter(|l| l.contains("] PASS ")).count(),
            text.lines().filter(|l| l.contains("] FAIL ")).count(),
        );
        passed += p;
        failed += f;
        if !o.status.success() && f == 0 {
            failed += 1; // the boot test itself failed before its checks
        }
    }
    // Parity: the same build in the SDK container gives the same bytes, and
    // the boot test passes when run inside the container too.
    if forge::tools::find("podman").is_some() || forge::tools::find("docker").is_some() {
        log("test: SDK container image and parity build");
        let script = repo_root().join("run_sdk_container");
        let sdk_out = repo_root().join("target/ci-sdk");
        let _ = std::fs::remove_dir_all(&sdk_out);
        let built = std::process::Command::new(&script)
            .arg("--build-image")
            .args(["cargo", "xtask", "build-image", "--platform", "hetzner", "--output-dir"])
            .arg(&sdk_out)
            .status()?
            .success();
        let same_bytes = built && same(&out_dir, &sdk_out)?;
        println!("[{}] {} build-image --platform hetzner inside the SDK container gives the host build's sha256", if same_bytes { "ok" } else { "!!" }, if same_bytes { "PASS" } else { "FAIL" });
        if same_bytes {
            passed += 1
        } else {
            failed += 1
        }
        let o = std::process::Command::new(&script)
            .args(["cargo", "xtask", "boot-test"])
            .arg(sdk_out.join("flatcar_production_hetzner_image.bin.bz2"))
            .args(["--firmware", "bios", "--no-negative"])
            .output()?;
        let text =
            format!("{}{}", String::from_utf8_lossy(&o.stderr), String::from_utf8_lossy(&o.stdout));
        let f = text.lines().filter(|l| l.contains("] FAIL ")).count();
        let ok = o.status.success() && f == 0;
        println!(
            "[{}] {} the BIOS boot test passes inside the SDK container ({} checks)",
            if ok { "ok" } else { "!!" },
            if ok { "PASS" } else { "FAIL" },
            text.lines().filter(|l| l.contains("] PASS ")).count()
        );
        if !ok {
            print!("{text}");
            failed += 1;
        } else {
            passed += 1;
        }
    } else {
        println!("neither podman nor docker: the SDK container parity checks are not run");
    }
    if !unit_ok {
        println!("cargo test reported failures (see above)");
    }
    println!("boot-tests: {passed} passed, {failed} failed");
    if !unit_ok || failed > 0 {
        bail!("tests failed");
    }
    Ok(())
}

/// The cache directory: --cache-dir, $FORGE_CACHE, else .cache/ in the checkout.
pub fn cache_dir(arg: Option<&Path>) -> PathBuf {
    arg.map(Path::to_path_buf)
        .or_else(|| std::env::var_os("FORGE_CACHE").map(PathBuf::from))
        .unwrap_or_else(|| repo_root().join(".cache"))
}

/// The epoch payloads built from recipes are stamped with.
pub fn recipe_epoch() -> Result<i64> {
    match std::env::var_os("SOURCE_DATE_EPOCH").filter(|v| !v.is_empty()) {
        Some(v) => v
            .to_string_lossy()
            .trim()
            .parse()
            .map_err(|_| anyhow!("SOURCE_DATE_EPOCH is not an integer")),
        // Fixed default: rebuilds are identical unless the caller asks otherwise.
        None => Ok(1_700_000_000),
    }
}

pub fn demo_payload(recipe: Option<&Path>, cache: Option<&Path>) -> Result<PathBuf> {
    let dir = recipe.map(Path::to_path_buf).unwrap_or_else(|| repo_root().join("payloads/demo"));
    let r = forge::recipe::Recipe::load(&dir)?;
    let cache = forge::recipe::Cache { root: cache_dir(cache) };
    let log = logger();
    let bars = progress_bars();
    let root = forge::recipe::build(
        &r,
        &cache,
        recipe_epoch()?,
        &log,
        &forge::progress::reporter(bars.as_ref(), &log),
    )?;
    end_bars();
    Ok(root)
}

fn boot_test(
    image: &Path,
    platform: &str,
    firmware: &str,
    disk_gib: u64,
    timeout: u64,
    negative: bool,
    accel: &str,
) -> Result<()> {
    let p = forge::oem::load(&repo_root().join("oem"), platform)?;
    let cfg = forge::boottest::Config {
        image: image.canonicalize().with_context(|| format!("{}: not found", image.display()))?,
        oem_id: p.oem_id().to_string(),
        firmware: if firmware == "uefi" {
            forge::boottest::Firmware::Uefi
        } else {
            forge::boottest::Firmware::Bios
        },
        disk_bytes: disk_gib << 30,
        responder: std::env::current_exe()?,
        timeout: std::time::Duration::from_secs(timeout),
        negative,
        accel: accel.to_string(),
    };
    let log = logger();
    let out = forge::boottest::run(&cfg, &log)?;
    let failed = out.checks.iter().filter(|c| !c.ok).count();
    println!("boot-test {firmware}: {} passed, {failed} failed", out.checks.len() - failed);
    if let Some(s) = out.boot_secs {
        println!(
            "boot-test {firmware}: boot time {s:.1}s (power-on to the boot report, TCG={})",
            accel == "tcg"
        );
    }
    for l in &out.serial_logs {
        println!("boot-test {firmware}: serial log {}", l.display());
    }
    if !out.ok() {
        bail!("boot test failed ({failed} checks)");
    }
    Ok(())
}

fn metadata_respond(values: &Path, log: Option<&Path>) -> Result<()> {
    let v: forge::metadata::Values = serde_json::from_slice(&std::fs::read(values)?)?;
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut output = std::io::stdout().lock();
    forge::metadata::respond(&v, &mut input, &mut output, log)
}

fn compress_cmd(
    input: &Path,
    output: &Path,
    format: &str,
    level: Option<u32>,
    verify: bool,
) -> Result<()> {
    let compression: forge::oem::Compression =
        serde_json::from_value(serde_json::Value::String(format.to_string()))
            .map_err(|_| anyhow!("--format {format}: expected none, bz2, gz, zst or xz"))?;
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let bars = progress_bars();
    let log = logger();
    let progress = forge::progress::reporter(bars.as_ref(), &log);
    let t = std::time::Instant::now();
    let (bytes, digests, stats) = forge::artifacts::compress_file(
        input,
        output,
        compression,
        level,
        threads,
        verify,
        &progress,
    )?;
    end_bars();
    if let Some(st) = stats {
        eprintln!(
            "{} B in, {bytes} B out in {:.1}s, {} members ({} B data, {} B zero runs){}",
            st.input,
            t.elapsed().as_secs_f64(),
            st.members.len(),
            st.data_bytes,
            st.zero_bytes,
            if verify { ", verified by a full decode" } else { ", NOT verified (--no-verify)" }
        );
    }
    let name = output.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let dpath = output.with_file_name(format!("{name}.DIGESTS"));
    forge::image::write_atomic(&dpath, digests.render(&name).as_bytes())?;
    eprintln!("{}: sha512 {}", dpath.display(), digests.sha512);
    Ok(())
}

/// Progress bars with throughput and ETA when stderr is a terminal; None
/// (plain log lines) otherwise.
fn progress_bars() -> Option<forge::progress::Sink> {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return None;
    }
    Some(std::sync::Arc::new(move |step: &str, done: u64, total: u64| {
        let mut cur = BAR.lock().unwrap();
        if cur.as_ref().map(|(s, _)| s.as_str()) != Some(step) {
            if let Some((_, b)) = cur.take() {
                b.finish();
            }
            let b = indicatif::ProgressBar::new(total);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg:>11} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
                )
                .unwrap()
                .progress_chars("=> "),
            );
            b.set_message(step.to_string());
            *cur = Some((step.to_string(), b));
        }
        let (_, b) = cur.as_ref().unwrap();
        b.set_length(total);
        b.set_position(done);
        if done >= total {
            b.finish();
        }
    }))
}

/// The SDK image: the sdk/ recipe's root tree (built without root, like a
/// payload), packed into a tar with fixed owners, order and times, imported
/// as `forge-sdk:latest` (and `forge-sdk:<recipe hash>`).
fn sdk_image(cache: Option<&Path>, engine: Option<&str>) -> Result<()> {
    let engine = match engine {
        Some(e) => e.to_string(),
        None => ["podman", "docker"]
            .iter()
            .find(|e| forge::tools::find(e).is_some())
            .map(|e| e.to_string())
            .ok_or_else(|| {
                anyhow!("neither podman nor docker is installed (apt-get install podman runc)")
            })?,
    };
    let recipe = forge::recipe::Recipe::load(&repo_root().join("sdk"))?;
    let c = forge::recipe::Cache { root: cache_dir(cache) };
    let log = logger();
    let epoch = recipe_epoch()?;
    let bars = progress_bars();
    let root = forge::recipe::build(
        &recipe,
        &c,
        epoch,
        &log,
        &forge::progress::reporter(bars.as_ref(), &log),
    )?;
    let tag = &recipe.hash()?[..12];
    let tar = root.parent().unwrap().join("sdk.tar");
    log(&format!("packing {} into {}", root.display(), tar.display()));
    forge::fs::run(
        duct::cmd!(
            "tar",
            "--sort=name",
            "--numeric-owner",
            "--owner=0",
            "--group=0",
            format!("--mtime=@{epoch}"),
            "--clamp-mtime",
            "-C",
            &root,
            "-cf",
            &tar,
            "."
        ),
        "tar",
    )?;
    log(&format!("importing into {engine} as forge-sdk:latest and forge-sdk:{tag}"));
    let id = forge::fs::run(
        duct::cmd!(
            &engine,
            "import",
            "--change",
            "CMD [\"/bin/bash\"]",
            "--change",
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "--change",
            format!("LABEL forge.sdk.recipe={tag}"),
            &tar,
            format!("forge-sdk:{tag}")
        ),
        &format!("{engine} import"),
    )?;
    forge::fs::run(
        duct::cmd!(&engine, "tag", format!("forge-sdk:{tag}"), "forge-sdk:latest"),
        &format!("{engine} tag"),
    )?;
    let _ = std::fs::remove_file(&tar);
    println!("forge-sdk:latest ({})", id.trim().lines().last().unwrap_or(""));
    Ok(())
}
