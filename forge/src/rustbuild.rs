//! Rust binaries that go into an image (forge-init, crates from the
//! registry), built so that their bytes do not depend on who builds them.
//!
//! rustc embeds source paths in panic messages and debug info: the cargo
//! home (`$CARGO_HOME/registry/src/…` for every dependency), the checkout
//! and the target directory. Those differ between users and directories, so
//! every build here maps them to fixed prefixes with `--remap-path-prefix`
//! (the last matching mapping wins, so the most specific comes last). The
//! flags are passed as `CARGO_ENCODED_RUSTFLAGS`, which also reaches every
//! dependency (rustc arguments after `cargo rustc --` reach only the last
//! crate), and which keeps paths with spaces intact.
//!
//! Binaries for the build machine's own architecture are built by the
//! toolchain that runs the build (rustup's, `$CARGO`/`$RUSTC`). For another
//! architecture ([`Toolchain::for_arch`]), rustup could download nothing
//! here, so the cross toolchain is made of Debian's packages, without
//! root: the host's `rustc-web`/`cargo-web` (or `rustc`/`cargo`), the
//! standard library of the same Debian version for the target
//! (`libstd-rust-web-dev:arm64`) and the libraries crates link against
//! (`libssl-dev:arm64`), both downloaded by apt for the target and unpacked
//! into the cache (`recipe::unpacked`, used as `--sysroot` and as
//! openssl-sys's directories), linked by `gcc-<triplet>` with its
//! `libc6-dev-<arch>-cross`. Every version that goes into the bytes is part
//! of the toolchain's ID, which keys the cache of built binaries.

use crate::arch::Arch;
use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The fixed prefix the cargo home is mapped to.
pub const CARGO_HOME_PREFIX: &str = "/cargo";

/// The cargo home cargo uses: `$CARGO_HOME`, else `$HOME/.cargo`.
pub fn cargo_home() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
}

/// The path mappings, in order: the cargo home to [`CARGO_HOME_PREFIX`],
/// then each of `extra` (path, fixed name). Paths are made absolute (and
/// canonical where they exist, as a second spelling), so a relative or
/// symlinked spelling of the same directory maps too.
fn mappings(extra: &[(&Path, &str)]) -> Vec<(PathBuf, String)> {
    let mut pairs: Vec<(PathBuf, String)> = Vec::new();
    if let Some(h) = cargo_home() {
        pairs.push((h, CARGO_HOME_PREFIX.to_string()));
    }
    pairs.extend(extra.iter().map(|(p, to)| (p.to_path_buf(), to.to_string())));
    let mut out = Vec::new();
    for (from, to) in pairs {
        let abs = std::path::absolute(&from).unwrap_or(from);
        if let Ok(c) = abs.canonicalize() {
            if c != abs {
                out.push((abs.clone(), to.clone()));
                out.push((c, to));
                continue;
            }
        }
        out.push((abs, to));
    }
    out
}

/// `--remap-path-prefix` flags for [`mappings`] (the last matching one wins,
/// so the most specific comes last).
pub fn remap_flags(extra: &[(&Path, &str)]) -> Vec<String> {
    mappings(extra)
        .into_iter()
        .map(|(from, to)| format!("--remap-path-prefix={}={to}", from.display()))
        .collect()
}

/// The same mappings for C and assembly compiled by build scripts (the `cc`
/// crate reads `CFLAGS`/`CXXFLAGS`): `-ffile-prefix-map` covers `__FILE__`
/// and the debug info's compilation directory, which the assembler
/// otherwise records (e.g. vmw_backdoor's assembly in afterburn). Flags
/// are separated by spaces there, so a path with a space is left unmapped
/// and returned in the second list.
pub fn cflags(extra: &[(&Path, &str)]) -> (String, Vec<PathBuf>) {
    let (mapped, unmapped): (Vec<_>, Vec<_>) = mappings(extra)
        .into_iter()
        .partition(|(from, _)| !from.to_string_lossy().contains(char::is_whitespace));
    let flags: Vec<String> = mapped
        .iter()
        .map(|(from, to)| format!("-ffile-prefix-map={}={to}", from.display()))
        .collect();
    (flags.join(" "), unmapped.into_iter().map(|(from, _)| from).collect())
}

/// `CARGO_ENCODED_RUSTFLAGS`: the flags separated by 0x1f.
pub fn encode(flags: &[String]) -> String {
    flags.join("\u{1f}")
}

