//! Compression of sparse disk images on every core, without pushing zero
//! runs through the compressor byte by byte.
//!
//! One pass over the image: a reader walks the data extents
//! (SEEK_DATA/SEEK_HOLE) and cuts them into data chunks (up to `DATA_CHUNK`
//! bytes) and zero runs (holes and all-zero 4 KiB blocks, at least
//! `MIN_ZERO_RUN` long; shorter runs stay inside the data). Workers compress
//! the chunks as independent members (`io::codec`), a writer puts them back
//! in order and emits each zero run as precomputed members of zeros. The
//! result is an ordinary multi-member file of the format (bzip2 streams, gzip
//! members, zstd frames, xz streams) that the stock tools decode into the
//! exact image, e.g. `bzip2 -cd | dd of=DISK bs=4M conv=sparse`. Memory is
//! bounded by `IN_FLIGHT` chunks whatever the image size.

use crate::io::codec::Codec;
use crate::io::sparse;
use anyhow::{anyhow, bail, Context, Result};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::sync::mpsc;
use std::sync::Mutex;

pub const DATA_CHUNK: usize = 8 << 20;
pub const MIN_ZERO_RUN: u64 = 1 << 20;
/// Zero runs are emitted in members of at most this many bytes (and the
/// remainder in powers of two, see `zero_member_len`).
const ZERO_UNIT: u64 = 32 << 20;
const BLOCK: usize = sparse::BLOCK;
const READ: usize = 1 << 20;

/// Where one member sits in the output and what it stands for in the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    pub out_offset: u64,
    pub out_len: u64,
    pub in_offset: u64,
    pub in_len: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub input: u64,
    pub output: u64,
    pub data_bytes: u64,
    pub zero_bytes: u64,
    pub members: Vec<Member>,
}

enum Piece {
    Data(u64, Vec<u8>),
    Zero(u64, u64),
}

/// Cuts the image into pieces as it reads it (once).
struct Cutter<'a> {
    data: Vec<u8>,
    data_off: u64,
    /// Zero bytes seen but not yet placed, ending at `pos`.
    zeros: u64,
    pos: u64,
    emit: &'a mut dyn FnMut(Piece) -> Result<()>,
}

impl Cutter<'_> {
    fn push_bytes(&mut self, mut b: &[u8], at: u64) -> Result<()> {
        let mut at = at;
        while !b.is_empty() {
            if self.data.is_empty() {
                self.data_off = at;
            }
            let n = b.len().min(DATA_CHUNK - self.data.len());
            self.data.extend_from_slice(&b[..n]);
            b = &b[n..];
            at += n as u64;
            if self.data.len() == DATA_CHUNK {
                self.flush()?;
            }
        }
        Ok(())
    }
    fn flush(&mut self) -> Result<()> {
        if !self.data.is_empty() {
            let d = std::mem::replace(&mut self.data, Vec::with_capacity(DATA_CHUNK));
            (self.emit)(Piece::Data(self.data_off, d))?;
        }
        Ok(())
    }
    /// Places the pending zeros: a run of their own, or bytes of the data.
    fn settle(&mut self) -> Result<()> {
        let z = std::mem::take(&mut self.zeros);
        let start = self.pos - z;
        if z >= MIN_ZERO_RUN {
            self.flush()?;
            (self.emit)(Piece::Zero(start, z))?;
        } else if z > 0 {
            let zero = [0u8; BLOCK];
            let mut p = start;
            while p < self.pos {
                let n = ((self.pos - p) as usize).min(BLOCK);
                self.push_bytes(&zero[..n], p)?;
                p += n as u64;
            }
        }
        Ok(())
    }
    fn hole(&mut self, n: u64) {
        self.zeros += n;
        self.pos += n;
    }
    fn bytes(&mut self, buf: &[u8]) -> Result<()> {
        for blk in buf.chunks(BLOCK) {
            if sparse::is_zero(blk) {
                self.hole(blk.len() as u64);
            } else {
                if self.zeros > 0 {
                    self.settle()?;
                }
                let at = self.pos;
                self.pos += blk.len() as u64;
                self.push_bytes(blk, at)?;
            }
        }
        Ok(())
    }
    fn finish(&mut self) -> Result<()> {
        self.settle()?;
        self.flush()
    }
}

