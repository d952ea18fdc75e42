//! Payload recipes: a root tree assembled without root from Debian packages
//! (`apt-get` resolves and downloads into our cache; `dpkg-deb` + our own
//! tar unpacking; no chroot, no maintainer scripts), binaries built from the
//! crate registry, and an overlay of files. The result is a payload directory
//! (see `payload.rs`), cached by a hash of everything that goes into it.
//!
//! A recipe is built for one architecture (`arch::Arch`): apt resolves and
//! downloads that architecture's packages (no emulation: nothing of the
//! payload runs at build time), and crate binaries are built for it (see
//! `rustbuild`).
//!
//! A recipe directory holds `packages.txt` (one package per line; a line
//! may end in Debian's architecture restriction, `[arm64]` or `[!arm64]`,
//! for a package of some architectures only, e.g. the kernel's flavour),
//! optionally `crates.txt` (`crate version binary destination`),
//! optionally `debs/*.deb` (local packages, e.g. a site's own agent), and
//! `overlay/` (copied over the unpacked packages).
//!
//! Local packages are unpacked after the downloaded ones, in file-name
//! order, with the same contained unpacker (`unpack.rs`); apt does not see
//! them, so their dependencies belong in `packages.txt`. They are part of
//! the recipe's hash (the whole recipe directory is hashed) and are listed in
//! the payload's `packages.lock` as `name version debs/<file>`. A recipe
//! whose packages are all local may leave `packages.txt` empty or out.
//!
//! Unpacking never writes outside the payload directory: see `unpack.rs`
//! for how symlinks, `..`, absolute paths and hard links are handled.

use crate::arch::Arch;
use crate::fs::tree::set_times;
use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct CrateBin {
    pub krate: String,
    pub version: String,
    pub binary: String,
    pub dest: String,
}

#[derive(Clone, Debug)]
pub struct Recipe {
    pub dir: PathBuf,
    pub name: String,
    /// `payload` (an OS payload: kernel, modules, the payload contract) or
    /// `rootfs` (a plain root tree, e.g. the SDK container), from the file `kind`.
    pub kind: String,
    /// The architecture the tree is for.
    pub arch: Arch,
    /// The packages for `arch` (restrictions applied).
    pub packages: Vec<String>,
    pub crates: Vec<CrateBin>,
    /// The recipe's own packages, `debs/*.deb`, in file-name order.
    pub local_debs: Vec<PathBuf>,
    /// Packages (resolved by apt, or local) that are not unpacked nor
    /// listed in `packages.lock`, because the tree is
    /// used on top of others that have them (a system extension on its
    /// base payload: see `sysext.rs`). Empty for a payload.
    pub exclude: std::collections::BTreeSet<String>,
}

fn lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#'))
}

/// One line of `packages.txt` for `arch`: the package, or None when the
/// line's restriction (`name [amd64 arm64]`, `name [!arm64]`) leaves it out.
fn package_for(line: &str, arch: Arch) -> Result<Option<String>> {
    let Some((name, rest)) = line.split_once('[') else {
        if line.split_whitespace().count() != 1 {
            bail!(
                "'{line}': one package per line (an architecture restriction is `name [arch ...]`)"
            );
        }
        return Ok(Some(line.to_string()));
    };
    let name = name.trim();
    let list = rest
        .strip_suffix(']')
        .ok_or_else(|| anyhow!("'{line}': an architecture restriction ends with ']'"))?;
    if name.is_empty() || name.split_whitespace().count() != 1 {
        bail!("'{line}': one package name before the architecture restriction");
    }
    let words: Vec<&str> = list.split_whitespace().collect();
    if words.is_empty() {
        bail!("'{line}': an empty architecture restriction");
    }
    let negated = words[0].starts_with('!');
    let mut hit = false;
    for w in &words {
        let (neg, a) = match w.strip_prefix('!') {
            Some(a) => (true, a),
            None => (false, *w),
        };
        if neg != negated {
            bail!("'{line}': a restriction lists architectures or excludes them (`!`), not both");
        }
        hit |= Arch::parse(a).with_context(|| format!("'{line}'"))? == arch;
    }
    Ok((hit != negated).then(|| name.to_string()))
}

impl Recipe {
    /// Loads the recipe in `dir` for `arch`.
    pub fn load(dir: &Path, arch: Arch) -> Result<Recipe> {
        let local_debs = local_debs(dir)?;
        let p = dir.join("packages.txt");
        let text = match std::fs::read_to_string(&p) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !local_debs.is_empty() => {
                String::new()
            }
            r => r.with_context(|| {
                format!("{}: cannot read the recipe's package list", p.display())
            })?,
        };
        let mut packages = Vec::new();
        for l in lines(&text) {
            if let Some(name) = package_for(l, arch).with_context(|| p.display().to_string())? {
                packages.push(name);
            }
        }
        if packages.is_empty() && local_debs.is_empty() {
            bail!("{}: no packages for {arch} (and no local packages in debs/)", p.display());
        }
        let mut crates = Vec::new();
        if let Ok(t) = std::fs::read_to_string(dir.join("crates.txt")) {
            for l in lines(&t) {
                let f: Vec<&str> = l.split_whitespace().collect();
                if f.len() != 4 {
                    bail!(
                        "{}: '{l}': expected `crate version binary destination`",
                        dir.join("crates.txt").display()
                    );
                }
                crates.push(CrateBin {
                    krate: f[0].into(),
                    version: f[1].into(),
                    binary: f[2].into(),
                    dest: f[3].into(),
                });
            }
        }
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "payload".into());
        let kind = std::fs::read_to_string(dir.join("kind"))
            .map(|k| k.trim().to_string())
            .unwrap_or_else(|_| "payload".into());
        if kind != "payload" && kind != "rootfs" {
            bail!("{}: kind '{kind}' is neither payload nor rootfs", dir.join("kind").display());
        }
        Ok(Recipe {
            dir: dir.to_path_buf(),
            name,
            kind,
            arch,
            packages,
            crates,
            local_debs,
            exclude: Default::default(),
        })
    }

    /// Hash of the recipe's files (package list, crate list, local
    /// packages, overlay tree: the whole recipe directory).
    pub fn hash(&self) -> Result<String> {
        let mut h = Sha256::new();
        h.update(b"forge-recipe-v1\0");
        hash_tree(&self.dir, &self.dir, &mut h)?;
        Ok(hex::encode(h.finalize()))
    }
}