/// A short hash of `rustc -vV` (the compiler's version, commit and host):
/// binaries built by another compiler are other bytes, so caches of built
/// binaries are keyed by it.
pub fn toolchain_id() -> Result<String> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = crate::tools::command(&rustc)
        .arg("-vV")
        .output()
        .with_context(|| format!("running {} -vV", rustc.to_string_lossy()))?;
    if !out.status.success() {
        bail!("{} -vV failed", rustc.to_string_lossy());
    }
    let mut h = Sha256::new();
    h.update(&out.stdout);
    Ok(hex::encode(h.finalize())[..12].to_string())
}

/// A Rust toolchain that builds binaries for one architecture.
pub struct Toolchain {
    pub arch: Arch,
    /// The cargo to run.
    pub cargo: PathBuf,
    /// `$RUSTC` for that cargo (None: its own).
    pub rustc: Option<PathBuf>,
    /// Whether this is a cross toolchain (then builds pass `--target`).
    pub cross: bool,
    /// rustc flags for the target's crates besides the path remapping
    /// (`--sysroot` of a cross toolchain).
    pub target_flags: Vec<String>,
    /// Environment for the build: linker, C compiler and flags, library
    /// directories of the target.
    pub env: Vec<(String, String)>,
    /// Directories of the toolchain that reach the build, with the fixed
    /// names they are remapped to (the cross sysroot in the cache).
    pub remap: Vec<(PathBuf, String)>,
    /// C flags for the target (the cross sysroot's multiarch include directory).
    pub c_flags: Vec<String>,
    /// What the bytes of a binary depend on besides its sources: keys caches.
    pub id: String,
}

/// The host packages a cross toolchain for `arch` needs (program, package).
pub fn cross_tools(arch: Arch) -> Vec<crate::tools::Tool> {
    use crate::tools::Tool;
    let (gcc, gcc_package): (&'static str, &'static str) = match arch {
        Arch::Amd64 => ("x86_64-linux-gnu-gcc", "gcc-x86-64-linux-gnu"),
        Arch::Arm64 => ("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu"),
    };
    let libc_dev: &'static str = match arch {
        Arch::Amd64 => "libc6-dev-amd64-cross",
        Arch::Arm64 => "libc6-dev-arm64-cross",
    };
    let crt: &'static str = match arch {
        Arch::Amd64 => "/usr/x86_64-linux-gnu/lib/libc.a",
        Arch::Arm64 => "/usr/aarch64-linux-gnu/lib/libc.a",
    };
    vec![
        Tool { program: "/usr/bin/rustc", package: "rustc-web" },
        Tool { program: "/usr/bin/cargo", package: "cargo-web" },
        Tool { program: gcc, package: gcc_package },
        Tool { program: crt, package: libc_dev },
    ]
}

/// `dpkg-query`'s package and version of an installed file, if any.
fn owner_of(file: &Path) -> Option<(String, String)> {
    let out = crate::tools::command("dpkg-query").arg("-S").arg(file).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let pkg = text.lines().next()?.split(':').next()?.trim().to_string();
    let out =
        crate::tools::command("dpkg-query").args(["-W", "-f", "${Version}", &pkg]).output().ok()?;
    out.status.success().then(|| (pkg, String::from_utf8_lossy(&out.stdout).trim().to_string()))
}

