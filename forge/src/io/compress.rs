//! bzip2 for sparse disk images, on every core, without pushing zero runs
//! through the compressor byte by byte.
//!
//! The image is cut into segments: data (up to `DATA_CHUNK` bytes,
//! compressed as an independent bzip2 stream, several at once) and zero runs
//! of at least `MIN_ZERO_RUN` (found with SEEK_DATA/SEEK_HOLE and all-zero
//! 4 KiB blocks), emitted as precomputed bzip2 streams of zeros. The output
//! is ordinary multi-stream bzip2: `bzip2 -d`, `bzip2 -cd | dd conv=sparse`
//! and every other decoder turn it back into the exact image. Memory stays
//! bounded by (threads × 2) chunks whatever the image size.

use crate::io::sparse;
use anyhow::{Context, Result};
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;

pub const DATA_CHUNK: u64 = 8 << 20;
pub const MIN_ZERO_RUN: u64 = 1 << 20;
/// Zero streams are emitted in units of this many bytes (one bzip2 block).
const ZERO_UNIT: u64 = 32 << 20;
const BLOCK: u64 = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seg {
    Data(u64, u64),
    Zero(u64),
}

/// Splits `[0, len)` of `f` into data and zero segments.
fn segments(f: &File, len: u64) -> Result<Vec<Seg>> {
    // First pass: extents; within extents, all-zero blocks are found while
    // reading, so here we only split on holes.
    let mut out = Vec::new();
    let mut pos = 0;
    let push_zero = |out: &mut Vec<Seg>, n: u64| {
        if n > 0 {
            if let Some(Seg::Zero(z)) = out.last_mut() {
                *z += n;
            } else {
                out.push(Seg::Zero(n));
            }
        }
    };
    let mut buf = vec![0u8; 1 << 20];
    for (s, e) in sparse::data_extents(f, 0, len)? {
        push_zero(&mut out, s - pos);
        // Scan the extent for zero runs of at least MIN_ZERO_RUN.
        let mut p = s;
        let mut data_start = s;
        let mut zero_start: Option<u64> = None;
        while p < e {
            let n = ((e - p) as usize).min(buf.len());
            f.read_exact_at(&mut buf[..n], p)?;
            for (i, blk) in buf[..n].chunks(BLOCK as usize).enumerate() {
                let at = p + i as u64 * BLOCK;
                if sparse::is_zero(blk) {
                    zero_start.get_or_insert(at);
                } else if let Some(z) = zero_start.take() {
                    if at - z >= MIN_ZERO_RUN {
                        push_data(&mut out, data_start, z);
                        push_zero(&mut out, at - z);
                        data_start = at;
                    }
                }
            }
            p += n as u64;
        }
        match zero_start {
            Some(z) if e - z >= MIN_ZERO_RUN => {
                push_data(&mut out, data_start, z);
                push_zero(&mut out, e - z);
            }
            _ => push_data(&mut out, data_start, e),
        }
        pos = e;
    }
    push_zero(&mut out, len - pos);
    Ok(out)
}

fn push_data(out: &mut Vec<Seg>, start: u64, end: u64) {
    let mut s = start;
    while s < end {
        let n = (end - s).min(DATA_CHUNK);
        out.push(Seg::Data(s, n));
        s += n;
    }
}

fn bz2(data: &[u8], level: u32) -> Result<Vec<u8>> {
    let mut e = bzip2::write::BzEncoder::new(Vec::with_capacity(data.len() / 3 + 128), bzip2::Compression::new(level));
    e.write_all(data)?;
    Ok(e.finish()?)
}

/// Precomputed streams of zeros, by length.
struct Zeros {
    level: u32,
    cache: HashMap<u64, Vec<u8>>,
}

