//! Payload contract: a directory holding a root tree whose OS lives under
//! `usr/` (merged /usr), with `usr/lib/os-release`, the kernel at
//! `usr/boot/vmlinuz` and optionally an initramfs at `usr/boot/initrd.img`.
//! Anything else at the top level (e.g. `etc/`) goes onto the ROOT partition.
//!
//! Every file the build itself reads from a payload (os-release, kernel,
//! initramfs, kernel modules) is opened with symlinks resolved *inside*
//! the payload (`unpack::Root::open_read`): a link to `/etc/shadow` reads
//! the payload's own `etc/shadow`, never the host's. `usr/` must be a real
//! directory. The files' owners, modes and extended attributes in the image
//! come from [`crate::meta`].

use crate::meta::Meta;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const OS_RELEASE: &str = "usr/lib/os-release";
pub const KERNEL: &str = "usr/boot/vmlinuz";
pub const INITRD: &str = "usr/boot/initrd.img";

#[derive(Clone, Debug)]
pub struct Payload {
    pub root: PathBuf,
    pub os_release: OsRelease,
    /// When os-release was last changed (the default build epoch).
    pub os_release_mtime: i64,
    pub kernel: Vec<u8>,
    pub initrd: Option<Vec<u8>>,
    /// Owners, modes and extended attributes (sidecar or read from the tree).
    pub meta: Arc<Meta>,
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

/// Fails unless `dir/usr` is a directory (not a link to one).
fn check_usr(dir: &Path) -> Result<()> {
    match std::fs::symlink_metadata(dir.join("usr")) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(m) if m.file_type().is_symlink() => bail!(
            "payload {}: usr/ is a symbolic link; it must be the directory itself (a link would image whatever it points to)",
            dir.display()
        ),
        _ => bail!(
            "payload {}: no usr/ directory (the OS must live under usr/, merged /usr)",
            dir.display()
        ),
    }
}

/// When the payload's os-release was last changed (the default epoch),
/// without opening the rest of the payload.
pub fn os_release_mtime(dir: &Path) -> Result<i64> {
    use std::os::unix::fs::MetadataExt;
    check_usr(dir)?;
    let f = crate::unpack::Root::open(dir)?
        .open_read(Path::new(OS_RELEASE))
        .with_context(|| format!("payload {}: no os-release", dir.display()))?;
    Ok(f.metadata()
        .with_context(|| format!("payload {}: cannot stat os-release", dir.display()))?
        .mtime())
}

impl Payload {
    /// The kernel's architecture, from its header (`usr/boot/vmlinuz`: an
    /// x86 bzImage or an arm64 Image).
    pub fn kernel_image(&self) -> Result<forge_formats::kernel::KernelImage> {
        forge_formats::kernel::parse(&self.kernel)
            .map_err(|e| anyhow::anyhow!("payload {}: {KERNEL}: {e}", self.root.display()))
    }

    /// The payload's architecture: its kernel's, which its init
    /// (`usr/lib/systemd/systemd`, when it has one) must share.
    pub fn arch(&self) -> Result<crate::arch::Arch> {
        let k = self.kernel_image()?;
        let arch = crate::arch::Arch::from_elf_machine(k.machine).ok_or_else(|| {
            anyhow::anyhow!(
                "payload {}: {KERNEL} is for machine {} (not amd64 or arm64)",
                self.root.display(),
                k.machine
            )
        })?;
        let init = "usr/lib/systemd/systemd";
        if let Ok(b) = crate::unpack::Root::open(&self.root)?.read(Path::new(init)) {
            if let Some(m) = forge_formats::kernel::elf_machine(&b) {
                if m != arch.elf_machine() {
                    let other = crate::arch::Arch::from_elf_machine(m)
                        .map_or(format!("machine {m}"), |a| a.to_string());
                    bail!(
                        "payload {}: its kernel ({KERNEL}, {}) is {arch} but {init} is {other}",
                        self.root.display(),
                        k.format
                    );
                }
            }
        }
        Ok(arch)
    }

    /// Fails unless the payload is for `want`, naming what it is for.
    pub fn check_arch(&self, want: crate::arch::Arch) -> Result<()> {
        let have = self.arch()?;
        if have != want {
            bail!(
                "payload {}: it is an {have} payload (its kernel {KERNEL} is an {}), but this build is for {want} (--arch {want}; build the payload for {want}, or pass --arch {have})",
                self.root.display(),
                self.kernel_image()?.format
            );
        }
        Ok(())
    }

