//! The reproducibility check of `cargo xtask test`: the same commit built
//! cold by another user gives the root build's bytes.
//!
//! "Cold" and "another user" mean: uid 65534 (setpriv, no groups), its own
//! copy of the checkout in another directory, its own cargo home (crates are
//! fetched from the registry again), its own build cache seeded only with
//! the Debian downloads (so the payload is unpacked, afterburn compiled and
//! forge-init compiled by that user), and its own copy of the toolchain at
//! another path (rustup's home is under /root, which other users cannot
//! read). Every path that differs is one a binary could embed.

use crate::util::{cache_dir, repo_root};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

pub const UID: u32 = 65534;

/// Where the other user's build ran, and what it produced.
pub struct OtherBuild {
    pub out_dir: PathBuf,
    pub log: PathBuf,
    pub ok: bool,
    pub secs: f64,
}

/// Builds the Hetzner image as [`UID`] from a fresh copy of the checkout
/// under `target/ci-other-user/`. Needs root (to switch users).
pub fn build(log: &dyn Fn(&str)) -> Result<OtherBuild> {
    let base = repo_root().join("target/ci-other-user");
    if base.exists() {
        std::fs::remove_dir_all(&base)
            .with_context(|| format!("{}: cannot remove the last run", base.display()))?;
    }
    std::fs::create_dir_all(&base).with_context(|| format!("{}: cannot create", base.display()))?;

    // Its own clone, plus the working tree's uncommitted changes (so a
    // developer's run checks what they are about to commit).
    let src = base.join("src");
    run(forge::tools::command("git")
        .args(["clone", "-q", "--no-hardlinks"])
        .arg(repo_root())
        .arg(&src))?;
    let changed = forge::tools::command("git")
        .args(["ls-files", "-z", "--modified", "--others", "--exclude-standard"])
        .current_dir(repo_root())
        .output()
        .context("git ls-files")?;
    for rel in changed.stdout.split(|b| *b == 0).filter(|r| !r.is_empty()) {
        let rel = Path::new(std::str::from_utf8(rel).context("a non-UTF-8 file name")?);
        let (from, to) = (repo_root().join(rel), src.join(rel));
        if from.is_file() {
            std::fs::create_dir_all(to.parent().unwrap())?;
            std::fs::copy(&from, &to).with_context(|| format!("copying {}", from.display()))?;
        } else if !from.exists() {
            let _ = std::fs::remove_file(&to); // deleted in the working tree
        }
    }

    // Its own toolchain path: a hard-linked copy of the active one.
    let sysroot = forge::tools::command(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .args(["--print", "sysroot"])
        .output()
        .context("rustc --print sysroot")?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    let toolchain = base.join("toolchain");
    if run(forge::tools::command("cp").arg("-al").arg(&sysroot).arg(&toolchain)).is_err() {
        let _ = std::fs::remove_dir_all(&toolchain);
        run(forge::tools::command("cp").arg("-a").arg(&sysroot).arg(&toolchain))?;
    }

    // Its own cache: Debian downloads only, nothing built.
    let cache = base.join("cache");
    std::fs::create_dir_all(&cache)?;
    let root_cache = cache_dir(None);
    for d in ["apt", "debs"] {
        if root_cache.join(d).exists() {
            run(forge::tools::command("cp").arg("-a").arg(root_cache.join(d)).arg(&cache))?;
        }
    }
    let (home, cargo_home, out) = (base.join("home"), base.join("cargo-home"), base.join("out"));
    for d in [&home, &cargo_home] {
        std::fs::create_dir_all(d)?;
    }
    run(forge::tools::command("chown").args(["-R", &format!("{UID}:{UID}")]).arg(&base))?;

    let logfile = base.join("build.log");
    log(&format!(
        "test: cold Hetzner build as uid {UID} in {} (own clone, cargo home, cache; log {})",
        src.display(),
        logfile.display()
    ));
    let t = std::time::Instant::now();
    let path = format!(
        "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        toolchain.join("bin").display()
    );
    let logf = std::fs::File::create(&logfile)
        .with_context(|| format!("{}: cannot create", logfile.display()))?;
    let st = forge::tools::command("setpriv")
        .args(["--reuid", &UID.to_string(), "--regid", &UID.to_string(), "--clear-groups"])
        .args(["env", "-i"])
        .arg(format!("HOME={}", home.display()))
        .arg(format!("PATH={path}"))
        .arg(format!("CARGO_HOME={}", cargo_home.display()))
        .arg(format!("FORGE_CACHE={}", cache.display()))
        .arg("USER=nobody")
        .args(["cargo", "xtask", "build-image", "--platform", "hetzner", "--output-dir"])
        .arg(&out)
        .current_dir(&src)
        .stdout(logf.try_clone()?)
        .stderr(logf)
        .status()
        .context("running setpriv")?;
    Ok(OtherBuild { out_dir: out, log: logfile, ok: st.success(), secs: t.elapsed().as_secs_f64() })
}

fn run(c: &mut Command) -> Result<()> {
    let o = c.output().with_context(|| format!("running {c:?}"))?;
    if !o.status.success() {
        bail!("{c:?} failed: {}", String::from_utf8_lossy(&o.stderr).trim());
    }
    Ok(())
}
