//! The CLI: argument parsing and progress output only; the work is done by
//! the `forge` library. One module per command, each with its `Args` and
//! `run`; shared helpers live in `util` and `progress`.

pub mod bench;
pub mod boot_test;
pub mod build_image;
pub mod build_sysext;
pub mod compress;
pub mod deps;
pub mod inspect;
pub mod metadata_respond;
mod other_user;
pub mod payload;
mod progress;
pub mod sdk_image;
pub mod test;
pub mod util;

use clap::{Parser, Subcommand};
use std::ffi::OsString;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Rootless Flatcar-style OS image builder", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build a disk image for a platform from a payload directory.
    BuildImage(build_image::Args),
    /// Build a system extension image (NAME.raw, EROFS) from sysext/NAME/ for a base payload.
    BuildSysext(build_sysext::Args),
    /// Show the partitions, filesystems, OEM content and verity state of an image,
    /// or the extension-release fields of a system extension image (.raw).
    Inspect(inspect::Args),
    /// Build (or reuse from the cache) a payload from a recipe (default: the demo payload).
    Payload(payload::Args),
    /// Boot an image in QEMU as its platform would, against a fake metadata service, and check it.
    BootTest(boot_test::Args),
    /// Compress a raw disk image (zero-aware, on every core) and write its DIGESTS.
    Compress(compress::Args),
    /// (internal) Serve one request of the fake metadata service on stdin/stdout.
    #[command(hide = true)]
    MetadataRespond(metadata_respond::Args),
    /// Install (as root) or name the missing host packages, then run the test suite.
    Test(test::Args),
    /// Build the SDK container image (forge-sdk:latest) from sdk/ with podman (or docker).
    SdkImage(sdk_image::Args),
    /// Check the host tools; with --install (as root), apt-get the missing ones.
    Deps(deps::Args),
    /// Benchmarks, printed side by side with a reference tool run in the same process.
    Bench(bench::Args),
}

pub fn main_with<I: IntoIterator<Item = OsString>>(args: I) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    let r = match cli.cmd {
        Cmd::BuildImage(a) => build_image::run(a),
        Cmd::BuildSysext(a) => build_sysext::run(a),
        Cmd::Inspect(a) => inspect::run(a),
        Cmd::Payload(a) => payload::run(a),
        Cmd::BootTest(a) => boot_test::run(a),
        Cmd::Compress(a) => compress::run(a),
        Cmd::MetadataRespond(a) => metadata_respond::run(a),
        Cmd::Test(a) => test::run(a),
        Cmd::SdkImage(a) => sdk_image::run(a),
        Cmd::Deps(a) => deps::run(a),
        Cmd::Bench(a) => bench::run(a),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn closed_choices_are_checked_by_the_parser() {
        let parse =
            |a: &[&str]| Cli::try_parse_from(std::iter::once("xtask").chain(a.iter().copied()));
        assert!(parse(&["boot-test", "x.bin", "--firmware", "uefi"]).is_ok());
        let e = parse(&["boot-test", "x.bin", "--firmware", "efi"]).err().unwrap();
        assert_eq!(e.kind(), clap::error::ErrorKind::InvalidValue);
        assert!(e.to_string().contains("bios, uefi"), "{e}");
        let e = parse(&["compress", "a", "b", "--format", "lz4"]).err().unwrap();
        assert!(e.to_string().contains("none, bz2, gz, zst, xz"), "{e}");
        let e = parse(&["bench", "compress", "--format", "none"]).err().unwrap();
        assert!(e.to_string().contains("bz2, gz, zst, xz"), "{e}");
        match parse(&["compress", "a", "b"]).unwrap().cmd {
            Cmd::Compress(a) => assert_eq!(a.format, compress::Format::Bz2),
            _ => panic!("not compress"),
        }
    }
}
