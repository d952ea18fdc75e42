//! The reproducibility check of `cargo xtask test`: the same commit built
//! cold by another user gives the root build's bytes.
//!
//! "Cold" and "another user" mean: uid 65534 (setpriv, no groups), its own
//! copy of the checkout in another directory, its own cargo home (crates are
//! fetched from the registry again), its own build cache seeded only with
//! the Debian downloads (so the payload is unpacked, afterburn compiled and
//! forge-init compiled by that user), and its own copy of the toolchain at
//! another path (rustup's home is under /root, which other users cannot
//! read). Every path that differs is one a binary could embed. Each
//! architecture is built in turn in that one set-up (arm64's forge-init and
//! afterburn cross-compiled by Debian's rustc-web, against the standard
//! library and libraries that user's cache downloads and unpacks). One
//! thing is taken from the root build: the crate binaries cross-compiled
//! for another architecture (arm64's afterburn), whose build alone would
//! take a tenth of CI; forge-init, cross-compiled the same way, is built
//! by that user.

use crate::util::{cache_dir, repo_root};
use anyhow::{bail, Context, Result};
use forge::arch::Arch;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const UID: u32 = 65534;

/// Where the other user's build ran, and what it produced.
pub struct OtherBuild {
    pub arch: forge::arch::Arch,
    pub out_dir: PathBuf,
    pub log: PathBuf,
    pub ok: bool,
    pub secs: f64,
}

/// Builds the Hetzner image for each of `arches` as [`UID`] from a fresh
/// copy of the checkout under `target/ci-other-user/`. Needs root (to switch users).
pub fn build(arches: &[forge::arch::Arch], log: &dyn Fn(&str)) -> Result<Vec<OtherBuild>> {
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
    // (`debs` and each architecture's apt lists, `apt-<arch>`.)
    let downloads = std::fs::read_dir(&root_cache)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect::<Vec<_>>())
        .unwrap_or_default();
    for d in downloads {
        let n = d.to_string_lossy();
        if n == "debs" || n.starts_with("apt-") {
            run(forge::tools::command("cp").arg("-a").arg(root_cache.join(&d)).arg(&cache))?;
        }
    }
    // The crate binaries (afterburn) cross-compiled for other architectures
    // by the root build: cross-compiling afterburn again takes about four
    // and a half minutes of CI's two cores. What stays cold for every
    // architecture: forge-init (cross-compiled through the same toolchain,
    // remaps and sysroot), the native afterburn, the payload, the
    // extensions and the image.
    let crates = root_cache.join("crates");
    let foreign: Vec<String> = Arch::ALL
        .into_iter()
        .filter(|a| Some(*a) != Arch::host())
        .map(|a| format!("-{}-", a.debian()))
        .collect();
    for e in std::fs::read_dir(&crates).into_iter().flatten().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if !n.starts_with("target") && foreign.iter().any(|f| n.contains(f.as_str())) {
            std::fs::create_dir_all(cache.join("crates"))?;
            run(forge::tools::command("cp").arg("-a").arg(e.path()).arg(cache.join("crates")))?;
            log(&format!("test: the other user takes {n} from the root build's cache"));
        }
    }
    let (home, cargo_home) = (base.join("home"), base.join("cargo-home"));
    for d in [&home, &cargo_home] {
        std::fs::create_dir_all(d)?;
    }
    run(forge::tools::command("chown").args(["-R", &format!("{UID}:{UID}")]).arg(&base))?;

    let path = format!(
        "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        toolchain.join("bin").display()
    );
    let mut built = Vec::new();
    for arch in arches {
        let out = base.join(format!("out-{arch}"));
        let logfile = base.join(format!("build-{arch}.log"));
        log(&format!(
            "test: cold {arch} Hetzner build as uid {UID} in {} (own clone, cargo home, cache; log {})",
            src.display(),
            logfile.display()
        ));
        let t = std::time::Instant::now();
        let logf = std::fs::File::create(&logfile)
            .with_context(|| format!("{}: cannot create", logfile.display()))?;
        run(forge::tools::command("chown").arg(format!("{UID}:{UID}")).arg(&logfile))?;
        let st = forge::tools::command("setpriv")
            .args(["--reuid", &UID.to_string(), "--regid", &UID.to_string(), "--clear-groups"])
            .args(["env", "-i"])
            .arg(format!("HOME={}", home.display()))
            .arg(format!("PATH={path}"))
            .arg(format!("CARGO_HOME={}", cargo_home.display()))
            .arg(format!("FORGE_CACHE={}", cache.display()))
            .arg("USER=nobody")
            .args([
                "cargo",
                "xtask",
                "build-image",
                "--platform",
                "hetzner",
                "--arch",
                arch.debian(),
            ])
            .arg("--output-dir")
            .arg(&out)
            .current_dir(&src)
            .stdout(logf.try_clone()?)
            .stderr(logf)
            .status()
            .context("running setpriv")?;
        built.push(OtherBuild {
            arch: *arch,
            out_dir: out,
            log: logfile,
            ok: st.success(),
            secs: t.elapsed().as_secs_f64(),
        });
    }
    Ok(built)
}

fn run(c: &mut Command) -> Result<()> {
    let o = c.output().with_context(|| format!("running {c:?}"))?;
    if !o.status.success() {
        bail!("{c:?} failed: {}", String::from_utf8_lossy(&o.stderr).trim());
    }
    Ok(())
}
