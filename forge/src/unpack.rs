//! Contained unpacking of Debian packages: nothing is ever created, followed
//! or linked outside the destination directory, whatever the package holds.
//!
//! `dpkg-deb --fsys-tarfile` streams the package's data archive into the
//! `tar` crate's reader (nothing is buffered whole); every entry is then
//! written relative to a directory file descriptor of the destination.
//!
//! # How paths are walked
//!
//! The destination is opened once and every entry's parent directory is
//! reached from it one component at a time with
//! `openat(dir, name, O_PATH | O_DIRECTORY | O_NOFOLLOW)`, holding a
//! descriptor for each directory on the way. A component that is a symbolic
//! link is never followed by the kernel: its target is read (`readlinkat`)
//! and resolved by us *inside the destination, treating it as the root*
//! (like a chroot): an absolute target restarts at the destination, `..`
//! pops one held directory and stops at the destination. So base-files'
//! `var/run -> /run` followed by an entry `var/run/foo` writes
//! `<dest>/run/foo`, which is what dpkg does in a real root; and
//! `usr/share/x -> ../../../../tmp/y` then `usr/share/x/f` writes
//! `<dest>/tmp/y/f`. At most [`MAX_HOPS`] links are resolved per path
//! (the kernel's own limit); more is an error. Missing directories on the way
//! are created (mode 0755), as `mkdir -p` would.
//!
//! The last component is always created with `*at` calls relative to the
//! parent's descriptor and never followed (`O_CREAT | O_EXCL | O_NOFOLLOW`,
//! `symlinkat`, `linkat` without `AT_SYMLINK_FOLLOW`, `AT_SYMLINK_NOFOLLOW`).
//! Since every step starts from a descriptor we hold and no call follows a
//! link, swapping a component for a symlink behind our back cannot send a
//! write elsewhere: the swap is seen as a link and resolved inside the tree.
//! `..` in a link target pops our own stack of descriptors, never asks the
//! kernel for a parent. What remains is the window between checking a last
//! component and replacing it, and a directory moved out of the tree while
//! we hold it; both need someone else writing into a build directory we
//! own, which we do not defend against (it is race-free enough for that).
//!
//! # Policy per entry
//!
//! - An entry path with a `..` component or an absolute path: error naming
//!   the package and the entry (dpkg refuses these too).
//! - A file, link or directory whose parent path passes through a symlink:
//!   the symlink is resolved inside the destination (above).
//! - A directory entry where a symlink exists: the symlink is kept (as dpkg
//!   does) and its target, resolved inside the destination, is created if
//!   missing; its mode is not changed.
//! - A directory entry where a non-directory exists, or a non-directory entry
//!   where a directory exists: error naming the package and the entry.
//! - Files, symlinks and hard links replace an existing non-directory.
//! - Symlinks are created as they are, whatever they point to (an absolute
//!   target such as `/run` is resolved inside the image when it runs); they
//!   are never followed while unpacking, except as parent directories above.
//! - Hard links: the target must be a relative path without `..` naming an
//!   existing non-directory inside the destination; `/etc/shadow` or
//!   `../../etc/shadow` is an error naming the package and the entry.
//! - Character and block devices and fifos: skipped with a warning naming
//!   the package and the entry (a payload has no device nodes; the image's
//!   /dev is devtmpfs). Other entry types (e.g. GNU sparse files): skipped
//!   with a warning.
//!
//! Modes (including set-uid bits) and mtimes come from the archive; owners
//! are whoever unpacks (the filesystem builders set root). Directories get at
//! least `u+rwx` so the build can fill them.

use crate::meta::{check_xattr_name, Attrs, Meta};
use anyhow::{anyhow, bail, Context, Result};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// Symbolic links resolved at most per path (Linux's `MAXSYMLINKS`).
pub const MAX_HOPS: u32 = 40;

/// Unpacks the data archive of the package `deb` into `dest` (an existing
/// directory), streaming `dpkg-deb --fsys-tarfile`. `warn` gets one line per
/// skipped entry. Errors name the package and, for a bad entry, the entry.
pub fn unpack_deb(deb: &Path, dest: &Path, warn: &dyn Fn(&str)) -> Result<()> {
    Root::open(dest)?.unpack_deb(deb, warn)
}

