//! Sparse files: the disk image is created as one big hole and stages write
//! only blocks that hold data, so runs of zeros are never written.

use anyhow::{Context, Result};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

/// Granularity at which zero runs are detected and skipped.
pub const BLOCK: usize = 4096;
const CHUNK: usize = 1 << 20;

/// Creates (or truncates) `path` as a sparse file of `len` bytes.
pub fn create(path: &Path, len: u64) -> Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .with_context(|| format!("{}: cannot create", path.display()))?;
    f.set_len(len).with_context(|| format!("{}: cannot size to {len} bytes", path.display()))?;
    Ok(f)
}

pub fn is_zero(buf: &[u8]) -> bool {
    // Compare in u128 words; the tail byte-wise.
    let (head, body, tail) = unsafe { buf.align_to::<u128>() };
    head.iter().all(|b| *b == 0) && body.iter().all(|w| *w == 0) && tail.iter().all(|b| *b == 0)
}

/// Writes `buf` at `offset`, skipping every all-zero `BLOCK` (relative to
/// `offset`), so the destination stays sparse where the data is zero.
pub fn write_nonzero_at(dst: &File, offset: u64, buf: &[u8]) -> Result<u64> {
    let mut written = 0u64;
    let mut i = 0;
    while i < buf.len() {
        // Find the next non-zero block.
        while i < buf.len() && is_zero(&buf[i..(i + BLOCK).min(buf.len())]) {
            i += BLOCK;
        }
        if i >= buf.len() {
            break;
        }
        let start = i;
        while i < buf.len() && !is_zero(&buf[i..(i + BLOCK).min(buf.len())]) {
            i += BLOCK;
        }
        let end = i.min(buf.len());
        dst.write_all_at(&buf[start..end], offset + start as u64)?;
        written += (end - start) as u64;
    }
    Ok(written)
}

/// Data extents of `f` within `[start, end)`, by `SEEK_DATA`/`SEEK_HOLE`.
/// On a filesystem without hole reporting this is the whole range.
pub fn data_extents(f: &File, start: u64, end: u64) -> Result<Vec<(u64, u64)>> {
    let fd = f.as_raw_fd();
    let mut v = Vec::new();
    let mut pos = start;
    while pos < end {
        let d = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
        if d < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // no more data
            }
            return Err(e).context("lseek(SEEK_DATA)");
        }
        let d = d as u64;
        if d >= end {
            break;
        }
        let h = unsafe { libc::lseek(fd, d as libc::off_t, libc::SEEK_HOLE) };
        if h < 0 {
            return Err(std::io::Error::last_os_error()).context("lseek(SEEK_HOLE)");
        }
        let h = (h as u64).min(end);
        v.push((d, h));
        pos = h;
    }
    Ok(v)
}

/// Bytes of `f` that are allocated on disk (its real footprint).
pub fn allocated_bytes(f: &File) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(f.metadata()?.blocks() * 512)
}

/// Frees `[offset, offset+len)` of `f` (keeps its size).
pub fn punch_hole(f: &File, offset: u64, len: u64) -> Result<()> {
    let r = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error()).context("fallocate(PUNCH_HOLE)");
    }
    Ok(())
}

/// Copies `len` bytes of `src` from `src_offset` into `dst` at `dst_offset`,
/// reading only `src`'s data extents and writing only non-zero blocks. With
/// `consume`, each chunk is punched out of `src` once copied, so the scratch
/// space never holds the data twice. Returns the number of bytes written.
pub fn splice(
    src: &File,
    src_offset: u64,
    len: u64,
    dst: &File,
    dst_offset: u64,
    consume: bool,
) -> Result<u64> {
    let mut written = 0;
    for_each_data_chunk(src, src_offset, src_offset + len, &mut |pos, buf| {
        written += write_nonzero_at(dst, dst_offset + (pos - src_offset), buf)
            .context("writing into the disk image")?;
        if consume {
            punch_hole(src, pos, buf.len() as u64)?;
        }
        Ok(())
    })
    .context("reading a filesystem image")?;
    Ok(written)
}

/// Reads the data extents of `f` within `[start, end)` in chunks of up to
/// 1 MiB, in order, giving each chunk and its offset to `each`; holes are
/// skipped.
pub fn for_each_data_chunk(
    f: &File,
    start: u64,
    end: u64,
    each: &mut dyn FnMut(u64, &[u8]) -> Result<()>,
) -> Result<()> {
    let mut buf = Vec::new();
    for (s, e) in data_extents(f, start, end)? {
        let mut pos = s;
        while pos < e {
            let n = ((e - pos) as usize).min(CHUNK);
            buf.resize(n, 0);
            f.read_exact_at(&mut buf, pos)?;
            each(pos, &buf)?;
            pos += n as u64;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splice_keeps_zeros_sparse() {
        let d = tempfile::tempdir().unwrap();
        let src = create(&d.path().join("s"), 8 << 20).unwrap();
        src.write_all_at(&[1u8; 5000], 3 << 20).unwrap();
        let dst = create(&d.path().join("d"), 64 << 20).unwrap();
        let n = splice(&src, 0, 8 << 20, &dst, 10 << 20, true).unwrap();
        assert_eq!(n, 8192); // two 4 KiB blocks touched by 5000 bytes
        let mut b = vec![0u8; 5000];
        dst.read_exact_at(&mut b, (10 << 20) + (3 << 20)).unwrap();
        assert!(b.iter().all(|x| *x == 1));
        assert!(allocated_bytes(&dst).unwrap() <= 64 * 1024);
        assert_eq!(allocated_bytes(&src).unwrap(), 0);
    }
}
