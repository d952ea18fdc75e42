//! Host packages the build and the tests need (Debian names), checked by
//! program, and installed with apt-get when asked and allowed (root).

use anyhow::{bail, Context, Result};
use forge::tools::{self, Tool};

/// `cargo xtask deps`: checks the host tools; with --install (as root),
/// apt-gets the missing ones.
#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    pub install: bool,
}

pub fn run(a: Args) -> Result<()> {
    ensure(a.install)
}

/// Host programs `build-image` runs (filesystems, GRUB, the demo payload).
pub const BUILD_TOOLS: &[Tool] = &[
    Tool { program: "mkfs.ext4", package: "e2fsprogs" },
    Tool { program: "debugfs", package: "e2fsprogs" },
    Tool { program: "e2fsck", package: "e2fsprogs" },
    Tool { program: "dumpe2fs", package: "e2fsprogs" },
    Tool { program: "mkfs.erofs", package: "erofs-utils" },
    Tool { program: "fsck.erofs", package: "erofs-utils" },
    Tool { program: "fakeroot-sysv", package: "fakeroot" },
    Tool { program: "setfattr", package: "attr" },
    Tool { program: "xargs", package: "findutils" },
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
    // tests/arm64_image.rs: the EFI loader's machine, by file(1)
    Tool { program: "file", package: "file" },
    Tool { program: "qemu-system-x86_64", package: "qemu-system-x86" },
    Tool { program: "qemu-img", package: "qemu-utils" },
    Tool { program: "/usr/share/OVMF/OVMF_CODE_4M.fd", package: "ovmf" },
    // arm64 boot tests: qemu-system-aarch64 -M virt with the AAVMF firmware
    Tool { program: "qemu-system-aarch64", package: "qemu-system-arm" },
    Tool { program: "/usr/share/AAVMF/AAVMF_CODE.fd", package: "qemu-efi-aarch64" },
    Tool { program: "ssh", package: "openssh-client" },
    Tool { program: "ssh-keygen", package: "openssh-client" },
    Tool { program: "lbzip2", package: "lbzip2" },
    Tool { program: "pbzip2", package: "pbzip2" },
    Tool { program: "gzip", package: "gzip" },
    Tool { program: "pigz", package: "pigz" },
    Tool { program: "zstd", package: "zstd" },
    Tool { program: "xz", package: "xz-utils" },
    // tests/examples.rs: the example Ignition configs are judged by Ignition's own validator
    Tool { program: "ignition-validate", package: "ignition" },
    // the SDK container
    Tool { program: "podman", package: "podman" },
    Tool { program: "runc", package: "runc" },
];

pub fn missing_of(set: &[Tool]) -> Vec<Tool> {
    set.iter().copied().filter(|t| tools::find(t.program).is_none()).collect()
}

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// The host tools of a build for `arch`: the build's, and for another
/// architecture than this machine's the cross toolchain's (Debian's rustc
/// and cargo, the target's gcc and C library). As root, installs the
/// missing ones (and says so); otherwise fails naming the exact
/// `apt-get install` command.
pub fn ensure_build(arch: forge::arch::Arch) -> Result<()> {
    ensure_set(&build_tools(arch), true)
}

fn build_tools(arch: forge::arch::Arch) -> Vec<Tool> {
    let mut v = BUILD_TOOLS.to_vec();
    if forge::arch::Arch::host() != Some(arch) {
        v.extend(forge::rustbuild::cross_tools(arch));
    }
    v
}

/// Makes sure every host tool (build and tests) is present: installs the
/// missing packages when `install` is set and we are root, otherwise names
/// the command to run.
pub fn ensure(install: bool) -> Result<()> {
    // The tests build and boot every architecture.
    let mut all: Vec<Tool> = forge::arch::Arch::ALL.iter().flat_map(|a| build_tools(*a)).collect();
    all.extend_from_slice(TEST_TOOLS);
    all.sort_by_key(|t| t.program);
    all.dedup_by_key(|t| t.program);
    ensure_set(&all, install)
}