/// `dir/debs/*.deb`, sorted by file name.
fn local_debs(dir: &Path) -> Result<Vec<PathBuf>> {
    let d = dir.join("debs");
    let entries = match std::fs::read_dir(&d) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("{}: cannot list", d.display())),
    };
    let mut v = Vec::new();
    for e in entries {
        let p = e.with_context(|| format!("{}: cannot list", d.display()))?.path();
        if p.extension().is_some_and(|x| x == "deb") {
            v.push(p);
        }
    }
    v.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(v)
}

/// Package name and version from a .deb's control file.
fn deb_identity(deb: &Path) -> Result<(String, String)> {
    let dpkg_deb = crate::tools::path(crate::tools::Tool { program: "dpkg-deb", package: "dpkg" })?;
    let out = crate::cmd!(dpkg_deb, "--field", deb, "Package", "Version")
        .stderr_to_stdout()
        .stdout_capture()
        .unchecked()
        .run()
        .with_context(|| format!("{}: cannot run dpkg-deb --field", deb.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("{}: not a Debian package: {}", deb.display(), text.trim());
    }
    let field = |f: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(f).and_then(|r| r.strip_prefix(':')))
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| anyhow!("{}: the control file has no {f} field", deb.display()))
    };
    Ok((field("Package")?, field("Version")?))
}

fn hash_tree(root: &Path, p: &Path, h: &mut Sha256) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(p)
        .and_then(|d| d.collect::<std::io::Result<Vec<_>>>())
        .with_context(|| format!("{}: cannot list", p.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let rel = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        let m = std::fs::symlink_metadata(&path)
            .with_context(|| format!("{}: cannot stat", path.display()))?;
        use std::os::unix::fs::PermissionsExt;
        // Only what reaches the payload: the type, and a file's mode as git
        // records it (the checkout's umask does not matter).
        let kind = if m.is_dir() {
            "d".to_string()
        } else if m.file_type().is_symlink() {
            "l".to_string()
        } else {
            format!("{:o}", crate::fs::tree::checkout_mode(m.permissions().mode()))
        };
        h.update(format!("{rel}\0{kind}\0").as_bytes());
        if m.file_type().is_symlink() {
            let t = std::fs::read_link(&path)
                .with_context(|| format!("{}: cannot read the link", path.display()))?;
            h.update(t.to_string_lossy().as_bytes());
        } else if m.is_dir() {
            hash_tree(root, &path, h)?;
        } else {
            h.update(
                std::fs::read(&path).with_context(|| format!("{}: cannot read", path.display()))?,
            );
        }
        h.update(b"\0");
    }
    Ok(())
}

/// Where a build keeps downloads and finished payloads.
pub struct Cache {
    pub root: PathBuf,
}

impl Cache {
    /// apt's lists and state for one architecture.
    fn apt(&self, arch: Arch) -> PathBuf {
        self.root.join(format!("apt-{arch}"))
    }
    fn debs(&self) -> PathBuf {
        self.root.join("debs")
    }
}

