//! Helpers shared by the commands: where the checkout and the cache are, the
//! recipe epoch, and the forge-init binary.

use anyhow::{anyhow, Result};
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

/// The static forge-init binary for `arch`: `$FORGE_INIT_<ARCH>`
/// (`FORGE_INIT_AMD64`, `FORGE_INIT_ARM64`), or built from this workspace
/// by the arch's toolchain (another architecture's is cross-built, its
/// target directory `target/cross`).
pub fn init_binary(
    arch: forge::arch::Arch,
    cache: Option<&Path>,
    log: &dyn Fn(&str),
) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(init_env(arch)) {
        return Ok(PathBuf::from(p));
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    let cache = forge::recipe::Cache { root: cache_dir(cache) };
    let tc = forge::rustbuild::Toolchain::for_arch(arch, &cache, log)?;
    // Another toolchain's artifacts stay out of the workspace's own.
    let target_dir = if tc.cross { target_dir.join("cross") } else { target_dir };
    log(&format!(
        "boot: building forge-init (static, {arch}{})",
        if tc.cross { ", cross-compiled" } else { "" }
    ));
    forge::rustbuild::build_static(&tc, &repo_root(), &target_dir, "forge-init")
}

/// The variable that names a prebuilt forge-init for `arch`.
pub fn init_env(arch: forge::arch::Arch) -> String {
    format!("FORGE_INIT_{}", arch.debian().to_uppercase())
}
