//! System extensions (`systemd-sysext` images) built from recipes.
//!
//! An extension is a folder `sysext/<name>/` holding a recipe in the
//! payload format (`packages.txt`, `crates.txt`, `debs/`, `overlay/`: see
//! `recipe.rs`) and `sysext.json`, what makes it an extension:
//!
//! ```json
//! { "name": "docker-flatcar",
//!   "description": "Docker engine and CLI",
//!   "depends": ["containerd-flatcar"],
//!   "units": [{"name": "docker.socket", "upheld_by": "sockets.target"},
//!             {"name": "docker.service"}],
//!   "paths": ["usr"] }
//! ```
//!
//! `units` are the units it ships (each must be in its
//! `usr/lib/systemd/system/`); one with `upheld_by` is started with that
//! target, through a drop-in `usr/lib/systemd/system/<target>.d/10-<unit>.conf`
//! (`Upholds=`, as upstream's extensions do: `systemctl enable` cannot write
//! into a read-only image). `depends` names extensions this one is used
//! with; `paths` the top-level directories it may hold (`usr`, and `opt`).
//!
//! An extension holds only what it adds: apt resolves the recipe's
//! packages as usual, and the packages of the base payload (its
//! `packages.lock`) and of the extensions it depends on (built first, the
//! same way) are left out. What the packages put outside `paths` (`/etc`,
//! `/var`, the merged-/usr links) is dropped; an overlay file there is an
//! error. A file that would shadow one of the base payload's (or a
//! dependency's) is an error naming it: merged by overlayfs, it would
//! silently replace the file of the OS.
//!
//! The image `NAME.raw` is EROFS (lz4hc) built by `mkfs.erofs` in the same
//! `fakeroot` session as every other filesystem (`fs::source`), with every
//! timestamp the epoch and the UUID from the seed, so two builds give the
//! same bytes. It carries `usr/lib/extension-release.d/extension-release.NAME`
//! with the base's `ID` and `VERSION_ID` (or `SYSEXT_LEVEL`),
//! `ARCHITECTURE=` (the payload's, systemd's name: `x86-64`, `arm64`), `SYSEXT_ID=NAME` and `EXTENSION_RELOAD_MANAGER=1`.

use crate::arch::Arch;
use crate::fs::source::{self, SourceDir};
use crate::meta::Meta;
use crate::outdir::{OutputDir, Staged};
use crate::payload::{OsRelease, Payload};
use crate::recipe::{Cache, Recipe};
use crate::seed::Seed;
use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The descriptor's file name in an extension's folder.
pub const DESCRIPTOR: &str = "sysext.json";

/// The compressor of extension images (the kernel's EROFS always reads it).
pub const COMPRESSION: &str = "lz4hc";

/// Where the extension-release file lives in an image.
pub const RELEASE_DIR: &str = "usr/lib/extension-release.d";

/// Longest extension name (it is part of file names: `NAME.raw`,
/// `extension-release.NAME`).
pub const MAX_NAME: usize = 64;