/// Builds (or reuses from the cache) the payload for `recipe`; returns the
/// payload directory. `progress` gets (step, bytes done, bytes total) for the download and
/// the unpacking.
pub fn build(
    recipe: &Recipe,
    cache: &Cache,
    epoch: i64,
    log: &dyn Fn(&str),
    progress: &dyn Fn(&str, u64, u64),
) -> Result<PathBuf> {
    let bins: Vec<(CrateBin, PathBuf)> = recipe
        .crates
        .iter()
        .map(|c| Ok((c.clone(), cargo_install(c, recipe.arch, cache, log)?)))
        .collect::<Result<_>>()?;
    let mut h = Sha256::new();
    h.update(PAYLOAD_SCHEME.as_bytes());
    h.update(recipe.hash()?.as_bytes());
    h.update(format!("arch\0{}\0", recipe.arch).as_bytes());
    h.update(epoch.to_le_bytes());
    // Only when there is one, so payloads keep their keys.
    if !recipe.exclude.is_empty() {
        h.update(b"exclude\0");
        for n in &recipe.exclude {
            h.update(n.as_bytes());
            h.update(b"\0");
        }
    }
    for (c, p) in &bins {
        h.update(c.dest.as_bytes());
        h.update(std::fs::read(p)?);
    }
    let key = hex::encode(h.finalize());
    let out =
        cache.root.join("payloads").join(format!("{}-{}-{}", recipe.name, recipe.arch, &key[..16]));
    let root = out.join("root");
    if out.join(".complete").exists() {
        log(&format!("payload '{}': cached at {}", recipe.name, root.display()));
        return Ok(root);
    }
    if out.exists() {
        std::fs::remove_dir_all(&out)
            .with_context(|| format!("{}: cannot clear a stale payload", out.display()))?;
    }
    std::fs::create_dir_all(&out)?;
    let mut debs = if recipe.packages.is_empty() {
        Vec::new()
    } else {
        download(recipe, cache, log, progress)?
    };
    let mut lock: Vec<String> = debs.iter().map(|(n, v, _)| format!("{n} {v}\n")).collect();
    for deb in &recipe.local_debs {
        let (n, v) = deb_identity(deb)?;
        let file = deb.file_name().unwrap().to_string_lossy();
        lock.push(format!("{n} {v} debs/{file}\n"));
        debs.push((n, v, deb.clone()));
    }
    if !recipe.exclude.is_empty() {
        let before = debs.len();
        let keep: Vec<bool> = debs.iter().map(|(n, _, _)| !recipe.exclude.contains(n)).collect();
        let mut k = keep.iter();
        debs.retain(|_| *k.next().unwrap());
        let mut k = keep.iter();
        lock.retain(|_| *k.next().unwrap());
        log(&format!(
            "payload '{}': {} of {before} packages are provided by what it extends; {} left",
            recipe.name,
            before - debs.len(),
            debs.len()
        ));
    }
    let lock: String = lock.concat();
    let lock_path = out.join("packages.lock");
    std::fs::write(&lock_path, lock)
        .with_context(|| format!("{}: cannot write", lock_path.display()))?;
    let staging = out.join("root.partial");
    std::fs::create_dir_all(&staging)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("{}: cannot set the mode", staging.display()))?;
    }
    // Directories and files the build creates itself (merged-/usr
    // directories, depmod's output) get 0755/0644 whatever the builder's
    // umask: the payload's modes must not depend on who builds it.
    let _umask = Umask::set(0o022);
    let tree = crate::unpack::Root::open(&staging)?;
    log(&format!("payload '{}': unpacking {} packages", recipe.name, debs.len()));
    let sizes: Vec<u64> =
        debs.iter().map(|(_, _, d)| std::fs::metadata(d).map(|m| m.len()).unwrap_or(0)).collect();
    let total: u64 = sizes.iter().sum();
    let mut done = 0;
    for ((_, _, deb), n) in debs.iter().zip(sizes) {
        tree.unpack_deb(deb, log)?;
        done += n;
        progress("unpack", done, total);
    }
    merge_usr(&staging)?;
    let payload = recipe.kind == "payload";
    if payload {
        install_kernel(&staging)?;
    }
    // Binaries and the overlay are written like the packages: never
    // through a link out of the tree (see `unpack.rs`).
    for (c, p) in &bins {
        copy_into(&tree, p, Path::new(&c.dest), false)
            .with_context(|| format!("installing {} to {}", p.display(), c.dest))?;
    }
    copy_overlay(&recipe.dir.join("overlay"), Path::new(""), &tree)?;
    if payload {
        depmod(&staging)?;
    }
    clamp_times(&staging, epoch)?;
    if payload {
        crate::payload::Payload::open(&staging)
            .context("the assembled payload breaks the payload contract")?;
    }
    // Owners, groups, modes and extended attributes from the archives
    // (`chage` setgid shadow, `/tmp` 1777), as data beside the tree.
    let meta = tree.metadata().context("recording the payload's owners and modes")?;
    log(&format!(
        "payload '{}': {} paths with owners or modes of their own",
        recipe.name,
        meta.entries.len()
    ));
    std::fs::rename(&staging, &root)?;
    meta.save(&crate::meta::Meta::sidecar(&root))?;
    std::fs::write(out.join(".complete"), "")?;
    log(&format!("payload '{}': ready at {}", recipe.name, root.display()));
    Ok(root)
}

/// How payloads are assembled; part of their cache key, so payloads made an
/// older way (without the owners sidecar) are not reused.
const PAYLOAD_SCHEME: &str = "payload-meta-2";

/// Sets the process umask for as long as it lives, then restores it.
struct Umask(libc::mode_t);

impl Umask {
    fn set(mask: libc::mode_t) -> Umask {
        Umask(unsafe { libc::umask(mask) })
    }
}

impl Drop for Umask {
    fn drop(&mut self) {
        unsafe { libc::umask(self.0) };
    }
}

/// How crate binaries are built; part of their cache key, so binaries built
/// an older way are not reused.
const CRATE_BUILD_SCHEME: &str = "remapped-paths-4-release-s";

