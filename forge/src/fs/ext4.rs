//! ext2/ext4 through `mkfs.ext4 -d`, written at the partition's offset inside
//! the image (`-E offset=`), so no scratch copy is made.
//!
//! Owners, modes and extended attributes are the payload's, given to
//! `mkfs.ext4` by `fakeroot` (see `source.rs`). Reproducibility:
//! `E2FSPROGS_FAKE_TIME` pins the superblock and new-inode times, `-U` and
//! `hash_seed` pin the UUID and directory hashing; `-d` copies each source
//! file's times (a staged directory's are when it was staged, a file's
//! atime when it was last read), so a `debugfs -w` pass then sets every
//! used inode's atime, mtime and ctime to the epoch. That pass names inodes by number (`<12>`), read from
//! `dumpe2fs`'s free-inode lists: no file name ever goes through debugfs'
//! command language.

use super::{content_dir, run, FsJob, FsReport};
use crate::io::sparse;
use crate::layout::FsKind;
use crate::tools;
use anyhow::{anyhow, bail, Context, Result};
use std::fmt::Write as _;

pub fn build(job: &FsJob) -> Result<FsReport> {
    let plan = job.plan;
    let (src, _guard) = content_dir(job.content, job.scratch, job.epoch)?;
    let dir = src.dir.clone();
    let session = super::source::prepare(&src, job.scratch, MAX_NAME, "ext4")?;
    let before = sparse::allocated_bytes(job.image)?;
    let fs_type = if plan.kind == FsKind::Ext2 { "ext2" } else { "ext4" };
    let mut args: Vec<String> = vec![
        "-q".into(),
        "-F".into(),
        "-t".into(),
        fs_type.into(),
        "-b".into(),
        plan.block_size.to_string(),
        "-E".into(),
        format!("offset={},root_owner=0:0,nodiscard,lazy_itable_init=1,lazy_journal_init=1,hash_seed={}", job.offset, plan.uuid),
        "-U".into(),
        plan.uuid.to_string(),
        "-m".into(),
        "0".into(),
    ];
    if let Some(l) = &plan.label {
        args.extend(["-L".into(), l.clone()]);
    }
    if let Some(i) = plan.bytes_per_inode {
        args.extend(["-i".into(), i.to_string()]);
    }
    if let Some(i) = plan.inode_size {
        args.extend(["-I".into(), i.to_string()]);
    }
    args.extend([
        "-d".into(),
        dir.display().to_string(),
        job.image_path.display().to_string(),
        plan.blocks.to_string(),
    ]);
    let epoch = job.epoch.to_string();
    run(
        session.command(&tools::path(tools::MKFS_EXT4)?, &args)?.env("E2FSPROGS_FAKE_TIME", &epoch),
        &format!("mkfs.{fs_type} -d {}", dir.display()),
    )?;
    pin_ctimes(job)?;
    let after = sparse::allocated_bytes(job.image)?;
    Ok(FsReport { kind: plan.kind, written: after.saturating_sub(before), fs_bytes: plan.bytes() })
}

/// The longest name ext4 takes.
pub const MAX_NAME: usize = 255;

/// Sets atime, mtime and ctime of every used inode (the root and those
/// from `first_ino` on) to the epoch.
fn pin_ctimes(job: &FsJob) -> Result<()> {
    let target = format!("{}?offset={}", job.image_path.display(), job.offset);
    let dump = run(duct::cmd!(tools::path(tools::DUMPE2FS)?, &target), "dumpe2fs")?;
    let inodes = used_inodes(&dump).context("reading dumpe2fs's inode lists")?;
    let mut script = String::new();
    let e = job.epoch;
    for i in inodes {
        for field in ["atime", "mtime", "ctime"] {
            writeln!(script, "sif <{i}> {field} @{e}")?;
        }
    }
    let tmp = tempfile::Builder::new().prefix(".debugfs-").tempfile_in(job.scratch)?;
    std::fs::write(tmp.path(), &script)
        .with_context(|| format!("{}: cannot write", tmp.path().display()))?;
    let out = run(
        duct::cmd!(tools::path(tools::DEBUGFS)?, "-w", "-f", tmp.path(), &target)
            .env("E2FSPROGS_FAKE_TIME", e.to_string()),
        "debugfs -w (pinning inode times)",
    )?;
    // debugfs reports per-command errors on stderr but exits 0.
    if let Some(line) = out.lines().find(|l| !l.trim().is_empty() && !l.starts_with("debugfs")) {
        anyhow::bail!("debugfs -w (pinning inode times): {line}");
    }
    Ok(())
}

/// The inodes in use according to `dumpe2fs` output: the root (2) and every
/// inode from `First inode` on that no group lists as free.
fn used_inodes(dump: &str) -> Result<Vec<u64>> {
    let field = |name: &str| -> Result<u64> {
        dump.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| anyhow!("no '{name}' line"))
    };
    let per_group = field("Inodes per group:")?;
    let first = field("First inode:")?;
    let count = field("Inode count:")?;
    let mut free = vec![false; count as usize + 1];
    let mut in_groups = false;
    for l in dump.lines() {
        if l.starts_with("Group ") {
            in_groups = true;
        }
        let Some(list) = l.trim_start().strip_prefix("Free inodes:").filter(|_| in_groups) else {
            continue;
        };
        for r in list.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            let (a, b) = r.split_once('-').unwrap_or((r, r));
            let (a, b): (u64, u64) = (a.parse()?, b.parse()?);
            if a == 0 || b < a || b > count {
                bail!("free inode range '{r}' outside 1..={count}");
            }
            for i in a..=b {
                free[i as usize] = true;
            }
        }
    }
    if !in_groups || per_group == 0 {
        bail!("no group descriptors");
    }
    Ok(std::iter::once(2).chain((first..=count).filter(|&i| !free[i as usize])).collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn used_inodes_are_the_complement_of_the_free_lists() {
        let dump = "Inode count:              32\nFree inodes:              20\nInodes per group:         16\nFirst inode:              11\n\nGroup 0: (Blocks 1-8192)\n  Free inodes: 13, 15-16\nGroup 1: (Blocks 8193-16384)\n  Free inodes: 17-30\n";
        assert_eq!(super::used_inodes(dump).unwrap(), vec![2, 11, 12, 14, 31, 32]);
        assert!(super::used_inodes(
            "Inode count: 4\nInodes per group: 4\nFirst inode: 3\nGroup 0:\n  Free inodes: 3-9\n"
        )
        .is_err());
    }
}