/// Reads `[0, len)` of `f` once, giving data chunks and zero runs in order.
fn cut(f: &File, len: u64, emit: &mut dyn FnMut(Piece) -> Result<()>) -> Result<()> {
    let mut c =
        Cutter { data: Vec::with_capacity(DATA_CHUNK), data_off: 0, zeros: 0, pos: 0, emit };
    sparse::for_each_data_chunk(f, 0, len, &mut |at, buf| {
        c.hole(at - c.pos);
        c.bytes(buf)
    })
    .context("reading the image")?;
    let rest = len - c.pos;
    c.hole(rest);
    c.finish()
}

/// The length of the next zero member for a run of `left` bytes: whole
/// units, then the remainder's powers of two (so the few lengths used over
/// a whole image are each encoded once), then a sub-block tail.
fn zero_member_len(left: u64) -> u64 {
    if left >= ZERO_UNIT {
        ZERO_UNIT
    } else if left >= BLOCK as u64 {
        1 << (63 - left.leading_zeros())
    } else {
        left
    }
}

/// Precomputed members of zeros, by length.
struct Zeros {
    codec: Codec,
    level: u32,
    cache: HashMap<u64, Vec<u8>>,
}

impl Zeros {
    fn member(&mut self, n: u64) -> Result<&[u8]> {
        if !self.cache.contains_key(&n) {
            let m = self.codec.encode(&vec![0u8; n as usize], self.level)?;
            self.cache.insert(n, m);
        }
        Ok(&self.cache[&n])
    }
}

/// Data chunks in flight at once (read, queued, compressing, or waiting for
/// their turn to be written), per thread.
const IN_FLIGHT: usize = 2;

/// Compresses the first `len` bytes of `src` into `out` as multi-member
/// `codec` output. `progress` gets the number of input bytes done so far.
pub fn compress_sparse(
    src: &File,
    len: u64,
    out: &mut dyn Write,
    codec: Codec,
    level: u32,
    threads: usize,
    progress: &dyn Fn(u64),
) -> Result<Stats> {
    codec.check_level(level)?;
    let threads = threads.max(1);
    let mut zeros = Zeros { codec, level, cache: HashMap::new() };
    let mut st = Stats { input: len, ..Default::default() };
    // Pieces are numbered in image order; results come back in any order.
    // (seq, input offset, input length, the member or None for a zero run)
    type Done = Result<(u64, u64, u64, Option<Vec<u8>>)>;
    let (done_tx, done_rx) = mpsc::channel::<Done>();
    let (job_tx, job_rx) = mpsc::sync_channel::<(u64, u64, Vec<u8>)>(threads * IN_FLIGHT);
    let job_rx = Mutex::new(job_rx);
    // A token per data chunk in flight; the writer returns it once written.
    let (token_tx, token_rx) = mpsc::sync_channel::<()>(threads * IN_FLIGHT);
    for _ in 0..threads * IN_FLIGHT {
        token_tx.send(()).expect("fresh channel");
    }
    std::thread::scope(|scope| -> Result<()> {
        // Owned here so that a writer error drops it and unblocks the reader.
        let token_tx = token_tx;
        let reader_done = done_tx.clone();
        scope.spawn(move || {
            let mut seq = 0u64;
            let r = cut(src, len, &mut |p| {
                match p {
                    Piece::Data(off, d) => {
                        token_rx.recv().map_err(|_| anyhow!("writer stopped"))?;
                        job_tx.send((seq, off, d)).map_err(|_| anyhow!("workers stopped"))?;
                    }
                    Piece::Zero(off, n) => reader_done
                        .send(Ok((seq, off, n, None)))
                        .map_err(|_| anyhow!("writer stopped"))?,
                }
                seq += 1;
                Ok(())
            });
            if let Err(e) = r {
                let _ = reader_done.send(Err(e));
            }
        });
        for _ in 0..threads {
            let tx = done_tx.clone();
            let rx = &job_rx;
            scope.spawn(move || loop {
                let job = rx.lock().unwrap().recv();
                let Ok((seq, off, data)) = job else { return };
                let r = codec.encode(&data, level).map(|mut m| {
                    m.shrink_to_fit();
                    (seq, off, data.len() as u64, Some(m))
                });
                drop(data);
                if tx.send(r).is_err() {
                    return;
                }
            });
        }
        drop(done_tx);
        // The writer, on this thread: members in image order.
        let mut waiting = BTreeMap::new();
        let mut next = 0u64;
        let mut pos = 0u64;
        for r in done_rx.iter() {
            let (seq, off, n, member) = r?;
            waiting.insert(seq, (off, n, member));
            while let Some((off, n, member)) = waiting.remove(&next) {
                if off != pos {
                    bail!("internal error: piece {next} starts at {off}, expected {pos}");
                }
                match member {
                    Some(m) => {
                        out.write_all(&m)?;
                        st.members.push(Member {
                            out_offset: st.output,
                            out_len: m.len() as u64,
                            in_offset: off,
                            in_len: n,
                        });
                        st.output += m.len() as u64;
                        st.data_bytes += n;
                        let _ = token_tx.try_send(());
                    }
                    None => {
                        let mut at = off;
                        while at < off + n {
                            let k = zero_member_len(off + n - at);
                            let m = zeros.member(k)?;
                            out.write_all(m)?;
                            st.members.push(Member {
                                out_offset: st.output,
                                out_len: m.len() as u64,
                                in_offset: at,
                                in_len: k,
                            });
                            st.output += m.len() as u64;
                            at += k;
                        }
                        st.zero_bytes += n;
                    }
                }
                pos = off + n;
                next += 1;
                progress(pos);
            }
        }
        if pos != len {
            bail!("internal error: compressed {pos} of {len} B");
        }
        Ok(())
    })?;
    Ok(st)
}