/// Profile settings every crate binary is built with, over the crate's own
/// `[profile.release]`: no debug info (afterburn 5.11 asks for `debug = 2`,
/// which made a 50 MB binary in the image, 45 MB of it DWARF nobody in the
/// image can use; Flatcar strips its binaries too), no fat LTO with one
/// codegen unit (the slowest build there is: about 300 s of one core for
/// afterburn, paid by every cold build, in CI four times), and optimized for
/// size: the binaries in an image are agents that run once per boot, where
/// bytes count and speed does not (afterburn 5.11 on 2 cores: opt-level 3
/// 182 s and 12.1 MB, `s` 144 s and 11.2 MB).
const PROFILE: [(&str, &str); 5] = [
    ("CARGO_PROFILE_RELEASE_DEBUG", "false"),
    ("CARGO_PROFILE_RELEASE_STRIP", "debuginfo"),
    ("CARGO_PROFILE_RELEASE_LTO", "false"),
    ("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "16"),
    ("CARGO_PROFILE_RELEASE_OPT_LEVEL", "s"),
];

/// `cargo install <crate> --version <v> --locked` into the cache (once per
/// toolchain and architecture), with every build path remapped (see
/// `rustbuild`): the binary is the same whoever builds it, from whichever
/// cargo home and cache. Another architecture's binaries are cross-built
/// (`rustbuild::Toolchain::for_arch`).
fn cargo_install(c: &CrateBin, arch: Arch, cache: &Cache, log: &dyn Fn(&str)) -> Result<PathBuf> {
    let tc = crate::rustbuild::Toolchain::for_arch(arch, cache, log)?;
    let crates = cache.root.join("crates");
    // The native build keeps its old name, so its cache stays valid.
    let arch_part = if tc.cross { format!("-{arch}") } else { String::new() };
    let dir =
        crates.join(format!("{}-{}{arch_part}-{}-{CRATE_BUILD_SCHEME}", c.krate, c.version, tc.id));
    let bin = dir.join("bin").join(&c.binary);
    if bin.exists() {
        return Ok(bin);
    }
    log(&format!(
        "building {} {} for {arch} from the crate registry (cargo install{}; a few minutes, once)",
        c.krate,
        c.version,
        if tc.cross { ", cross-compiled" } else { "" }
    ));
    let target = crates.join(if tc.cross { format!("target-{arch}") } else { "target".into() });
    std::fs::create_dir_all(&target)
        .with_context(|| format!("{}: cannot create", target.display()))?;
    let maps: [(&Path, &str); 2] = [(&target, "/target"), (&dir, "/install")];
    let (cflags, unmapped) = tc.cflags(&maps);
    if !unmapped.is_empty() {
        log(&format!(
            "warning: build paths with spaces cannot be remapped for C code: {unmapped:?}; {} {} may embed them",
            c.krate, c.version
        ));
    }
    let mut cmd = tc.cargo(["install", &c.krate, "--version", &c.version, "--locked", "--root"]);
    cmd.arg(&dir).args(tc.target_args());
    cmd.env("CARGO_TARGET_DIR", &target)
        .env("CARGO_ENCODED_RUSTFLAGS", tc.rustflags(&maps, &[]))
        .env("CFLAGS", &cflags)
        .env("CXXFLAGS", &cflags);
    if tc.cross {
        // The cc crate takes the target's own flags first.
        let t = arch.rust_target().replace('-', "_");
        cmd.env(format!("CFLAGS_{t}"), &cflags).env(format!("CXXFLAGS_{t}"), &cflags);
    }
    for (k, v) in PROFILE {
        cmd.env(k, v);
    }
    let out = cmd.output().context("running cargo install")?;
    if !out.status.success() || !bin.exists() {
        let text = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = text.lines().rev().take(15).collect();
        bail!(
            "cargo install {} {} for {arch} failed (it needs the crate registry, gcc, pkg-config and libssl-dev{}):\n{}",
            c.krate,
            c.version,
            if tc.cross { ", and for a cross build rustc-web, cargo-web and the target's gcc" } else { "" },
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(bin)
}

/// apt-get on the cache's own state for `arch` (its lists, an empty dpkg
/// status: resolution as if nothing were installed), downloading into the
/// cache's `debs/`.
fn apt_cmd(cache: &Cache, arch: Arch, args: &[&str]) -> Result<duct::Expression> {
    let apt = cache.apt(arch);
    for d in ["state/lists/partial", "cache/archives/partial"] {
        std::fs::create_dir_all(apt.join(d))?;
    }
    std::fs::create_dir_all(cache.debs().join("partial"))?;
    let status = apt.join("status");
    if !status.exists() {
        std::fs::write(&status, "")?;
    }
    let user = unsafe { libc::geteuid() };
    let user = if user == 0 {
        "root".to_string()
    } else {
        std::env::var("USER").unwrap_or_else(|_| user.to_string())
    };
    let mut v: Vec<String> = vec![
        format!("-oDir::State={}", apt.join("state").display()),
        format!("-oDir::State::status={}", status.display()),
        format!("-oDir::Cache={}", apt.join("cache").display()),
        format!("-oDir::Cache::archives={}", cache.debs().display()),
        "-oDebug::NoLocking=1".into(),
        format!("-oAPT::Sandbox::User={user}"),
        format!("-oAPT::Architecture={arch}"),
        format!("-oAPT::Architectures={arch}"),
        "-oAcquire::Languages=none".into(),
        "-oAPT::Install-Recommends=false".into(),
        "-oAPT::Get::AllowUnauthenticated=false".into(),
        "-q".into(),
    ];
    v.extend(args.iter().map(|s| s.to_string()));
    Ok(crate::tools::cmd(
        crate::tools::path(crate::tools::Tool { program: "apt-get", package: "apt" })?,
        v,
    )
    .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// Resolves the package set with apt (as if nothing were installed) and
/// downloads it; returns (name, version, .deb path), sorted by name.
fn download(
    recipe: &Recipe,
    cache: &Cache,
    log: &dyn Fn(&str),
    progress: &dyn Fn(&str, u64, u64),
) -> Result<Vec<(String, String, PathBuf)>> {
    let arch = recipe.arch;
    update_lists(cache, arch, log)?;
    // Debian's archive keeps one version of a package per suite, so a pin
    // (`name=version`) goes stale when the package is updated. Such a pin
    // is dropped, loudly, and the archive's version taken instead.
    let mut wanted: Vec<String> = recipe.packages.clone();
    let text = loop {
        let mut args = vec!["install", "-s", "-y"];
        args.extend(wanted.iter().map(String::as_str));
        let sim =
            apt_cmd(cache, arch, &args)?.stderr_to_stdout().stdout_capture().unchecked().run()?;
        let text = String::from_utf8_lossy(&sim.stdout).into_owned();
        if sim.status.success() {
            break text;
        }
        let gone = stale_pins(&text);
        let before = wanted.len();
        wanted.retain(|w| !gone.contains(w));
        if gone.is_empty() || wanted.len() == before {
            bail!("apt cannot resolve the recipe's packages: {}", text.trim());
        }
        for pin in &gone {
            let name = pin.split('=').next().unwrap_or(pin);
            log(&format!(
                "warning: recipe '{}': {pin} is no longer in the archive; taking its current {name} (update the pin in {})",
                recipe.name,
                recipe.dir.join("packages.txt").display()
            ));
            wanted.push(name.to_string());
        }
    };
    let mut pkgs: Vec<(String, String, String)> = Vec::new();
    for l in text.lines() {
        // "Inst name (version suite [arch])"
        let Some(rest) = l.strip_prefix("Inst ") else { continue };
        let name = rest.split_whitespace().next().unwrap_or_default().to_string();
        let inner = rest.split_once('(').map(|x| x.1).unwrap_or_default();
        let version = inner.split_whitespace().next().unwrap_or_default().to_string();
        let arch = inner
            .split('[')
            .nth(1)
            .and_then(|a| a.split(']').next())
            .unwrap_or("amd64")
            .to_string();
        pkgs.push((name, version, arch));
    }
    if pkgs.is_empty() {
        bail!("apt resolved no packages: {}", text.trim());
    }
    pkgs.sort();
    let deb_path = |n: &str, v: &str, a: &str| {
        cache.debs().join(format!("{n}_{}_{a}.deb", v.replace(':', "%3a")))
    };
    let missing: Vec<&(String, String, String)> =
        pkgs.iter().filter(|(n, v, a)| !deb_path(n, v, a).exists()).collect();
    if !missing.is_empty() {
        // apt names each file and its size up front, so the download can be
        // followed by watching the cache fill.
        let mut args = vec!["install", "--print-uris", "-qq", "-y"];
        args.extend(wanted.iter().map(String::as_str));
        let uris =
            apt_cmd(cache, arch, &args)?.stderr_to_stdout().stdout_capture().unchecked().run()?;
        let want: Vec<(PathBuf, u64)> = String::from_utf8_lossy(&uris.stdout)
            .lines()
            .filter_map(|l| {
                // 'URI' name_version_arch.deb size SHA256:…
                let mut w = l.split_whitespace();
                let (_uri, file, size) = (w.next()?, w.next()?, w.next()?.parse().ok()?);
                Some((cache.debs().join(file), size))
            })
            .collect();
        let total: u64 = want.iter().map(|w| w.1).sum();
        log(&format!("apt: downloading {} of {} packages ({total} B)", missing.len(), pkgs.len()));
        let mut args = vec!["install", "--download-only", "-y"];
        args.extend(wanted.iter().map(String::as_str));
        let handle =
            apt_cmd(cache, arch, &args)?.stderr_to_stdout().stdout_capture().unchecked().start()?;
        let partial = cache.debs().join("partial");
        let out = loop {
            if let Some(out) = handle.try_wait()? {
                break out.clone();
            }
            let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
            let done: u64 = want
                .iter()
                .map(|(p, n)| size(p).max(size(&partial.join(p.file_name().unwrap()))).min(*n))
                .sum();
            progress("download", done, total.max(1));
            std::thread::sleep(std::time::Duration::from_millis(200));
        };
        progress("download", total.max(1), total.max(1));
        if !out.status.success() {
            bail!(
                "apt-get --download-only failed: {}",
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
    }
    pkgs.into_iter()
        .map(|(n, v, a)| {
            let p = deb_path(&n, &v, &a);
            if !p.exists() {
                bail!("{}: not downloaded", p.display());
            }
            Ok((n, v, p))
        })
        .collect()
}

/// Fetches the cache's package lists for `arch` once.
fn update_lists(cache: &Cache, arch: Arch, log: &dyn Fn(&str)) -> Result<()> {
    let lists = cache.apt(arch).join("state/lists");
    let have_lists = std::fs::read_dir(&lists)
        .map(|d| {
            d.filter_map(|e| e.ok()).any(|e| {
                e.file_name().to_string_lossy().ends_with("Packages")
                    || e.file_name().to_string_lossy().contains("Packages.")
            })
        })
        .unwrap_or(false);
    if !have_lists {
        log(&format!("apt: fetching the {arch} package lists into the cache"));
        let out = apt_cmd(cache, arch, &["update"])?
            .stderr_to_stdout()
            .stdout_capture()
            .unchecked()
            .run()?;
        if !out.status.success() {
            bail!("apt-get update failed: {}", String::from_utf8_lossy(&out.stdout).trim());
        }
    }
    Ok(())
}

/// A downloaded Debian package.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deb {
    pub name: String,
    pub version: String,
    pub path: PathBuf,
}

/// Downloads exactly the named packages of `arch` (`name` or
/// `name=version`), without their dependencies (apt-get download, hashes
/// checked by apt against the signed lists), into the cache; already
/// downloaded files are reused. For tools of another architecture the
/// build needs as files, not as a root tree: GRUB's modules, Rust's
/// standard library, libraries to link against.
pub fn fetch_exact(
    cache: &Cache,
    arch: Arch,
    wanted: &[&str],
    log: &dyn Fn(&str),
) -> Result<Vec<Deb>> {
    update_lists(cache, arch, log)?;
    let mut args = vec!["download", "--print-uris"];
    args.extend(wanted);
    let out = apt_cmd(cache, arch, &args)?.stderr_to_stdout().stdout_capture().unchecked().run()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("apt cannot find {} for {arch}: {}", wanted.join(" "), text.trim());
    }
    // 'URI' name_version_arch.deb size SHA256:…
    let files: Vec<String> = text
        .lines()
        .filter_map(|l| l.starts_with('\'').then(|| l.split_whitespace().nth(1)).flatten())
        .map(str::to_string)
        .collect();
    if files.len() != wanted.len() {
        bail!(
            "apt named {} files for {} packages ({}): {}",
            files.len(),
            wanted.len(),
            wanted.join(" "),
            text.trim()
        );
    }
    let debs = cache.debs();
    let missing: Vec<&String> = files.iter().filter(|f| !debs.join(f).exists()).collect();
    if !missing.is_empty() {
        log(&format!("apt: downloading {} ({arch})", wanted.join(" ")));
        let mut args = vec!["download"];
        args.extend(wanted);
        let out = apt_cmd(cache, arch, &args)?
            .dir(&debs)
            .stderr_to_stdout()
            .stdout_capture()
            .unchecked()
            .run()?;
        if !out.status.success() {
            bail!("apt-get download failed: {}", String::from_utf8_lossy(&out.stdout).trim());
        }
    }
    files
        .iter()
        .map(|f| {
            let path = debs.join(f);
            if !path.exists() {
                bail!("{}: not downloaded", path.display());
            }
            let (name, version) = deb_identity(&path)?;
            Ok(Deb { name, version, path })
        })
        .collect()
}

/// The version apt would download of `package` for `arch` (None: the
/// archive has no such package).
pub fn candidate_version(
    cache: &Cache,
    arch: Arch,
    package: &str,
    log: &dyn Fn(&str),
) -> Result<Option<String>> {
    update_lists(cache, arch, log)?;
    let out = apt_cmd(cache, arch, &["download", "--print-uris", package])?
        .stderr_to_stdout()
        .stdout_capture()
        .unchecked()
        .run()?;
    if !out.status.success() {
        return Ok(None);
    }
    // 'URI' name_version_arch.deb size SHA256:…
    Ok(String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let file = l.split_whitespace().nth(1)?;
        let rest = file.strip_prefix(package)?.strip_prefix('_')?;
        let version = rest.rsplit_once('_')?.0;
        Some(version.replace("%3a", ":"))
    }))
}

/// The files of the named packages of `arch` (see [`fetch_exact`]),
/// unpacked with the contained unpacker into a directory of the cache named
/// after the exact packages and versions (reused when complete). Returns
/// the directory and the packages.
pub fn unpacked(
    cache: &Cache,
    arch: Arch,
    purpose: &str,
    wanted: &[&str],
    log: &dyn Fn(&str),
) -> Result<(PathBuf, Vec<Deb>)> {
    let debs = fetch_exact(cache, arch, wanted, log)?;
    let mut h = Sha256::new();
    for d in &debs {
        h.update(format!("{} {}\n", d.name, d.version).as_bytes());
    }
    let key = hex::encode(h.finalize());
    let dir = cache.root.join("tools").join(format!("{purpose}-{arch}-{}", &key[..16]));
    if dir.join(".complete").exists() {
        return Ok((dir.join("root"), debs));
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("{}: cannot clear a stale tree", dir.display()))?;
    }
    let staging = dir.join("root");
    std::fs::create_dir_all(&staging)
        .with_context(|| format!("{}: cannot create", staging.display()))?;
    let tree = crate::unpack::Root::open(&staging)?;
    for d in &debs {
        tree.unpack_deb(&d.path, log)?;
    }
    std::fs::write(dir.join(".complete"), "")?;
    Ok((staging, debs))
}

/// The pins apt reports as gone: `E: Version 'V' for 'N' was not found`
/// → `N=V`.
fn stale_pins(apt_output: &str) -> Vec<String> {
    apt_output
        .lines()
        .filter_map(|l| {
            let rest = l.trim().strip_prefix("E: Version '")?;
            let (version, rest) = rest.split_once("' for '")?;
            let name = rest.strip_suffix("' was not found")?;
            Some(format!("{name}={version}"))
        })
        .collect()
}

fn remove_any(p: &Path) -> Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p)?,
        Ok(_) => std::fs::remove_file(p)?,
        Err(_) => {}
    }
    Ok(())
}