/// Top-level directories an extension may hold (systemd-sysext merges
/// `/usr` and `/opt`).
pub const MERGED: [&str; 2] = ["usr", "opt"];

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Unit {
    pub name: String,
    /// The target that starts it (`Upholds=` drop-in), if any.
    #[serde(default)]
    pub upheld_by: Option<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Descriptor {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub depends: Vec<String>,
    #[serde(default)]
    pub units: Vec<Unit>,
    #[serde(default = "default_paths")]
    pub paths: Vec<String>,
}

fn default_paths() -> Vec<String> {
    vec!["usr".into()]
}

/// A plain name: `a-z`, `0-9`, `-`, `_`, not empty.
pub fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// A systemd unit name as this file takes it: letters, digits, `-_.@:`
/// and a known suffix.
fn is_unit(s: &str, suffixes: &[&str]) -> bool {
    s.len() <= 255
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.@:".contains(&b))
        && suffixes.iter().any(|x| s.len() > x.len() && s.ends_with(x))
}

const UNIT_SUFFIXES: [&str; 7] =
    [".service", ".socket", ".timer", ".path", ".mount", ".target", ".slice"];

impl Descriptor {
    /// Parses and validates a descriptor; errors name the file, the field
    /// (`units[1].upheld_by`) and the problem.
    pub fn parse(text: &str, file: &Path, folder: &str) -> Result<Descriptor> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let d: Descriptor = serde_path_to_error::deserialize(de).map_err(|e| {
            let at = e.path().to_string();
            if at == "." {
                anyhow!("{}: {}", file.display(), e.inner())
            } else {
                anyhow!("{}: {at}: {}", file.display(), e.inner())
            }
        })?;
        let bad = |field: &str, why: String| anyhow!("{}: {field}: {why}", file.display());
        if !is_name(&d.name) || d.name.len() > MAX_NAME {
            return Err(bad(
                "name",
                format!("{:?} must be 1 to {MAX_NAME} of a-z, 0-9, '-' and '_'", d.name),
            ));
        }
        if d.name != folder {
            return Err(bad("name", format!("'{}' does not match its folder '{folder}'", d.name)));
        }
        if let Some(t) = &d.description {
            if t.chars().any(|c| c.is_control() || matches!(c, '"' | '\\' | '$' | '`')) {
                return Err(bad(
                    "description",
                    "must not hold control characters, quotes, '\\', '$' or '`'".into(),
                ));
            }
        }
        for (i, dep) in d.depends.iter().enumerate() {
            if !is_name(dep) {
                return Err(bad(&format!("depends[{i}]"), format!("{dep:?} is not a name")));
            }
            if *dep == d.name {
                return Err(bad(
                    &format!("depends[{i}]"),
                    "an extension cannot depend on itself".into(),
                ));
            }
        }
        let mut seen = BTreeSet::new();
        for (i, u) in d.units.iter().enumerate() {
            if !is_unit(&u.name, &UNIT_SUFFIXES) {
                return Err(bad(
                    &format!("units[{i}].name"),
                    format!(
                        "{:?} is not a unit name (letters, digits, '-_.@:', ending in {})",
                        u.name,
                        UNIT_SUFFIXES.join(", ")
                    ),
                ));
            }
            if !seen.insert(&u.name) {
                return Err(bad(
                    &format!("units[{i}].name"),
                    format!("'{}' is listed twice", u.name),
                ));
            }
            if let Some(t) = &u.upheld_by {
                if !is_unit(t, &[".target"]) {
                    return Err(bad(
                        &format!("units[{i}].upheld_by"),
                        format!("{t:?} is not a target name (ending in .target)"),
                    ));
                }
            }
        }
        if !d.paths.iter().any(|p| p == "usr") {
            return Err(bad("paths", "must include \"usr\"".into()));
        }
        for (i, p) in d.paths.iter().enumerate() {
            if !MERGED.contains(&p.as_str()) {
                return Err(bad(
                    &format!("paths[{i}]"),
                    format!("{p:?}: systemd-sysext merges only {}", MERGED.join(" and ")),
                ));
            }
        }
        Ok(d)
    }
}

/// An extension's folder: its descriptor and its recipe.
#[derive(Clone, Debug)]
pub struct Extension {
    pub dir: PathBuf,
    pub descriptor: Descriptor,
    pub recipe: Recipe,
}

impl Extension {
    /// Loads `<sysext_dir>/<name>/`.
    pub fn load(sysext_dir: &Path, name: &str, arch: Arch) -> Result<Extension> {
        if !is_name(name) {
            bail!("extension name {name:?}: must be a-z, 0-9, '-' and '_'");
        }
        let dir = sysext_dir.join(name);
        let file = dir.join(DESCRIPTOR);
        if !file.exists() {
            bail!(
                "unknown extension '{name}' (known: {}; an extension is a folder {}/<name>/ with {DESCRIPTOR})",
                list(sysext_dir).join(", "),
                sysext_dir.display()
            );
        }
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("{}: cannot read", file.display()))?;
        let descriptor = Descriptor::parse(&text, &file, name)?;
        let mut recipe = Recipe::load(&dir, arch)?;
        // An extension's tree is a plain tree: no kernel, no depmod.
        recipe.kind = "rootfs".into();
        Ok(Extension { dir, descriptor, recipe })
    }

    pub fn file(&self) -> PathBuf {
        self.dir.join(DESCRIPTOR)
    }
}

/// The extensions under `sysext_dir` (folders with a descriptor), sorted.
pub fn list(sysext_dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(sysext_dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.path().join(DESCRIPTOR).exists())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A value written unquoted into the extension-release file.
fn check_release_value(key: &str, v: &str, from: &Path) -> Result<()> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_alphanumeric() || b"._~-".contains(&b)) {
        bail!(
            "{}: {key}={v:?}: an extension-release value must be letters, digits and ._~-",
            from.display()
        );
    }
    Ok(())
}

/// The extension-release file of `name` for a base with `os` (then the
/// `extra` fields, as given: an OEM extension's `SYSEXT_NAME`, …).
pub fn extension_release(
    name: &str,
    os: &OsRelease,
    os_file: &Path,
    arch: Arch,
    extra: &[(String, String)],
) -> Result<String> {
    check_release_value("ID", os.id(), os_file)?;
    let mut s = format!("ID={}\n", os.id());
    match os.version_id() {
        Some(v) => {
            check_release_value("VERSION_ID", v, os_file)?;
            s.push_str(&format!("VERSION_ID={v}\n"));
        }
        None => {
            let level = os.get("SYSEXT_LEVEL").ok_or_else(|| {
                anyhow!(
                    "{}: neither VERSION_ID nor SYSEXT_LEVEL: an extension could not be matched to this OS",
                    os_file.display()
                )
            })?;
            check_release_value("SYSEXT_LEVEL", level, os_file)?;
            s.push_str(&format!("SYSEXT_LEVEL={level}\n"));
        }
    }
    s.push_str(&format!("ARCHITECTURE={}\nSYSEXT_ID={name}\n", arch.systemd()));
    for (k, v) in extra {
        s.push_str(&format!("{k}={v}\n"));
    }
    s.push_str("EXTENSION_RELOAD_MANAGER=1\n");
    Ok(s)
}