impl Root {
    /// [`unpack_deb`] into this root, recording each entry's attributes.
    pub fn unpack_deb(&self, deb: &Path, warn: &dyn Fn(&str)) -> Result<()> {
        use std::process::Stdio;
        let dpkg_deb =
            crate::tools::path(crate::tools::Tool { program: "dpkg-deb", package: "dpkg" })?;
        let mut child = crate::tools::command(&dpkg_deb)
            .arg("--fsys-tarfile")
            .arg(deb)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("{}: cannot run {}", deb.display(), dpkg_deb.display()))?;
        let mut stderr = child.stderr.take().expect("piped");
        let errors = std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = stderr.read_to_end(&mut s);
            String::from_utf8_lossy(&s).trim().to_string()
        });
        let mut stdout = child.stdout.take().expect("piped");
        let label = deb.display().to_string();
        let mut result = self.unpack_tar(&mut stdout, &label, warn);
        if result.is_ok() {
            // Whatever follows the archive's end (padding) is read, so dpkg-deb
            // finishes normally rather than on a broken pipe.
            if let Err(e) = std::io::copy(&mut stdout, &mut std::io::sink()) {
                result = Err(anyhow!(e).context(format!("{label}: reading dpkg-deb's output")));
            }
        }
        drop(stdout);
        let status = child.wait().with_context(|| format!("{label}: waiting for dpkg-deb"))?;
        let errors = errors.join().unwrap_or_default();
        match result {
            Ok(()) if !status.success() => {
                bail!("{label}: dpkg-deb --fsys-tarfile failed ({status}): {errors}")
            }
            Ok(()) => Ok(()),
            Err(e) if !status.success() && !errors.is_empty() => Err(
                e.context(format!("{label}: dpkg-deb --fsys-tarfile failed ({status}): {errors}"))
            ),
            Err(e) => Err(e),
        }
    }
}

/// Unpacks a tar stream into `dest` under the rules of the module doc;
/// `label` names the archive in errors and warnings (the package's file).
pub fn unpack_tar(reader: impl Read, dest: &Path, label: &str, warn: &dyn Fn(&str)) -> Result<()> {
    Root::open(dest)?.unpack_tar(reader, label, warn)
}

impl Root {
    /// [`unpack_tar`] into this root, recording each entry's attributes.
    pub fn unpack_tar(&self, reader: impl Read, label: &str, warn: &dyn Fn(&str)) -> Result<()> {
        let root = self;
        let mut ar = tar::Archive::new(reader);
        for entry in
            ar.entries().with_context(|| format!("{label}: cannot read the data archive"))?
        {
            let mut e = entry.with_context(|| format!("{label}: cannot read the data archive"))?;
            let raw = e
                .path()
                .with_context(|| format!("{label}: an entry with an unreadable path"))?
                .into_owned();
            let name = raw.display().to_string();
            root.entry(&mut e, &raw, label, warn)
                .with_context(|| format!("{label}: entry '{name}'"))?;
        }
        Ok(())
    }
}

/// The components of an entry path relative to the destination; refuses
/// `..` and absolute paths.
fn relative(p: &Path) -> Result<Vec<OsString>> {
    let mut v = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => v.push(n.to_os_string()),
            Component::CurDir => {}
            Component::ParentDir => bail!("'{}' has a '..' component", p.display()),
            Component::RootDir | Component::Prefix(_) => {
                bail!("'{}' is an absolute path", p.display())
            }
        }
    }
    Ok(v)
}

fn joined(c: &[OsString]) -> String {
    c.iter().map(|s| s.to_string_lossy()).collect::<Vec<_>>().join("/")
}

fn mode(m: u32) -> Mode {
    Mode::from_raw_mode(m)
}

fn times(mtime: i64) -> Timestamps {
    let t = Timespec { tv_sec: mtime, tv_nsec: 0 };
    Timestamps { last_access: t, last_modification: t }
}

/// What exists at a name: its file type, or `None`.
fn kind_at(dir: BorrowedFd<'_>, name: &OsStr) -> Result<Option<(FileType, u64, u64)>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some((FileType::from_raw_mode(st.st_mode), st.st_dev, st.st_ino))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot stat '{}'", name.to_string_lossy())),
    }
}

/// The destination directory, held open; all writes go through it.
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
    /// Owner, group, mode and extended attributes of each entry unpacked,
    /// by inode (see [`Key`]), turned into the payload's metadata by
    /// [`Root::metadata`] once the tree is final.
    records: std::cell::RefCell<HashMap<Key, Attrs>>,
}

/// An inode's identity while a payload is assembled: device, inode number
/// and birth time (a new file that reuses a removed one's number is told
/// apart by its birth time; renames keep all three).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key {
    dev: (u32, u32),
    ino: u64,
    btime: (i64, u32),
}

