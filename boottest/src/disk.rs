//! The test disk: the image (raw or compressed) written to a sparse disk of
//! the platform's size, and the named mutations of the negative boots.

use crate::spec::Mutation;
use anyhow::{anyhow, bail, Context, Result};
use forge::io::sparse;
use std::path::Path;

/// The first bytes of a qcow2 file.
const QCOW2_MAGIC: &[u8; 4] = b"QFI\xfb";

/// Whether the file starts with the qcow2 magic.
pub fn is_qcow2(image: &Path) -> Result<bool> {
    use std::io::Read;
    let mut f =
        std::fs::File::open(image).with_context(|| format!("{}: cannot open", image.display()))?;
    let mut m = [0u8; 4];
    match f.read_exact(&mut m) {
        Ok(()) => Ok(&m == QCOW2_MAGIC),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e).with_context(|| format!("{}: cannot read", image.display())),
    }
}

/// Writes the image (raw, qcow2, .bz2, .gz, .zst or .xz) as a sparse raw disk of `disk_bytes`.
pub fn prepare(image: &Path, dest: &Path, disk_bytes: u64) -> Result<()> {
    let f =
        std::fs::File::open(image).with_context(|| format!("{}: cannot open", image.display()))?;
    if forge::io::codec::Codec::from_path(image).is_none() && is_qcow2(image)? {
        let qemu_img =
            forge::tools::path(forge::tools::Tool { program: "qemu-img", package: "qemu-utils" })?;
        forge::fs::run(
            forge::cmd!(&qemu_img, "convert", "-f", "qcow2", "-O", "raw", image, dest),
            &format!("qemu-img convert {} to raw", image.display()),
        )?;
        let out = std::fs::OpenOptions::new()
            .write(true)
            .open(dest)
            .with_context(|| format!("{}: cannot open", dest.display()))?;
        let len = out.metadata().with_context(|| format!("{}: stat", dest.display()))?.len();
        if len > disk_bytes {
            bail!(
                "{}: the image ({len} B) is larger than the test disk ({disk_bytes} B)",
                image.display()
            );
        }
        out.set_len(disk_bytes).with_context(|| format!("{}: set_len", dest.display()))?;
        return Ok(());
    }
    let out = sparse::create(dest, 0)?;
    let written = if let Some(codec) = forge::io::codec::Codec::from_path(image) {
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        forge::io::compress::decompress_sparse(image, codec, &out, threads)
            .with_context(|| format!("{}: decompressing", image.display()))?
    } else {
        let len = f.metadata().with_context(|| format!("{}: stat", image.display()))?.len();
        sparse::splice(&f, 0, len, &out, 0, false)
            .with_context(|| format!("{}: copying to {}", image.display(), dest.display()))?;
        len
    };
    if written > disk_bytes {
        bail!(
            "{}: the image ({written} B) is larger than the test disk ({disk_bytes} B)",
            image.display()
        );
    }
    out.set_len(disk_bytes).with_context(|| format!("{}: set_len", dest.display()))?;
    Ok(())
}

/// A sparse copy of a disk.
pub fn copy(src: &Path, dst: &Path) -> Result<()> {
    let s = std::fs::File::open(src).with_context(|| format!("{}: cannot open", src.display()))?;
    let len = s.metadata().with_context(|| format!("{}: stat", src.display()))?.len();
    let d = sparse::create(dst, len)?;
    sparse::splice(&s, 0, len, &d, 0, false)
        .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
    Ok(())
}

/// Byte offset and length of the partition labelled `label`.
pub fn partition(disk: &Path, label: &str) -> Result<(u64, u64)> {
    let f =
        std::fs::File::open(disk).with_context(|| format!("{}: cannot open", disk.display()))?;
    let t = forge::table::read_primary(&f)
        .with_context(|| format!("{}: reading the GPT", disk.display()))?;
    let e = t
        .entries
        .iter()
        .find(|e| e.name == label)
        .ok_or_else(|| anyhow!("{}: no partition labelled {label}", disk.display()))?;
    Ok((e.first_lba * 512, e.sectors() * 512))
}

