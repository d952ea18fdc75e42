//! The initramfs: a newc cpio written by our own code (deterministic: every
//! entry owned by root, stamped with the epoch, in a fixed order) holding
//! `/init` (forge-init), `/dev/console`, the module list and the modules it
//! needs from the payload's kernel, with their dependencies.

use crate::payload::Payload;
use anyhow::{anyhow, bail, Context, Result};
use forge_formats::modules::{self, ModulesDep};
use std::collections::BTreeSet;
use std::path::Path;

/// A newc ("070701") cpio archive under construction.
pub struct Cpio {
    out: Vec<u8>,
    ino: u32,
    epoch: u32,
    seen: BTreeSet<String>,
}

impl Cpio {
    pub fn new(epoch: i64) -> Cpio {
        Cpio {
            out: Vec::new(),
            ino: 1,
            epoch: epoch.clamp(0, u32::MAX as i64) as u32,
            seen: BTreeSet::new(),
        }
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) {
        let fields = [
            self.ino,
            mode,
            0,
            0,
            1,
            self.epoch,
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.ino += 1;
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
        self.out.extend_from_slice(data);
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    /// Adds a directory (and its parents, once each).
    pub fn dir(&mut self, path: &str) {
        let mut acc = String::new();
        for c in path.split('/').filter(|c| !c.is_empty()) {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(c);
            if self.seen.insert(acc.clone()) {
                let a = acc.clone();
                self.entry(&a, 0o040755, &[], (0, 0));
            }
        }
    }

    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        self.entry(path, 0o100000 | (mode & 0o7777), data, (0, 0));
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        self.entry(path, 0o120777, target.as_bytes(), (0, 0));
    }

    pub fn char_dev(&mut self, path: &str, mode: u32, major: u32, minor: u32) {
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        self.entry(path, 0o020000 | (mode & 0o7777), &[], (major, minor));
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[], (0, 0));
        while !self.out.len().is_multiple_of(512) {
            self.out.push(0);
        }
        self.out
    }
}

/// Modules to load: names from `list` plus everything they depend on, as
/// paths relative to the modules directory `mdir` (payload-relative), per
/// `modules.dep`.
pub fn module_closure(payload: &Payload, mdir: &str, wanted: &[String]) -> Result<Vec<String>> {
    let dep_path = format!("{mdir}/modules.dep");
    let text =
        payload.read(&dep_path).with_context(|| format!("{dep_path}: missing (run depmod)"))?;
    let text = String::from_utf8_lossy(&text);
    let deps = ModulesDep::parse(&text).with_context(|| dep_path.clone())?;
    let builtin = payload.read(&format!("{mdir}/modules.builtin")).unwrap_or_default();
    let builtin = modules::parse_builtin(&String::from_utf8_lossy(&builtin));
    let mut out = BTreeSet::new();
    for w in wanted {
        let (w, optional) = match w.strip_suffix('?') {
            Some(x) => (x, true),
            None => (w.as_str(), false),
        };
        match deps.get(w) {
            Some(m) => {
                out.insert(m.path.clone());
                out.extend(m.deps.iter().cloned());
            }
            None if builtin.contains(&modules::normalize(w)) || optional => {}
            None => bail!("kernel module '{w}' is neither in {dep_path} nor built in"),
        }
    }
    Ok(out.into_iter().collect())
}

/// A file the initramfs carries besides forge-init and the modules (from
/// `boot/initramfs/`): path inside the initramfs, mode, bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extra {
    pub path: String,
    pub mode: u32,
    pub data: Vec<u8>,
}