/// The `Upholds=` drop-in that starts `unit` with `target`: its path in
/// the image and its text.
pub fn upholds_dropin(unit: &str, target: &str) -> (String, String) {
    (
        format!("usr/lib/systemd/system/{target}.d/10-{}.conf", unit.replace('.', "-")),
        format!("# Written by forge: started with {target} (the extension cannot be enabled with systemctl)\n[Unit]\nUpholds={unit}\n"),
    )
}

/// What `build` needs.
pub struct Request<'a> {
    /// The folder of extension folders (`sysext/` of the checkout).
    pub sysext_dir: PathBuf,
    pub name: String,
    /// The base payload's root directory (its `packages.lock` beside it).
    pub base: PathBuf,
    pub cache: &'a Cache,
    /// The base payload's architecture (the extension's packages and
    /// `ARCHITECTURE=` follow it).
    pub arch: Arch,
    /// The epoch recipe trees are stamped with (part of their cache key).
    pub recipe_epoch: i64,
    /// The image's timestamps.
    pub epoch: i64,
    pub seed: Seed,
    /// Fields the extension-release file carries after `SYSEXT_ID` (an
    /// OEM extension's `SYSEXT_NAME` and `SYSEXT_VERSION_ID`), as written.
    pub release_extra: Vec<(String, String)>,
}

/// What `build` made.
#[derive(Clone, Debug)]
pub struct Built {
    pub path: PathBuf,
    pub bytes: u64,
    /// The packages in the image (`name version`).
    pub packages: Vec<String>,
    pub extension_release: String,
}

/// A built tree of one extension.
struct Tree {
    ext: Extension,
    root: PathBuf,
    /// Package names of the tree (its `packages.lock`).
    packages: BTreeSet<String>,
    /// `name version` lines of its lock.
    lock: Vec<String>,
}

/// Package names in a `packages.lock` (`name version [debs/file]`).
fn lock_lines(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!("{}: cannot read the package list (a payload built from a recipe has one beside its root)", path.display())
    })?;
    Ok(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect())
}

fn names(lines: &[String]) -> BTreeSet<String> {
    lines.iter().filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect()
}

/// The lock file of a payload root: `<root>/../packages.lock`.
pub fn lock_of(root: &Path) -> PathBuf {
    root.parent().unwrap_or(Path::new("/")).join("packages.lock")
}

/// Builds the trees of `name` and (first) of what it depends on, leaving
/// out what the base and the dependencies have; `trees` gets each once.
fn build_trees(
    req: &Request,
    name: &str,
    base_packages: &BTreeSet<String>,
    chain: &mut Vec<String>,
    trees: &mut Vec<Tree>,
    log: &dyn Fn(&str),
    progress: &dyn Fn(&str, u64, u64),
) -> Result<()> {
    if chain.iter().any(|c| c == name) {
        bail!("extension dependency cycle: {} -> {name}", chain.join(" -> "));
    }
    if trees.iter().any(|t| t.ext.descriptor.name == name) {
        return Ok(());
    }
    let ext = Extension::load(&req.sysext_dir, name, req.arch).with_context(|| {
        if chain.is_empty() {
            format!("extension '{name}'")
        } else {
            format!("extension '{name}' (a dependency of {})", chain.join(" -> "))
        }
    })?;
    chain.push(name.to_string());
    for dep in &ext.descriptor.depends {
        build_trees(req, dep, base_packages, chain, trees, log, progress)?;
    }
    chain.pop();
    let mut exclude = base_packages.clone();
    for dep in closure(&ext, trees) {
        exclude.extend(dep.packages.iter().cloned());
    }
    let mut recipe = ext.recipe.clone();
    recipe.exclude = exclude;
    let root = crate::recipe::build(&recipe, req.cache, req.recipe_epoch, log, progress)
        .with_context(|| format!("assembling the tree of extension '{name}'"))?;
    let lock = lock_lines(&lock_of(&root))?;
    trees.push(Tree { packages: names(&lock), lock, ext, root });
    Ok(())
}

/// The trees `ext` depends on, transitively (already built).
fn closure<'t>(ext: &Extension, trees: &'t [Tree]) -> Vec<&'t Tree> {
    let mut out: Vec<&Tree> = Vec::new();
    let mut todo: Vec<String> = ext.descriptor.depends.clone();
    while let Some(n) = todo.pop() {
        if out.iter().any(|t| t.ext.descriptor.name == n) {
            continue;
        }
        if let Some(t) = trees.iter().find(|t| t.ext.descriptor.name == n) {
            todo.extend(t.ext.descriptor.depends.iter().cloned());
            out.push(t);
        }
    }
    out
}

