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
    /// Install (as root) or name the missing host packages, then run the test suite.
    Test {
        /// Extra arguments for `cargo test`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        cargo_args: Vec<String>,
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
    /// Platform: `generic`, or a folder under oem/.
    #[arg(long, default_value = "generic")]
    platform: String,
    /// Payload directory (root tree with usr/, usr/lib/os-release, usr/boot/vmlinuz).
    #[arg(long)]
    base: PathBuf,
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
        Cmd::BuildImage(a) => build_image(&a).map(|_| ()),
        Cmd::Inspect { image, json } => inspect(&image, json),
        Cmd::Bench { which } => bench::run(which),
        Cmd::Test { cargo_args } => run_tests(&cargo_args),
        Cmd::Deps { install } => deps::ensure(install),
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
    move |m: &str| eprintln!("[{:>7.2}s] {m}", start.elapsed().as_secs_f64())
}

pub fn default_epoch(base: &Path) -> Result<i64> {
    if let Some(v) = std::env::var_os("SOURCE_DATE_EPOCH") {
        let s = v.to_string_lossy();
        return s.trim().parse().map_err(|_| anyhow!("SOURCE_DATE_EPOCH={s} is not an integer"));
    }
    let m = std::fs::metadata(base.join(forge::payload::OS_RELEASE))
        .with_context(|| format!("payload {}: missing {}", base.display(), forge::payload::OS_RELEASE))?;
    use std::os::unix::fs::MetadataExt;
    Ok(m.mtime())
}

pub fn build_image(a: &BuildArgs) -> Result<image::BuildOutput> {
    let (layout, image_name) = match a.platform.as_str() {
        "generic" => ("base".to_string(), "flatcar_production_image.bin".to_string()),
        other => {
            let dir = repo_root().join("oem");
            let mut known: Vec<String> = std::fs::read_dir(&dir)
                .map(|d| d.filter_map(|e| e.ok()).filter(|e| e.path().is_dir()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            known.push("generic".into());
            known.sort();
            bail!("unknown platform '{other}' (known: {})", known.join(", "));
        }
    };
    let req = BuildRequest {
        payload: a.base.clone(),
        layout_file: a.layout_file.clone().unwrap_or_else(|| repo_root().join("layouts/disk_layout.json")),
        layout: a.layout.clone().unwrap_or(layout),
        output_dir: a.output_dir.clone(),
        image_name,
        ids: IdPolicy {
            seed: Seed::new(a.seed.clone()),
            partition_uuids: a.part_uuids.iter().cloned().collect(),
            fs_uuids: a.fs_uuids.iter().cloned().collect(),
            disk_guid: a.disk_guid,
        },
        epoch: match a.epoch {
            Some(e) => e,
            None => default_epoch(&a.base)?,
        },
        oem: None,
        esp_extra: Vec::new(),
    };
    let log = logger();
    let out = image::build(&req, &log)?;
    eprintln!("\nbuilt {}", out.image.display());
    eprintln!("  size {} B, {} B allocated (non-zero)", out.plan.total_bytes(), out.allocated);
    if let Some(v) = &out.verity_file {
        eprintln!("  verity {}", v.display());
    }
    for (name, d) in &out.stages {
        eprintln!("  {:<16} {:>8.3}s", name, d.as_secs_f64());
    }
    Ok(out)
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

fn run_tests(extra: &[String]) -> Result<()> {
    deps::ensure(true)?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut args = vec!["test".to_string(), "--workspace".into(), "--no-fail-fast".into()];
    args.extend(extra.iter().cloned());
    let st = std::process::Command::new(cargo).args(&args).current_dir(repo_root()).status()?;
    if !st.success() {
        bail!("tests failed");
    }
    Ok(())
}
