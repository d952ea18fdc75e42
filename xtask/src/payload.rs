//! `cargo xtask payload`: a payload built from a recipe (default: the demo
//! payload), or reused from the cache; prints its root directory.

use crate::progress::{end_bars, logger, progress_bars};
use crate::util::{cache_dir, recipe_epoch, repo_root};
use anyhow::Result;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    pub recipe: Option<PathBuf>,
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// The architecture the payload is for (its packages, its binaries).
    #[arg(long, default_value = "amd64")]
    pub arch: forge::arch::Arch,
}

pub fn run(a: Args) -> Result<()> {
    let root = build(a.recipe.as_deref(), a.cache_dir.as_deref(), a.arch)?;
    println!("{}", root.display());
    Ok(())
}

/// Builds (or finds in the cache) the payload of `recipe` (default:
/// payloads/demo of the checkout) for `arch` and returns its root directory.
pub fn build(
    recipe: Option<&Path>,
    cache: Option<&Path>,
    arch: forge::arch::Arch,
) -> Result<PathBuf> {
    let dir = recipe.map(Path::to_path_buf).unwrap_or_else(|| repo_root().join("payloads/demo"));
    let r = forge::recipe::Recipe::load(&dir, arch)?;
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
