//! `cargo xtask sdk-image`: the SDK container image (forge-sdk:latest) from
//! sdk/, imported with podman (or docker).

use crate::progress::{logger, progress_bars};
use crate::util::{cache_dir, recipe_epoch, repo_root};
use anyhow::{anyhow, Result};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Container engine (default: podman if present, else docker).
    #[arg(long)]
    pub engine: Option<String>,
}

/// The SDK image: the sdk/ recipe's root tree (built without root, like a
/// payload), packed into a tar with fixed owners, order and times, imported
/// as `forge-sdk:latest` (and `forge-sdk:<recipe hash>`).
pub fn run(a: Args) -> Result<()> {
    let engine = match a.engine {
        Some(e) => e,
        None => ["podman", "docker"]
            .iter()
            .find(|e| forge::tools::find(e).is_some())
            .map(|e| e.to_string())
            .ok_or_else(|| {
                anyhow!("neither podman nor docker is installed (apt-get install podman runc)")
            })?,
    };
    // The container runs on this machine: its packages are this machine's architecture.
    let host = forge::arch::Arch::host()
        .ok_or_else(|| anyhow!("the SDK container is built for amd64 or arm64 machines only"))?;
    let recipe = forge::recipe::Recipe::load(&repo_root().join("sdk"), host)?;
    let c = forge::recipe::Cache { root: cache_dir(a.cache_dir.as_deref()) };
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
    forge::recipe::pack_tar(&root, &tar, epoch)?;
    log(&format!("importing into {engine} as forge-sdk:latest and forge-sdk:{tag}"));
    let id = forge::fs::run(
        forge::cmd!(
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
        forge::cmd!(&engine, "tag", format!("forge-sdk:{tag}"), "forge-sdk:latest"),
        &format!("{engine} tag"),
    )?;
    let _ = std::fs::remove_file(&tar);
    println!("forge-sdk:latest ({})", id.trim().lines().last().unwrap_or(""));
    Ok(())
}