/// Builds `NAME.raw` into `out` (published under its final name once
/// checked by `fsck.erofs`).
pub fn build(
    req: &Request,
    out: &OutputDir,
    log: &dyn Fn(&str),
    progress: &dyn Fn(&str, u64, u64),
) -> Result<Built> {
    let base = Payload::open(&req.base)?;
    base.check_arch(req.arch)?;
    let os_file = req.base.join(crate::payload::OS_RELEASE);
    let base_lock = lock_lines(&lock_of(&req.base))?;
    let base_packages = names(&base_lock);
    let mut trees = Vec::new();
    build_trees(req, &req.name, &base_packages, &mut Vec::new(), &mut trees, log, progress)?;
    let this = trees.pop().expect("the extension's own tree is built last");
    let deps = closure(&this.ext, &trees);
    let d = &this.ext.descriptor;
    let release =
        extension_release(&d.name, &base.os_release, &os_file, req.arch, &req.release_extra)?;

    check_overlay_paths(&this.ext)?;
    let scratch = crate::outdir::scratch_dir(out.path())?;
    let staging = scratch.path().join("tree");
    std::fs::create_dir(&staging)
        .with_context(|| format!("{}: cannot create", staging.display()))?;
    set_mode(&staging, 0o755)?;
    let mut dropped = Vec::new();
    for e in read_names(&this.root)? {
        if d.paths.contains(&e) {
            source::stage(&this.root.join(&e), &staging.join(&e), "")?;
        } else {
            dropped.push(e);
        }
    }
    if !dropped.is_empty() {
        log(&format!(
            "sysext '{}': left out what the packages put outside {}: {}",
            d.name,
            d.paths.join(", "),
            dropped.join(", ")
        ));
    }
    // What the build adds: never over a file of the tree.
    let mut generated =
        vec![(format!("{RELEASE_DIR}/extension-release.{}", d.name), release.clone())];
    for u in &d.units {
        if let Some(t) = &u.upheld_by {
            generated.push(upholds_dropin(&u.name, t));
        }
    }
    for (rel, text) in &generated {
        let p = staging.join(rel);
        if std::fs::symlink_metadata(&p).is_ok() {
            bail!(
                "sysext '{}': the tree already has {rel}, which the build writes (remove it from the recipe)",
                d.name
            );
        }
        create_dirs(&staging, p.parent().unwrap())?;
        std::fs::write(&p, text).with_context(|| format!("{}: cannot write", p.display()))?;
        set_mode(&p, 0o644)?;
    }
    for (i, u) in d.units.iter().enumerate() {
        let p = staging.join("usr/lib/systemd/system").join(&u.name);
        if std::fs::symlink_metadata(&p).is_err() {
            bail!(
                "{}: units[{i}].name: the extension has no usr/lib/systemd/system/{} (from its packages or overlay)",
                this.ext.file().display(),
                u.name
            );
        }
    }
    let mut lowers: Vec<(String, &Path)> =
        vec![(format!("the base payload {}", req.base.display()), req.base.as_path())];
    for t in &deps {
        lowers.push((format!("extension '{}'", t.ext.descriptor.name), t.root.as_path()));
    }
    let shadowed = shadowed(&staging, &lowers)?;
    if !shadowed.is_empty() {
        let shown: Vec<String> =
            shadowed.iter().take(50).map(|(p, w)| format!("{p} ({w})")).collect();
        bail!(
            "sysext '{}': {} path(s) would shadow files of what it extends (overlayfs would hide them): {}{}",
            d.name,
            shadowed.len(),
            shown.join(", "),
            if shadowed.len() > 50 { ", …" } else { "" }
        );
    }

    let meta = Meta::for_payload(&this.root)
        .with_context(|| format!("sysext '{}': owners and modes of its tree", d.name))?;
    let src = SourceDir { dir: staging.clone(), meta: Some(Arc::new(meta)), rel: String::new() };
    let file_name = format!("{}.raw", d.name);
    let tmp = crate::outdir::partial_file(out.path(), &file_name)?;
    let uuid = req.seed.uuid(&format!("sysext:{}", d.name));
    log(&format!("sysext '{}': mkfs.erofs ({COMPRESSION})", d.name));
    crate::fs::erofs::make_image(
        &src,
        scratch.path(),
        tmp.path(),
        req.epoch,
        uuid,
        Some(COMPRESSION),
    )
    .with_context(|| format!("building {file_name}"))?;
    crate::fs::run(
        crate::cmd!(crate::tools::path(crate::tools::FSCK_EROFS)?, tmp.path()),
        &format!("fsck.erofs {file_name}"),
    )?;
    let bytes = tmp
        .as_file()
        .metadata()
        .with_context(|| format!("{}: cannot stat", tmp.path().display()))?
        .len();
    let mut staged = Staged::new();
    staged.add(tmp, &file_name);
    let paths = staged.commit(out)?;
    Ok(Built {
        path: paths[0].clone(),
        bytes,
        packages: this.lock.clone(),
        extension_release: release,
    })
}

/// Where an image's base extensions live in USR.
pub const USR_DIR: &str = "share/flatcar/sysext";

