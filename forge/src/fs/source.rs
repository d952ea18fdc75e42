//! The directory a filesystem is built from, checked up front, and the
//! attributes its files get in the image, handed to the host's `mkfs`
//! through `fakeroot`.
//!
//! `mkfs.ext4 -d`, `mkfs.erofs` and `mkfs.btrfs --rootdir` take owners,
//! modes and extended attributes from what `lstat` and `llistxattr` say.
//! Every build (as root or not, so both give the same bytes) runs them under
//! `fakeroot -i STATE`, where `STATE` is written here: one line per inode,
//! keyed by device and inode number, with the mode, owner and group the
//! payload's metadata ([`crate::meta`]) gives its path. No file name goes
//! through a command language: names reach `mkfs` only by `readdir`.
//! Extended attributes live in fakeroot's memory only, so they are set
//! inside the same session by `setfattr`, fed by `xargs -0` from a file of
//! NUL-separated arguments (again no quoting); fakeroot hides the host's
//! own extended attributes (SELinux labels and the like), so only the
//! payload's reach the image.
//!
//! The walk that writes the state also refuses, naming the path, what the
//! tools would fail on later with a vague message or a crash: special
//! files, names longer than the filesystem takes, paths longer than
//! `PATH_MAX`, unreadable files and directories, names that are not UTF-8.

use crate::meta::{Attrs, Meta};
use crate::tools;
use anyhow::{bail, Context, Result};
use std::collections::HashSet;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A directory to build a filesystem from and its place in the payload
/// (`rel`: `"usr"` for the payload's `usr/`, `""` for the payload root).
#[derive(Clone, Debug)]
pub struct SourceDir {
    pub dir: PathBuf,
    pub meta: Option<Arc<Meta>>,
    pub rel: String,
}

/// The longest path `mkfs` can open (Linux `PATH_MAX` includes the NUL).
pub const PATH_MAX: usize = 4095;

/// What was checked and prepared; keeps its files alive.
pub struct Prepared {
    _tmp: tempfile::TempDir,
    state: PathBuf,
    xattrs: PathBuf,
    pub entries: u64,
    pub with_xattrs: u64,
}

/// Shell glue run inside the fakeroot session: applies the extended
/// attributes, then runs the builder. A constant: arguments arrive as
/// positional parameters, never in the script's text.
const SESSION: &str = r#"set -e
if [ -s "$1" ]; then "$3" -0 -r -n 7 -a "$1" "$2"; fi
shift 3
exec "$@""#;