/// Decodes the compressed file member by member (in parallel) and compares
/// every byte with the raw image. The member table only says where to cut:
/// members must tile the file and the image exactly, and each must decode
/// on its own to exactly its bytes; since every one of these formats defines
/// a file of members as the concatenation of their contents, the whole file
/// then decodes to the image. Identical small members (the zero runs) are
/// decoded once.
pub fn verify(
    compressed: &std::path::Path,
    raw: &File,
    codec: Codec,
    members: &[Member],
    threads: usize,
    progress: &dyn Fn(u64),
) -> Result<()> {
    let name = compressed.display();
    let len = raw.metadata()?.len();
    let f = File::open(compressed).with_context(|| format!("{name}: cannot open"))?;
    let flen = f.metadata()?.len();
    let (mut o, mut i) = (0u64, 0u64);
    for m in members {
        if m.out_offset != o || m.in_offset != i {
            bail!("{name}: the member table has a gap or overlap at output {o}, input {i}");
        }
        o += m.out_len;
        i += m.in_len;
    }
    if o != flen || i != len {
        bail!("{name}: members cover {o} B of {flen} B of output and {i} B of {len} B of image");
    }
    // Small members already decoded: bytes → decoded length, if all zero.
    let mut known: HashMap<Vec<u8>, u64> = HashMap::new();
    let check_zero = |at: u64, n: u64| -> Result<()> {
        sparse::for_each_data_chunk(raw, at, at + n, &mut |p, buf| {
            if !sparse::is_zero(buf) {
                bail!("{name}: a run of zeros in the output covers data of the image near {p}");
            }
            Ok(())
        })
    };
    let batch = threads.max(1) * 2;
    let mut k = 0;
    while k < members.len() {
        let mut group = Vec::new();
        while k < members.len() && group.len() < batch {
            let m = members[k];
            let mut bytes = vec![0u8; m.out_len as usize];
            f.read_exact_at(&mut bytes, m.out_offset)
                .with_context(|| format!("{name}: reading"))?;
            match known.get(&bytes) {
                Some(&n) if n == m.in_len => check_zero(m.in_offset, m.in_len)?,
                _ => group.push((m, bytes)),
            }
            k += 1;
        }
        // Each thread decodes its members and compares them with the image
        // itself, so only one decoded member per thread is alive at a time.
        // Ok(true): a small member of zeros, to remember and check here.
        let check = |m: &Member, b: &[u8]| -> Result<bool> {
            let d = codec
                .decode_member(b, m.in_len as usize)
                .with_context(|| format!("{name}: the member at {}", m.out_offset))?;
            if d.len() as u64 != m.in_len {
                bail!(
                    "{name}: the member at {} decodes to {} B, expected {}",
                    m.out_offset,
                    d.len(),
                    m.in_len
                );
            }
            if b.len() <= 1 << 16 && sparse::is_zero(&d) {
                return Ok(true);
            }
            let mut r = vec![0u8; d.len()];
            raw.read_exact_at(&mut r, m.in_offset)?;
            if r != d {
                bail!("{name}: decoded bytes differ from the image near offset {}", m.in_offset);
            }
            Ok(false)
        };
        let results: Vec<Result<bool>> = std::thread::scope(|scope| {
            let per = group.len().div_ceil(threads.max(1)).max(1);
            let check = &check;
            let hs: Vec<_> = group
                .chunks(per)
                .map(|g| {
                    scope.spawn(move || g.iter().map(|(m, b)| check(m, b)).collect::<Vec<_>>())
                })
                .collect();
            hs.into_iter().flat_map(|h| h.join().expect("decoder thread panicked")).collect()
        });
        for ((m, bytes), r) in group.into_iter().zip(results) {
            if r? {
                known.insert(bytes, m.in_len);
                check_zero(m.in_offset, m.in_len)?;
            }
            progress(m.in_offset + m.in_len);
        }
    }
    Ok(())
}