/// Where the links that enable them live on ROOT.
pub const LINK_DIR: &str = "etc/extensions";

/// A base extension of an image, from the cache.
#[derive(Clone, Debug)]
pub struct Cached {
    pub name: String,
    /// `<cache>/sysext/<name>-<key>/<name>.raw`.
    pub path: PathBuf,
    pub bytes: u64,
    /// Found in the cache (not built by this call).
    pub reused: bool,
}

/// The cache key of `name` on `req.base`: the recipes (whole folders, so
/// `sysext.json` too) of the extension and of every extension it depends
/// on, the base payload's directory, `packages.lock` and os-release (what
/// the image is built against), the epochs, the seed, the architecture and forge's
/// version. Two platforms listing the same extension on the same payload
/// share one build.
pub fn cache_key(req: &Request, name: &str) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(format!("forge-sysext-v1\0{}\0", req.arch.systemd()).as_bytes());
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    let mut todo = vec![name.to_string()];
    let mut done = BTreeSet::new();
    while let Some(n) = todo.pop() {
        if !done.insert(n.clone()) {
            continue;
        }
        let ext = Extension::load(&req.sysext_dir, &n, req.arch)
            .with_context(|| format!("extension '{n}' (cache key of '{name}')"))?;
        h.update(format!("\0ext {n} {}", ext.recipe.hash()?).as_bytes());
        todo.extend(ext.descriptor.depends.iter().cloned());
    }
    // The payload's directory: one built from a recipe is named after the
    // recipe's hash, so a change to its overlay (which the lock does not
    // show) builds again, and the shadowing check sees the new tree.
    let base = std::fs::canonicalize(&req.base)
        .with_context(|| format!("{}: cannot open the base payload", req.base.display()))?;
    h.update(b"\0base\0");
    h.update(base.as_os_str().as_encoded_bytes());
    let lock = lock_of(&req.base);
    h.update(b"\0lock\0");
    h.update(std::fs::read(&lock).with_context(|| format!("{}: cannot read", lock.display()))?);
    let os = req.base.join(crate::payload::OS_RELEASE);
    h.update(b"\0os-release\0");
    h.update(
        crate::unpack::Root::open(&req.base)?
            .read(Path::new(crate::payload::OS_RELEASE))
            .with_context(|| format!("{}: cannot read", os.display()))?,
    );
    h.update(format!("\0{} {} {}", req.recipe_epoch, req.epoch, req.seed.as_str()).as_bytes());
    for (k, v) in &req.release_extra {
        h.update(format!("\0release {k}={v}").as_bytes());
    }
    Ok(hex::encode(&h.finalize()[..8]))
}

/// `req.name` built as [`build`] does into `<cache>/sysext/<name>-<key>/`
/// ([`cache_key`]), or taken from there when an earlier build left it.
/// The directory is locked while it is looked at or written, so parallel
/// image builds wait for one another instead of building twice.
pub fn build_cached(
    req: &Request,
    log: &dyn Fn(&str),
    progress: &dyn Fn(&str, u64, u64),
) -> Result<Cached> {
    let key = cache_key(req, &req.name)?;
    let dir = req.cache.root.join("sysext").join(format!("{}-{key}", req.name));
    let out = OutputDir::lock(&dir, crate::outdir::IfLocked::Wait, log)?;
    let path = dir.join(format!("{}.raw", req.name));
    if let Ok(m) = std::fs::symlink_metadata(&path) {
        if m.is_file() {
            log(&format!("sysext '{}': from the cache, {}", req.name, path.display()));
            return Ok(Cached { name: req.name.clone(), path, bytes: m.len(), reused: true });
        }
    }
    let built = build(req, &out, log, progress)?;
    Ok(Cached { name: req.name.clone(), path: built.path, bytes: built.bytes, reused: false })
}

/// The extensions `names` (a platform's `extensions`) checked against one
/// another: each one's `depends` must be listed too (the image would
/// otherwise merge an extension without what it runs on). Errors name
/// `from` (the file that lists them).
pub fn check_listed(sysext_dir: &Path, names: &[String], from: &Path, arch: Arch) -> Result<()> {
    for n in names {
        let ext = Extension::load(sysext_dir, n, arch)
            .with_context(|| format!("{}: extensions: '{n}'", from.display()))?;
        for d in &ext.descriptor.depends {
            if !names.contains(d) {
                bail!(
                    "{}: extensions: '{n}' depends on '{d}' ({}), which is not listed",
                    from.display(),
                    ext.file().display()
                );
            }
        }
    }
    Ok(())
}

/// The overlay and crate binaries may only write under `paths`.
fn check_overlay_paths(ext: &Extension) -> Result<()> {
    let d = &ext.descriptor;
    let overlay = ext.dir.join("overlay");
    if overlay.is_dir() {
        for n in read_names(&overlay)? {
            if !d.paths.contains(&n) {
                bail!(
                    "{}: an extension holds only {} (the `paths` of {})",
                    overlay.join(&n).display(),
                    d.paths.join(", "),
                    ext.file().display()
                );
            }
        }
    }
    for c in &ext.recipe.crates {
        let top = c.dest.trim_start_matches('/').split('/').next().unwrap_or_default();
        if !d.paths.iter().any(|p| p == top) {
            bail!(
                "{}: {} installs to {}, outside {} (the `paths` of {})",
                ext.dir.join("crates.txt").display(),
                c.binary,
                c.dest,
                d.paths.join(", "),
                ext.file().display()
            );
        }
    }
    Ok(())
}

