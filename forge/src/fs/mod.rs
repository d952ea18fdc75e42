//! Filesystem stage: builds each partition's filesystem straight into its
//! region of the sparse disk image, without root, loop devices or mounts.
//!
//! - vfat: our own FAT32 writer ([`fat`]), written in place.
//! - ext2/ext4: `mkfs.ext4 -d` at an offset inside the image
//!   (`-E offset=`), then `debugfs` pins ctimes and owners.
//! - erofs: `mkfs.erofs` into a scratch file, checked with `fsck.erofs`, then
//!   spliced into the image, punching the scratch file as it goes.
//! - btrfs: `mkfs.btrfs --rootdir` likewise (not byte-reproducible: see btrfs.rs).

pub mod btrfs;
pub mod erofs;
pub mod ext4;
pub mod fat;
pub mod source;
pub mod tree;

use crate::layout::{FsKind, FsPlan};
use crate::tools::{self, Tool};
use anyhow::{Context, Result};
use std::fs::File;
use std::path::Path;

/// What goes into a filesystem.
#[derive(Clone, Debug)]
pub enum Content {
    /// An existing directory, used as is (e.g. the payload's `usr/`), with
    /// the payload metadata its files get.
    Directory(source::SourceDir),
    /// A tree assembled by the build.
    Tree(tree::Dir),
}

/// Everything one filesystem build needs: plain data in.
pub struct FsJob<'a> {
    pub plan: &'a FsPlan,
    pub content: &'a Content,
    /// The disk image, open read-write, and its path (for host tools).
    pub image: &'a File,
    pub image_path: &'a Path,
    /// Byte offset of the partition in the image.
    pub offset: u64,
    /// Partition start in sectors (FAT records it).
    pub first_lba: u64,
    /// Timestamp for every file and for the filesystem itself.
    pub epoch: i64,
    /// Directory for scratch files.
    pub scratch: &'a Path,
    /// Seed-derived 32-bit volume ID (FAT).
    pub volume_id: u32,
}

/// Plain data out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsReport {
    pub kind: FsKind,
    /// Bytes written into the image (non-zero blocks).
    pub written: u64,
    /// Bytes the filesystem itself occupies (its size as built).
    pub fs_bytes: u64,
}

/// Host tools needed to build (and check) a filesystem kind.
/// Fits a plan to what the installed tools can build, falling back to the
/// nearest thing: returns one warning per change, naming the layout, the
/// partition and the reason. Today: btrfs compression without
/// `mkfs.btrfs --compress` becomes uncompressed btrfs; btrfs is also flagged
/// as not byte-reproducible.
pub fn adapt(plan: &mut crate::layout::DiskPlan) -> Vec<String> {
    adapt_with(plan, btrfs::mkfs_can_compress)
}

fn adapt_with(plan: &mut crate::layout::DiskPlan, can_compress: fn() -> bool) -> Vec<String> {
    let layout = plan.layout.clone();
    let mut warnings = Vec::new();
    for p in &mut plan.partitions {
        let Some(f) = p.fs.as_mut() else { continue };
        if f.kind != FsKind::Btrfs {
            continue;
        }
        let what = format!("layout '{layout}', partition {} ({})", p.number, p.label);
        if let Some(c) = f.compression.clone() {
            if !can_compress() {
                f.compression = None;
                warnings.push(format!(
                    "{what}: fs_compression '{c}' needs `mkfs.btrfs --compress` (btrfs-progs 6.11+), which the installed mkfs.btrfs lacks: building it as uncompressed btrfs"
                ));
            }
        }
        warnings.push(format!(
            "{what}: btrfs cannot be rebuilt byte for byte (mkfs.btrfs draws device and chunk-tree UUIDs at random); use erofs or ext4 for reproducible images"
        ));
    }
    warnings
}

pub fn tools_for(kind: FsKind) -> Vec<Tool> {
    match kind {
        FsKind::Vfat => vec![],
        FsKind::Ext2 | FsKind::Ext4 => vec![tools::MKFS_EXT4, tools::DEBUGFS, tools::E2FSCK],
        FsKind::Erofs => vec![tools::MKFS_EROFS, tools::FSCK_EROFS],
        FsKind::Btrfs => vec![tools::MKFS_BTRFS, tools::BTRFS],
    }
}

pub fn build(job: &FsJob) -> Result<FsReport> {
    let kind = job.plan.kind;
    let r = match kind {
        FsKind::Vfat => {
            let tree = match job.content {
                Content::Tree(t) => t.clone(),
                Content::Directory(d) => tree::Dir::from_path(&d.dir)?,
            };
            let params = fat::FatParams {
                label: job.plan.label.clone(),
                volume_id: job.volume_id,
                size_bytes: job.plan.bytes(),
                hidden_sectors: job.first_lba,
                epoch: job.epoch,
            };
            let rep = fat::build(&tree, &params, job.image, job.offset)?;
            let used = rep.used_clusters * rep.geometry.sectors_per_cluster * 512;
            FsReport { kind, written: used, fs_bytes: job.plan.bytes() }
        }
        FsKind::Ext2 | FsKind::Ext4 => ext4::build(job)?,
        FsKind::Erofs => erofs::build(job)?,
        FsKind::Btrfs => btrfs::build(job)?,
    };
    Ok(r)
}