/// Moves /bin, /sbin, /lib* into /usr and leaves symlinks (merged /usr).
fn merge_usr(root: &Path) -> Result<()> {
    for d in ["bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
        let top = root.join(d);
        let m = match std::fs::symlink_metadata(&top) {
            Ok(m) => m,
            Err(_) => continue,
        };
        if m.is_dir() {
            move_into(&top, &root.join("usr").join(d))?;
            std::fs::remove_dir_all(&top)?;
        } else {
            std::fs::remove_file(&top)?;
        }
        if root.join("usr").join(d).exists() {
            std::os::unix::fs::symlink(format!("usr/{d}"), &top)?;
        }
    }
    Ok(())
}

fn move_into(src: &Path, dst: &Path) -> Result<()> {
    std::fs::create_dir_all(dst)?;
    for e in std::fs::read_dir(src)? {
        let e = e?;
        let (s, d) = (e.path(), dst.join(e.file_name()));
        let sm = std::fs::symlink_metadata(&s)?;
        match std::fs::symlink_metadata(&d) {
            Ok(dm) if dm.is_dir() && sm.is_dir() => move_into(&s, &d)?,
            Ok(_) => {
                remove_any(&d)?;
                std::fs::rename(&s, &d)?;
            }
            Err(_) => std::fs::rename(&s, &d)?,
        }
    }
    Ok(())
}