/// Decompresses a file in any of the formats into `dst`, sparse (zero
/// blocks are not written); bzip2 in parallel, the others in order.
pub fn decompress_sparse(
    src: &std::path::Path,
    codec: Codec,
    dst: &File,
    threads: usize,
) -> Result<u64> {
    let f = std::io::BufReader::with_capacity(
        1 << 20,
        File::open(src).with_context(|| format!("{}: cannot open", src.display()))?,
    );
    let n = if codec == Codec::Bz2 {
        bunzip2_sparse(f, dst, threads)?
    } else {
        let mut r = codec.reader(f)?;
        let mut buf = vec![0u8; READ];
        let mut pos = 0u64;
        loop {
            let mut got = 0;
            while got < buf.len() {
                let k = r
                    .read(&mut buf[got..])
                    .with_context(|| format!("{}: decoding {}", src.display(), codec.name()))?;
                if k == 0 {
                    break;
                }
                got += k;
            }
            if got == 0 {
                break;
            }
            sparse::write_nonzero_at(dst, pos, &buf[..got])?;
            pos += got as u64;
        }
        pos
    };
    dst.set_len(dst.metadata()?.len().max(n))?;
    Ok(n)
}

// bzip2 files from anywhere (not only ours) split into streams without a
// member table, decoded in parallel: what `boot-test` uses to unpack images.

const BLOCK_MAGIC: [u8; 6] = [0x31, 0x41, 0x59, 0x26, 0x53, 0x59];
const EOS_MAGIC: [u8; 6] = [0x17, 0x72, 0x45, 0x38, 0x50, 0x90];

fn is_stream_start(d: &[u8]) -> bool {
    d.len() >= 10
        && &d[0..3] == b"BZh"
        && (b'1'..=b'9').contains(&d[3])
        && (d[4..10] == BLOCK_MAGIC || d[4..10] == EOS_MAGIC)
}

/// Splits a multi-stream bzip2 file into its streams as it reads (bounded
/// memory): a stream starts byte-aligned with "BZh[1-9]" and a block or
/// end-of-stream magic. A false split inside compressed data would make the
/// decoder of the piece fail, so it cannot go unnoticed.
pub struct Streams<R: std::io::Read> {
    r: R,
    buf: Vec<u8>,
    eof: bool,
    /// A stream was returned: the end of the input is now the end of the
    /// file, not an empty file.
    started: bool,
}

