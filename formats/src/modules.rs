//! `modules.dep` (as `depmod` writes it) and `modules.builtin`.
//!
//! `modules.dep` has one line per module: its path relative to the modules
//! directory, a colon, and the paths of every module it needs, directly or
//! not, in the order `modprobe` unloads them (so loading goes in reverse):
//!
//! ```text
//! kernel/drivers/md/dm-verity.ko.xz: kernel/drivers/md/dm-bufio.ko.xz kernel/lib/reed_solomon/reed_solomon.ko.xz
//! ```

use crate::{Error, Result};
use std::collections::{BTreeMap, BTreeSet};

/// A module's name from its path, as the kernel knows it: the file name
/// without `.ko` and any compression suffix, `-` spelled `_`.
pub fn module_name(path: &str) -> String {
    let f = path.rsplit('/').next().unwrap_or(path);
    let f = f.split(".ko").next().unwrap_or(f);
    normalize(f)
}

/// A module name as written by a user (`dm-verity`) in the kernel's
/// spelling (`dm_verity`).
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Module {
    /// Relative to the modules directory.
    pub path: String,
    /// Everything it needs, in `modules.dep` order.
    pub deps: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModulesDep {
    by_name: BTreeMap<String, Module>,
}

impl ModulesDep {
    /// Parses `modules.dep`. Blank lines are skipped; a line without a colon
    /// or with an empty path is an error naming its line number.
    pub fn parse(text: &str) -> Result<ModulesDep> {
        let mut by_name = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let bad = |m: &str| Err(Error::new("modules.dep", format!("line {}: {m}", i + 1)));
            let Some((path, deps)) = line.split_once(':') else {
                return bad("no ':' after the module path");
            };
            let path = path.trim();
            if path.is_empty() {
                return bad("empty module path");
            }
            let deps = deps.split_whitespace().map(str::to_string).collect();
            by_name.insert(module_name(path), Module { path: path.to_string(), deps });
        }
        Ok(ModulesDep { by_name })
    }

    /// The module called `name` (either spelling, `-` or `_`).
    pub fn get(&self, name: &str) -> Option<&Module> {
        self.by_name.get(&normalize(name))
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Paths to load, in order, for module `name`: its dependencies (the
    /// reverse of the `modules.dep` order), then the module itself.
    pub fn load_order(&self, name: &str) -> Option<Vec<&str>> {
        let m = self.get(name)?;
        Some(m.deps.iter().rev().chain(std::iter::once(&m.path)).map(String::as_str).collect())
    }
}

/// The names of the modules built into the kernel, from `modules.builtin`
/// (one path per line).
pub fn parse_builtin(text: &str) -> BTreeSet<String> {
    text.lines().map(str::trim).filter(|l| !l.is_empty()).map(module_name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/drivers/md/dm-verity.ko.xz: kernel/drivers/md/dm-bufio.ko.xz kernel/lib/reed_solomon/reed_solomon.ko.xz
kernel/drivers/md/dm-bufio.ko.xz:
kernel/fs/erofs/erofs.ko.zst: kernel/lib/lz4/lz4_decompress.ko

kernel/lib/lz4/lz4_decompress.ko:
";

    #[test]
    fn names() {
        assert_eq!(module_name("kernel/drivers/md/dm-verity.ko.xz"), "dm_verity");
        assert_eq!(module_name("virtio_scsi.ko"), "virtio_scsi");
        assert_eq!(module_name("kernel/fs/erofs/erofs.ko.zst"), "erofs");
    }

    #[test]
    fn lookup_and_order() {
        let d = ModulesDep::parse(DEP).unwrap();
        assert_eq!(d.len(), 4);
        let m = d.get("dm-verity").unwrap();
        assert_eq!(m.path, "kernel/drivers/md/dm-verity.ko.xz");
        assert_eq!(d.get("dm_verity"), Some(m));
        assert_eq!(
            d.load_order("dm-verity").unwrap(),
            [
                "kernel/lib/reed_solomon/reed_solomon.ko.xz",
                "kernel/drivers/md/dm-bufio.ko.xz",
                "kernel/drivers/md/dm-verity.ko.xz"
            ]
        );
        assert_eq!(d.load_order("dm_bufio").unwrap(), ["kernel/drivers/md/dm-bufio.ko.xz"]);
        assert_eq!(d.load_order("ext4"), None);
    }

    #[test]
    fn malformed_lines_are_errors() {
        let e = ModulesDep::parse("a.ko:\nkernel/b.ko b.ko\n").unwrap_err();
        assert_eq!(e.to_string(), "modules.dep: line 2: no ':' after the module path");
        let e = ModulesDep::parse(": x.ko\n").unwrap_err();
        assert_eq!(e.to_string(), "modules.dep: line 1: empty module path");
        assert!(ModulesDep::parse("").unwrap().is_empty());
    }

    #[test]
    fn builtin() {
        let b = parse_builtin("kernel/fs/ext4/ext4.ko\nkernel/drivers/md/dm-mod.ko\n\n");
        assert!(b.contains("ext4") && b.contains("dm_mod"));
        assert_eq!(b.len(), 2);
    }
}