fn key_at(dir: BorrowedFd<'_>, name: &OsStr) -> Result<Key> {
    use rustix::fs::StatxFlags;
    let st = rustix::fs::statx(
        dir,
        name,
        AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::BASIC_STATS | StatxFlags::BTIME,
    )
    .with_context(|| format!("cannot stat '{}'", name.to_string_lossy()))?;
    let btime = if st.stx_mask & StatxFlags::BTIME.bits() != 0 {
        (st.stx_btime.tv_sec, st.stx_btime.tv_nsec)
    } else {
        (0, 0)
    };
    Ok(Key { dev: (st.stx_dev_major, st.stx_dev_minor), ino: st.stx_ino, btime })
}

impl Root {
    pub fn open(dest: &Path) -> Result<Root> {
        let fd = rustix::fs::open(
            dest,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .with_context(|| format!("{}: cannot open the destination directory", dest.display()))?;
        Ok(Root { fd, path: dest.to_path_buf(), records: Default::default() })
    }

    /// Opens the directory at `comps` (relative to the root), resolving
    /// symlinks inside the root and creating missing directories if `create`.
    fn dir(&self, comps: &[OsString], create: bool) -> Result<OwnedFd> {
        let mut held: Vec<(OsString, OwnedFd)> = Vec::new();
        let mut pending: Vec<OsString> = comps.iter().rev().cloned().collect();
        let mut hops = 0;
        let walked = |held: &[(OsString, OwnedFd)], c: &OsStr| {
            let mut v: Vec<OsString> = held.iter().map(|h| h.0.clone()).collect();
            v.push(c.to_os_string());
            joined(&v)
        };
        while let Some(c) = pending.pop() {
            if c.is_empty() || c == "." {
                continue;
            }
            if c == ".." {
                held.pop();
                continue;
            }
            let top = held.last().map(|h| h.1.as_fd()).unwrap_or(self.fd.as_fd());
            let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            match rustix::fs::openat(top, &c, flags, Mode::empty()) {
                Ok(fd) => held.push((c, fd)),
                Err(Errno::NOENT) if create => {
                    let here = walked(&held, &c);
                    match rustix::fs::mkdirat(top, &c, mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(e).with_context(|| format!("cannot create '{here}'")),
                    }
                    let fd = rustix::fs::openat(top, &c, flags, Mode::empty())
                        .with_context(|| format!("cannot open '{here}'"))?;
                    let rw = rustix::fs::openat(
                        &fd,
                        ".",
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                        Mode::empty(),
                    )
                    .with_context(|| format!("cannot open '{here}'"))?;
                    rustix::fs::fchmod(&rw, mode(0o755))
                        .with_context(|| format!("cannot set the mode of '{here}'"))?;
                    held.push((c, fd));
                }
                Err(Errno::NOENT) => bail!("'{}' does not exist", walked(&held, &c)),
                Err(Errno::NOTDIR) | Err(Errno::LOOP) => {
                    let here = walked(&held, &c);
                    match kind_at(top, &c)? {
                        Some((FileType::Symlink, _, _)) => {
                            hops += 1;
                            if hops > MAX_HOPS {
                                bail!("more than {MAX_HOPS} symbolic links on the way to '{here}'");
                            }
                            let target = rustix::fs::readlinkat(top, &c, Vec::new())
                                .with_context(|| format!("cannot read the link '{here}'"))?;
                            let target = Path::new(OsStr::from_bytes(target.as_bytes()));
                            if target.is_absolute() {
                                held.clear();
                            }
                            for part in target.components().rev() {
                                match part {
                                    Component::Normal(n) => pending.push(n.to_os_string()),
                                    Component::ParentDir => pending.push("..".into()),
                                    _ => {}
                                }
                            }
                        }
                        Some((t, _, _)) => bail!("'{here}' is a {}, not a directory", describe(t)),
                        None => bail!("'{here}' vanished while unpacking"),
                    }
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot open '{}'", walked(&held, &c)))
                }
            }
        }
        match held.pop() {
            Some((_, fd)) => Ok(fd),
            None => rustix::fs::openat(
                &self.fd,
                ".",
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .with_context(|| format!("{}: cannot open", self.path.display())),
        }
    }

    fn record(&self, parent: BorrowedFd<'_>, name: &OsStr, attrs: Attrs) -> Result<()> {
        let k = key_at(parent, name)?;
        self.records.borrow_mut().insert(k, attrs);
        Ok(())
    }

    /// The payload metadata of the tree as it is now: for every path, the
    /// owner, group, mode and extended attributes its archive entry gave it
    /// (paths the archives did not make are root's, with their mode on
    /// disk). Only what differs from that default is listed.
    pub fn metadata(&self) -> Result<Meta> {
        let records = self.records.borrow();
        let mut meta = Meta::new();
        let mut stack: Vec<(PathBuf, String)> = vec![(self.path.clone(), String::new())];
        while let Some((p, rel)) = stack.pop() {
            let m = std::fs::symlink_metadata(&p)
                .with_context(|| format!("{}: cannot stat", p.display()))?;
            let key = key_at(rustix::fs::CWD, p.as_os_str())?;
            use std::os::unix::fs::MetadataExt;
            if let Some(a) = records.get(&key) {
                if *a != Attrs::root(m.mode()) {
                    meta.entries.insert(rel.clone(), a.clone());
                }
            }
            if m.is_dir() {
                let mut names: Vec<OsString> = std::fs::read_dir(&p)
                    .and_then(|d| d.map(|e| e.map(|e| e.file_name())).collect())
                    .with_context(|| format!("{}: cannot list", p.display()))?;
                names.sort();
                for n in names.into_iter().rev() {
                    let s = n.to_str().ok_or_else(|| {
                        anyhow!("{}: a name that is not UTF-8", p.join(&n).display())
                    })?;
                    let r = if rel.is_empty() { s.to_string() } else { format!("{rel}/{s}") };
                    stack.push((p.join(&n), r));
                }
            }
        }
        Ok(meta)
    }

    /// Opens the regular file `rel` for reading, every symlink on the way,
    /// the last one included, resolved inside the root (an absolute target
    /// restarts at the root, `..` stops there): a payload's
    /// `usr/boot/vmlinuz -> /etc/shadow` reads the payload's own
    /// `etc/shadow`, never the host's. `rel` itself may not hold `..`.
    pub fn open_read(&self, rel: &Path) -> Result<std::fs::File> {
        let mut comps = relative(rel)?;
        let mut hops = 0;
        loop {
            let Some((name, parents)) = comps.split_last() else {
                bail!("'{}' is the root directory, not a file", rel.display());
            };
            if name == ".." {
                bail!("'{}' resolves to a directory, not a file", rel.display());
            }
            let parent = self.dir(parents, false).with_context(|| rel.display().to_string())?;
            let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
            match rustix::fs::openat(&parent, name, flags, Mode::empty()) {
                Ok(fd) => {
                    let st = rustix::fs::fstat(&fd)
                        .with_context(|| format!("'{}': cannot stat", rel.display()))?;
                    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
                        bail!(
                            "'{}' is a {}, not a regular file",
                            rel.display(),
                            describe(FileType::from_raw_mode(st.st_mode))
                        );
                    }
                    return Ok(std::fs::File::from(fd));
                }
                Err(Errno::LOOP) => {
                    hops += 1;
                    if hops > MAX_HOPS {
                        bail!(
                            "more than {MAX_HOPS} symbolic links on the way to '{}'",
                            rel.display()
                        );
                    }
                    let target = rustix::fs::readlinkat(&parent, name, Vec::new())
                        .with_context(|| format!("'{}': cannot read the link", rel.display()))?;
                    let target = PathBuf::from(OsStr::from_bytes(target.as_bytes()));
                    let mut next: Vec<OsString> =
                        if target.is_absolute() { Vec::new() } else { parents.to_vec() };
                    for part in target.components() {
                        match part {
                            Component::Normal(n) => next.push(n.to_os_string()),
                            Component::ParentDir => next.push("..".into()),
                            _ => {}
                        }
                    }
                    comps = next;
                }
                Err(Errno::NOENT) => bail!("'{}' does not exist", rel.display()),
                Err(e) => {
                    return Err(e).with_context(|| format!("'{}': cannot open", rel.display()))
                }
            }
        }
    }

    /// Reads the regular file `rel` whole (see [`Root::open_read`]).
    pub fn read(&self, rel: &Path) -> Result<Vec<u8>> {
        let mut f = self.open_read(rel)?;
        let mut v = Vec::new();
        f.read_to_end(&mut v).with_context(|| format!("'{}': cannot read", rel.display()))?;
        Ok(v)
    }

    /// Creates the directory `rel` and any missing parents (mode 0755),
    /// resolving symlinks on the way inside the root.
    pub fn create_dir_all(&self, rel: &Path) -> Result<()> {
        self.dir(&relative(rel)?, true).map(drop)
    }

    /// Writes the file `rel` (replacing a non-directory there) from `data`
    /// with permission bits `perm`; its mtime is `mtime` or now.
    pub fn write_file(
        &self,
        rel: &Path,
        data: &mut dyn Read,
        perm: u32,
        mtime: Option<i64>,
    ) -> Result<()> {
        let (parent, name) = self.parent_of(rel)?;
        self.file_at(parent.as_fd(), &name, data, perm, mtime)
    }

    /// Creates the symlink `rel` -> `target` (replacing a non-directory there).
    pub fn symlink(&self, rel: &Path, target: &Path, mtime: Option<i64>) -> Result<()> {
        let (parent, name) = self.parent_of(rel)?;
        self.symlink_at(parent.as_fd(), &name, target, mtime)
    }

    /// The parent directory of `rel` (created if missing) and its last name.
    fn parent_of(&self, rel: &Path) -> Result<(OwnedFd, OsString)> {
        let comps = relative(rel)?;
        let Some((name, parents)) = comps.split_last() else {
            bail!("'{}' names the destination itself", rel.display());
        };
        Ok((self.dir(parents, true)?, name.clone()))
    }

    fn file_at(
        &self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        data: &mut dyn Read,
        perm: u32,
        mtime: Option<i64>,
    ) -> Result<()> {
        self.make_room(parent, name, "file")?;
        let fd = rustix::fs::openat(
            parent,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            mode(0o600),
        )
        .context("cannot create the file")?;
        let mut f = std::fs::File::from(fd);
        std::io::copy(data, &mut f).context("cannot write the file")?;
        rustix::fs::fchmod(&f, mode(perm)).context("cannot set the mode")?;
        if let Some(t) = mtime {
            rustix::fs::futimens(&f, &times(t)).context("cannot set the times")?;
        }
        Ok(())
    }

    fn symlink_at(
        &self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        target: &Path,
        mtime: Option<i64>,
    ) -> Result<()> {
        if target.as_os_str().is_empty() {
            bail!("a symlink without target");
        }
        self.make_room(parent, name, "symlink")?;
        rustix::fs::symlinkat(target.as_os_str(), parent, name)
            .context("cannot create the symlink")?;
        if let Some(t) = mtime {
            rustix::fs::utimensat(parent, name, &times(t), AtFlags::SYMLINK_NOFOLLOW)
                .context("cannot set the symlink's times")?;
        }
        Ok(())
    }

    /// Removes a non-directory at `name` so a new entry can take its place.
    /// Removes `rel` when it is an empty directory (an overlay's link takes
    /// its place: `var/run -> ../run`); true when it did. A directory with
    /// anything in it is an error: its content would be lost.
    pub fn remove_empty_dir(&self, rel: &Path) -> Result<bool> {
        let (parent, name) = self.parent_of(rel)?;
        match kind_at(parent.as_fd(), &name)? {
            Some((FileType::Directory, _, _)) => {
                rustix::fs::unlinkat(parent.as_fd(), name.as_os_str(), AtFlags::REMOVEDIR)
                    .with_context(|| {
                        format!(
                            "'{}' is a directory that is not empty: a link cannot replace it",
                            rel.display()
                        )
                    })?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn make_room(&self, parent: BorrowedFd<'_>, name: &OsStr, what: &str) -> Result<()> {
        match kind_at(parent, name)? {
            None => Ok(()),
            Some((FileType::Directory, _, _)) => {
                bail!("a directory is in the way of this {what}")
            }
            Some(_) => rustix::fs::unlinkat(parent, name, AtFlags::empty())
                .with_context(|| format!("cannot replace '{}'", name.to_string_lossy())),
        }
    }

    fn entry<R: Read>(
        &self,
        e: &mut tar::Entry<'_, R>,
        raw: &Path,
        label: &str,
        warn: &dyn Fn(&str),
    ) -> Result<()> {
        let kind = e.header().entry_type();
        let skipped = match kind {
            tar::EntryType::Char => "character device".to_string(),
            tar::EntryType::Block => "block device".to_string(),
            tar::EntryType::Fifo => "fifo".to_string(),
            tar::EntryType::XGlobalHeader => return Ok(()),
            tar::EntryType::Directory
            | tar::EntryType::Regular
            | tar::EntryType::Continuous
            | tar::EntryType::Symlink
            | tar::EntryType::Link => String::new(),
            other => format!("entry of unsupported type {other:?}"),
        };
        if !skipped.is_empty() {
            warn(&format!("{label}: entry '{}': {skipped} skipped", raw.display()));
            return Ok(());
        }
        let comps = relative(raw)?;
        let Some((name, parents)) = comps.split_last() else {
            return Ok(()); // the archive's "./": the destination itself
        };
        let parent = self.dir(parents, true)?;
        let perm = e.header().mode().context("bad mode")? & 0o7777;
        let mtime = e.header().mtime().unwrap_or(0) as i64;
        let attrs = attrs_of(e, perm)?;
        match kind {
            tar::EntryType::Directory => match kind_at(parent.as_fd(), name)? {
                Some((FileType::Symlink, _, _)) => {
                    self.dir(&comps, true)?;
                }
                Some((FileType::Directory, _, _)) | None => {
                    match rustix::fs::mkdirat(&parent, name, mode(0o700)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(e).context("cannot create the directory"),
                    }
                    let d = rustix::fs::openat(
                        &parent,
                        name,
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )
                    .context("cannot open the directory")?;
                    rustix::fs::fchmod(&d, mode(perm | 0o700)).context("cannot set the mode")?;
                    self.record(parent.as_fd(), name, attrs)?;
                }
                Some((t, _, _)) => bail!("a {} is in the way of this directory", describe(t)),
            },
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                self.file_at(parent.as_fd(), name, e, perm, Some(mtime))?;
                self.record(parent.as_fd(), name, attrs)?;
            }
            tar::EntryType::Symlink => {
                let target = e.link_name()?.ok_or_else(|| anyhow!("a symlink without target"))?;
                self.symlink_at(parent.as_fd(), name, &target, Some(mtime))?;
                self.record(parent.as_fd(), name, attrs)?;
            }
            tar::EntryType::Link => {
                let target = e
                    .link_name()?
                    .ok_or_else(|| anyhow!("a hard link without target"))?
                    .into_owned();
                let src = relative(&target).map_err(|err| {
                    anyhow!("hard link outside the package's tree refused: {err}")
                })?;
                let Some((sname, sparents)) = src.split_last() else {
                    bail!("a hard link to the destination directory itself");
                };
                let sdir = self
                    .dir(sparents, false)
                    .with_context(|| format!("hard link target '{}'", target.display()))?;
                let (st, dev, ino) = kind_at(sdir.as_fd(), sname)?.ok_or_else(|| {
                    anyhow!("hard link target '{}' does not exist", target.display())
                })?;
                if st == FileType::Directory {
                    bail!("hard link target '{}' is a directory", target.display());
                }
                if let Some((_, d, i)) = kind_at(parent.as_fd(), name)? {
                    if (d, i) == (dev, ino) {
                        return Ok(()); // already this very file
                    }
                }
                self.make_room(parent.as_fd(), name, "hard link")?;
                rustix::fs::linkat(&sdir, sname, &parent, name, AtFlags::empty())
                    .with_context(|| format!("cannot link to '{}'", target.display()))?;
            }
            _ => unreachable!("filtered above"),
        }
        Ok(())
    }
}

/// What an entry's header says of its owner, group, mode and extended
/// attributes (pax `SCHILY.xattr.*` records).
fn attrs_of<R: Read>(e: &mut tar::Entry<'_, R>, perm: u32) -> Result<Attrs> {
    let h = e.header();
    // An empty field (all NULs or spaces) is 0, as dpkg and GNU tar read it.
    let id = |raw: &[u8], v: std::io::Result<u64>, what: &str| -> Result<u32> {
        if raw.iter().all(|&b| b == 0 || b == b' ') {
            return Ok(0);
        }
        let v = v.with_context(|| format!("bad {what}"))?;
        u32::try_from(v).map_err(|_| anyhow!("{what} {v} is out of range"))
    };
    let old = h.as_old();
    let mut a = Attrs {
        uid: id(&old.uid, h.uid(), "uid")?,
        gid: id(&old.gid, h.gid(), "gid")?,
        mode: perm,
        ..Default::default()
    };
    if let Some(exts) = e.pax_extensions().context("bad pax header")? {
        for x in exts {
            let x = x.context("bad pax header")?;
            let Ok(key) = x.key() else { continue };
            if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                check_xattr_name(name)?;
                a.xattrs.insert(name.to_string(), hex::encode(x.value_bytes()));
            }
        }
    }
    Ok(a)
}

fn describe(t: FileType) -> &'static str {
    match t {
        FileType::RegularFile => "regular file",
        FileType::Directory => "directory",
        FileType::Symlink => "symlink",
        FileType::Fifo => "fifo",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        FileType::Unknown => "file of unknown type",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn only_an_empty_directory_makes_way_for_a_link() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("var/run")).unwrap();
        std::fs::create_dir_all(d.path().join("var/lib/x")).unwrap();
        std::fs::write(d.path().join("var/f"), "f").unwrap();
        let root = Root::open(d.path()).unwrap();
        assert!(root.remove_empty_dir(Path::new("var/run")).unwrap());
        root.symlink(Path::new("var/run"), Path::new("../run"), None).unwrap();
        assert_eq!(std::fs::read_link(d.path().join("var/run")).unwrap(), Path::new("../run"));
        let e = format!("{:#}", root.remove_empty_dir(Path::new("var/lib")).unwrap_err());
        assert!(e.contains("'var/lib' is a directory that is not empty"), "{e}");
        assert!(d.path().join("var/lib/x").is_dir());
        assert!(!root.remove_empty_dir(Path::new("var/f")).unwrap());
        assert!(!root.remove_empty_dir(Path::new("var/none")).unwrap());
        assert_eq!(std::fs::read(d.path().join("var/f")).unwrap(), b"f");
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(1_600_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h
    }

    fn dir(b: &mut tar::Builder<Vec<u8>>, p: &str, mode: u32) {
        let mut h = header(tar::EntryType::Directory, mode, 0);
        b.append_data(&mut h, p, &[][..]).unwrap();
    }
    fn file(b: &mut tar::Builder<Vec<u8>>, p: &str, data: &[u8], mode: u32) {
        let mut h = header(tar::EntryType::Regular, mode, data.len() as u64);
        b.append_data(&mut h, p, data).unwrap();
    }
    fn link(b: &mut tar::Builder<Vec<u8>>, kind: tar::EntryType, p: &str, target: &str) {
        let mut h = header(kind, 0o777, 0);
        b.append_link(&mut h, p, target).unwrap();
    }

    fn run(b: tar::Builder<Vec<u8>>, dest: &Path) -> Result<()> {
        unpack_tar(&b.into_inner().unwrap()[..], dest, "test.deb", &|_| {})
    }

    #[test]
    fn entry_paths() {
        let r = |p: &str| relative(Path::new(p)).map(|v| joined(&v)).map_err(|e| e.to_string());
        assert_eq!(r("./usr/bin/ls").unwrap(), "usr/bin/ls");
        assert_eq!(r("usr//./bin/").unwrap(), "usr/bin");
        assert_eq!(r("./").unwrap(), "");
        assert!(r("./usr/../etc").unwrap_err().contains("'..'"));
        assert!(r("/etc/passwd").unwrap_err().contains("absolute path"));
    }

    #[test]
    fn modes_times_and_replacement() {
        let t = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        dir(&mut b, "./usr/", 0o755);
        dir(&mut b, "./usr/bin/", 0o500);
        file(&mut b, "./usr/bin/su", b"old", 0o644);
        file(&mut b, "./usr/bin/su", b"setuid", 0o4755);
        link(&mut b, tar::EntryType::Symlink, "./usr/bin/sh", "dash");
        file(&mut b, "./usr/bin/sh", b"replaced link", 0o755);
        run(b, t.path()).unwrap();
        let su = std::fs::symlink_metadata(t.path().join("usr/bin/su")).unwrap();
        assert_eq!(std::fs::read(t.path().join("usr/bin/su")).unwrap(), b"setuid");
        assert_eq!(su.permissions().mode() & 0o7777, 0o4755);
        assert_eq!(su.mtime(), 1_600_000_000);
        let bin = std::fs::metadata(t.path().join("usr/bin")).unwrap();
        assert_eq!(bin.permissions().mode() & 0o7777, 0o700, "u+rwx added to 0500");
        let sh = std::fs::symlink_metadata(t.path().join("usr/bin/sh")).unwrap();
        assert!(sh.is_file(), "a file replaces a symlink, it is not written through it");
    }

    #[test]
    fn dotdot_in_a_link_stops_at_the_root() {
        let t = tempfile::tempdir().unwrap();
        let dest = t.path().join("dest");
        std::fs::create_dir(&dest).unwrap();
        let mut b = tar::Builder::new(Vec::new());
        dir(&mut b, "./a/", 0o755);
        link(&mut b, tar::EntryType::Symlink, "./a/up", "../../../../..");
        file(&mut b, "./a/up/f", b"x", 0o644);
        link(&mut b, tar::EntryType::Symlink, "./a/chain", "up/a/up/b");
        file(&mut b, "./a/chain/g", b"y", 0o644);
        run(b, &dest).unwrap();
        assert_eq!(std::fs::read(dest.join("f")).unwrap(), b"x");
        assert_eq!(std::fs::read(dest.join("b/g")).unwrap(), b"y");
        assert!(!t.path().join("f").exists());
    }

    #[test]
    fn a_directory_entry_keeps_an_existing_symlink() {
        let t = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        dir(&mut b, "./usr/", 0o755);
        dir(&mut b, "./usr/lib/", 0o755);
        link(&mut b, tar::EntryType::Symlink, "./lib", "usr/lib");
        dir(&mut b, "./lib/", 0o700);
        run(b, t.path()).unwrap();
        assert!(std::fs::symlink_metadata(t.path().join("lib")).unwrap().is_symlink());
        let m = std::fs::metadata(t.path().join("usr/lib")).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o755, "the link's target keeps its mode");
    }