impl<R: std::io::Read> Streams<R> {
    pub fn new(r: R) -> Self {
        Streams { r, buf: Vec::new(), eof: false, started: false }
    }
    fn fill(&mut self) -> Result<bool> {
        if self.eof {
            return Ok(false);
        }
        // Up to 4 MiB more, without zeroing a 4 MiB buffer first (the
        // buffer grows with what arrives); short only at the end.
        const MORE: u64 = 4 << 20;
        use std::io::Read;
        let n = (&mut self.r).take(MORE).read_to_end(&mut self.buf)?;
        if (n as u64) < MORE {
            self.eof = true;
        }
        Ok(n > 0)
    }
    /// The next stream's bytes, or None at the end.
    pub fn next_stream(&mut self) -> Result<Option<Vec<u8>>> {
        while self.buf.len() < 10 && self.fill()? {}
        if self.buf.is_empty() {
            if !self.started {
                // As bzip2 and lbzip2 say: no stream is no bzip2 file.
                anyhow::bail!("not a bzip2 file: it is empty");
            }
            return Ok(None);
        }
        if !is_stream_start(&self.buf) {
            anyhow::bail!("not a bzip2 stream");
        }
        self.started = true;
        let mut from = 10;
        loop {
            if let Some(k) = (from..self.buf.len().saturating_sub(9))
                .find(|&k| self.buf[k] == b'B' && is_stream_start(&self.buf[k..]))
            {
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
    Codec::Bz2.decode_member(stream, 0)
}

/// Our bzip2 stream of `ZERO_UNIT` zeros, encoded and checked once per
/// process (it takes a noticeable fraction of a second).
fn bz2_zero_unit() -> Result<&'static [u8]> {
    static UNIT: std::sync::OnceLock<std::result::Result<Vec<u8>, String>> =
        std::sync::OnceLock::new();
    let unit = UNIT.get_or_init(|| {
        let make = || -> Result<Vec<u8>> {
            let unit = Codec::Bz2.encode(&vec![0u8; ZERO_UNIT as usize], 9)?;
            let check = decode_one(&unit)?;
            if check.len() as u64 != ZERO_UNIT || !sparse::is_zero(&check) {
                anyhow::bail!("the zero-run stream does not decode to zeros");
            }
            Ok(unit)
        };
        make().map_err(|e| format!("{e:#}"))
    });
    unit.as_deref().map_err(|e| anyhow!("{e}"))
}

/// What a decoded piece is: bytes, or a run of zeros recognized without decoding.
pub enum Decoded {
    Data(Vec<u8>),
    Zeros(u64),
}

/// Decodes a multi-stream bzip2 file, streams in parallel, in order, with
/// bounded memory; streams identical to our precomputed zero unit are not
/// decoded (that unit was decoded and checked once here). `sink` gets each
/// piece at its offset.
pub fn decode_streams(
    r: impl std::io::Read,
    threads: usize,
    sink: &mut dyn FnMut(u64, Decoded) -> Result<()>,
) -> Result<u64> {
    let zero_unit = bz2_zero_unit()?;
    let mut streams = Streams::new(r);
    let mut pos = 0u64;
    let mut pending: Vec<Vec<u8>> = Vec::new();
    let flush = |pending: &mut Vec<Vec<u8>>,
                 pos: &mut u64,
                 sink: &mut dyn FnMut(u64, Decoded) -> Result<()>|
     -> Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(pending);
        let results: Vec<Result<Vec<u8>>> = std::thread::scope(|scope| {
            let per = batch.len().div_ceil(threads.max(1)).max(1);
            let hs: Vec<_> = batch
                .chunks(per)
                .map(|g| scope.spawn(move || g.iter().map(|s| decode_one(s)).collect::<Vec<_>>()))
                .collect();
            hs.into_iter().flat_map(|h| h.join().expect("decoder thread panicked")).collect()
        });
        for r in results {
            let out = r?;
            let n = out.len() as u64;
            sink(*pos, Decoded::Data(out))?;
            *pos += n;
        }
        Ok(())
    };
    while let Some(st) = streams.next_stream()? {
        if st == zero_unit {
            flush(&mut pending, &mut pos, sink)?;
            sink(pos, Decoded::Zeros(ZERO_UNIT))?;
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
        if let Decoded::Data(d) = piece {
            sparse::write_nonzero_at(dst, pos, &d)?;
        }
        Ok(())
    })?;
    dst.set_len(dst.metadata()?.len().max(n))?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn image(d: &std::path::Path) -> File {
        let f = sparse::create(&d.join("img"), 100 << 20).unwrap();
        // Data, a short zero gap (stays inside the data), more data, a long run.
        let noisy: Vec<u8> =
            (0..3_000_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        f.write_all_at(&noisy, 5 << 20).unwrap();
        f.write_all_at(&[7u8; 100_000], (5 << 20) + 3_000_000 + 300_000).unwrap();
        f.write_all_at(&[0u8; 4096], 60 << 20).unwrap(); // allocated zeros
        f.write_all_at(b"tail", (100 << 20) - 4).unwrap();
        f
    }

    #[test]
    fn every_codec_roundtrips_and_verifies() {
        let d = tempfile::tempdir().unwrap();
        let f = image(d.path());
        let mut raw = Vec::new();
        File::open(d.path().join("img")).unwrap().read_to_end(&mut raw).unwrap();
        for codec in Codec::ALL {
            let mut out = Vec::new();
            let st =
                compress_sparse(&f, 100 << 20, &mut out, codec, codec.default_level(), 2, &|_| {})
                    .unwrap();
            assert!(st.zero_bytes > 90 << 20, "{codec:?} {st:?}");
            assert_eq!(st.output, out.len() as u64);
            // The short gap stayed inside the data: one data member before the long run.
            // (The 5 MiB of zeros before it: members of 4 and 1 MiB.)
            assert_eq!(
                st.members[..2].iter().map(|m| m.in_len).collect::<Vec<_>>(),
                [4 << 20, 1 << 20],
                "{codec:?}"
            );
            let di = 2;
            assert_eq!(st.members[di].in_offset, 5 << 20, "{codec:?}");
            assert_eq!(
                st.members[di].in_len,
                (((5 << 20) + 3_400_000u64).div_ceil(4096) * 4096) - (5 << 20),
                "{codec:?}"
            );
            // The format's own whole-file decoder gives the image.
            let mut dec = Vec::new();
            codec.reader(&out[..]).unwrap().read_to_end(&mut dec).unwrap();
            assert!(dec == raw, "{codec:?}");
            // Same input, same bytes, whatever the thread count.
            let mut again = Vec::new();
            compress_sparse(&f, 100 << 20, &mut again, codec, codec.default_level(), 1, &|_| {})
                .unwrap();
            assert!(again == out, "{codec:?}");
            // verify accepts it and refuses a changed image or a bad table.
            let c = d.path().join("img.c");
            std::fs::write(&c, &out).unwrap();
            verify(&c, &f, codec, &st.members, 2, &|_| {}).unwrap();
            let mut bad = st.members.clone();
            bad[di].in_len -= 1;
            assert!(verify(&c, &f, codec, &bad, 2, &|_| {}).is_err());
            f.write_all_at(b"x", 50 << 20).unwrap();
            assert!(verify(&c, &f, codec, &st.members, 2, &|_| {}).is_err(), "{codec:?}");
            f.write_all_at(b"\0", 50 << 20).unwrap();
            // A flipped byte in a data member is caught.
            let mut broken = out.clone();
            let m = st.members[di];
            broken[(m.out_offset + m.out_len / 2) as usize] ^= 0x40;
            std::fs::write(&c, &broken).unwrap();
            assert!(verify(&c, &f, codec, &st.members, 2, &|_| {}).is_err(), "{codec:?}");
            // decompress_sparse gives the image back, sparse.
            std::fs::write(&c, &out).unwrap();
            let g = sparse::create(&d.path().join("back"), 0).unwrap();
            assert_eq!(decompress_sparse(&c, codec, &g, 2).unwrap(), 100 << 20);
            let mut back = Vec::new();
            File::open(d.path().join("back")).unwrap().read_to_end(&mut back).unwrap();
            assert!(back == raw, "{codec:?}");
            assert!(sparse::allocated_bytes(&g).unwrap() < 8 << 20);
        }
    }

    #[test]
    fn an_empty_file_is_not_a_bzip2_file() {
        // Found by fuzz/bz2_streams: it decoded to an empty image, where
        // bzip2 and lbzip2 refuse it.
        let e = decode_streams(&[][..], 2, &mut |_, _| Ok(())).unwrap_err();
        assert!(e.to_string().contains("not a bzip2 file: it is empty"), "{e}");
        let mut s = Streams::new(&[][..]);
        assert!(s.next_stream().is_err());
        // One stream, then the end.
        let one = Codec::Bz2.encode(b"x", 9).unwrap();
        let mut s = Streams::new(&one[..]);
        assert_eq!(s.next_stream().unwrap().unwrap(), one);
        assert!(s.next_stream().unwrap().is_none());
    }

    #[test]
    fn stream_splitter_decodes_foreign_bzip2() {
        let d = tempfile::tempdir().unwrap();
        let f = image(d.path());
        let mut out = Vec::new();
        compress_sparse(&f, 100 << 20, &mut out, Codec::Bz2, 9, 2, &|_| {}).unwrap();
        let g = sparse::create(&d.path().join("out"), 0).unwrap();
        assert_eq!(bunzip2_sparse(&out[..], &g, 2).unwrap(), 100 << 20);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        File::open(d.path().join("out")).unwrap().read_to_end(&mut a).unwrap();
        File::open(d.path().join("img")).unwrap().read_to_end(&mut b).unwrap();
        assert!(a == b);
        // A single-stream file from another compressor.
        let one = Codec::Bz2.encode(&b[..(8 << 20)], 9).unwrap();
        let h = sparse::create(&d.path().join("one"), 0).unwrap();
        assert_eq!(bunzip2_sparse(&one[..], &h, 2).unwrap(), 8 << 20);
    }
}