/// A real directory for tools that read one: the content's own directory,
/// or the tree written out under `scratch` (kept alive by the returned guard).
pub(crate) fn content_dir(
    content: &Content,
    scratch: &Path,
    epoch: i64,
) -> Result<(source::SourceDir, Option<tempfile::TempDir>)> {
    match content {
        Content::Directory(d) => Ok((d.clone(), None)),
        Content::Tree(t) => {
            let tmp = tempfile::Builder::new()
                .prefix(".stage-")
                .tempdir_in(scratch)
                .context("creating a staging directory")?;
            let root = tmp.path().join("root");
            t.materialize(&root, epoch)?;
            let dir = source::SourceDir { dir: root, meta: None, rel: String::new() };
            Ok((dir, Some(tmp)))
        }
    }
}

/// Runs a host tool, turning a failure into an error that quotes its output.
/// The tool dies with the build (`tools::dying_with_parent`), however `cmd`
/// was made.
pub fn run(cmd: duct::Expression, what: &str) -> Result<String> {
    let out = crate::tools::dying_with_parent(cmd)
        .stdout_capture()
        .stderr_capture()
        .unchecked()
        .run()
        .with_context(|| format!("{what}: cannot start"))?;
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        anyhow::bail!("{what} failed ({}): {}", out.status, text.trim());
    }
    Ok(text)
}

/// Checks a filesystem inside `image` at `offset` with its own fsck tool,
/// read-only. Tools that cannot take an offset get a sparse copy of the
/// partition in `scratch`.
pub fn check(
    kind: FsKind,
    image: &File,
    image_path: &Path,
    offset: u64,
    len: u64,
    scratch: &Path,
) -> Result<String> {
    match kind {
        FsKind::Ext2 | FsKind::Ext4 => {
            let target = format!("{}?offset={offset}", image_path.display());
            run(crate::cmd!(tools::path(tools::E2FSCK)?, "-fn", target), "e2fsck -fn")
        }
        _ => {
            let tmp = tempfile::Builder::new().prefix(".check-").tempfile_in(scratch)?;
            let part = tmp.as_file();
            part.set_len(len)?;
            crate::io::sparse::splice(image, offset, len, part, 0, false)?;
            let p = tmp.path().to_path_buf();
            match kind {
                FsKind::Vfat => {
                    run(crate::cmd!(tools::path(tools::FSCK_FAT)?, "-n", &p), "fsck.fat -n")
                }
                FsKind::Erofs => {
                    run(crate::cmd!(tools::path(tools::FSCK_EROFS)?, &p), "fsck.erofs")
                }
                FsKind::Btrfs => run(
                    crate::cmd!(tools::path(tools::BTRFS)?, "check", "--readonly", &p),
                    "btrfs check",
                ),
                _ => unreachable!(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{IdPolicy, LayoutFile};

    fn btrfs_plan(compression: &str) -> crate::layout::DiskPlan {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("l.json");
        let json = format!(
            r#"{{"metadata": {{"block_size": 512, "fs_block_size": 4096, "part_alignment": 4096, "disk_alignment": 4096}},
  "layouts": {{"base": {{
    "1": {{"label": "DATA", "type": "data", "blocks": "65536", "fs_type": "btrfs", "fs_compression": "{compression}"}}
  }}}}}}"#
        );
        std::fs::write(&f, json).unwrap();
        LayoutFile::load(&f).unwrap().plan("base", &IdPolicy::default()).unwrap()
    }

    #[test]
    fn btrfs_compression_falls_back_with_a_warning() {
        let mut plan = btrfs_plan("zstd");
        assert_eq!(plan.partitions[0].fs.as_ref().unwrap().compression.as_deref(), Some("zstd"));
        let w = adapt_with(&mut plan, || false);
        assert_eq!(plan.partitions[0].fs.as_ref().unwrap().compression, None);
        assert!(
            w.iter().any(|w| w.contains("layout 'base', partition 1 (DATA)")
                && w.contains("fs_compression 'zstd'")
                && w.contains("uncompressed")),
            "{w:?}"
        );
    }

    #[test]
    fn btrfs_compression_is_kept_where_mkfs_can() {
        let mut plan = btrfs_plan("zlib:3");
        let w = adapt_with(&mut plan, || true);
        assert_eq!(plan.partitions[0].fs.as_ref().unwrap().compression.as_deref(), Some("zlib:3"));
        assert!(w.iter().all(|w| !w.contains("uncompressed")), "{w:?}");
        assert!(w.iter().any(|w| w.contains("byte for byte")), "{w:?}");
    }
}
