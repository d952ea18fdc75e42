//! erofs through `mkfs.erofs` into a scratch file, checked with `fsck.erofs`,
//! then spliced into the partition (the scratch file is punched as it is
//! copied, so the data is never held twice on disk).
//!
//! Reproducibility: `-T` pins every timestamp, `-U` the UUID, `--all-root`
//! the owners; directory entries are sorted by mkfs.erofs itself. Extended
//! attributes are not copied (`-x -1`): a payload unpacked without root has
//! none, and a root build must give the same bytes.

use super::{content_dir, run, FsJob, FsReport};
use crate::io::sparse;
use crate::tools;
use anyhow::{bail, Result};
use std::path::Path;
use uuid::Uuid;

/// Builds an erofs image file from a directory (reproducibly).
pub fn make_image(
    dir: &Path,
    out: &Path,
    epoch: i64,
    uuid: Uuid,
    compression: Option<&str>,
) -> Result<()> {
    let mut args: Vec<String> = vec![
        "--quiet".into(),
        format!("-T{epoch}"),
        format!("-U{uuid}"),
        "--all-root".into(),
        "-x-1".into(),
    ];
    if let Some(c) = compression {
        args.push(format!("-z{c}"));
    }
    args.push(out.display().to_string());
    args.push(dir.display().to_string());
    run(
        duct::cmd(tools::path(tools::MKFS_EROFS)?, &args),
        &format!("mkfs.erofs {}", dir.display()),
    )?;
    Ok(())
}

pub fn build(job: &FsJob) -> Result<FsReport> {
    let plan = job.plan;
    let (dir, _guard) = content_dir(job.content, job.scratch, job.epoch)?;
    let tmp = tempfile::Builder::new().prefix(".erofs-").tempfile_in(job.scratch)?;
    make_image(&dir, tmp.path(), job.epoch, plan.uuid, plan.compression.as_deref())?;
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