impl Zeros {
    fn stream(&mut self, n: u64) -> Result<&[u8]> {
        if !self.cache.contains_key(&n) {
            let s = bz2(&vec![0u8; n as usize], self.level)?;
            self.cache.insert(n, s);
        }
        Ok(&self.cache[&n])
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub input: u64,
    pub output: u64,
    pub data_bytes: u64,
    pub zero_bytes: u64,
    pub streams: u64,
}

/// Compresses the first `len` bytes of `src` into `out` as multi-stream bzip2.
/// `progress` gets the number of input bytes done so far.
pub fn bzip2_sparse(src: &File, len: u64, out: &mut dyn Write, level: u32, threads: usize, progress: &dyn Fn(u64)) -> Result<Stats> {
    let segs = segments(src, len)?;
    let mut zeros = Zeros { level, cache: HashMap::new() };
    let mut st = Stats { input: len, ..Default::default() };
    let threads = threads.max(1);
    let mut done = 0u64;
    let mut i = 0;
    while i < segs.len() {
        match segs[i] {
            Seg::Zero(n) => {
                let mut left = n;
                while left > 0 {
                    let k = left.min(ZERO_UNIT);
                    let s = zeros.stream(k)?;
                    out.write_all(s)?;
                    st.output += s.len() as u64;
                    st.streams += 1;
                    left -= k;
                }
                st.zero_bytes += n;
                done += n;
                progress(done);
                i += 1;
            }
            Seg::Data(..) => {
                // A batch of consecutive data segments, compressed in parallel.
                let mut j = i;
                while j < segs.len() && j - i < threads * 2 && matches!(segs[j], Seg::Data(..)) {
                    j += 1;
                }
                let batch: Vec<(u64, u64)> = segs[i..j].iter().map(|s| if let Seg::Data(a, b) = s { (*a, *b) } else { unreachable!() }).collect();
                let results: Vec<Result<Vec<u8>>> = std::thread::scope(|scope| {
                    let per = batch.len().div_ceil(threads);
                    let handles: Vec<_> = batch
                        .chunks(per.max(1))
                        .map(|group| {
                            scope.spawn(move || {
                                group
                                    .iter()
                                    .map(|&(s, n)| {
                                        let mut buf = vec![0u8; n as usize];
                                        src.read_exact_at(&mut buf, s).context("reading the image")?;
                                        bz2(&buf, level)
                                    })
                                    .collect::<Vec<_>>()
                            })
                        })
                        .collect();
                    handles.into_iter().flat_map(|h| h.join().expect("compression thread panicked")).collect()
                });
                for (r, (_, n)) in results.into_iter().zip(&batch) {
                    let c = r?;
                    out.write_all(&c)?;
                    st.output += c.len() as u64;
                    st.streams += 1;
                    st.data_bytes += n;
                    done += n;
                }
                progress(done);
                i = j;
            }
        }
    }
    Ok(st)
}

const BLOCK_MAGIC: [u8; 6] = [0x31, 0x41, 0x59, 0x26, 0x53, 0x59];
const EOS_MAGIC: [u8; 6] = [0x17, 0x72, 0x45, 0x38, 0x50, 0x90];

fn is_stream_start(d: &[u8]) -> bool {
    d.len() >= 10 && &d[0..3] == b"BZh" && (b'1'..=b'9').contains(&d[3]) && (d[4..10] == BLOCK_MAGIC || d[4..10] == EOS_MAGIC)
}

/// Splits a multi-stream bzip2 file into its streams as it reads (bounded
/// memory): a stream starts byte-aligned with "BZh[1-9]" and a block or
/// end-of-stream magic. A false split inside compressed data would make the
/// decoder of the piece fail, so it cannot go unnoticed.
pub struct Streams<R: std::io::Read> {
    r: R,
    buf: Vec<u8>,
    eof: bool,
}

impl<R: std::io::Read> Streams<R> {
    pub fn new(r: R) -> Self {
        Streams { r, buf: Vec::new(), eof: false }
    }
    fn fill(&mut self) -> Result<bool> {
        if self.eof {
            return Ok(false);
        }
        let old = self.buf.len();
        self.buf.resize(old + (4 << 20), 0);
        let n = self.r.read(&mut self.buf[old..])?;
        self.buf.truncate(old + n);
        if n == 0 {
            self.eof = true;
        }
        Ok(n > 0)
    }
    /// The next stream's bytes, or None at the end.
    pub fn next_stream(&mut self) -> Result<Option<Vec<u8>>> {
        while self.buf.len() < 10 && self.fill()? {}
        if self.buf.is_empty() {
            return Ok(None);
        }
        if !is_stream_start(&self.buf) {
            anyhow::bail!("not a bzip2 stream");
        }
        let mut from = 10;
        loop {
            if let Some(k) = (from..self.buf.len().saturating_sub(9)).find(|&k| self.buf[k] == b'B' && is_stream_start(&self.buf[k..])) {
                let rest = self.buf.split_off(k);
                return Ok(Some(std::mem::replace(&mut self.buf, rest)));
            }
            from = self.buf.len().saturating_sub(9).max(10);
            if !self.fill()? {
                return Ok(Some(std::mem::take(&mut self.buf)));
            }
        }
    }
}

fn decode_one(stream: &[u8]) -> Result<Vec<u8>> {
    let mut d = bzip2::read::BzDecoder::new(stream);
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut d, &mut out)?;
    // One stream per piece: trailing bytes mean the split was wrong.
    if d.total_in() as usize != stream.len() {
        anyhow::bail!("bzip2 stream boundary mismatch");
    }
    Ok(out)
}