fn ensure_set(set: &[Tool], install: bool) -> Result<()> {
    let miss = missing_of(set);
    if miss.is_empty() {
        return Ok(());
    }
    let mut pkgs: Vec<String> = miss.iter().map(|t| t.package.to_string()).collect();
    pkgs.sort();
    pkgs.dedup();
    if !(install && is_root() && tools::find("apt-get").is_some()) {
        return tools::require(&miss);
    }
    eprintln!("installing missing host packages with apt-get: {}", pkgs.join(" "));
    forge::cmd!("apt-get", "update", "-q").stdout_null().run().context("apt-get update")?;
    let pinned = consistent_set(&mut pkgs)?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    if pinned {
        args.push("--allow-downgrades");
    }
    args.extend(pkgs.iter().map(String::as_str));
    eprintln!("  apt-get {}", args.join(" "));
    forge::tools::cmd("apt-get", &args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout_null()
        .run()
        .with_context(|| format!("apt-get {}", args.join(" ")))?;
    let still = missing_of(set);
    if !still.is_empty() {
        bail!(
            "still missing after apt-get: {}",
            still.iter().map(|t| t.program).collect::<Vec<_>>().join(", ")
        );
    }
    Ok(())
}

/// Keeps QEMU's packages at one version. `qemu-system-*` pulls in
/// `qemu-system-common` of its own version, which a newer `qemu-utils` (a
/// backport preinstalled on some machines) declares broken, so apt would
/// remove `qemu-utils` (and `qemu-img` with it). Whenever a `qemu-system-*`
/// or `qemu-utils` is installed, `qemu-utils` is named at the version of the
/// `qemu-system-*` candidate. Returns whether a version was pinned (the
/// install may then downgrade).
fn consistent_set(pkgs: &mut Vec<String>) -> Result<bool> {
    let system: Vec<String> =
        pkgs.iter().filter(|p| p.starts_with("qemu-system-")).cloned().collect();
    let reference = match system.first() {
        Some(s) => Some(s.clone()),
        // Only qemu-utils is missing: match the installed qemu-system, if any.
        None if pkgs.iter().any(|p| p == "qemu-utils") => {
            installed_version("qemu-system-common").map(|_| "qemu-system-common".to_string())
        }
        None => None,
    };
    let Some(reference) = reference else { return Ok(false) };
    let version = candidate_version(&reference)?;
    pkgs.retain(|p| p != "qemu-utils");
    pkgs.push(format!("qemu-utils={version}"));
    Ok(true)
}

/// `Candidate:` of `apt-cache policy PKG` (installed or to be installed).
fn candidate_version(pkg: &str) -> Result<String> {
    policy_field(&policy(pkg)?, "Candidate:")
        .ok_or_else(|| anyhow::anyhow!("apt-cache policy {pkg}: no candidate version"))
}

fn installed_version(pkg: &str) -> Option<String> {
    policy_field(&policy(pkg).ok()?, "Installed:")
}

fn policy(pkg: &str) -> Result<String> {
    let out = forge::cmd!("apt-cache", "policy", pkg)
        .stdout_capture()
        .run()
        .with_context(|| format!("apt-cache policy {pkg}"))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn policy_field(text: &str, key: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(key))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty() && v != "(none)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_parsing() {
        let t = "qemu-utils:\n  Installed: 1:10.0.2+ds-2\n  Candidate: 1:7.2+dfsg-7\n";
        assert_eq!(policy_field(t, "Installed:").as_deref(), Some("1:10.0.2+ds-2"));
        assert_eq!(policy_field(t, "Candidate:").as_deref(), Some("1:7.2+dfsg-7"));
        let none = "x:\n  Installed: (none)\n";
        assert_eq!(policy_field(none, "Installed:"), None);
    }

    #[test]
    fn no_qemu_no_pin() {
        let mut p = vec!["mtools".to_string(), "zstd".to_string()];
        assert!(!consistent_set(&mut p).unwrap());
        assert_eq!(p, ["mtools", "zstd"]);
    }
}
