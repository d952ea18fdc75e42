//! What an image keeps of each payload file besides its bytes: owner, group,
//! permission bits (with set-id and sticky bits) and extended attributes
//! (file capabilities, ACLs, …), recorded as data so a build without root
//! gives the image the same attributes a build as root does.
//!
//! A payload directory `P` may come with a sidecar `P.meta.json` (the
//! recipe writes one from the packages' archives: `chage` is setgid
//! `shadow`, `/tmp` is 1777). Without a sidecar (a `--base` tree made some
//! other way) the attributes are read from the tree itself ([`Meta::scan`]).
//! Either way, the filesystem builders receive them through `fakeroot`
//! (see `fs::source`), never by changing the payload on disk.
//!
//! Paths are relative to the payload root, `/`-separated, `""` for the root.
//! A path without an entry belongs to root:root, with the permission bits
//! it has on disk and no extended attributes.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The attributes of one file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attrs {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits with set-uid, set-gid and sticky (`mode & 0o7777`),
    /// written in octal (`"2755"`).
    #[serde(with = "octal")]
    pub mode: u32,
    /// Extended attributes: name → value in hex.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub xattrs: BTreeMap<String, String>,
}

impl Attrs {
    /// Root-owned with `mode`, no extended attributes: what a path without
    /// an entry gets.
    pub fn root(mode: u32) -> Attrs {
        Attrs { uid: 0, gid: 0, mode: mode & 0o7777, xattrs: BTreeMap::new() }
    }
}

mod octal {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(m: &u32, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{m:04o}"))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        let s = String::deserialize(d)?;
        u32::from_str_radix(&s, 8).map_err(|_| D::Error::custom(format!("mode '{s}' is not octal")))
    }
}

/// The sidecar's contents.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    pub format: u32,
    pub entries: BTreeMap<String, Attrs>,
}

pub const FORMAT: u32 = 1;

/// Extended attribute namespaces an image may carry (the kernel's own
/// `system.*` ones besides ACLs are not file data).
pub fn check_xattr_name(name: &str) -> Result<()> {
    let ok_prefix = ["user.", "trusted.", "security."].iter().any(|p| name.starts_with(p))
        || name == "system.posix_acl_access"
        || name == "system.posix_acl_default";
    let ok_chars = name.len() <= 255
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-@+:".contains(&b));
    if !ok_prefix || !ok_chars {
        bail!(
            "extended attribute '{}' is not one an image can carry (user.*, trusted.*, security.*, system.posix_acl_*; letters, digits and ._-@+:)",
            name.escape_debug()
        );
    }
    Ok(())
}

impl Meta {
    pub fn new() -> Meta {
        Meta { format: FORMAT, entries: BTreeMap::new() }
    }

    /// Where the sidecar of the payload directory `dir` lives.
    pub fn sidecar(dir: &Path) -> PathBuf {
        let mut name = dir.file_name().unwrap_or_default().to_os_string();
        name.push(".meta.json");
        dir.with_file_name(name)
    }