fn read_names(dir: &Path) -> Result<Vec<String>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("{}: cannot list", dir.display()))? {
        let e = e.with_context(|| format!("{}: cannot list", dir.display()))?;
        let n = e.file_name();
        let s = n
            .to_str()
            .ok_or_else(|| anyhow!("{}: a name that is not UTF-8: {n:?}", dir.display()))?;
        v.push(s.to_string());
    }
    v.sort();
    Ok(v)
}

fn set_mode(p: &Path, mode: u32) -> Result<()> {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("{}: cannot set the mode", p.display()))
}

/// Creates `dir` and its missing parents below `root`, 0755 each.
fn create_dirs(root: &Path, dir: &Path) -> Result<()> {
    if dir == root || dir.is_dir() {
        return Ok(());
    }
    create_dirs(root, dir.parent().unwrap())?;
    std::fs::create_dir(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    set_mode(dir, 0o755)
}

/// What a lower tree has at `rel`, its links never followed (a link on the
/// way counts as a non-directory at that point).
#[derive(Debug, PartialEq, Eq)]
enum Lower {
    Absent,
    Dir,
    Other(String),
}

fn lower_at(root: &Path, rel: &str) -> Lower {
    let mut p = root.to_path_buf();
    let parts: Vec<&str> = rel.split('/').collect();
    for (i, c) in parts.iter().enumerate() {
        p.push(c);
        match std::fs::symlink_metadata(&p) {
            Err(_) => return Lower::Absent,
            Ok(m) if m.is_dir() => {}
            Ok(m) => {
                let what = if m.file_type().is_symlink() { "a link" } else { "a file" };
                return if i + 1 == parts.len() {
                    Lower::Other(what.into())
                } else {
                    Lower::Other(format!("{what} at {}", parts[..=i].join("/")))
                };
            }
        }
    }
    Lower::Dir
}

/// Paths of `upper` (relative, `/`-separated) that would hide something of
/// a lower tree: a non-directory over anything, a directory over a
/// non-directory. Each with the name of the lower tree.
fn shadowed(upper: &Path, lowers: &[(String, &Path)]) -> Result<Vec<(String, String)>> {
    let mut found = Vec::new();
    let mut stack: Vec<String> = read_names(upper)?;
    stack.reverse();
    while let Some(rel) = stack.pop() {
        let p = upper.join(&rel);
        let m = std::fs::symlink_metadata(&p)
            .with_context(|| format!("{}: cannot stat", p.display()))?;
        let mut descend = false;
        for (name, root) in lowers {
            match lower_at(root, &rel) {
                Lower::Absent => {}
                Lower::Dir if m.is_dir() => descend = true,
                Lower::Dir => found.push((rel.clone(), format!("a directory of {name}"))),
                Lower::Other(w) => found.push((rel.clone(), format!("{w} of {name}"))),
            }
        }
        if descend {
            let mut names = read_names(&p)?;
            names.reverse();
            stack.extend(names.into_iter().map(|n| format!("{rel}/{n}")));
        }
    }
    Ok(found)
}

/// The extension-release fields of an extension image, read back with
/// `fsck.erofs --extract` (which checks the whole image as it goes) into a
/// scratch directory under `scratch`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ImageInfo {
    /// The name the file's name gives (`NAME.raw` → `NAME`).
    pub name: String,
    /// The name of its `extension-release.NAME` file.
    pub release_name: String,
    pub fields: std::collections::BTreeMap<String, String>,
    pub bytes: u64,
    /// Problems systemd-sysext would refuse the image for.
    pub errors: Vec<String>,
}

