//! `cargo xtask build-image`: a disk image for a platform (or the generic
//! image) from a payload directory.

use crate::progress::{end_bars, logger, progress_bars};
use crate::util::{init_binary, repo_root};
use anyhow::{anyhow, Context, Result};
use forge::image::{self, BuildRequest};
use forge::layout::IdPolicy;
use forge::outdir::{IfLocked, OutputDir};
use forge::seed::Seed;
use std::path::{Path, PathBuf};
use uuid::Uuid;

#[derive(clap::Args, Clone)]
pub struct Args {
    /// Platform: `generic`, or a folder under the OEM directory.
    #[arg(long, default_value = "generic")]
    pub platform: String,
    /// Architecture: amd64 or arm64 (also x86-64, aarch64). The platform
    /// must list it; the payload (built for it by default) must be for it.
    #[arg(long, default_value = "amd64")]
    pub arch: forge::arch::Arch,
    /// Where platform folders live (default: oem/ in the checkout).
    #[arg(long)]
    pub oem_dir: Option<PathBuf>,
    /// Payload directory (root tree with usr/, usr/lib/os-release, usr/boot/vmlinuz).
    /// Default for platform builds: the demo payload, built from Debian packages and cached.
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// Cache for downloads, built tools and payloads (default: $FORGE_CACHE or .cache/).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Leave out the system extensions the platform lists (`extensions` of
    /// its platform.json), and the packages of its OEM extension's recipe
    /// (its overlay alone goes in): for a payload without a `packages.lock`,
    /// which they cannot be built against.
    #[arg(long)]
    pub no_extensions: bool,
    /// Where extension folders live (default: sysext/ in the checkout).
    #[arg(long)]
    pub sysext_dir: Option<PathBuf>,
    /// Keep the uncompressed image beside the compressed one.
    #[arg(long)]
    pub keep_raw: bool,
    /// Skip the checks before publishing (GPT, fsck, verity, full decode of the compressed disk).
    #[arg(long)]
    pub no_verify: bool,
    /// Where the artifacts go. A build holds a lock on it from start to end.
    #[arg(long, default_value = "out")]
    pub output_dir: PathBuf,
    /// When another build is writing to the output directory, wait for it
    /// (default: stop at once, naming it).
    #[arg(long)]
    pub wait: bool,
    /// Layout name (default: the platform's; `base` for generic).
    #[arg(long)]
    pub layout: Option<String>,
    /// Layout file (default: layouts/disk_layout.json of this checkout).
    #[arg(long)]
    pub layout_file: Option<PathBuf>,
    /// Seed for every derived GUID, UUID and salt.
    #[arg(long, default_value = forge::seed::DEFAULT_SEED)]
    pub seed: String,
    /// Timestamp for all files (default: $SOURCE_DATE_EPOCH, else the payload's os-release mtime).
    #[arg(long)]
    pub epoch: Option<i64>,
    /// Disk GUID (default: upstream's placeholder 00000000-0000-0000-0000-000000000001).
    #[arg(long)]
    pub disk_guid: Option<Uuid>,
    /// Override a partition GUID: LABEL=UUID (repeatable).
    #[arg(long = "part-uuid", value_parser = parse_label_uuid)]
    pub part_uuids: Vec<(String, Uuid)>,
    /// Override a filesystem UUID: LABEL=UUID (repeatable).
    #[arg(long = "fs-uuid", value_parser = parse_label_uuid)]
    pub fs_uuids: Vec<(String, Uuid)>,
}

fn parse_label_uuid(s: &str) -> Result<(String, Uuid), String> {
    let (l, u) = s.split_once('=').ok_or("expected LABEL=UUID")?;
    Ok((l.to_string(), Uuid::parse_str(u).map_err(|e| e.to_string())?))
}

/// The epoch of a build: $SOURCE_DATE_EPOCH, else the payload's os-release mtime.
pub fn default_epoch(base: &Path) -> Result<i64> {
    if let Some(v) = std::env::var_os("SOURCE_DATE_EPOCH").filter(|v| !v.is_empty()) {
        let s = v.to_string_lossy();
        return s.trim().parse().map_err(|_| anyhow!("SOURCE_DATE_EPOCH={s} is not an integer"));
    }
    forge::payload::os_release_mtime(base)
}

fn ids(a: &Args) -> IdPolicy {
    IdPolicy {
        seed: Seed::new(a.seed.clone()),
        partition_uuids: a.part_uuids.iter().cloned().collect(),
        fs_uuids: a.fs_uuids.iter().cloned().collect(),
        disk_guid: a.disk_guid,
    }
}