    #[test]
    fn conflicts_between_files_and_directories_are_errors() {
        for (first_dir, msg) in [(true, "a directory is in the way"), (false, "regular file")] {
            let t = tempfile::tempdir().unwrap();
            let mut b = tar::Builder::new(Vec::new());
            if first_dir {
                dir(&mut b, "./x/", 0o755);
                file(&mut b, "./x/inner", b"keep", 0o644);
                file(&mut b, "./x", b"file", 0o644);
            } else {
                file(&mut b, "./x", b"file", 0o644);
                dir(&mut b, "./x/", 0o755);
            }
            let e = format!("{:#}", run(b, t.path()).unwrap_err());
            assert!(e.contains("test.deb: entry 'x"), "{e}");
            assert!(e.contains(msg), "{e}");
        }
    }

    #[test]
    fn owners_groups_modes_and_xattrs_are_recorded_by_path() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = header(tar::EntryType::Directory, 0o1777, 0);
        b.append_data(&mut h, "tmp/", &[][..]).unwrap();
        let mut h = header(tar::EntryType::Directory, 0o555, 0);
        b.append_data(&mut h, "ro/", &[][..]).unwrap();
        let mut h = header(tar::EntryType::Regular, 0o2755, 1);
        h.set_gid(42);
        b.append_data(&mut h, "usr/bin/chage", &b"x"[..]).unwrap();
        b.append_pax_extensions([("SCHILY.xattr.security.capability", &b"\x01\x00\x00\x02"[..])])
            .unwrap();
        let mut h = header(tar::EntryType::Regular, 0o755, 1);
        b.append_data(&mut h, "usr/bin/ping", &b"p"[..]).unwrap();
        let mut h = header(tar::EntryType::Regular, 0o644, 1);
        b.append_data(&mut h, "etc/plain", &b"p"[..]).unwrap();
        let data = b.into_inner().unwrap();
        let d = tempfile::tempdir().unwrap();
        let root = Root::open(d.path()).unwrap();
        root.unpack_tar(&data[..], "test.deb", &|_| {}).unwrap();
        // A rename (as merged /usr does) keeps the record.
        std::fs::rename(d.path().join("usr/bin"), d.path().join("usr/sbin")).unwrap();
        let m = root.metadata().unwrap();
        let disk =
            |p: &str| std::fs::symlink_metadata(d.path().join(p)).unwrap().permissions().mode();
        assert_eq!(m.attrs("tmp", disk("tmp")), Attrs::root(0o1777));
        assert_eq!(m.attrs("ro", disk("ro")), Attrs::root(0o555), "{m:?}");
        assert_eq!(m.entries["usr/sbin/chage"].gid, 42);
        assert_eq!(m.entries["usr/sbin/chage"].mode, 0o2755);
        assert_eq!(m.entries["usr/sbin/ping"].xattrs["security.capability"], "01000002");
        assert!(!m.entries.contains_key("etc/plain"), "root-owned 0644 needs no entry: {m:?}");
        // The tree on disk stays the builder's and writable.
        let md = std::fs::metadata(d.path().join("tmp")).unwrap();
        assert_eq!(md.permissions().mode() & 0o7777, 0o1777);
    }
}