/// What a decoded piece is: bytes, or a run of zeros recognized without decoding.
pub enum Piece {
    Data(Vec<u8>),
    Zeros(u64),
}

/// Decodes a multi-stream bzip2 file, streams in parallel, in order, with
/// bounded memory; streams identical to our precomputed zero unit are not
/// decoded (that unit was decoded and checked once here). `sink` gets each
/// piece at its offset.
pub fn decode_streams(r: impl std::io::Read, threads: usize, sink: &mut dyn FnMut(u64, Piece) -> Result<()>) -> Result<u64> {
    let zero_unit = bz2(&vec![0u8; ZERO_UNIT as usize], 9)?;
    let check = decode_one(&zero_unit)?;
    if check.len() as u64 != ZERO_UNIT || !sparse::is_zero(&check) {
        anyhow::bail!("the zero-run stream does not decode to zeros");
    }
    drop(check);
    let mut streams = Streams::new(r);
    let mut pos = 0u64;
    let mut pending: Vec<Vec<u8>> = Vec::new();
    let flush = |pending: &mut Vec<Vec<u8>>, pos: &mut u64, sink: &mut dyn FnMut(u64, Piece) -> Result<()>| -> Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(pending);
        let results: Vec<Result<Vec<u8>>> = std::thread::scope(|scope| {
            let per = batch.len().div_ceil(threads.max(1)).max(1);
            let hs: Vec<_> = batch.chunks(per).map(|g| scope.spawn(move || g.iter().map(|s| decode_one(s)).collect::<Vec<_>>())).collect();
            hs.into_iter().flat_map(|h| h.join().expect("decoder thread panicked")).collect()
        });
        for r in results {
            let out = r?;
            let n = out.len() as u64;
            sink(*pos, Piece::Data(out))?;
            *pos += n;
        }
        Ok(())
    };
    while let Some(st) = streams.next_stream()? {
        if st == zero_unit {
            flush(&mut pending, &mut pos, sink)?;
            sink(pos, Piece::Zeros(ZERO_UNIT))?;
            pos += ZERO_UNIT;
            continue;
        }
        pending.push(st);
        if pending.len() >= threads.max(1) * 2 {
            flush(&mut pending, &mut pos, sink)?;
        }
    }
    flush(&mut pending, &mut pos, sink)?;
    Ok(pos)
}

