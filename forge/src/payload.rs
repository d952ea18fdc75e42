//! Payload contract: a directory holding a root tree whose OS lives under
//! `usr/` (merged /usr), with `usr/lib/os-release`, the kernel at
//! `usr/boot/vmlinuz` and optionally an initramfs at `usr/boot/initrd.img`.
//! Anything else at the top level (e.g. `etc/`) goes onto the ROOT partition.

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const OS_RELEASE: &str = "usr/lib/os-release";
pub const KERNEL: &str = "usr/boot/vmlinuz";
pub const INITRD: &str = "usr/boot/initrd.img";

#[derive(Clone, Debug)]
pub struct Payload {
    pub root: PathBuf,
    pub os_release: OsRelease,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
}

/// Parsed `os-release` (only the keys; values unquoted).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OsRelease(pub BTreeMap<String, String>);

impl OsRelease {
    pub fn parse(text: &str) -> OsRelease {
        OsRelease(forge_formats::os_release::parse(text))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// `ID` (required by the contract).
    pub fn id(&self) -> &str {
        self.get("ID").unwrap_or("linux")
    }

    /// `VERSION_ID`, if any.
    pub fn version_id(&self) -> Option<&str> {
        self.get("VERSION_ID")
    }
}

impl Payload {
    /// Opens and checks a payload directory; every breach of the contract is
    /// an error naming the path and what is wrong.
    pub fn open(dir: &Path) -> Result<Payload> {
        let meta = std::fs::metadata(dir)
            .with_context(|| format!("payload {}: cannot read the directory", dir.display()))?;
        if !meta.is_dir() {
            bail!("payload {}: not a directory", dir.display());
        }
        let usr = dir.join("usr");
        if !usr.is_dir() {
            bail!(
                "payload {}: no usr/ directory (the OS must live under usr/, merged /usr)",
                dir.display()
            );
        }
        let osr_path = dir.join(OS_RELEASE);
        let text = std::fs::read_to_string(&osr_path).with_context(|| {
            format!("payload {}: missing or unreadable {}", dir.display(), OS_RELEASE)
        })?;
        let os_release = OsRelease::parse(&text);
        if os_release.get("ID").is_none() {
            bail!("payload {}: {} has no ID= line", dir.display(), osr_path.display());
        }
        let kernel = dir.join(KERNEL);
        match std::fs::metadata(&kernel) {
            Ok(m) if m.is_file() && m.len() > 0 => {}
            Ok(_) => bail!("payload {}: {} is empty or not a regular file", dir.display(), KERNEL),
            Err(_) => bail!("payload {}: missing kernel {}", dir.display(), KERNEL),
        }
        let initrd = dir.join(INITRD);
        let initrd = match std::fs::metadata(&initrd) {
            Ok(m) if m.is_file() => Some(initrd),
            Ok(_) => bail!("payload {}: {} is not a regular file", dir.display(), INITRD),
            Err(_) => None,
        };
        Ok(Payload { root: dir.to_path_buf(), os_release, kernel, initrd })
    }

    pub fn usr(&self) -> PathBuf {
        self.root.join("usr")
    }

    /// Top-level entries other than `usr`: they go onto ROOT.
    pub fn root_extras(&self) -> Result<Vec<PathBuf>> {
        let mut v = Vec::new();
        for e in std::fs::read_dir(&self.root)
            .with_context(|| format!("payload {}: cannot list", self.root.display()))?
        {
            let e = e?;
            if e.file_name() != "usr" {
                v.push(e.path());
            }
        }
        v.sort();
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_parsing() {
        let o = OsRelease::parse("# c\nID=debian\nVERSION_ID=\"12\"\nNAME='Debian GNU/Linux'\n");
        assert_eq!(o.id(), "debian");
        assert_eq!(o.version_id(), Some("12"));
        assert_eq!(o.get("NAME"), Some("Debian GNU/Linux"));
    }

    #[test]
    fn rejects_missing_kernel() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("usr/lib")).unwrap();
        std::fs::write(d.path().join(OS_RELEASE), "ID=x\n").unwrap();
        let e = format!("{:#}", Payload::open(d.path()).unwrap_err());
        assert!(e.contains("missing kernel usr/boot/vmlinuz"), "{e}");
    }
}