/// Moves the packaged kernel to usr/boot/vmlinuz (the payload contract).
fn install_kernel(root: &Path) -> Result<()> {
    let boot = root.join("boot");
    let mut kernels: Vec<PathBuf> = std::fs::read_dir(&boot)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("vmlinuz-"))
                .collect()
        })
        .unwrap_or_default();
    kernels.sort();
    let k =
        kernels.pop().ok_or_else(|| anyhow!("no kernel (boot/vmlinuz-*) among the packages"))?;
    let ub = root.join("usr/boot");
    std::fs::create_dir_all(&ub)?;
    for e in std::fs::read_dir(&boot)? {
        let e = e?;
        std::fs::rename(e.path(), ub.join(e.file_name()))?;
    }
    std::fs::remove_dir(&boot)?;
    std::fs::copy(ub.join(k.file_name().unwrap()), ub.join("vmlinuz"))?;
    Ok(())
}

/// Copies the overlay `src` over the tree, `rel` being where `src` lands.
fn copy_overlay(src: &Path, rel: &Path, tree: &crate::unpack::Root) -> Result<()> {
    if !src.exists() {
        return Ok(());
    }
    let entries = std::fs::read_dir(src)
        .and_then(|d| d.collect::<std::io::Result<Vec<_>>>())
        .with_context(|| format!("{}: cannot list", src.display()))?;
    for e in entries {
        let (s, d) = (e.path(), rel.join(e.file_name()));
        let m = std::fs::symlink_metadata(&s)
            .with_context(|| format!("{}: cannot stat", s.display()))?;
        if m.is_dir() {
            tree.create_dir_all(&d).with_context(|| {
                format!("overlay {}: cannot create {}", s.display(), d.display())
            })?;
            copy_overlay(&s, &d, tree)?;
        } else if m.file_type().is_symlink() {
            let target = std::fs::read_link(&s)
                .with_context(|| format!("{}: cannot read the link", s.display()))?;
            // A link of the overlay replaces an empty directory of the
            // packages (what a maintainer script would do: `var/run`).
            tree.remove_empty_dir(&d).with_context(|| {
                format!("overlay {}: cannot replace {}", s.display(), d.display())
            })?;
            tree.symlink(&d, &target, None).with_context(|| {
                format!("overlay {}: cannot create {}", s.display(), d.display())
            })?;
        } else {
            copy_into(tree, &s, &d, true).with_context(|| {
                format!("overlay {}: cannot write {}", s.display(), d.display())
            })?;
        }
    }
    Ok(())
}