/// Walks `src`, checking every entry, and writes the fakeroot state and
/// the extended attribute arguments into a directory under `scratch`.
/// `max_name` is the longest name (bytes) the filesystem builder takes.
pub fn prepare(src: &SourceDir, scratch: &Path, max_name: usize, fs: &str) -> Result<Prepared> {
    let tmp = tempfile::Builder::new()
        .prefix(".fakeroot-")
        .tempdir_in(scratch)
        .with_context(|| format!("{}: cannot create a scratch directory", scratch.display()))?;
    let root = std::fs::canonicalize(&src.dir)
        .with_context(|| format!("{}: cannot open", src.dir.display()))?;
    let empty = Meta::new();
    let meta = src.meta.as_deref().unwrap_or(&empty);
    let mut state = String::new();
    let mut xargs: Vec<u8> = Vec::new();
    let mut seen = HashSet::new();
    let (mut entries, mut with_xattrs) = (0u64, 0u64);
    let mut stack: Vec<(PathBuf, String)> = vec![(root.clone(), src.rel.clone())];
    while let Some((p, rel)) = stack.pop() {
        let shown = || p.display().to_string();
        if p.as_os_str().len() > PATH_MAX {
            bail!(
                "{}…: the path is {} bytes long; the longest a filesystem builder can open is {PATH_MAX}",
                shown().chars().take(200).collect::<String>(),
                p.as_os_str().len()
            );
        }
        let m = std::fs::symlink_metadata(&p)
            .with_context(|| format!("{}: cannot stat", p.display()))?;
        let ft = m.file_type();
        use std::os::unix::fs::FileTypeExt;
        if ft.is_block_device() || ft.is_char_device() || ft.is_fifo() || ft.is_socket() {
            bail!(
                "{}: special files (device nodes, FIFOs, sockets) are not taken into images, under usr/ or elsewhere (the image's /dev is devtmpfs)",
                shown()
            );
        }
        if ft.is_file() {
            std::fs::File::open(&p)
                .with_context(|| format!("{}: cannot read the file", shown()))?;
        } else if ft.is_symlink() {
            let t = std::fs::read_link(&p)
                .with_context(|| format!("{}: cannot read the link", shown()))?;
            if t.as_os_str().len() > PATH_MAX {
                bail!("{}: the link's target is longer than {PATH_MAX} bytes", shown());
            }
        }
        entries += 1;
        let attrs: Attrs = meta.attrs(&rel, m.mode());
        if seen.insert((m.dev(), m.ino())) {
            let mode = (m.mode() & !0o7777) | attrs.mode;
            writeln!(
                state,
                "dev={:x},ino={},mode={:o},uid={},gid={},nlink={},rdev={}",
                m.dev(),
                m.ino(),
                mode,
                attrs.uid,
                attrs.gid,
                m.nlink(),
                m.rdev()
            )?;
            if !ft.is_symlink() && !attrs.xattrs.is_empty() {
                with_xattrs += 1;
                for (name, value) in &attrs.xattrs {
                    for a in [b"-h".as_slice(), b"-n", name.as_bytes(), b"-v"] {
                        xargs.extend_from_slice(a);
                        xargs.push(0);
                    }
                    xargs.extend_from_slice(format!("0x{value}").as_bytes());
                    xargs.push(0);
                    xargs.extend_from_slice(b"--\0");
                    xargs.extend_from_slice(p.as_os_str().as_bytes());
                    xargs.push(0);
                }
            }
        }
        if ft.is_dir() {
            let mut names: Vec<OsString> = std::fs::read_dir(&p)
                .and_then(|d| d.map(|e| e.map(|e| e.file_name())).collect())
                .with_context(|| format!("{}: cannot list the directory", shown()))?;
            names.sort();
            for n in names.into_iter().rev() {
                let child = p.join(&n);
                let Some(s) = n.to_str() else {
                    bail!("{}: the name is not UTF-8", child.display());
                };
                if s.len() > max_name {
                    bail!(
                        "{}: the name is {} bytes long; {fs} takes names of at most {max_name} bytes",
                        child.display(),
                        s.len()
                    );
                }
                let r = if rel.is_empty() { s.to_string() } else { format!("{rel}/{s}") };
                stack.push((child, r));
            }
        }
    }
    let state_path = tmp.path().join("state");
    std::fs::write(&state_path, state)
        .with_context(|| format!("{}: cannot write", state_path.display()))?;
    let xattrs_path = tmp.path().join("xattrs");
    std::fs::write(&xattrs_path, xargs)
        .with_context(|| format!("{}: cannot write", xattrs_path.display()))?;
    Ok(Prepared { _tmp: tmp, state: state_path, xattrs: xattrs_path, entries, with_xattrs })
}

