//! btrfs through `mkfs.btrfs --rootdir` into a scratch file, checked with
//! `btrfs check`, then spliced into the partition.
//!
//! Not byte-reproducible: btrfs-progs 6.2 (Debian bookworm) draws the device
//! UUID and chunk-tree UUID at random and has no option to pin them, and the
//! tree blocks that hold them are checksummed. Layouts that need identical
//! rebuilds use ext4 or erofs instead (the default layouts do).
//!
//! Compression (`fs_compression`, as upstream's layout asks: zstd for USR,
//! zlib for OEM) needs `mkfs.btrfs --compress`, which btrfs-progs 6.2 lacks;
//! [`super::adapt`] then builds the partition uncompressed and says so.

use super::{content_dir, run, FsJob, FsReport};
use crate::io::sparse;
use crate::tools;
use anyhow::Result;

pub fn build(job: &FsJob) -> Result<FsReport> {
    let plan = job.plan;
    let (src, _guard) = content_dir(job.content, job.scratch, job.epoch)?;
    let dir = &src.dir;
    let session = super::source::prepare(&src, job.scratch, 255, "mkfs.btrfs")?;
    let tmp = tempfile::Builder::new().prefix(".btrfs-").tempfile_in(job.scratch)?;
    tmp.as_file().set_len(plan.bytes())?;
    let mut args: Vec<String> = vec![
        "-q".into(),
        "-f".into(),
        "-K".into(),
        "-U".into(),
        plan.uuid.to_string(),
        "-m".into(),
        "single".into(),
        "-d".into(),
        "single".into(),
        "-b".into(),
        plan.bytes().to_string(),
        "--rootdir".into(),
        dir.display().to_string(),
    ];
    if let Some(l) = &plan.label {
        args.extend(["-L".into(), l.clone()]);
    }
    if let Some(c) = &plan.compression {
        args.extend(["--compress".into(), c.clone()]);
    }
    args.push(tmp.path().display().to_string());
    run(
        session
            .command(&tools::path(tools::MKFS_BTRFS)?, &args)?
            .env("SOURCE_DATE_EPOCH", job.epoch.to_string())
            // mkfs.btrfs refuses a UUID it finds in libblkid's cache, which may hold
            // entries for image files someone probed (`blkid FILE`): a private,
            // empty cache in the scratch directory keeps the host's out of the build.
            .env("BLKID_FILE", job.scratch.join("blkid.tab")),
        &format!("mkfs.btrfs --rootdir {}", dir.display()),
    )?;
    run(crate::cmd!(tools::path(tools::BTRFS)?, "check", "--readonly", tmp.path()), "btrfs check")?;
    let written = sparse::splice(tmp.as_file(), 0, plan.bytes(), job.image, job.offset, true)?;
    Ok(FsReport { kind: plan.kind, written, fs_bytes: plan.bytes() })
}

/// Whether the installed `mkfs.btrfs` can compress files it copies in
/// (`--compress`, btrfs-progs 6.11 and later); false if it is missing.
pub fn mkfs_can_compress() -> bool {
    let Ok(mkfs) = tools::path(tools::MKFS_BTRFS) else { return false };
    crate::cmd!(mkfs, "--help")
        .stdout_capture()
        .stderr_to_stdout()
        .unchecked()
        .run()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("--compress"))
        .unwrap_or(false)
}
