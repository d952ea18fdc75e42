//! The output directory: every artifact is written under a temporary name
//! (`.<name>.<pid>.<random>.partial`) beside its final name and renamed into
//! place once complete ([`publish`]); scratch directories follow the same
//! naming, so a later run removes what a killed process left
//! ([`clean_stale`]).
//!
//! Temporary files are created with mode 0666, which the kernel reduces by
//! the process umask, so a published artifact has the mode any other new
//! file would get (0644 under the usual umask 022), not tempfile's 0600.

use anyhow::{anyhow, Context, Result};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Mode requested for artifacts (before the umask).
pub const ARTIFACT_MODE: u32 = 0o666;

/// Creates the output directory if needed and removes what dead runs left in it.
pub fn prepare(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("{}: cannot create the output directory", dir.display()))?;
    clean_stale(dir);
    Ok(())
}

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