/// Replicates the payload root `src` at `dest` without its top-level
/// `skip` (ROOT gets everything but `usr/`), copying no data where it can:
/// files are hard-linked (copied when the kernel refuses the link: another
/// filesystem, or `protected_hardlinks` on another user's file), and files
/// linked together stay linked together; symlinks are recreated as they
/// are (never followed); directories are created with their mode (plus
/// `u+rwx`; the image's modes come from the metadata). Special files are
/// refused, as [`prepare`] refuses them.
pub fn stage(src: &Path, dest: &Path, skip: &str) -> Result<u64> {
    use std::collections::HashMap;
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let mut linked: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut stack = vec![(src.to_path_buf(), dest.to_path_buf(), true)];
    let mut n = 0;
    while let Some((s, d, top)) = stack.pop() {
        let m = std::fs::symlink_metadata(&s)
            .with_context(|| format!("{}: cannot stat", s.display()))?;
        let ft = m.file_type();
        n += 1;
        if ft.is_dir() {
            std::fs::create_dir(&d).with_context(|| format!("{}: cannot create", d.display()))?;
            std::fs::set_permissions(
                &d,
                std::fs::Permissions::from_mode((m.mode() & 0o7777) | 0o700),
            )
            .with_context(|| format!("{}: cannot set the mode", d.display()))?;
            let mut names: Vec<OsString> = std::fs::read_dir(&s)
                .and_then(|r| r.map(|e| e.map(|e| e.file_name())).collect())
                .with_context(|| format!("{}: cannot list the directory", s.display()))?;
            names.sort();
            for name in names.into_iter().rev() {
                if top && name == skip {
                    continue;
                }
                stack.push((s.join(&name), d.join(&name), false));
            }
        } else if ft.is_symlink() {
            let t = std::fs::read_link(&s)
                .with_context(|| format!("{}: cannot read the link", s.display()))?;
            std::os::unix::fs::symlink(&t, &d)
                .with_context(|| format!("{}: cannot create", d.display()))?;
        } else if ft.is_file() {
            let id = (m.dev(), m.ino());
            if let Some(first) = linked.get(&id) {
                std::fs::hard_link(first, &d).with_context(|| {
                    format!("{}: cannot link to {}", d.display(), first.display())
                })?;
                continue;
            }
            if std::fs::hard_link(&s, &d).is_err() {
                std::fs::copy(&s, &d)
                    .with_context(|| format!("copying {} to {}", s.display(), d.display()))?;
                std::fs::set_permissions(&d, std::fs::Permissions::from_mode(m.mode() & 0o7777))
                    .with_context(|| format!("{}: cannot set the mode", d.display()))?;
            }
            if m.nlink() > 1 {
                linked.insert(id, d.clone());
            }
        } else if ft.is_block_device() || ft.is_char_device() || ft.is_fifo() || ft.is_socket() {
            bail!(
                "{}: special files (device nodes, FIFOs, sockets) are not taken into images, under usr/ or elsewhere (the image's /dev is devtmpfs)",
                s.display()
            );
        }
    }
    Ok(n)
}

