//! erofs through `mkfs.erofs` into a scratch file, checked with `fsck.erofs`,
//! then spliced into the partition (the scratch file is punched as it is
//! copied, so the data is never held twice on disk).
//!
//! Reproducibility: `-T` pins every timestamp, `-U` the UUID; directory
//! entries are sorted by mkfs.erofs itself. Owners, modes and extended
//! attributes are the payload's, given by `fakeroot` (see `source.rs`),
//! the same for every builder.

use super::source::{self, SourceDir};
use super::{content_dir, run, FsJob, FsReport};
use crate::io::sparse;
use crate::tools;
use anyhow::{bail, Result};
use std::path::Path;
use uuid::Uuid;

/// The longest file name mkfs.erofs 1.5 takes (longer ones fail with
/// "Could not format the device" or ENOMEM; the format's limit is 255).
pub const MAX_NAME: usize = 253;

/// Builds an erofs image file from a directory (reproducibly).
pub fn make_image(
    src: &SourceDir,
    scratch: &Path,
    out: &Path,
    epoch: i64,
    uuid: Uuid,
    compression: Option<&str>,
) -> Result<()> {
    let mut args: Vec<String> = vec!["--quiet".into(), format!("-T{epoch}"), format!("-U{uuid}")];
    if let Some(c) = compression {
        args.push(format!("-z{c}"));
    }
    let session = source::prepare(src, scratch, MAX_NAME, "mkfs.erofs 1.5")?;
    args.push(out.display().to_string());
    args.push(src.dir.display().to_string());
    run(
        session.command(&tools::path(tools::MKFS_EROFS)?, &args)?,
        &format!("mkfs.erofs {}", src.dir.display()),
    )?;
    Ok(())
}

pub fn build(job: &FsJob) -> Result<FsReport> {
    let plan = job.plan;
    let (src, _guard) = content_dir(job.content, job.scratch, job.epoch)?;
    let tmp = tempfile::Builder::new().prefix(".erofs-").tempfile_in(job.scratch)?;
    make_image(&src, job.scratch, tmp.path(), job.epoch, plan.uuid, plan.compression.as_deref())?;
    let dir = &src.dir;
    let size = tmp.as_file().metadata()?.len();
    if size > plan.bytes() {
        bail!(
            "{}: the erofs image is {size} B but the layout gives the filesystem only {} B ({} blocks): enlarge fs_blocks/blocks",
            dir.display(),
            plan.bytes(),
            plan.blocks
        );
    }
    run(duct::cmd!(tools::path(tools::FSCK_EROFS)?, tmp.path()), "fsck.erofs")?;
    let written = sparse::splice(tmp.as_file(), 0, size, job.image, job.offset, true)?;
    Ok(FsReport { kind: plan.kind, written, fs_bytes: size })
}