fn version_of(program: &Path, arg: &str) -> Result<String> {
    let out = crate::tools::command(program)
        .arg(arg)
        .output()
        .with_context(|| format!("running {} {arg}", program.display()))?;
    if !out.status.success() {
        bail!("{} {arg} failed", program.display());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Toolchain {
    /// The toolchain that builds `arch`'s binaries on this machine.
    pub fn for_arch(
        arch: Arch,
        cache: &crate::recipe::Cache,
        log: &dyn Fn(&str),
    ) -> Result<Toolchain> {
        if Arch::host() == Some(arch) {
            return Ok(Toolchain {
                arch,
                cargo: std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()).into(),
                rustc: None,
                cross: false,
                target_flags: Vec::new(),
                env: Vec::new(),
                remap: Vec::new(),
                c_flags: Vec::new(),
                id: toolchain_id()?,
            });
        }
        crate::tools::require(&cross_tools(arch))?;
        let rustc = PathBuf::from("/usr/bin/rustc");
        let cargo = PathBuf::from("/usr/bin/cargo");
        let rustc_v = version_of(&rustc, "-vV")?;
        // The target's standard library must come from the same Debian
        // source package, at the same version, as the compiler: the package
        // dpkg says installed it, else (no dpkg database, e.g. in the SDK
        // container) the one whose archive version is the compiler's release.
        let std_want = match owner_of(&rustc) {
            Some((pkg, ver)) => {
                let std_pkg = match pkg.as_str() {
                    "rustc-web" => "libstd-rust-web-dev",
                    "rustc" => "libstd-rust-dev",
                    other => bail!("{}: installed by '{other}', not rustc-web or rustc: no Debian standard library to match it", rustc.display()),
                };
                format!("{std_pkg}={ver}")
            }
            None => {
                let release = rustc_v
                    .lines()
                    .find_map(|l| l.strip_prefix("release: "))
                    .ok_or_else(|| anyhow!("{} -vV names no release", rustc.display()))?
                    .trim()
                    .to_string();
                let mut found = None;
                for pkg in ["libstd-rust-web-dev", "libstd-rust-dev"] {
                    if let Some(v) = crate::recipe::candidate_version(cache, arch, pkg, log)? {
                        if v.starts_with(&format!("{release}+"))
                            || v.starts_with(&format!("{release}-"))
                        {
                            found = Some(format!("{pkg}={v}"));
                            break;
                        }
                    }
                }
                found.ok_or_else(|| anyhow!("no {arch} standard library of Debian's archive is for rustc {release} ({}): install rustc-web", rustc.display()))?
            }
        };
        let ssl_want = "libssl-dev";
        let (sysroot, debs) = crate::recipe::unpacked(
            cache,
            arch,
            "rust-sysroot",
            &[&std_want, ssl_want, "libssl3"],
            log,
        )
        .with_context(|| format!("the {arch} standard library for {} ({std_want}) and the libraries crates link against", rustc.display()))?;
        let rustlib = sysroot.join("usr/lib/rustlib").join(arch.rust_target()).join("lib");
        if !rustlib.is_dir() {
            bail!(
                "{}: {std_want} has no standard library for {}",
                rustlib.display(),
                arch.rust_target()
            );
        }
        let triplet = arch.gnu_triplet();
        let gcc = format!("{triplet}-gcc");
        let target_env = arch.rust_target().to_uppercase().replace('-', "_");
        let target_cc = arch.rust_target().replace('-', "_");
        let usr = sysroot.join("usr");
        let env = vec![
            (format!("CARGO_TARGET_{target_env}_LINKER"), gcc.clone()),
            (format!("CC_{target_cc}"), gcc.clone()),
            (format!("AR_{target_cc}"), format!("{triplet}-ar")),
            (
                format!("{target_env}_OPENSSL_LIB_DIR"),
                usr.join("lib").join(triplet).display().to_string(),
            ),
            (
                format!("{target_env}_OPENSSL_INCLUDE_DIR"),
                usr.join("include").display().to_string(),
            ),
        ];
        let c_flags = vec![format!("-I{}", usr.join("include").join(triplet).display())];
        let gcc_v = version_of(Path::new(&gcc), "--version")?;
        let libc = cross_tools(arch)[3].program;
        let libc_dev =
            owner_of(Path::new(libc)).map(|(p, v)| format!("{p} {v}")).unwrap_or_default();
        let mut h = Sha256::new();
        for part in [rustc_v.as_str(), &version_of(&cargo, "-V")?, &gcc_v, &libc_dev] {
            h.update(part.as_bytes());
            h.update(b"\0");
        }
        for d in &debs {
            h.update(format!("{} {}\0", d.name, d.version).as_bytes());
        }
        h.update(arch.rust_target().as_bytes());
        Ok(Toolchain {
            arch,
            cargo,
            rustc: Some(rustc),
            cross: true,
            target_flags: vec![format!("--sysroot={}", usr.display())],
            env,
            remap: vec![(sysroot, "/sysroot".into())],
            c_flags,
            id: hex::encode(h.finalize())[..12].to_string(),
        })
    }

    /// `--target` arguments for `cargo install` (none for the native
    /// toolchain, whose binaries are built as they always were).
    pub fn target_args(&self) -> Vec<String> {
        if self.cross {
            vec!["--target".into(), self.arch.rust_target().into()]
        } else {
            Vec::new()
        }
    }

    /// The rustc flags for a build whose own directories are `extra`
    /// (remapped after the cargo home and the toolchain's), plus `more`.
    pub fn rustflags(&self, extra: &[(&Path, &str)], more: &[String]) -> String {
        let mut maps: Vec<(&Path, &str)> =
            self.remap.iter().map(|(p, n)| (p.as_path(), n.as_str())).collect();
        maps.extend_from_slice(extra);
        let mut flags: Vec<String> = more.to_vec();
        flags.extend(self.target_flags.iter().cloned());
        flags.extend(remap_flags(&maps));
        encode(&flags)
    }

    /// C flags with `extra` remapped: `(flags, paths that could not be)`.
    pub fn cflags(&self, extra: &[(&Path, &str)]) -> (String, Vec<PathBuf>) {
        let mut maps: Vec<(&Path, &str)> =
            self.remap.iter().map(|(p, n)| (p.as_path(), n.as_str())).collect();
        maps.extend_from_slice(extra);
        let (mapped, unmapped) = cflags(&maps);
        let mut all = self.c_flags.clone();
        all.push(mapped);
        (all.join(" "), unmapped)
    }

    /// A cargo command with the toolchain's environment (and nothing of
    /// the caller's rustup or RUSTFLAGS).
    pub fn cargo<I, S>(&self, args: I) -> std::process::Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut c = crate::tools::command(&self.cargo);
        c.args(args).env_remove("RUSTFLAGS");
        if let Some(r) = &self.rustc {
            c.env("RUSTC", r).env_remove("RUSTUP_TOOLCHAIN").env_remove("RUSTC_WRAPPER");
        }
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }
}