/// Copies the file `src` to `rel` in the tree with its permission bits (as
/// git records them, for files from the checkout: see `checkout_mode`).
fn copy_into(
    tree: &crate::unpack::Root,
    src: &Path,
    rel: &Path,
    from_checkout: bool,
) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut f =
        std::fs::File::open(src).with_context(|| format!("{}: cannot open", src.display()))?;
    let perm = f
        .metadata()
        .with_context(|| format!("{}: cannot stat", src.display()))?
        .permissions()
        .mode();
    let perm = if from_checkout { crate::fs::tree::checkout_mode(perm) } else { perm & 0o7777 };
    tree.write_file(rel, &mut f, perm, None)
}

/// Generates modules.dep & co. for every kernel in usr/lib/modules.
fn depmod(root: &Path) -> Result<()> {
    let mods = root.join("usr/lib/modules");
    for e in std::fs::read_dir(&mods)
        .with_context(|| format!("{}: no kernel modules", mods.display()))?
    {
        let v = e?.file_name().to_string_lossy().into_owned();
        let depmod = crate::tools::path(crate::tools::Tool { program: "depmod", package: "kmod" })?;
        crate::fs::run(crate::cmd!(depmod, "-b", root, &v), &format!("depmod {v}"))?;
    }
    Ok(())
}

/// Clamps every mtime to at most `epoch` (SOURCE_DATE_EPOCH semantics), so
/// files the build wrote carry no build time.
fn clamp_times(p: &Path, epoch: i64) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    for e in std::fs::read_dir(p)? {
        let e = e?;
        let path = e.path();
        let m = std::fs::symlink_metadata(&path)?;
        if m.is_dir() {
            clamp_times(&path, epoch)?;
        }
        if m.mtime() > epoch {
            set_times(&path, epoch)?;
        }
    }
    let m = std::fs::symlink_metadata(p)?;
    if m.mtime() > epoch {
        set_times(p, epoch)?;
    }
    Ok(())
}

/// Packs a root tree into `tar` (GNU format): names sorted, owners and
/// groups 0, times clamped to `epoch`, so the bytes depend only on the
/// tree. Written to `<tar>.partial` and renamed: a failed or concurrent
/// pack never leaves a half-written file under the final name.
pub fn pack_tar(root: &Path, tar: &Path, epoch: i64) -> Result<()> {
    let partial = tar.with_extension(format!("partial.{}", std::process::id()));
    let r = crate::fs::run(
        crate::cmd!(
            "tar",
            "--sort=name",
            "--numeric-owner",
            "--owner=0",
            "--group=0",
            format!("--mtime=@{epoch}"),
            "--clamp-mtime",
            "-C",
            root,
            "-cf",
            &partial,
            "."
        ),
        "tar",
    );
    if let Err(e) = r {
        let _ = std::fs::remove_file(&partial);
        return Err(e.context(format!("packing {} into {}", root.display(), tar.display())));
    }
    std::fs::rename(&partial, tar)
        .with_context(|| format!("{}: cannot rename to {}", partial.display(), tar.display()))
}