/// Applies a mutation to `disk`; returns what was done, for the log.
pub fn mutate(disk: &Path, m: &Mutation) -> Result<String> {
    match m {
        Mutation::RemoveFile { partition: label, path } => {
            remove_file(disk, label, path)?;
            Ok(format!("{path} removed from {label}"))
        }
        Mutation::FlipByte { partition: label } => {
            let at = flip_byte(disk, label)?;
            Ok(format!("{label} byte at offset {at} flipped"))
        }
    }
}

/// Removes a file from an ext4 partition (debugfs at its offset) and checks it is gone.
pub fn remove_file(disk: &Path, label: &str, path: &str) -> Result<()> {
    if path.contains(['"', '\n']) || !path.starts_with('/') {
        bail!("remove_file: {path:?} is not an absolute path debugfs can take");
    }
    let (off, _) = partition(disk, label)?;
    let target = format!("{}?offset={off}", disk.display());
    let debugfs = forge::tools::path(forge::tools::DEBUGFS)?;
    forge::fs::run(
        forge::cmd!(&debugfs, "-w", "-R", format!("rm \"{path}\""), &target),
        &format!("debugfs rm {path} on {label}"),
    )?;
    let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
    let dir = if dir.is_empty() { "/" } else { dir };
    let out = forge::fs::run(
        forge::cmd!(&debugfs, "-R", format!("ls -l \"{dir}\""), &target),
        &format!("debugfs ls {dir} on {label}"),
    )?;
    if out.split_whitespace().any(|w| w == name) {
        bail!("{}: {path} still present on {label} after removal", disk.display());
    }
    Ok(())
}

/// Flips one byte in the middle of the partition's filesystem; returns its offset.
pub fn flip_byte(disk: &Path, label: &str) -> Result<u64> {
    let (off, len) = partition(disk, label)?;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .with_context(|| format!("{}: cannot open for writing", disk.display()))?;
    let fs = forge::inspect::probe_fs(&f, off, len)?
        .ok_or_else(|| anyhow!("{}: {label} holds no filesystem", disk.display()))?;
    let at = off + fs.size_bytes.unwrap_or(len) / 2 + 123;
    let mut b = [0u8; 1];
    use std::os::unix::fs::FileExt;
    f.read_exact_at(&mut b, at).with_context(|| format!("{}: read at {at}", disk.display()))?;
    f.write_all_at(&[b[0] ^ 0xff], at)
        .with_context(|| format!("{}: write at {at}", disk.display()))?;
    f.sync_all()?;
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qcow2_images_become_sparse_raw_disks() {
        let tmp = tempfile::tempdir().unwrap();
        let raw = tmp.path().join("image.raw");
        let mut data = vec![0u8; 4 << 20];
        data[..8].copy_from_slice(b"GPTTEST!");
        data[3 << 20] = 0x5a;
        std::fs::write(&raw, &data).unwrap();
        assert!(!is_qcow2(&raw).unwrap());
        std::fs::write(tmp.path().join("short"), b"QF").unwrap();
        assert!(!is_qcow2(&tmp.path().join("short")).unwrap());
        let qemu_img = match forge::tools::path(forge::tools::Tool {
            program: "qemu-img",
            package: "qemu-utils",
        }) {
            Ok(p) => p,
            Err(_) => {
                println!("skipped: needs qemu-img (qemu-utils)");
                return;
            }
        };
        let qcow = tmp.path().join("image.img");
        forge::fs::run(
            forge::cmd!(&qemu_img, "convert", "-f", "raw", "-O", "qcow2", &raw, &qcow),
            "qemu-img convert",
        )
        .unwrap();
        assert!(is_qcow2(&qcow).unwrap());
        let disk = tmp.path().join("disk.raw");
        prepare(&qcow, &disk, 16 << 20).unwrap();
        let got = std::fs::read(&disk).unwrap();
        assert_eq!(got.len(), 16 << 20);
        assert_eq!(&got[..4 << 20], &data[..]);
        assert!(got[4 << 20..].iter().all(|b| *b == 0));
        let e = prepare(&qcow, &disk, 1 << 20).unwrap_err().to_string();
        assert!(e.contains("is larger than the test disk"), "{e}");
    }
}
