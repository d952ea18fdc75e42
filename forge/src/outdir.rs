//! The output directory: every artifact is written under a temporary name
//! (`.<name>.<pid>.<random>.partial`) beside its final name, and a build's
//! artifacts are renamed into place together, once all are written and
//! verified ([`Staged::commit`]); scratch directories follow the same
//! naming, so a later run removes what a killed process left
//! ([`clean_stale`]). A build holds a lock on the directory for its whole
//! run ([`OutputDir::lock`]), so two builds never mix their artifacts.
//!
//! Temporary files are created with mode 0666, which the kernel reduces by
//! the process umask, so a published artifact has the mode any other new
//! file would get (0644 under the usual umask 022), not tempfile's 0600.

use anyhow::{anyhow, bail, Context, Result};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode requested for artifacts (before the umask).
pub const ARTIFACT_MODE: u32 = 0o666;

/// A temporary file in `dir` for the artifact `name`, named
/// `.<name>.<pid>.<random>.partial` so a later run can tell it was left by a
/// process that died (SIGKILL leaves no chance to clean up) and remove it.
pub fn partial_file(dir: &Path, name: &str) -> Result<tempfile::NamedTempFile> {
    tempfile::Builder::new()
        .prefix(&format!(".{name}.{}.", std::process::id()))
        .suffix(".partial")
        .permissions(std::fs::Permissions::from_mode(ARTIFACT_MODE))
        .tempfile_in(dir)
        .with_context(|| format!("{}: cannot create a temporary file", dir.display()))
}

/// A scratch directory in `dir` for one run, removed when dropped, and by a
/// later run if this process dies.
pub fn scratch_dir(dir: &Path) -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(&format!(".forge-scratch.{}.", std::process::id()))
        .suffix(".partial")
        .tempdir_in(dir)
        .with_context(|| format!("{}: cannot create a scratch directory", dir.display()))
}

