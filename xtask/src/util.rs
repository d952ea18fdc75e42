//! Helpers shared by the commands: where the checkout and the cache are, the
//! recipe epoch, and the forge-init binary.

use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};

/// The checkout this binary was built from (layouts/, oem/ live there).
pub fn repo_root() -> PathBuf {
    if let Some(r) = std::env::var_os("FORGE_REPO") {
        return PathBuf::from(r);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
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
    // Static, and with the checkout, target directory and cargo home
    // remapped, so the binary (and the image) is the same whoever builds it
    // and wherever. With --target the flags reach forge-init and its
    // dependencies, not build scripts.
    let mut flags = vec!["-Ctarget-feature=+crt-static".to_string()];
    flags.extend(forge::rustbuild::remap_flags(&[
        (&repo_root(), "/forge"),
        (&target_dir, "/target"),
    ]));
    let st = forge::tools::command(cargo)
        .args(["build", "--quiet", "--release", "-p", "forge-init", "--target", target])
        .current_dir(repo_root())
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", forge::rustbuild::encode(&flags))
        .env_remove("RUSTFLAGS")
        .status()
        .context("running cargo to build forge-init")?;
    if !st.success() {
        bail!("building forge-init failed");
    }
    Ok(target_dir.join(target).join("release/forge-init"))
}
