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

/// Builds the initramfs for the payload's kernel (its version read from the
/// bzImage) with `init` as /init. Module files are read from the payload
/// with links resolved inside it; a `modules.dep` naming `../` paths is refused.
pub fn build(payload: &Payload, init: &Path, wanted: &[String], epoch: i64) -> Result<Vec<u8>> {
    let version = super::kernel_version(&payload.kernel).ok_or_else(|| {
        anyhow!("{}: not an x86 bzImage (no setup header)", crate::payload::KERNEL)
    })?;
    if version.contains('/') || version == ".." {
        bail!("{}: kernel version '{version}' is not a directory name", crate::payload::KERNEL);
    }
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
    for d in ["dev", "proc", "sys", "run", "sysroot", "etc/forge-init", "tmp"] {
        c.dir(d);
    }
    c.char_dev("dev/console", 0o600, 5, 1);
    c.char_dev("dev/null", 0o666, 1, 3);
    c.file("init", 0o755, &init_bytes);
    let names: Vec<&str> = wanted.iter().map(|w| w.trim_end_matches('?')).collect();
    c.file("etc/forge-init/modules", 0o644, (names.join("\n") + "\n").as_bytes());
    let base = format!("lib/modules/{version}");
    for f in ["modules.dep", "modules.builtin", "modules.order"] {
        if let Ok(b) = payload.read(&format!("{mdir}/{f}")) {
            c.file(&format!("{base}/{f}"), 0o644, &b);
        }
    }
    for m in module_closure(payload, &mdir, wanted)? {
        let b = payload.read(&format!("{mdir}/{m}")).context("a module modules.dep names")?;
        c.file(&format!("{base}/{m}"), 0o644, &b);
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