/// Reads a tree of extra initramfs files (`boot/initramfs/`): regular files
/// only, in name order, mode 0755 when the owner may execute it, else 0644
/// (as git keeps them, whatever the checkout's umask).
pub fn read_extra(dir: &Path) -> Result<Vec<Extra>> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((d, rel)) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&d)
            .with_context(|| format!("{}: cannot read", d.display()))?
            .collect::<std::io::Result<_>>()
            .with_context(|| format!("{}: cannot read", d.display()))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries.into_iter().rev() {
            let name = e
                .file_name()
                .into_string()
                .map_err(|n| anyhow!("{}: {n:?} is not UTF-8", d.display()))?;
            let path = if rel.is_empty() { name.clone() } else { format!("{rel}/{name}") };
            let meta = std::fs::symlink_metadata(e.path())
                .with_context(|| format!("{}", e.path().display()))?;
            if meta.is_dir() {
                stack.push((e.path(), path));
            } else if meta.is_file() {
                let data = std::fs::read(e.path())
                    .with_context(|| format!("{}: cannot read", e.path().display()))?;
                let mode = if meta.permissions().mode() & 0o100 != 0 { 0o755 } else { 0o644 };
                out.push(Extra { path, mode, data });
            } else {
                bail!(
                    "{}: only regular files and directories go into the initramfs",
                    e.path().display()
                );
            }
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Builds the initramfs for the payload's kernel (its release read from the
/// kernel image's header: bzImage or arm64 Image) with `init` as /init. Module files are read from the payload
/// with links resolved inside it; a `modules.dep` naming `../` paths is refused.
///
/// Layout: merged /usr, as the image's: `bin`, `sbin`, `lib`, `lib64` are
/// links into `usr/`, the modules sit in `usr/lib/modules/<version>`. On
/// the first boot forge-init binds the image's verified /usr over `usr/`
/// (after the modules are loaded), so the image's programs run here.
pub fn build(
    payload: &Payload,
    init: &Path,
    wanted: &[String],
    extra: &[Extra],
    epoch: i64,
) -> Result<Vec<u8>> {
    let version = payload.kernel_image()?.version;
    let mdir = format!("usr/lib/modules/{version}");
    if payload.read(&format!("{mdir}/modules.dep")).is_err() {
        bail!(
            "payload {}: no modules for kernel {version} ({mdir}/modules.dep)",
            payload.root.display()
        );
    }
    let init_bytes = std::fs::read(init)
        .with_context(|| format!("{}: cannot read the init binary", init.display()))?;
    let mut c = Cpio::new(epoch);
    for d in ["dev", "proc", "sys", "run", "sysroot", "etc/forge-init", "tmp", "usr"] {
        c.dir(d);
    }
    for l in ["bin", "sbin", "lib", "lib64"] {
        c.symlink(l, &format!("usr/{l}"));
    }
    c.char_dev("dev/console", 0o600, 5, 1);
    c.char_dev("dev/null", 0o666, 1, 3);
    c.file("init", 0o755, &init_bytes);
    let names: Vec<&str> = wanted.iter().map(|w| w.trim_end_matches('?')).collect();
    c.file("etc/forge-init/modules", 0o644, (names.join("\n") + "\n").as_bytes());
    let base = format!("usr/lib/modules/{version}");
    for f in ["modules.dep", "modules.builtin", "modules.order"] {
        if let Ok(b) = payload.read(&format!("{mdir}/{f}")) {
            c.file(&format!("{base}/{f}"), 0o644, &b);
        }
    }
    for m in module_closure(payload, &mdir, wanted)? {
        let b = payload.read(&format!("{mdir}/{m}")).context("a module modules.dep names")?;
        c.file(&format!("{base}/{m}"), 0o644, &b);
    }
    for x in extra {
        let first = x.path.split('/').next().unwrap_or_default();
        if x.path == "init" || ["usr", "bin", "sbin", "lib", "lib64"].contains(&first) {
            bail!(
                "initramfs file {}: that place belongs to forge-init or the image's /usr",
                x.path
            );
        }
        c.file(&x.path, x.mode, &x.data);
    }
    Ok(c.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_layout() {
        let mut c = Cpio::new(5);
        c.file("a/b", 0o644, b"xyz");
        let out = c.finish();
        assert!(out.starts_with(b"070701"));
        assert_eq!(out.len() % 512, 0);
        let s = String::from_utf8_lossy(&out);
        assert!(s.contains("a\0") && s.contains("a/b\0") && s.contains("TRAILER!!!"));
    }
}