fn print_stages(stages: &[image::Stage]) {
    for s in stages {
        eprintln!("  {:<16} {:>8.3}s", s.name, s.elapsed.as_secs_f64());
    }
}

fn lock_output(a: &Args, log: &dyn Fn(&str)) -> Result<OutputDir> {
    let if_locked = if a.wait { IfLocked::Wait } else { IfLocked::Fail };
    OutputDir::lock(&a.output_dir, if_locked, log)
}

pub fn run(a: Args) -> Result<()> {
    let layout_file =
        a.layout_file.clone().unwrap_or_else(|| repo_root().join("layouts/disk_layout.json"));
    let log = logger();
    if a.platform == "generic" {
        let base =
            a.base.clone().ok_or_else(|| anyhow!("--platform generic needs --base PAYLOAD_DIR"))?;
        let ids = ids(&a);
        let plan = image::plan(&layout_file, a.layout.as_deref().unwrap_or("base"), &ids, &log)?;
        let payload = forge::payload::Payload::open(&base)?;
        let out_dir = lock_output(&a, &log)?;
        let req = BuildRequest {
            payload,
            plan,
            seed: ids.seed,
            image_name: "flatcar_production_image.bin".into(),
            epoch: match a.epoch {
                Some(e) => e,
                None => default_epoch(&base)?,
            },
            oem: None,
            extensions: Vec::new(),
            esp_extra: Vec::new(),
            boot: None,
            verify: !a.no_verify,
            publish: true,
        };
        let bars = progress_bars();
        let out =
            image::build(&req, &out_dir, &log, &forge::progress::reporter(bars.as_ref(), &log))?;
        end_bars();
        eprintln!("\nbuilt {}", out.image.display());
        eprintln!("  size {} B, {} B allocated (non-zero)", out.plan.total_bytes(), out.allocated);
        if let Some(v) = &out.verity_file {
            eprintln!("  verity {}", v.display());
        }
        print_stages(&out.stages);
        return Ok(());
    }
    let mut platform = forge::oem::load(
        &a.oem_dir.clone().unwrap_or_else(|| repo_root().join("oem")),
        &a.platform,
    )?;
    let left_out =
        if a.no_extensions { std::mem::take(&mut platform.extensions) } else { Vec::new() };
    // Before any work: the layout the platform (or --layout) names exists,
    // the platform is built for the architecture, and no other build is writing to the output directory.
    platform.check_layout(&forge::layout::LayoutFile::load(&layout_file)?, a.layout.as_deref())?;
    platform.arch(a.arch)?;
    let out_dir = lock_output(&a, &log)?;
    if !left_out.is_empty() {
        log(&format!(
            "--no-extensions: leaving out {} (listed in {})",
            left_out.join(", "),
            platform.file().display()
        ));
    }
    if let (true, Some(r)) = (a.no_extensions, &platform.sysext.recipe) {
        log(&format!("--no-extensions: the OEM extension {r} without its recipe's packages"));
    }
    crate::deps::ensure_build(a.arch)?;
    let base = match &a.base {
        Some(b) => b.clone(),
        None => crate::payload::build(None, a.cache_dir.as_deref(), a.arch)?,
    };
    let epoch = match a.epoch {
        Some(e) => e,
        None => default_epoch(&base)?,
    };
    // A payload for another architecture fails here, before anything is built.
    forge::payload::Payload::open(&base)?.check_arch(a.arch)?;
    let init = init_binary(a.arch, a.cache_dir.as_deref(), &log)?;
    let req = forge::platform::PlatformRequest {
        platform,
        arch: a.arch,
        cache: forge::recipe::Cache { root: crate::util::cache_dir(a.cache_dir.as_deref()) },
        payload: base,
        layout_file,
        layout: a.layout.clone(),
        ids: ids(&a),
        epoch,
        init,
        initramfs_modules: forge::platform::read_list(
            &repo_root().join("boot/initramfs-modules.txt"),
        )?,
        initramfs_files: forge::boot::initramfs::read_extra(&repo_root().join("boot/initramfs"))?,
        grub_template: std::fs::read_to_string(repo_root().join("boot/grub.cfg.j2"))
            .context("boot/grub.cfg.j2")?,
        keep_raw: a.keep_raw,
        threads: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        sdk_version: env!("CARGO_PKG_VERSION").into(),
        verify: !a.no_verify,
        progress: progress_bars(),
        sysext: Some(forge::platform::SysextInputs {
            sysext_dir: a.sysext_dir.clone().unwrap_or_else(|| repo_root().join("sysext")),
            recipe_epoch: crate::util::recipe_epoch()?,
            oem_packages: !a.no_extensions,
        }),
    };
    let out = forge::platform::build(&req, &out_dir, &log)?;
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