/// Removes `.*.<pid>.*.partial` files and directories in `dir` whose process is gone.
pub fn clean_stale(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if !(n.starts_with('.') && n.ends_with(".partial")) {
            continue;
        }
        let parts: Vec<&str> = n.trim_end_matches(".partial").rsplitn(3, '.').collect();
        let Some(pid) = parts.get(1).and_then(|p| p.parse::<i32>().ok()) else { continue };
        let alive = unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        if !alive {
            if e.path().is_dir() {
                let _ = std::fs::remove_dir_all(e.path());
            } else {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Renames a finished temporary file (from [`partial_file`]) to `dest`.
pub fn publish(tmp: tempfile::NamedTempFile, dest: &Path) -> Result<()> {
    tmp.persist(dest)
        .map_err(|e| anyhow!("{}: cannot rename into place: {}", dest.display(), e.error))?;
    Ok(())
}

/// The lock file a build holds in its output directory.
pub const LOCK_FILE: &str = ".forge-build.lock";

/// What to do when another build holds the output directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IfLocked {
    /// Fail at once, naming the directory and the other build's PID.
    Fail,
    /// Wait until the other build is done.
    Wait,
}

/// An output directory held by this build: an exclusive `flock` on
/// [`LOCK_FILE`] in it, released when this is dropped (or the process dies:
/// the kernel drops the lock with the last descriptor). The lock file holds
/// the PID of the build that has it, for the message of the next one.
#[derive(Debug)]
pub struct OutputDir {
    path: PathBuf,
    lock: File,
}

impl OutputDir {
    /// Creates the directory if needed, takes its lock (failing or waiting,
    /// as `if_locked` says; `log` hears that it waits), then removes what
    /// dead runs left in it.
    pub fn lock(dir: &Path, if_locked: IfLocked, log: &dyn Fn(&str)) -> Result<OutputDir> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create the output directory", dir.display()))?;
        let lock_path = dir.join(LOCK_FILE);
        let mut said = false;
        loop {
            let opened = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(ARTIFACT_MODE)
                .open(&lock_path);
            // Another user's lock file (an earlier build by them) can still
            // be locked read-only; it just keeps their PID.
            let what = || format!("{}: cannot open the lock file", lock_path.display());
            let (mut f, writable) = match opened {
                Ok(f) => (f, true),
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    (File::open(&lock_path).with_context(what)?, false)
                }
                Err(e) => return Err(e).with_context(what),
            };
            if !flock(&f, libc::LOCK_EX | libc::LOCK_NB)
                .with_context(|| format!("{}: cannot lock", lock_path.display()))?
            {
                let holder = read_pid(&mut f);
                let who = match holder {
                    Some(pid) => format!("another build (PID {pid})"),
                    None => "another build".to_string(),
                };
                if if_locked == IfLocked::Fail {
                    bail!(
                        "{}: {who} is writing to this output directory; wait for it to finish, pass --wait to wait for it, or choose another --output-dir",
                        dir.display()
                    );
                }
                if !said {
                    log(&format!("{}: waiting for {who} to finish", dir.display()));
                    said = true;
                }
                flock(&f, libc::LOCK_EX)
                    .with_context(|| format!("{}: cannot lock", lock_path.display()))?;
            }
            // The holder removes the lock file when it is done: a lock taken
            // on a file no longer at that path protects nothing; try again.
            let held = f.metadata().with_context(|| format!("{}: stat", lock_path.display()))?;
            match std::fs::metadata(&lock_path) {
                Ok(m) if m.dev() == held.dev() && m.ino() == held.ino() => {}
                _ => continue,
            }
            if writable {
                let what = || format!("{}: cannot write", lock_path.display());
                f.set_len(0).with_context(what)?;
                f.rewind().with_context(what)?;
                writeln!(f, "{}", std::process::id()).with_context(what)?;
            }
            clean_stale(dir);
            return Ok(OutputDir { path: dir.to_path_buf(), lock: f });
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for OutputDir {
    fn drop(&mut self) {
        // Removed while still locked; a waiter that got the old file sees
        // it is gone and opens a new one (see `lock`).
        let _ = std::fs::remove_file(self.path.join(LOCK_FILE));
        let _ = flock(&self.lock, libc::LOCK_UN);
    }
}

/// `flock(2)`; Ok(false) when a non-blocking request finds the lock taken.
fn flock(f: &File, op: libc::c_int) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    loop {
        if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => return Ok(false),
            _ => return Err(e),
        }
    }
}

fn read_pid(f: &mut File) -> Option<u32> {
    let mut s = String::new();
    f.rewind().ok()?;
    f.read_to_string(&mut s).ok()?;
    s.trim().parse().ok()
}

/// A build's artifacts, written under temporary names in the output
/// directory, published together by [`Staged::commit`] once everything is
/// verified. Dropped uncommitted, it removes its temporary files, and
/// nothing under a final name has changed.
#[derive(Debug, Default)]
pub struct Staged {
    items: Vec<(tempfile::TempPath, String)>,
    retire: Vec<String>,
}

impl Staged {
    pub fn new() -> Staged {
        Staged::default()
    }

    /// Adds a finished temporary file (from [`partial_file`]) to be
    /// published under `name` in the output directory.
    pub fn add(&mut self, tmp: tempfile::NamedTempFile, name: &str) {
        self.add_path(tmp.into_temp_path(), name);
    }

    /// [`Staged::add`] for a temporary file already closed.
    pub fn add_path(&mut self, tmp: tempfile::TempPath, name: &str) {
        self.items.push((tmp, name.to_string()));
    }

    /// Writes a small file under a temporary name in `dir`, to be published
    /// as `name`.
    pub fn add_bytes(&mut self, dir: &Path, name: &str, data: &[u8]) -> Result<()> {
        let tmp = partial_file(dir, name)?;
        std::fs::write(tmp.path(), data)
            .with_context(|| format!("{}: cannot write", tmp.path().display()))?;
        tmp.as_file()
            .sync_all()
            .with_context(|| format!("{}: cannot sync", tmp.path().display()))?;
        self.add(tmp, name);
        Ok(())
    }

    /// Names of an earlier build's artifacts that this build does not
    /// produce and that would describe another disk beside its artifacts
    /// (e.g. a raw image kept by an earlier `--keep-raw`): removed by the
    /// commit, as part of the same step.
    pub fn retire(&mut self, name: &str) {
        self.retire.push(name.to_string());
    }

    /// Where a staged artifact is until the commit.
    pub fn staged_path(&self, name: &str) -> Option<&Path> {
        self.items.iter().find(|(_, n)| n == name).map(|(t, _)| t.as_ref())
    }

    /// Publishes every staged artifact under its final name in `out`, and
    /// removes the retired names, as one step: all checks first (names,
    /// nothing in the way), then the renames; if one fails, the artifacts
    /// an earlier build left are put back (from hard links taken before),
    /// so the directory holds either the old set or the new one. Returns
    /// the final paths in the order staged.
    pub fn commit(self, out: &OutputDir) -> Result<Vec<PathBuf>> {
        let dir = out.path();
        let mut seen = std::collections::BTreeSet::new();
        for (_, n) in &self.items {
            if n.is_empty() || n.contains('/') || n == "." || n == ".." {
                bail!("{}: artifact {n:?} is not a plain file name", dir.display());
            }
            if !seen.insert(n.as_str()) {
                bail!("{}: two artifacts of one build are both named {n}", dir.display());
            }
        }
        let retire: Vec<&String> =
            self.retire.iter().filter(|n| !seen.contains(n.as_str())).collect();
        // Keep what is there: hard links under temporary names, so a failed
        // rename can put the earlier artifact back.
        let mut backups: Vec<(PathBuf, tempfile::TempPath)> = Vec::new();
        for n in self.items.iter().map(|(_, n)| n).chain(retire.iter().copied()) {
            let dest = dir.join(n);
            match std::fs::symlink_metadata(&dest) {
                Ok(m) if m.is_dir() => {
                    bail!("{}: is a directory, where the artifact {n} goes", dest.display())
                }
                Ok(_) => {
                    let b = backup_name(dir, n);
                    let what = || {
                        format!("{}: cannot keep a link to the earlier artifact", dest.display())
                    };
                    std::fs::hard_link(&dest, &b).with_context(what)?;
                    let b = tempfile::TempPath::try_from_path(&b).inspect_err(|_| {
                        let _ = std::fs::remove_file(&b);
                    });
                    backups.push((dest.clone(), b.with_context(what)?));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("{}: cannot stat", dest.display()))
                }
            }
        }
        let mut done: Vec<PathBuf> = Vec::new();
        let mut result = Ok(());
        for (tmp, n) in self.items {
            let dest = dir.join(&n);
            match tmp.persist(&dest) {
                Ok(()) => done.push(dest),
                Err(e) => {
                    result =
                        Err(anyhow!("{}: cannot rename into place: {}", dest.display(), e.error));
                    break;
                }
            }
        }
        if result.is_ok() {
            for n in &retire {
                let p = dir.join(n);
                if let Err(e) = std::fs::remove_file(&p) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        result = Err(anyhow!(
                            "{}: cannot remove the earlier artifact: {e}",
                            p.display()
                        ));
                        break;
                    }
                }
            }
        }
        if let Err(e) = result {
            for d in &done {
                let _ = std::fs::remove_file(d);
            }
            for (dest, b) in backups {
                let _ = b.persist(&dest);
            }
            return Err(e);
        }
        drop(backups); // removes the links
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(done)
    }
}