    /// Opens and checks a payload directory; every breach of the contract is
    /// an error naming the path and what is wrong.
    pub fn open(dir: &Path) -> Result<Payload> {
        let meta = std::fs::metadata(dir)
            .with_context(|| format!("payload {}: cannot read the directory", dir.display()))?;
        if !meta.is_dir() {
            bail!("payload {}: not a directory", dir.display());
        }
        check_usr(dir)?;
        let root = crate::unpack::Root::open(dir)?;
        let ctx = |what: &str| format!("payload {}: {what}", dir.display());
        let osr = root.open_read(Path::new(OS_RELEASE)).with_context(|| ctx("no os-release"))?;
        let os_release_mtime = {
            use std::os::unix::fs::MetadataExt;
            osr.metadata().map(|m| m.mtime()).with_context(|| ctx("cannot stat os-release"))?
        };
        let text = String::from_utf8(root.read(Path::new(OS_RELEASE))?)
            .map_err(|_| anyhow::anyhow!("{}: {OS_RELEASE} is not UTF-8", ctx("bad os-release")))?;
        let os_release = OsRelease::parse(&text);
        if os_release.get("ID").is_none() {
            bail!("payload {}: {} has no ID= line", dir.display(), OS_RELEASE);
        }
        let kernel = root.read(Path::new(KERNEL)).with_context(|| ctx("no kernel"))?;
        if kernel.is_empty() {
            bail!("payload {}: {} is empty", dir.display(), KERNEL);
        }
        let initrd = match root.open_read(Path::new(INITRD)) {
            Ok(_) => Some(root.read(Path::new(INITRD)).with_context(|| ctx("bad initrd"))?),
            Err(e) if format!("{e:#}").contains("does not exist") => None,
            Err(e) => return Err(e).with_context(|| ctx("bad initrd")),
        };
        let meta = Meta::for_payload(dir)
            .with_context(|| ctx("reading owners, modes and extended attributes"))?;
        Ok(Payload {
            root: dir.to_path_buf(),
            os_release,
            os_release_mtime,
            kernel,
            initrd,
            meta: Arc::new(meta),
        })
    }

    /// Reads the regular file `rel` of the payload, symlinks resolved inside
    /// the payload.
    pub fn read(&self, rel: &str) -> Result<Vec<u8>> {
        crate::unpack::Root::open(&self.root)?
            .read(Path::new(rel))
            .with_context(|| format!("payload {}", self.root.display()))
    }

    /// The payload's `usr/` as a filesystem source.
    pub fn usr_source(&self) -> crate::fs::source::SourceDir {
        crate::fs::source::SourceDir {
            dir: self.usr(),
            meta: Some(self.meta.clone()),
            rel: "usr".into(),
        }
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
        assert!(e.contains("no kernel") && e.contains("usr/boot/vmlinuz"), "{e}");
    }

    fn minimal(d: &Path) {
        std::fs::create_dir_all(d.join("usr/lib")).unwrap();
        std::fs::create_dir_all(d.join("usr/boot")).unwrap();
        std::fs::write(d.join(OS_RELEASE), "ID=x\n").unwrap();
    }

    #[test]
    fn links_out_of_the_payload_are_resolved_inside_it() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("p");
        minimal(&p);
        // The host's /etc/shadow must not be read: the link resolves to the
        // payload's own etc/shadow.
        std::os::unix::fs::symlink("/etc/shadow", p.join(KERNEL)).unwrap();
        let e = format!("{:#}", Payload::open(&p).unwrap_err());
        assert!(e.contains("no kernel") && e.contains("does not exist"), "{e}");
        std::fs::create_dir_all(p.join("etc")).unwrap();
        std::fs::write(p.join("etc/shadow"), b"payload's own").unwrap();
        assert_eq!(Payload::open(&p).unwrap().kernel, b"payload's own");
        // Relative links climbing out stop at the payload root.
        std::fs::remove_file(p.join(KERNEL)).unwrap();
        std::os::unix::fs::symlink("../../../../../../../../etc/shadow", p.join(KERNEL)).unwrap();
        assert_eq!(Payload::open(&p).unwrap().kernel, b"payload's own");
        // os-release likewise.
        std::fs::remove_file(p.join(OS_RELEASE)).unwrap();
        std::os::unix::fs::symlink("/etc/os-release", p.join(OS_RELEASE)).unwrap();
        let e = format!("{:#}", Payload::open(&p).unwrap_err());
        assert!(e.contains("no os-release"), "{e}");
    }

    #[test]
    fn a_symlinked_usr_is_refused_and_a_missing_one_named() {
        let d = tempfile::tempdir().unwrap();
        let real = d.path().join("real");
        minimal(&real);
        std::fs::write(real.join(KERNEL), b"k").unwrap();
        let p = d.path().join("p");
        std::fs::create_dir_all(&p).unwrap();
        std::os::unix::fs::symlink(real.join("usr"), p.join("usr")).unwrap();
        let e = format!("{:#}", Payload::open(&p).unwrap_err());
        assert!(e.contains("usr/ is a symbolic link"), "{e}");
        let e = format!("{:#}", Payload::open(d.path()).unwrap_err());
        assert!(e.contains("no usr/ directory"), "{e}");
        assert!(!e.contains("os-release"), "{e}");
    }
}