/// Builds the static binary of `package` of the workspace at `workspace`
/// with `tc` for its architecture (`--release --target <triple>`, so the
/// flags reach the package and its dependencies, not build scripts), with
/// the checkout, the target directory, the cargo home and the toolchain's
/// own directories remapped: the binary is the same whoever builds it and
/// wherever. Returns the binary's path.
pub fn build_static(
    tc: &Toolchain,
    workspace: &Path,
    target_dir: &Path,
    package: &str,
) -> Result<PathBuf> {
    let more = vec!["-Ctarget-feature=+crt-static".to_string()];
    let maps: [(&Path, &str); 2] = [(workspace, "/forge"), (target_dir, "/target")];
    let st = tc
        .cargo(["build", "--quiet", "--release", "-p", package, "--target", tc.arch.rust_target()])
        .current_dir(workspace)
        .env("CARGO_TARGET_DIR", target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", tc.rustflags(&maps, &more))
        .status()
        .with_context(|| format!("running {} to build {package}", tc.cargo.display()))?;
    if !st.success() {
        bail!("building {package} for {} failed", tc.arch);
    }
    let bin = target_dir.join(tc.arch.rust_target()).join("release").join(package);
    let machine = std::fs::read(&bin).ok().and_then(|b| forge_formats::kernel::elf_machine(&b));
    if machine != Some(tc.arch.elf_machine()) {
        bail!("{}: not an {} program", bin.display(), tc.arch);
    }
    Ok(bin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_mappings_come_after_the_cargo_home() {
        let d = tempfile::tempdir().unwrap();
        let flags = remap_flags(&[(d.path(), "/forge")]);
        let last = flags.last().unwrap();
        assert!(last.ends_with("=/forge"), "{flags:?}");
        assert!(last.contains(&d.path().canonicalize().unwrap().display().to_string()));
        if cargo_home().is_some() {
            assert!(flags[0].ends_with(&format!("={CARGO_HOME_PREFIX}")), "{flags:?}");
        }
    }

    #[test]
    fn cflags_map_the_same_prefixes() {
        let d = tempfile::tempdir().unwrap();
        let (c, unmapped) = cflags(&[(d.path(), "/target")]);
        assert!(unmapped.is_empty());
        assert!(
            c.split(' ').next_back().unwrap().starts_with("-ffile-prefix-map=")
                && c.ends_with("=/target"),
            "{c}"
        );
    }

    #[test]
    fn encoded_flags_keep_spaces() {
        let f = vec!["--remap-path-prefix=/a b=/x".to_string(), "-Cfoo".to_string()];
        assert_eq!(encode(&f), "--remap-path-prefix=/a b=/x\u{1f}-Cfoo");
    }
}