fn backup_name(dir: &Path, name: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    dir.join(format!(".{name}.{}.old{n}.partial", std::process::id()))
}

/// Writes a small file under a temporary name, then renames it into place.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = partial_file(dir, &name)?;
    std::fs::write(tmp.path(), data)
        .with_context(|| format!("{}: cannot write", tmp.path().display()))?;
    tmp.as_file().sync_all().with_context(|| format!("{}: cannot sync", tmp.path().display()))?;
    publish(tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_partials_of_dead_processes_are_removed() {
        let d = tempfile::tempdir().unwrap();
        // PID 0x7fff_fff0 does not exist; our own PID does.
        let dead = d.path().join(".disk.bin.2147483632.abc123.partial");
        let dead_dir = d.path().join(".forge-scratch.2147483632.xyz.partial");
        let live = d.path().join(format!(".disk.bin.{}.abc123.partial", std::process::id()));
        let other = d.path().join("disk.bin");
        std::fs::write(&dead, b"x").unwrap();
        std::fs::create_dir(&dead_dir).unwrap();
        std::fs::write(dead_dir.join("f"), b"x").unwrap();
        std::fs::write(&live, b"x").unwrap();
        std::fs::write(&other, b"x").unwrap();
        clean_stale(d.path());
        assert!(!dead.exists());
        assert!(!dead_dir.exists());
        assert!(live.exists());
        assert!(other.exists());
    }

    fn names(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_second_build_into_a_locked_directory_stops_naming_it_and_the_pid() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        let first = OutputDir::lock(&out, IfLocked::Fail, &|_| {}).unwrap();
        let pid = std::fs::read_to_string(out.join(LOCK_FILE)).unwrap();
        assert_eq!(pid.trim(), std::process::id().to_string());
        let e = OutputDir::lock(&out, IfLocked::Fail, &|_| {}).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}: another build (PID {})", out.display(), pid.trim())));
        assert!(e.contains("--wait"), "{e}");
        drop(first);
        // Released: the lock file is gone and the next build gets it.
        assert!(names(&out).is_empty(), "{:?}", names(&out));
        let _again = OutputDir::lock(&out, IfLocked::Fail, &|_| {}).unwrap();
    }

    #[test]
    fn a_waiting_build_gets_the_directory_when_the_first_is_done() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        let first = OutputDir::lock(&out, IfLocked::Fail, &|_| {}).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let out = out.clone();
            std::thread::spawn(move || {
                let said = std::sync::Mutex::new(Vec::new());
                let l = OutputDir::lock(&out, IfLocked::Wait, &|m| {
                    said.lock().unwrap().push(m.to_string());
                    tx.send(()).unwrap();
                })
                .unwrap();
                let pid = std::fs::read_to_string(out.join(LOCK_FILE)).unwrap();
                (said.into_inner().unwrap(), pid, l)
            })
        };
        // The waiter says it waits, and does not get the lock while it is held.
        rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(!waiter.is_finished(), "the second build did not wait");
        drop(first);
        let (said, pid, _l) = waiter.join().unwrap();
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(said[0].contains("waiting for another build (PID"), "{said:?}");
        assert_eq!(pid.trim(), std::process::id().to_string());
    }

    #[test]
    fn a_commit_publishes_the_whole_set_or_nothing() {
        let d = tempfile::tempdir().unwrap();
        let out = OutputDir::lock(d.path(), IfLocked::Fail, &|_| {}).unwrap();
        let dir = d.path();
        // An earlier build's set.
        let mut s = Staged::new();
        for n in ["disk.bin.bz2", "disk_verity.txt", "version.txt", "disk.bin"] {
            s.add_bytes(dir, n, format!("old {n}").as_bytes()).unwrap();
        }
        s.commit(&out).unwrap();
        // A new set that fails at its last artifact: nothing changes.
        std::fs::create_dir(dir.join("zz-blocker")).unwrap();
        let mut s = Staged::new();
        for n in ["disk.bin.bz2", "disk_verity.txt", "version.txt", "zz-blocker"] {
            s.add_bytes(dir, n, format!("new {n}").as_bytes()).unwrap();
        }
        s.retire("disk.bin");
        let e = s.commit(&out).unwrap_err().to_string();
        assert!(e.contains("zz-blocker: is a directory"), "{e}");
        for n in ["disk.bin.bz2", "disk_verity.txt", "version.txt", "disk.bin"] {
            assert_eq!(std::fs::read_to_string(dir.join(n)).unwrap(), format!("old {n}"));
        }
        std::fs::remove_dir(dir.join("zz-blocker")).unwrap();
        assert_eq!(
            names(dir),
            [LOCK_FILE, "disk.bin", "disk.bin.bz2", "disk_verity.txt", "version.txt"]
        );
        // Dropped uncommitted: its temporary files go, nothing else changes.
        let mut s = Staged::new();
        s.add_bytes(dir, "disk.bin.bz2", b"new").unwrap();
        drop(s);
        assert_eq!(std::fs::read_to_string(dir.join("disk.bin.bz2")).unwrap(), "old disk.bin.bz2");
        // The whole new set, with the old raw image retired.
        let mut s = Staged::new();
        for n in ["disk.bin.bz2", "disk_verity.txt", "version.txt"] {
            s.add_bytes(dir, n, format!("new {n}").as_bytes()).unwrap();
        }
        s.retire("disk.bin");
        s.retire("disk_verity.txt"); // staged: kept
        let done = s.commit(&out).unwrap();
        assert_eq!(done.len(), 3);
        assert_eq!(names(dir), [LOCK_FILE, "disk.bin.bz2", "disk_verity.txt", "version.txt"]);
        for n in ["disk.bin.bz2", "disk_verity.txt", "version.txt"] {
            assert_eq!(std::fs::read_to_string(dir.join(n)).unwrap(), format!("new {n}"));
        }
    }

    #[test]
    fn a_commit_refuses_names_that_leave_the_directory_or_repeat() {
        let d = tempfile::tempdir().unwrap();
        let out = OutputDir::lock(d.path(), IfLocked::Fail, &|_| {}).unwrap();
        for bad in ["../x", "a/b", "..", ""] {
            let mut s = Staged::new();
            s.add_bytes(d.path(), "ok", b"x").unwrap();
            s.add_path(partial_file(d.path(), "x").unwrap().into_temp_path(), bad);
            assert!(s.commit(&out).is_err(), "{bad:?} accepted");
        }
        let mut s = Staged::new();
        s.add_bytes(d.path(), "same", b"1").unwrap();
        s.add_bytes(d.path(), "same", b"2").unwrap();
        let e = s.commit(&out).unwrap_err().to_string();
        assert!(e.contains("both named same"), "{e}");
        assert_eq!(names(d.path()), [LOCK_FILE]);
    }

    #[test]
    fn write_atomic_leaves_only_the_final_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("version.txt");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(d.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 1, "temporary files left behind");
    }
}