/// Decompresses into `dst` (sparse: zero blocks are not written).
pub fn bunzip2_sparse(r: impl std::io::Read, dst: &File, threads: usize) -> Result<u64> {
    let n = decode_streams(r, threads, &mut |pos, piece| {
        if let Piece::Data(d) = piece {
            sparse::write_nonzero_at(dst, pos, &d)?;
        }
        Ok(())
    })?;
    dst.set_len(dst.metadata()?.len().max(n))?;
    Ok(n)
}

/// Decodes the compressed file completely and compares every byte with the
/// raw image (zero runs against the raw image's content at that range).
pub fn verify_bz2(compressed: &std::path::Path, raw: &File, threads: usize) -> Result<()> {
    let len = raw.metadata()?.len();
    let f = File::open(compressed)?;
    let mut buf = Vec::new();
    let n = decode_streams(std::io::BufReader::with_capacity(1 << 20, f), threads, &mut |pos, piece| {
        match piece {
            Piece::Data(d) => {
                if pos + d.len() as u64 > len {
                    anyhow::bail!("decodes past the end of the raw image");
                }
                buf.resize(d.len(), 0);
                raw.read_exact_at(&mut buf, pos)?;
                if buf != d {
                    anyhow::bail!("decoded bytes differ from the raw image near offset {pos}");
                }
            }
            Piece::Zeros(z) => {
                if pos + z > len {
                    anyhow::bail!("decodes past the end of the raw image");
                }
                for (s, e) in sparse::data_extents(raw, pos, pos + z)? {
                    let mut p = s;
                    while p < e {
                        let k = ((e - p) as usize).min(1 << 20);
                        buf.resize(k, 0);
                        raw.read_exact_at(&mut buf, p)?;
                        if !sparse::is_zero(&buf) {
                            anyhow::bail!("a zero run in the output covers data of the raw image at {p}");
                        }
                        p += k as u64;
                    }
                }
            }
        }
        Ok(())
    })
    .with_context(|| format!("{}: verifying", compressed.display()))?;
    if n != len {
        anyhow::bail!("{}: decodes to {n} B, the raw image has {len} B", compressed.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn roundtrip_sparse() {
        let d = tempfile::tempdir().unwrap();
        let f = sparse::create(&d.path().join("img"), 100 << 20).unwrap();
        f.write_all_at(&[7u8; 3_000_000], 5 << 20).unwrap();
        f.write_all_at(b"tail", (100 << 20) - 4).unwrap();
        let mut out = Vec::new();
        let st = bzip2_sparse(&f, 100 << 20, &mut out, 9, 2, &|_| {}).unwrap();
        assert!(st.zero_bytes > 90 << 20, "{st:?}");
        let mut dec = Vec::new();
        bzip2::read::MultiBzDecoder::new(&out[..]).read_to_end(&mut dec).unwrap();
        assert_eq!(dec.len(), 100 << 20);
        assert!(dec[5 << 20..(5 << 20) + 3_000_000].iter().all(|b| *b == 7));
        assert_eq!(&dec[dec.len() - 4..], b"tail");
        assert!(dec[..5 << 20].iter().all(|b| *b == 0));
        // Our parallel, zero-aware decoder gives the same bytes.
        let g = sparse::create(&d.path().join("out"), 0).unwrap();
        assert_eq!(bunzip2_sparse(&out[..], &g, 2).unwrap(), 100 << 20);
        let mut back = Vec::new();
        std::io::Read::read_to_end(&mut std::fs::File::open(d.path().join("out")).unwrap(), &mut back).unwrap();
        assert_eq!(back, dec);
        // verify_bz2 accepts it, and refuses a changed raw image.
        let c = d.path().join("img.bz2");
        std::fs::write(&c, &out).unwrap();
        verify_bz2(&c, &f, 2).unwrap();
        f.write_all_at(b"x", 50 << 20).unwrap();
        assert!(verify_bz2(&c, &f, 2).is_err());
    }
}
