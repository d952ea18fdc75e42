//! Host packages the build and the tests need (Debian names), checked by
//! program, and installed with apt-get when asked and allowed (root).

use anyhow::{bail, Result};
use forge::tools::{self, Tool};

/// Every host program the build, the boot tests and the test suite run.
pub const HOST_TOOLS: &[Tool] = &[
    Tool { program: "sfdisk", package: "fdisk" },
    Tool { program: "fsck.fat", package: "dosfstools" },
    Tool { program: "mkfs.fat", package: "dosfstools" },
    Tool { program: "mcopy", package: "mtools" },
    Tool { program: "mkfs.ext4", package: "e2fsprogs" },
    Tool { program: "debugfs", package: "e2fsprogs" },
    Tool { program: "e2fsck", package: "e2fsprogs" },
    Tool { program: "mkfs.erofs", package: "erofs-utils" },
    Tool { program: "fsck.erofs", package: "erofs-utils" },
    Tool { program: "mkfs.btrfs", package: "btrfs-progs" },
    Tool { program: "veritysetup", package: "cryptsetup-bin" },
    Tool { program: "setpriv", package: "util-linux" },
    Tool { program: "blkid", package: "util-linux" },
    Tool { program: "bzip2", package: "bzip2" },
];

pub fn missing() -> Vec<Tool> {
    HOST_TOOLS.iter().copied().filter(|t| tools::find(t.program).is_none()).collect()
}

/// Makes sure every host tool is present: installs the missing packages when
/// `install` is set and we are root, otherwise names the command to run.
pub fn ensure(install: bool) -> Result<()> {
    let miss = missing();
    if miss.is_empty() {
        return Ok(());
    }
    let mut pkgs: Vec<&str> = miss.iter().map(|t| t.package).collect();
    pkgs.sort();
    pkgs.dedup();
    let is_root = unsafe { libc::geteuid() } == 0;
    if install && is_root && tools::find("apt-get").is_some() {
        eprintln!("installing host packages: {}", pkgs.join(" "));
        duct::cmd!("apt-get", "update", "-q").stdout_null().run()?;
        let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
        args.extend(pkgs.iter().copied());
        duct::cmd("apt-get", &args).env("DEBIAN_FRONTEND", "noninteractive").stdout_null().run()?;
        let still = missing();
        if !still.is_empty() {
            bail!("still missing after apt-get: {}", still.iter().map(|t| t.program).collect::<Vec<_>>().join(", "));
        }
        return Ok(());
    }
    bail!(
        "missing host tools: {} — install them with: sudo apt-get install {}",
        miss.iter().map(|t| t.program).collect::<Vec<_>>().join(", "),
        pkgs.join(" ")
    )
}