    pub fn load(path: &Path) -> Result<Meta> {
        let text =
            std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
        let m: Meta = serde_json::from_slice(&text)
            .with_context(|| format!("{}: not a payload metadata file", path.display()))?;
        if m.format != FORMAT {
            bail!("{}: format {} (this build reads format {FORMAT})", path.display(), m.format);
        }
        for (p, a) in &m.entries {
            if a.mode > 0o7777 {
                bail!("{}: '{p}': mode {:o} has bits beyond 7777", path.display(), a.mode);
            }
            if p.starts_with('/') || p.split('/').any(|c| c == ".." || c == ".") {
                bail!("{}: '{p}' is not a path inside the payload", path.display());
            }
            for (n, v) in &a.xattrs {
                check_xattr_name(n).with_context(|| format!("{}: '{p}'", path.display()))?;
                hex::decode(v).with_context(|| {
                    format!("{}: '{p}': xattr {n}: value is not hex", path.display())
                })?;
            }
        }
        Ok(m)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_vec_pretty(self)?;
        let tmp = path.with_extension("json.partial");
        std::fs::write(&tmp, text).with_context(|| format!("{}: cannot write", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("{}: cannot write", path.display()))
    }

    /// The sidecar of `dir` if there is one, else the attributes read from
    /// the tree ([`Meta::scan`]).
    pub fn for_payload(dir: &Path) -> Result<Meta> {
        let side = Meta::sidecar(dir);
        match std::fs::symlink_metadata(&side) {
            Ok(_) => Meta::load(&side),
            Err(_) => Meta::scan(dir),
        }
    }

    /// Reads the attributes of a tree made without a sidecar: owners and
    /// groups as they are, except that the builder's own files (and group)
    /// count as root's (the builder is root in the image); extended
    /// attributes as the files have them. Only what differs from a path
    /// without an entry is recorded.
    pub fn scan(dir: &Path) -> Result<Meta> {
        use std::os::unix::fs::MetadataExt;
        let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let mut meta = Meta::new();
        let mut stack = vec![(dir.to_path_buf(), String::new())];
        while let Some((p, rel)) = stack.pop() {
            let m = std::fs::symlink_metadata(&p)
                .with_context(|| format!("{}: cannot stat", p.display()))?;
            let map = |id: u32, me: u32| if id == me { 0 } else { id };
            let mut a = Attrs {
                uid: map(m.uid(), euid),
                gid: map(m.gid(), egid),
                mode: m.mode() & 0o7777,
                xattrs: BTreeMap::new(),
            };
            if !m.file_type().is_symlink() {
                a.xattrs = read_xattrs(&p)?;
            }
            if a != Attrs::root(m.mode()) {
                meta.entries.insert(rel.clone(), a);
            }
            if m.is_dir() {
                let mut names: Vec<_> = std::fs::read_dir(&p)
                    .with_context(|| format!("{}: cannot list", p.display()))?
                    .map(|e| e.map(|e| e.file_name()))
                    .collect::<std::io::Result<_>>()
                    .with_context(|| format!("{}: cannot list", p.display()))?;
                names.sort();
                for n in names.into_iter().rev() {
                    let Some(s) = n.to_str() else {
                        bail!("{}: a name that is not UTF-8: {n:?}", p.display());
                    };
                    let r = if rel.is_empty() { s.to_string() } else { format!("{rel}/{s}") };
                    stack.push((p.join(&n), r));
                }
            }
        }
        Ok(meta)
    }

    /// The attributes of `rel` given its mode on disk.
    pub fn attrs(&self, rel: &str, disk_mode: u32) -> Attrs {
        self.entries.get(rel).cloned().unwrap_or_else(|| Attrs::root(disk_mode))
    }
}

/// The extended attributes of `p` (not following a link), names checked.
pub fn read_xattrs(p: &Path) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut names = vec![0u8; 4096];
    let n = loop {
        match rustix::fs::llistxattr(p, &mut names) {
            Ok(n) => break n,
            Err(rustix::io::Errno::RANGE) => names.resize(names.len() * 4, 0),
            Err(rustix::io::Errno::NOTSUP) => return Ok(out),
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("{}: cannot list extended attributes", p.display()))
            }
        }
        if names.len() > 1 << 20 {
            bail!("{}: more than 1 MiB of extended attribute names", p.display());
        }
    };
    for raw in names[..n].split(|&b| b == 0).filter(|s| !s.is_empty()) {
        let name = String::from_utf8(raw.to_vec()).map_err(|_| {
            anyhow::anyhow!("{}: an extended attribute name that is not UTF-8", p.display())
        })?;
        check_xattr_name(&name).with_context(|| p.display().to_string())?;
        let mut v = vec![0u8; 256];
        let len = loop {
            match rustix::fs::lgetxattr(p, name.as_str(), &mut v) {
                Ok(n) => break n,
                Err(rustix::io::Errno::RANGE) if v.len() < 1 << 16 => v.resize(v.len() * 4, 0),
                Err(e) => {
                    return Err(e).with_context(|| format!("{}: cannot read {name}", p.display()))
                }
            }
        };
        out.insert(name, hex::encode(&v[..len]));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecar_sits_beside_the_directory() {
        assert_eq!(Meta::sidecar(Path::new("/a/root")), Path::new("/a/root.meta.json"));
        assert_eq!(Meta::sidecar(Path::new("/a/root/")), Path::new("/a/root.meta.json"));
    }

    #[test]
    fn xattr_names_are_checked() {
        for ok in ["security.capability", "user.x", "system.posix_acl_access", "trusted.overlay.x"]
        {
            check_xattr_name(ok).unwrap();
        }
        for bad in ["system.nfs4_acl", "foo", "user.a\nb", "user./x", ""] {
            assert!(check_xattr_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn scan_records_only_what_differs() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("tmp")).unwrap();
        std::fs::set_permissions(d.path().join("tmp"), std::fs::Permissions::from_mode(0o1777))
            .unwrap();
        std::fs::write(d.path().join("f"), b"x").unwrap();
        std::fs::set_permissions(d.path().join("f"), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        let m = Meta::scan(d.path()).unwrap();
        // The builder's own files are root's; modes are kept as they are on
        // disk, so nothing needs an entry.
        assert!(!m.entries.contains_key("f"), "{m:?}");
        assert_eq!(m.attrs("tmp", 0o41777).mode, 0o1777);
        assert_eq!(m.attrs("f", 0o100644), Attrs::root(0o644));
    }

    #[test]
    fn load_refuses_paths_out_of_the_payload_and_bad_modes() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("m.json");
        for (bad, what) in [
            (r#"{"format":1,"entries":{"../x":{"uid":0,"gid":0,"mode":"644"}}}"#, "not a path"),
            (r#"{"format":1,"entries":{"x":{"uid":0,"gid":0,"mode":"70000"}}}"#, "beyond 7777"),
            (r#"{"format":2,"entries":{}}"#, "format 2"),
            (r#"{"format":1,"entries":{"x":{"uid":0,"gid":0,"mode":"9"}}}"#, "not octal"),
            (
                r#"{"format":1,"entries":{"x":{"uid":0,"gid":0,"mode":"644","xattrs":{"system.x":"00"}}}}"#,
                "system.x",
            ),
        ] {
            std::fs::write(&f, bad).unwrap();
            let e = format!("{:#}", Meta::load(&f).unwrap_err());
            assert!(e.contains(what) && e.contains("m.json"), "{e}");
        }
    }
}
