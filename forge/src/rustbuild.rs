//! Rust binaries that go into an image (forge-init, crates from the
//! registry), built so that their bytes do not depend on who builds them.
//!
//! rustc embeds source paths in panic messages and debug info: the cargo
//! home (`$CARGO_HOME/registry/src/…` for every dependency), the checkout
//! and the target directory. Those differ between users and directories, so
//! every build here maps them to fixed prefixes with `--remap-path-prefix`
//! (the last matching mapping wins, so the most specific comes last). The
//! flags are passed as `CARGO_ENCODED_RUSTFLAGS`, which also reaches every
//! dependency (rustc arguments after `cargo rustc --` reach only the last
//! crate), and which keeps paths with spaces intact.

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The fixed prefix the cargo home is mapped to.
pub const CARGO_HOME_PREFIX: &str = "/cargo";

/// The cargo home cargo uses: `$CARGO_HOME`, else `$HOME/.cargo`.
pub fn cargo_home() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
}

/// The path mappings, in order: the cargo home to [`CARGO_HOME_PREFIX`],
/// then each of `extra` (path, fixed name). Paths are made absolute (and
/// canonical where they exist, as a second spelling), so a relative or
/// symlinked spelling of the same directory maps too.
fn mappings(extra: &[(&Path, &str)]) -> Vec<(PathBuf, String)> {
    let mut pairs: Vec<(PathBuf, String)> = Vec::new();
    if let Some(h) = cargo_home() {
        pairs.push((h, CARGO_HOME_PREFIX.to_string()));
    }
    pairs.extend(extra.iter().map(|(p, to)| (p.to_path_buf(), to.to_string())));
    let mut out = Vec::new();
    for (from, to) in pairs {
        let abs = std::path::absolute(&from).unwrap_or(from);
        if let Ok(c) = abs.canonicalize() {
            if c != abs {
                out.push((abs.clone(), to.clone()));
                out.push((c, to));
                continue;
            }
        }
        out.push((abs, to));
    }
    out
}

/// `--remap-path-prefix` flags for [`mappings`] (the last matching one wins,
/// so the most specific comes last).
pub fn remap_flags(extra: &[(&Path, &str)]) -> Vec<String> {
    mappings(extra)
        .into_iter()
        .map(|(from, to)| format!("--remap-path-prefix={}={to}", from.display()))
        .collect()
}

/// The same mappings for C and assembly compiled by build scripts (the `cc`
/// crate reads `CFLAGS`/`CXXFLAGS`): `-ffile-prefix-map` covers `__FILE__`
/// and the debug info's compilation directory, which the assembler
/// otherwise records (e.g. vmw_backdoor's assembly in afterburn). Flags
/// are separated by spaces there, so a path with a space is left unmapped
/// and returned in the second list.
pub fn cflags(extra: &[(&Path, &str)]) -> (String, Vec<PathBuf>) {
    let (mapped, unmapped): (Vec<_>, Vec<_>) = mappings(extra)
        .into_iter()
        .partition(|(from, _)| !from.to_string_lossy().contains(char::is_whitespace));
    let flags: Vec<String> = mapped
        .iter()
        .map(|(from, to)| format!("-ffile-prefix-map={}={to}", from.display()))
        .collect();
    (flags.join(" "), unmapped.into_iter().map(|(from, _)| from).collect())
}

/// `CARGO_ENCODED_RUSTFLAGS`: the flags separated by 0x1f.
pub fn encode(flags: &[String]) -> String {
    flags.join("\u{1f}")
}

/// A short hash of `rustc -vV` (the compiler's version, commit and host):
/// binaries built by another compiler are other bytes, so caches of built
/// binaries are keyed by it.
pub fn toolchain_id() -> Result<String> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = crate::tools::command(&rustc)
        .arg("-vV")
        .output()
        .with_context(|| format!("running {} -vV", rustc.to_string_lossy()))?;
    if !out.status.success() {
        bail!("{} -vV failed", rustc.to_string_lossy());
    }
    let mut h = Sha256::new();
    h.update(&out.stdout);
    Ok(hex::encode(h.finalize())[..12].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_mappings_come_after_the_cargo_home() {
        let d = tempfile::tempdir().unwrap();
        let flags = remap_flags(&[(d.path(), "/forge")]);
        let last = flags.last().unwrap();
        assert!(last.ends_with("=/forge"), "{flags:?}");
        assert!(last.contains(&d.path().canonicalize().unwrap().display().to_string()));
        if cargo_home().is_some() {
            assert!(flags[0].ends_with(&format!("={CARGO_HOME_PREFIX}")), "{flags:?}");
        }
    }

    #[test]
    fn cflags_map_the_same_prefixes() {
        let d = tempfile::tempdir().unwrap();
        let (c, unmapped) = cflags(&[(d.path(), "/target")]);
        assert!(unmapped.is_empty());
        assert!(
            c.split(' ').next_back().unwrap().starts_with("-ffile-prefix-map=")
                && c.ends_with("=/target"),
            "{c}"
        );
    }

    #[test]
    fn encoded_flags_keep_spaces() {
        let f = vec!["--remap-path-prefix=/a b=/x".to_string(), "-Cfoo".to_string()];
        assert_eq!(encode(&f), "--remap-path-prefix=/a b=/x\u{1f}-Cfoo");
    }
}