impl Prepared {
    /// `program args…` inside a fakeroot session that knows the attributes.
    pub fn command(&self, program: &Path, args: &[String]) -> Result<duct::Expression> {
        let mut a: Vec<OsString> = vec![
            "-i".into(),
            self.state.clone().into(),
            "--".into(),
            "/bin/sh".into(),
            "-c".into(),
            SESSION.into(),
            "forge-fakeroot".into(),
            self.xattrs.clone().into(),
            tools::path(tools::SETFATTR)?.into(),
            tools::path(tools::XARGS)?.into(),
            program.into(),
        ];
        a.extend(args.iter().map(OsString::from));
        Ok(crate::tools::cmd(tools::path(tools::FAKEROOT)?, a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn src(dir: &Path, meta: Option<Meta>) -> SourceDir {
        SourceDir { dir: dir.to_path_buf(), meta: meta.map(Arc::new), rel: String::new() }
    }

    fn have_fakeroot() -> bool {
        let ok = tools::find(tools::FAKEROOT.program).is_some()
            && tools::find(tools::SETFATTR.program).is_some();
        if !ok {
            eprintln!("skipped: needs fakeroot-sysv and setfattr (cargo xtask deps --install)");
        }
        ok
    }

    #[test]
    fn the_session_sees_the_recorded_owners_modes_and_xattrs() {
        if !have_fakeroot() {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let tree = d.path().join("t");
        std::fs::create_dir_all(tree.join("tmp")).unwrap();
        std::fs::write(tree.join("chage"), b"x").unwrap();
        std::fs::write(tree.join("plain"), b"x").unwrap();
        let mut meta = Meta::new();
        meta.entries
            .insert("chage".into(), Attrs { uid: 0, gid: 42, mode: 0o2755, ..Default::default() });
        meta.entries
            .insert("tmp".into(), Attrs { uid: 0, gid: 0, mode: 0o1777, ..Default::default() });
        let mut caps = Attrs { uid: 0, gid: 0, mode: 0o755, ..Default::default() };
        caps.xattrs.insert("user.forge-test".into(), hex::encode(b"a value\n\0with NUL"));
        meta.entries.insert("plain".into(), caps);
        let p = prepare(&src(&tree, Some(meta)), d.path(), 255, "test").unwrap();
        assert_eq!(p.entries, 4);
        assert_eq!(p.with_xattrs, 1);
        let out = p
            .command(
                Path::new("/bin/sh"),
                &[
                    "-c".into(),
                    "stat -c '%n %u %g %a' \"$1\"/chage \"$1\"/tmp \"$1\"/plain && getfattr --absolute-names -e hex -n user.forge-test \"$1\"/plain".into(),
                    "sh".into(),
                    std::fs::canonicalize(&tree).unwrap().display().to_string(),
                ],
            )
            .unwrap()
            .stdout_capture()
            .read()
            .unwrap();
        assert!(out.contains("/chage 0 42 2755"), "{out}");
        assert!(out.contains("/tmp 0 0 1777"), "{out}");
        assert!(out.contains("/plain 0 0 755"), "{out}");
        assert!(
            out.contains(&format!("user.forge-test=0x{}", hex::encode(b"a value\n\0with NUL"))),
            "{out}"
        );
        // Nothing changed on disk.
        let m = std::fs::metadata(tree.join("chage")).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o644);
    }

    #[test]
    fn names_paths_and_special_files_are_checked_up_front() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path().join("t");
        std::fs::create_dir_all(t.join("etc")).unwrap();
        std::fs::write(t.join("etc").join("a".repeat(254)), b"x").unwrap();
        let e =
            format!("{:#}", prepare(&src(&t, None), d.path(), 253, "mkfs.erofs").err().unwrap());
        assert!(
            e.contains("254 bytes") && e.contains("mkfs.erofs") && e.contains("/etc/aaa"),
            "{e}"
        );
        prepare(&src(&t, None), d.path(), 255, "ext4").unwrap();

        let t = d.path().join("fifo");
        std::fs::create_dir_all(t.join("usr")).unwrap();
        let c = std::ffi::CString::new(t.join("usr/pipe").as_os_str().as_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let e = format!("{:#}", prepare(&src(&t, None), d.path(), 255, "ext4").err().unwrap());
        assert!(e.contains("usr/pipe") && e.contains("special files"), "{e}");

        let t = d.path().join("deep");
        // Created relative to the directory step by step (the kernel limits
        // one path argument to PATH_MAX, not the tree's depth).
        let mut cur = t.clone();
        std::fs::create_dir_all(&cur).unwrap();
        let mut fd =
            rustix::fs::open(&cur, rustix::fs::OFlags::DIRECTORY, rustix::fs::Mode::empty())
                .unwrap();
        while cur.as_os_str().len() < 4200 {
            let n = "d".repeat(200);
            rustix::fs::mkdirat(&fd, n.as_str(), rustix::fs::Mode::from_raw_mode(0o755)).unwrap();
            fd = rustix::fs::openat(
                &fd,
                n.as_str(),
                rustix::fs::OFlags::DIRECTORY,
                rustix::fs::Mode::empty(),
            )
            .unwrap();
            cur.push(&n);
        }
        let e = format!("{:#}", prepare(&src(&t, None), d.path(), 255, "ext4").err().unwrap());
        assert!(e.contains("bytes long") && e.contains("4095"), "{e}");
    }

    #[test]
    fn unreadable_files_are_named() {
        if unsafe { libc::geteuid() } == 0 {
            eprintln!("skipped: root reads every file (the check matters for other users)");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let t = d.path().join("t");
        std::fs::create_dir_all(&t).unwrap();
        std::fs::write(t.join("secret"), b"x").unwrap();
        std::fs::set_permissions(t.join("secret"), std::fs::Permissions::from_mode(0o000)).unwrap();
        let e = format!("{:#}", prepare(&src(&t, None), d.path(), 255, "ext4").err().unwrap());
        assert!(e.contains("secret") && e.contains("cannot read"), "{e}");
    }
}
