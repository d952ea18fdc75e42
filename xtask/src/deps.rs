//! Host packages the build and the tests need (Debian names), checked by
//! program, and installed with apt-get when asked and allowed (root).

use anyhow::{bail, Result};
use forge::tools::{self, Tool};

/// Host programs `build-image` runs (filesystems, GRUB, the demo payload).
pub const BUILD_TOOLS: &[Tool] = &[
    Tool { program: "mkfs.ext4", package: "e2fsprogs" },
    Tool { program: "debugfs", package: "e2fsprogs" },
    Tool { program: "e2fsck", package: "e2fsprogs" },
    Tool { program: "mkfs.erofs", package: "erofs-utils" },
    Tool { program: "fsck.erofs", package: "erofs-utils" },
    Tool { program: "fsck.fat", package: "dosfstools" },
    Tool { program: "apt-get", package: "apt" },
    Tool { program: "dpkg-deb", package: "dpkg" },
    Tool { program: "depmod", package: "kmod" },
    Tool { program: "pkg-config", package: "pkg-config" },
    Tool { program: "/usr/include/openssl/ssl.h", package: "libssl-dev" },
    Tool { program: "grub-mkimage", package: "grub-common" },
    Tool { program: "/usr/lib/grub/i386-pc/boot.img", package: "grub-pc-bin" },
    Tool { program: "/usr/lib/grub/x86_64-efi/linux.mod", package: "grub-efi-amd64-bin" },
];

/// Host programs the test suite, the boot tests and the benchmarks run besides the build's.
pub const TEST_TOOLS: &[Tool] = &[
    Tool { program: "sfdisk", package: "fdisk" },
    Tool { program: "mkfs.fat", package: "dosfstools" },
    Tool { program: "mcopy", package: "mtools" },
    Tool { program: "mkfs.btrfs", package: "btrfs-progs" },
    Tool { program: "veritysetup", package: "cryptsetup-bin" },
    Tool { program: "setpriv", package: "util-linux" },
    Tool { program: "blkid", package: "util-linux" },
    Tool { program: "bzip2", package: "bzip2" },
    Tool { program: "cpio", package: "cpio" },
    Tool { program: "qemu-system-x86_64", package: "qemu-system-x86" },
    Tool { program: "qemu-img", package: "qemu-utils" },
    Tool { program: "/usr/share/OVMF/OVMF_CODE_4M.fd", package: "ovmf" },
    Tool { program: "ssh", package: "openssh-client" },
    Tool { program: "ssh-keygen", package: "openssh-client" },
    Tool { program: "lbzip2", package: "lbzip2" },
    Tool { program: "pbzip2", package: "pbzip2" },
    Tool { program: "gzip", package: "gzip" },
    Tool { program: "pigz", package: "pigz" },
    Tool { program: "zstd", package: "zstd" },
    Tool { program: "xz", package: "xz-utils" },
    // the SDK container
    Tool { program: "podman", package: "podman" },
    Tool { program: "runc", package: "runc" },
];

pub fn missing_of(set: &[Tool]) -> Vec<Tool> {
    set.iter().copied().filter(|t| tools::find(t.program).is_none()).collect()
}

pub fn missing() -> Vec<Tool> {
    let mut v = missing_of(BUILD_TOOLS);
    v.extend(missing_of(TEST_TOOLS));
    v
}

/// Names every missing build tool and its package (no installing).
pub fn check_build() -> Result<()> {
    tools::require(BUILD_TOOLS)
        .map_err(|e| anyhow::anyhow!("{e} (as root, `cargo xtask deps --install` does it)"))
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
            bail!(
                "still missing after apt-get: {}",
                still.iter().map(|t| t.program).collect::<Vec<_>>().join(", ")
            );
        }
        return Ok(());
    }
    tools::require(&miss)
}
