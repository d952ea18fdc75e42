//! An in-memory description of a small file tree (the ESP's or the OEM
//! partition's contents), built from files on disk or bytes produced by the
//! build, so a stage can assemble content without a staging directory.

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    Bytes(Vec<u8>),
}

impl Source {
    pub fn len(&self) -> Result<u64> {
        Ok(match self {
            Source::File(p) => {
                std::fs::metadata(p).with_context(|| format!("{}: cannot stat", p.display()))?.len()
            }
            Source::Bytes(b) => b.len() as u64,
        })
    }
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }
    pub fn open(&self) -> Result<Box<dyn std::io::Read + '_>> {
        Ok(match self {
            Source::File(p) => Box::new(
                std::fs::File::open(p).with_context(|| format!("{}: cannot open", p.display()))?,
            ),
            Source::Bytes(b) => Box::new(&b[..]),
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    File { source: Source, mode: u32 },
    Dir(Dir),
    Symlink(String),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dir {
    pub entries: BTreeMap<String, Node>,
}

impl Dir {
    pub fn new() -> Dir {
        Dir::default()
    }

    /// Adds a file at a `/`-separated path, creating parent directories.
    pub fn add_file(&mut self, path: &str, source: Source) -> Result<()> {
        self.add(path, Node::File { source, mode: 0o644 })
    }

    pub fn add_dir(&mut self, path: &str) -> Result<()> {
        let (parent, name) = self.parent_of(path)?;
        parent.entries.entry(name).or_insert_with(|| Node::Dir(Dir::new()));
        Ok(())
    }

    pub fn add(&mut self, path: &str, node: Node) -> Result<()> {
        let (parent, name) = self.parent_of(path)?;
        if parent.entries.contains_key(&name) {
            bail!("{path}: added twice");
        }
        parent.entries.insert(name, node);
        Ok(())
    }

    fn parent_of(&mut self, path: &str) -> Result<(&mut Dir, String)> {
        let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let Some((last, dirs)) = parts.split_last() else { bail!("empty path") };
        let mut d = self;
        for c in dirs {
            let n = d.entries.entry(c.to_string()).or_insert_with(|| Node::Dir(Dir::new()));
            d = match n {
                Node::Dir(d) => d,
                _ => bail!("{path}: {c} is not a directory"),
            };
        }
        Ok((d, last.to_string()))
    }

    /// Loads a directory from disk (files are referenced, not read).
    pub fn from_path(root: &Path) -> Result<Dir> {
        Self::read(root, false)
    }

    /// Like [`Dir::from_path`], for files from the checkout: their modes are
    /// the ones git records (see [`checkout_mode`]), not what the checkout's
    /// umask made of them, so a clone by anyone gives the same image.
    pub fn from_checkout(root: &Path) -> Result<Dir> {
        Self::read(root, true)
    }

    fn read(root: &Path, checkout: bool) -> Result<Dir> {
        let mut d = Dir::new();
        let mut names: Vec<_> = std::fs::read_dir(root)
            .with_context(|| format!("{}: cannot list", root.display()))?
            .collect::<std::io::Result<Vec<_>>>()?;
        names.sort_by_key(|e| e.file_name());
        for e in names {
            use std::os::unix::fs::PermissionsExt;
            let name = e
                .file_name()
                .into_string()
                .map_err(|n| anyhow::anyhow!("{}: non-UTF-8 name {n:?}", root.display()))?;
            let p = e.path();
            let m = std::fs::symlink_metadata(&p)?;
            let node = if m.is_dir() {
                Node::Dir(Dir::read(&p, checkout)?)
            } else if m.file_type().is_symlink() {
                Node::Symlink(std::fs::read_link(&p)?.to_string_lossy().into_owned())
            } else if m.is_file() {
                let mode = m.permissions().mode() & 0o7777;
                let mode = if checkout { checkout_mode(mode) } else { mode };
                Node::File { source: Source::File(p), mode }
            } else {
                bail!("{}: special files are not supported here", p.display());
            };
            d.entries.insert(name, node);
        }
        Ok(d)
    }

    /// Writes the tree as a real directory (for tools that read one), with
    /// every timestamp set to `epoch`.
    pub fn materialize(&self, dest: &Path, epoch: i64) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dest)
            .with_context(|| format!("{}: cannot create", dest.display()))?;
        for (name, node) in &self.entries {
            let p = dest.join(name);
            match node {
                Node::Dir(d) => d.materialize(&p, epoch)?,
                Node::File { source, mode } => {
                    match source {
                        Source::File(s) => {
                            std::fs::copy(s, &p).with_context(|| {
                                format!("copying {} to {}", s.display(), p.display())
                            })?;
                        }
                        Source::Bytes(b) => std::fs::write(&p, b)
                            .with_context(|| format!("{}: cannot write", p.display()))?,
                    }
                    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode))?;
                }
                Node::Symlink(t) => std::os::unix::fs::symlink(t, &p)?,
            }
            set_times(&p, epoch)?;
        }
        set_times(dest, epoch)
    }
}

/// Sets atime and mtime of `p` (not following symlinks) to `epoch`.
pub fn set_times(p: &Path, epoch: i64) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes())?;
    let ts = libc::timespec { tv_sec: epoch as libc::time_t, tv_nsec: 0 };
    let times = [ts, ts];
    let r = unsafe {
        libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW)
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("{}: cannot set times", p.display()));
    }
    Ok(())
}

/// The mode git gives a checked-out file whatever the umask: 0755 if its
/// owner may execute it, else 0644 (git records only the executable bit).
pub fn checkout_mode(mode: u32) -> u32 {
    if mode & 0o100 != 0 {
        0o755
    } else {
        0o644
    }
}

#[cfg(test)]
mod checkout_tests {
    use super::*;

    #[test]
    fn checkout_modes_ignore_the_umask() {
        for (m, want) in [(0o664, 0o644), (0o600, 0o644), (0o775, 0o755), (0o700, 0o755)] {
            assert_eq!(checkout_mode(m), want, "{m:o}");
        }
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o664)).unwrap();
        let mode = |t: &Dir| match t.entries.get("f") {
            Some(Node::File { mode, .. }) => *mode,
            _ => panic!("no file"),
        };
        assert_eq!(mode(&Dir::from_checkout(d.path()).unwrap()), 0o644);
        assert_eq!(mode(&Dir::from_path(d.path()).unwrap()), 0o664);
    }
}
