//! ext2/ext4 through `mkfs.ext4 -d`, written at the partition's offset inside
//! the image (`-E offset=`), so no scratch copy is made.
//!
//! Reproducibility: `E2FSPROGS_FAKE_TIME` pins the superblock and new-inode
//! times, `-U` and `hash_seed` pin the UUID and directory hashing; `-d`
//! copies each source file's ctime and owner, so a `debugfs -w` pass then sets
//! every inode's ctime to the epoch and its owner to root.

use super::{content_dir, run, FsJob, FsReport};
use crate::io::sparse;
use crate::layout::FsKind;
use crate::tools;
use anyhow::{Context, Result};
use std::io::Write;
use std::path::Path;

pub fn build(job: &FsJob) -> Result<FsReport> {
    let plan = job.plan;
    let (dir, _guard) = content_dir(job.content, job.scratch, job.epoch)?;
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
        duct::cmd(tools::path(tools::MKFS_EXT4)?, &args).env("E2FSPROGS_FAKE_TIME", &epoch),
        &format!("mkfs.{fs_type} -d {}", dir.display()),
    )?;
    pin_inodes(job, &dir)?;
    let after = sparse::allocated_bytes(job.image)?;
    Ok(FsReport { kind: plan.kind, written: after.saturating_sub(before), fs_bytes: plan.bytes() })
}

/// Sets ctime to the epoch and owner to root for every inode copied from `dir`.
fn pin_inodes(job: &FsJob, dir: &Path) -> Result<()> {
    let mut script = Vec::new();
    let e = job.epoch;
    let mut paths = vec![String::from("/")];
    walk(dir, "", &mut paths)?;
    for p in &paths {
        let q = quote(p);
        writeln!(script, "sif {q} ctime @{e}\nsif {q} uid 0\nsif {q} gid 0")?;
    }
    let tmp = tempfile::Builder::new().prefix(".debugfs-").tempfile_in(job.scratch)?;
    std::fs::write(tmp.path(), &script)?;
    let target = format!("{}?offset={}", job.image_path.display(), job.offset);
    let out = run(
        duct::cmd!(tools::path(tools::DEBUGFS)?, "-w", "-f", tmp.path(), &target)
            .env("E2FSPROGS_FAKE_TIME", e.to_string()),
        "debugfs -w (pinning inode times and owners)",
    )?;
    // debugfs reports per-command errors on stderr but exits 0.
    if let Some(line) = out.lines().find(|l| !l.trim().is_empty() && !l.starts_with("debugfs")) {
        anyhow::bail!("debugfs -w (pinning inode times and owners): {line}");
    }
    Ok(())
}

fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list", dir.display()))?
        .collect::<std::io::Result<Vec<_>>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let p = format!("{prefix}/{name}");
        out.push(p.clone());
        if e.file_type()?.is_dir() {
            walk(&e.path(), &p, out)?;
        }
    }
    Ok(())
}

/// Quotes a path for debugfs' command parser.
fn quote(p: &str) -> String {
    if p.chars().any(|c| c.is_whitespace() || c == '"') {
        format!("\"{}\"", p.replace('"', "\\\""))
    } else {
        p.to_string()
    }
}
