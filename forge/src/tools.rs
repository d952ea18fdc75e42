//! Host tools the engine drives through duct, checked up front so a missing
//! one is reported with the Debian package that provides it, before any
//! output is written; and the one way the build starts a child process
//! ([`cmd`], [`crate::cmd!`], [`command`]), so every child dies with the
//! build ([`die_with_parent`]).

use anyhow::{bail, Result};
use std::ffi::OsString;
use std::path::PathBuf;

pub use duct;

/// Makes a child started from `c` receive SIGKILL when the thread that
/// started it exits (`PR_SET_PDEATHSIG`): a build killed with SIGKILL cannot
/// clean up, and `apt-get`, `mkfs.*`, `cargo install` or QEMU would otherwise
/// run on, writing into the cache or the output directory. If the parent is
/// already gone when the child starts, the child does not run the program
/// (spawning fails with ESRCH).
///
/// The signal follows the starting *thread*: a child that must outlive the
/// thread that started it (none does today) has to be started elsewhere.
pub fn die_with_parent(c: &mut std::process::Command) -> &mut std::process::Command {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id();
    // SAFETY: the hook runs between fork and exec and calls only
    // async-signal-safe functions (prctl, getppid), allocating nothing.
    unsafe {
        c.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent died before the prctl: its signal was never armed.
            if libc::getppid() as u32 != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        })
    }
}

/// A `std::process::Command` for `program` that dies with the build (see
/// [`die_with_parent`]).
pub fn command(program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
    let mut c = std::process::Command::new(program);
    die_with_parent(&mut c);
    c
}

/// Makes every command of a duct expression (both sides of a pipe) die
/// with the build (see [`die_with_parent`]).
pub fn dying_with_parent(e: duct::Expression) -> duct::Expression {
    e.before_spawn(|c| {
        die_with_parent(c);
        Ok(())
    })
}

/// `duct::cmd` whose child dies with the build (see [`die_with_parent`]).
pub fn cmd<T, U>(program: T, args: U) -> duct::Expression
where
    T: duct::IntoExecutablePath,
    U: IntoIterator,
    U::Item: Into<OsString>,
{
    dying_with_parent(duct::cmd(program, args))
}

/// `duct::cmd!` whose child dies with the build: `forge::cmd!(prog, args…)`.
#[macro_export]
macro_rules! cmd {
    ( $program:expr $(, $arg:expr )* $(,)? ) => {
        $crate::tools::dying_with_parent($crate::tools::duct::cmd!($program $(, $arg )*))
    };
}

/// A host program and the Debian package that ships it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tool {
    pub program: &'static str,
    pub package: &'static str,
}

pub const MKFS_EXT4: Tool = Tool { program: "mkfs.ext4", package: "e2fsprogs" };
pub const DEBUGFS: Tool = Tool { program: "debugfs", package: "e2fsprogs" };
pub const E2FSCK: Tool = Tool { program: "e2fsck", package: "e2fsprogs" };
pub const MKFS_EROFS: Tool = Tool { program: "mkfs.erofs", package: "erofs-utils" };
pub const FSCK_EROFS: Tool = Tool { program: "fsck.erofs", package: "erofs-utils" };
pub const DUMP_EROFS: Tool = Tool { program: "dump.erofs", package: "erofs-utils" };
pub const MKFS_BTRFS: Tool = Tool { program: "mkfs.btrfs", package: "btrfs-progs" };
pub const BTRFS: Tool = Tool { program: "btrfs", package: "btrfs-progs" };
pub const DUMPE2FS: Tool = Tool { program: "dumpe2fs", package: "e2fsprogs" };
/// Gives the filesystem builders the payload's owners, modes and extended
/// attributes without root (see `fs::source`).
/// (`fakeroot-sysv`, not the `fakeroot` alternative, which only exists
/// once the package's scripts ran: the SDK container unpacks without them).
pub const FAKEROOT: Tool = Tool { program: "fakeroot-sysv", package: "fakeroot" };
pub const SETFATTR: Tool = Tool { program: "setfattr", package: "attr" };
pub const XARGS: Tool = Tool { program: "xargs", package: "findutils" };
pub const FSCK_FAT: Tool = Tool { program: "fsck.fat", package: "dosfstools" };

/// Directories searched besides `$PATH`: the `sbin` directories hold most
/// filesystem tools, and an unprivileged user's `$PATH` often lacks them.
const EXTRA_DIRS: &[&str] =
    &["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/local/bin", "/usr/bin", "/bin"];

/// Full path of a program, searching `$PATH` and the sbin directories.
pub fn find(program: &str) -> Option<PathBuf> {
    if program.starts_with('/') {
        let p = PathBuf::from(program);
        return p.exists().then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(EXTRA_DIRS.iter().map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| is_executable(p))
}

fn is_executable(p: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Path of one tool, or an error naming the package to install.
pub fn path(tool: Tool) -> Result<PathBuf> {
    require(&[tool])?;
    Ok(find(tool.program).expect("checked above"))
}

/// Fails, naming every missing program and its package, unless all are present.
pub fn require(tools: &[Tool]) -> Result<()> {
    let mut missing: Vec<Tool> =
        tools.iter().copied().filter(|t| find(t.program).is_none()).collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    let programs: Vec<&str> = missing.iter().map(|t| t.program).collect();
    let mut packages: Vec<&str> = missing.iter().map(|t| t.package).collect();
    packages.sort();
    packages.dedup();
    bail!(
        "missing host tools: {} — install them with: apt-get install {}",
        programs.join(", "),
        packages.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tool_names_package() {
        let t = Tool { program: "definitely-not-a-program-xyz", package: "pkg-xyz" };
        let e = require(&[t]).unwrap_err().to_string();
        assert!(e.contains("definitely-not-a-program-xyz"), "{e}");
        assert!(e.contains("apt-get install pkg-xyz"), "{e}");
    }
}