#[cfg(test)]
mod package_line_tests {
    use super::*;

    #[test]
    fn architecture_restrictions() {
        let a = |l: &str, arch| package_for(l, arch).map_err(|e| format!("{e:#}"));
        assert_eq!(a("bash", Arch::Arm64).unwrap().as_deref(), Some("bash"));
        let k = "linux-image-cloud-amd64 [amd64]";
        assert_eq!(a(k, Arch::Amd64).unwrap().as_deref(), Some("linux-image-cloud-amd64"));
        assert_eq!(a(k, Arch::Arm64).unwrap(), None);
        assert_eq!(a("grub-pc-bin [!arm64]", Arch::Arm64).unwrap(), None);
        assert_eq!(a("grub-pc-bin [!arm64]", Arch::Amd64).unwrap().as_deref(), Some("grub-pc-bin"));
        assert_eq!(a("x [amd64 arm64]", Arch::Arm64).unwrap().as_deref(), Some("x"));
        for (bad, want) in [
            ("x [riscv64]", "unknown architecture 'riscv64'"),
            ("x [amd64 !arm64]", "not both"),
            ("x [amd64", "ends with ']'"),
            ("x []", "empty architecture restriction"),
            ("x y", "one package per line"),
            ("[amd64]", "one package name"),
        ] {
            let e = a(bad, Arch::Amd64).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn a_recipe_is_loaded_for_its_architecture() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("packages.txt"), "bash\nlinux-image-cloud-arm64 [arm64]\n")
            .unwrap();
        let r = Recipe::load(d.path(), Arch::Arm64).unwrap();
        assert_eq!(r.packages, ["bash", "linux-image-cloud-arm64"]);
        assert_eq!(r.arch, Arch::Arm64);
        assert_eq!(Recipe::load(d.path(), Arch::Amd64).unwrap().packages, ["bash"]);
        std::fs::write(d.path().join("packages.txt"), "k [arm64]\n").unwrap();
        let e = format!("{:#}", Recipe::load(d.path(), Arch::Amd64).unwrap_err());
        assert!(e.contains("packages.txt: no packages for amd64"), "{e}");
        std::fs::write(d.path().join("packages.txt"), "k [sparc]\n").unwrap();
        let e = format!("{:#}", Recipe::load(d.path(), Arch::Amd64).unwrap_err());
        assert!(e.contains("packages.txt: 'k [sparc]'") && e.contains("sparc"), "{e}");
    }
}

#[cfg(test)]
mod stale_pin_tests {
    #[test]
    fn stale_pins_are_read_from_apt_errors() {
        let out = "Reading package lists...\nPackage linux-libc-dev is not available\nE: Version '6.1.192-2' for 'linux-libc-dev' was not found\nE: Unable to locate package nosuch\n";
        assert_eq!(super::stale_pins(out), ["linux-libc-dev=6.1.192-2"]);
        assert!(super::stale_pins("E: Unable to locate package nosuch").is_empty());
    }
}

#[cfg(test)]
mod pack_tar_tests {
    use super::*;

    #[test]
    fn the_tar_depends_only_on_the_tree() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let make = |name: &str, mtime: i64| {
            let root = tmp.path().join(name);
            std::fs::create_dir_all(root.join("etc/nginx")).unwrap();
            std::fs::create_dir_all(root.join("var/lib")).unwrap();
            std::fs::write(root.join("etc/nginx/nginx.conf"), "user www-data;\n").unwrap();
            std::fs::write(root.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
            std::fs::set_permissions(
                root.join("etc/passwd"),
                std::fs::Permissions::from_mode(0o644),
            )
            .unwrap();
            crate::fs::tree::set_times(&root, mtime).unwrap();
            root
        };
        // Two trees, created in another order and stamped later than the epoch.
        let a = make("a", 1_800_000_000);
        let b = make("b", 1_900_000_000);
        let (ta, tb) = (tmp.path().join("a.tar"), tmp.path().join("b.tar"));
        pack_tar(&a, &ta, 1_700_000_000).unwrap();
        pack_tar(&b, &tb, 1_700_000_000).unwrap();
        assert_eq!(std::fs::read(&ta).unwrap(), std::fs::read(&tb).unwrap());
        let list = crate::fs::run(crate::cmd!("tar", "-tvf", &ta), "tar").unwrap();
        assert!(list.contains("0/0"), "{list}");
        assert!(list.contains("2023-11-14"), "{list}");
        let names: Vec<&str> = list.lines().filter_map(|l| l.split_whitespace().last()).collect();
        assert_eq!(
            names,
            [
                "./",
                "./etc/",
                "./etc/nginx/",
                "./etc/nginx/nginx.conf",
                "./etc/passwd",
                "./var/",
                "./var/lib/"
            ]
        );
        // A tree that cannot be packed leaves nothing under the final name.
        let bad = tmp.path().join("bad.tar");
        assert!(pack_tar(&tmp.path().join("missing"), &bad, 0).is_err());
        assert!(!bad.exists());
        assert!(std::fs::read_dir(tmp.path()).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains("partial")));
    }
}