pub fn inspect_image(path: &Path, scratch: &Path) -> Result<ImageInfo> {
    let bytes =
        std::fs::metadata(path).with_context(|| format!("{}: cannot stat", path.display()))?.len();
    let tmp = tempfile::Builder::new()
        .prefix(".sysext-inspect-")
        .tempdir_in(scratch)
        .with_context(|| format!("{}: cannot create a scratch directory", scratch.display()))?;
    let dest = tmp.path().join("x");
    crate::fs::run(
        crate::cmd!(
            crate::tools::path(crate::tools::FSCK_EROFS)?,
            format!("--extract={}", dest.display()),
            "--no-preserve",
            path
        ),
        &format!("fsck.erofs --extract {}", path.display()),
    )
    .with_context(|| format!("{}: not a readable EROFS image", path.display()))?;
    let dir = dest.join(RELEASE_DIR);
    // Never through a link of the image: it would read the host's files.
    let mut at = dest.clone();
    let mut present = true;
    for c in RELEASE_DIR.split('/') {
        at.push(c);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => bail!(
                "{}: {} is not a directory (a link or a file) in the image",
                path.display(),
                at.strip_prefix(&dest).unwrap_or(&at).display()
            ),
            Err(_) => {
                present = false;
                break;
            }
        }
    }
    let files: Vec<String> = if present {
        read_names(&dir)?.into_iter().filter(|n| n.starts_with("extension-release.")).collect()
    } else {
        Vec::new()
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().trim_end_matches(".raw").to_string())
        .unwrap_or_default();
    let release = match files.as_slice() {
        [one] => one.clone(),
        [] => bail!(
            "{}: no {RELEASE_DIR}/extension-release.* (not a system extension)",
            path.display()
        ),
        many => {
            bail!("{}: more than one extension-release file: {}", path.display(), many.join(", "))
        }
    };
    let release_name = release.trim_start_matches("extension-release.").to_string();
    let f = dir.join(&release);
    let m =
        std::fs::symlink_metadata(&f).with_context(|| format!("{}: cannot stat", f.display()))?;
    if !m.is_file() || m.len() > 64 * 1024 {
        bail!(
            "{}: {RELEASE_DIR}/{release} is not a regular file of at most 64 KiB",
            path.display()
        );
    }
    let text = std::fs::read_to_string(&f).with_context(|| {
        format!("{}: {RELEASE_DIR}/{release} is not UTF-8 text", path.display())
    })?;
    let fields = OsRelease::parse(&text).0;
    let mut errors = Vec::new();
    if release_name != name {
        errors.push(format!(
            "the file is named {name}.raw but holds extension-release.{release_name}: systemd-sysext refuses it"
        ));
    }
    if !fields.contains_key("ID") {
        errors.push("no ID=".into());
    }
    if !fields.contains_key("VERSION_ID") && !fields.contains_key("SYSEXT_LEVEL") {
        errors.push("neither VERSION_ID= nor SYSEXT_LEVEL=".into());
    }
    for top in read_names(&dest)? {
        if !MERGED.contains(&top.as_str()) {
            errors.push(format!("holds /{top}, which systemd-sysext does not merge"));
        }
    }
    Ok(ImageInfo { name, release_name, fields, bytes, errors })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(j: &str) -> Result<Descriptor> {
        Descriptor::parse(j, Path::new("sysext/x/sysext.json"), "x")
    }

    fn err(j: &str) -> String {
        format!("{:#}", parse(j).unwrap_err())
    }

    #[test]
    fn a_descriptor_is_read_with_its_defaults() {
        let d = parse(
            r#"{"name": "x", "units": [{"name": "a.service", "upheld_by": "multi-user.target"}]}"#,
        )
        .unwrap();
        assert_eq!(d.paths, ["usr"]);
        assert!(d.depends.is_empty());
        assert_eq!(d.units[0].upheld_by.as_deref(), Some("multi-user.target"));
    }

    #[test]
    fn malformed_descriptors_name_the_file_and_the_field() {
        for (j, want) in [
            (r#"{"name": "x", "units": [{"name": 3}]}"#, "units[0].name: invalid type"),
            (
                r#"{"name": "x", "units": [{"name": "a.service", "wanted_by": "t"}]}"#,
                "units[0].wanted_by: unknown field `wanted_by`",
            ),
            (
                r#"{"name": "x", "units": [{"name": "a"}]}"#,
                "units[0].name: \"a\" is not a unit name",
            ),
            (r#"{"name": "x", "units": [{"name": "a;b.service"}]}"#, "units[0].name:"),
            (
                r#"{"name": "x", "units": [{"name": "a.service", "upheld_by": "b.service"}]}"#,
                "units[0].upheld_by: \"b.service\" is not a target",
            ),
            (
                r#"{"name": "x", "units": [{"name": "a.service"}, {"name": "a.service"}]}"#,
                "units[1].name: 'a.service' is listed twice",
            ),
            (r#"{"name": "y"}"#, "name: 'y' does not match its folder 'x'"),
            (r#"{"name": "X"}"#, "name: \"X\" must be"),
            (r#"{"name": "x", "depends": ["../y"]}"#, "depends[0]: \"../y\" is not a name"),
            (
                r#"{"name": "x", "depends": ["x"]}"#,
                "depends[0]: an extension cannot depend on itself",
            ),
            (
                r#"{"name": "x", "paths": ["usr", "etc"]}"#,
                "paths[1]: \"etc\": systemd-sysext merges only usr and opt",
            ),
            (r#"{"name": "x", "paths": ["opt"]}"#, "paths: must include \"usr\""),
            (r#"{"name": "x", "description": "a\"b"}"#, "description: must not hold"),
            (r#"{"units": []}"#, "missing field `name`"),
            ("{", "EOF"),
        ] {
            let e = err(j);
            assert!(e.starts_with("sysext/x/sysext.json: "), "{j}: {e}");
            assert!(e.contains(want), "{j}: {e}");
        }
    }

    #[test]
    fn the_release_file_matches_the_base() {
        let f = Path::new("usr/lib/os-release");
        let os = OsRelease::parse("ID=flatcar\nVERSION_ID=4012.0.0\n");
        assert_eq!(
            extension_release("docker-flatcar", &os, f, Arch::Amd64, &[]).unwrap(),
            "ID=flatcar\nVERSION_ID=4012.0.0\nARCHITECTURE=x86-64\nSYSEXT_ID=docker-flatcar\nEXTENSION_RELOAD_MANAGER=1\n"
        );
        assert!(extension_release("a", &os, f, Arch::Arm64, &[])
            .unwrap()
            .contains("\nARCHITECTURE=arm64\n"));
        let os = OsRelease::parse("ID=debian\nSYSEXT_LEVEL=1.0\n");
        assert!(extension_release("a", &os, f, Arch::Amd64, &[])
            .unwrap()
            .contains("\nSYSEXT_LEVEL=1.0\n"));
        let e = extension_release("a", &OsRelease::parse("ID=debian\n"), f, Arch::Amd64, &[])
            .unwrap_err();
        assert!(e.to_string().contains("neither VERSION_ID nor SYSEXT_LEVEL"), "{e}");
        let e = extension_release(
            "a",
            &OsRelease::parse("ID=x\nVERSION_ID=\"1 2\"\n"),
            f,
            Arch::Amd64,
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("usr/lib/os-release: VERSION_ID="), "{e}");
        // An OEM extension's fields come after SYSEXT_ID.
        let os = OsRelease::parse("ID=flatcar\nVERSION_ID=4012.0.0\n");
        let extra = [("SYSEXT_NAME".to_string(), "\"Hetzner Cloud OEM\"".to_string())];
        assert_eq!(
            extension_release("oem-hetzner", &os, f, Arch::Amd64, &extra).unwrap(),
            "ID=flatcar\nVERSION_ID=4012.0.0\nARCHITECTURE=x86-64\nSYSEXT_ID=oem-hetzner\nSYSEXT_NAME=\"Hetzner Cloud OEM\"\nEXTENSION_RELOAD_MANAGER=1\n"
        );
    }

    #[test]
    fn a_listed_extension_needs_what_it_depends_on_listed() {
        let d = tempfile::tempdir().unwrap();
        for (n, j) in [("a", r#"{"name": "a"}"#), ("b", r#"{"name": "b", "depends": ["a"]}"#)] {
            std::fs::create_dir(d.path().join(n)).unwrap();
            std::fs::write(d.path().join(n).join(DESCRIPTOR), j).unwrap();
            std::fs::write(d.path().join(n).join("packages.txt"), "hello\n").unwrap();
        }
        let from = Path::new("oem/t/platform.json");
        check_listed(d.path(), &["a".into(), "b".into()], from, Arch::Amd64).unwrap();
        let e =
            format!("{:#}", check_listed(d.path(), &["b".into()], from, Arch::Amd64).unwrap_err());
        assert!(
            e.starts_with("oem/t/platform.json: extensions: 'b' depends on 'a'")
                && e.contains("which is not listed"),
            "{e}"
        );
        let e =
            format!("{:#}", check_listed(d.path(), &["c".into()], from, Arch::Amd64).unwrap_err());
        assert!(e.contains("extensions: 'c'") && e.contains("unknown extension 'c'"), "{e}");
    }

    #[test]
    fn upholds_dropins_are_named_after_the_unit() {
        let (p, t) = upholds_dropin("docker.socket", "sockets.target");
        assert_eq!(p, "usr/lib/systemd/system/sockets.target.d/10-docker-socket.conf");
        assert!(t.ends_with("[Unit]\nUpholds=docker.socket\n"), "{t}");
    }

    #[test]
    fn shadowing_is_found_through_files_links_and_directories() {
        let d = tempfile::tempdir().unwrap();
        let (up, low) = (d.path().join("up"), d.path().join("low"));
        for p in ["usr/bin", "usr/lib/x", "usr/share/new"] {
            std::fs::create_dir_all(up.join(p)).unwrap();
        }
        for p in ["usr/bin", "usr/lib", "usr/share"] {
            std::fs::create_dir_all(low.join(p)).unwrap();
        }
        std::fs::write(up.join("usr/bin/bash"), "x").unwrap();
        std::fs::write(up.join("usr/bin/docker"), "x").unwrap();
        std::fs::write(up.join("usr/lib/x/y"), "x").unwrap();
        std::fs::write(up.join("usr/share/new/z"), "x").unwrap();
        std::fs::write(low.join("usr/bin/bash"), "x").unwrap();
        std::os::unix::fs::symlink("/elsewhere", low.join("usr/lib/x")).unwrap();
        let found = shadowed(&up, &[("base".into(), low.as_path())]).unwrap();
        assert_eq!(
            found,
            [
                ("usr/bin/bash".to_string(), "a file of base".to_string()),
                ("usr/lib/x".to_string(), "a link of base".to_string()),
            ]
        );
    }
}
