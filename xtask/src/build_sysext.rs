//! `cargo xtask build-sysext NAME`: the system extension `sysext/NAME/` as
//! `NAME.raw` (EROFS) for a base payload (default: the demo payload); the
//! work is `forge::sysext::build`.

use crate::progress::{end_bars, logger, progress_bars};
use crate::util::{cache_dir, recipe_epoch, repo_root};
use anyhow::Result;
use forge::outdir::{IfLocked, OutputDir};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The extension: a folder under the sysext directory.
    pub name: String,
    /// Where the image goes. A build holds a lock on it from start to end.
    #[arg(long, default_value = "out")]
    pub output_dir: PathBuf,
    /// The base payload's root directory (with `packages.lock` beside it);
    /// default: the demo payload, built from its recipe or taken from the cache.
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// Where extension folders live (default: sysext/ in the checkout).
    #[arg(long)]
    pub sysext_dir: Option<PathBuf>,
    /// Cache for downloads and assembled trees (default: $FORGE_CACHE or .cache/).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Seed the image's UUID is derived from.
    #[arg(long, default_value = forge::seed::DEFAULT_SEED)]
    pub seed: String,
    /// Timestamp of every file (default: $SOURCE_DATE_EPOCH, else the base's os-release mtime).
    #[arg(long)]
    pub epoch: Option<i64>,
    /// When another build is writing to the output directory, wait for it.
    #[arg(long)]
    pub wait: bool,
    /// The architecture (the base payload's; the demo payload is built for it).
    #[arg(long, default_value = "amd64")]
    pub arch: forge::arch::Arch,
}

pub fn run(a: Args) -> Result<()> {
    let start = std::time::Instant::now();
    let log = logger();
    let base = match &a.base {
        Some(b) => b.clone(),
        None => crate::payload::build(None, a.cache_dir.as_deref(), a.arch)?,
    };
    let epoch = match a.epoch {
        Some(e) => e,
        None => crate::build_image::default_epoch(&base)?,
    };
    let cache = forge::recipe::Cache { root: cache_dir(a.cache_dir.as_deref()) };
    let if_locked = if a.wait { IfLocked::Wait } else { IfLocked::Fail };
    let out = OutputDir::lock(&a.output_dir, if_locked, &log)?;
    let req = forge::sysext::Request {
        sysext_dir: a.sysext_dir.clone().unwrap_or_else(|| repo_root().join("sysext")),
        name: a.name.clone(),
        base,
        cache: &cache,
        arch: a.arch,
        recipe_epoch: recipe_epoch()?,
        epoch,
        seed: forge::seed::Seed::new(a.seed.clone()),
        release_extra: Vec::new(),
    };
    let bars = progress_bars();
    let built =
        forge::sysext::build(&req, &out, &log, &forge::progress::reporter(bars.as_ref(), &log))?;
    end_bars();
    eprintln!(
        "{}: {} B, {} packages, {:.1}s",
        built.path.display(),
        built.bytes,
        built.packages.len(),
        start.elapsed().as_secs_f64()
    );
    println!("{}", built.path.display());
    Ok(())
}
