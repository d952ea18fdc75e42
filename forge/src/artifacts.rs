//! Artifacts stage: the compressed disk file, its `.DIGESTS` (md5, sha1,
//! sha512 in upstream's layout) and `version.txt`, each written under a
//! temporary name and staged (`outdir::Staged`) to be renamed into place
//! with the build's other artifacts.

use crate::io::compress;
use crate::oem::Compression;
use crate::outdir::{self, Staged};
use crate::payload::OsRelease;
use anyhow::{anyhow, bail, Context, Result};
use md5::Md5;
use sha1::Sha1;
use sha2::{Digest, Sha512};
use std::io::Write;
use std::path::{Path, PathBuf};

/// A writer that hashes everything passing through.
pub struct HashingWriter<W: Write> {
    inner: W,
    md5: Md5,
    sha1: Sha1,
    sha512: Sha512,
    pub bytes: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter { inner, md5: Md5::new(), sha1: Sha1::new(), sha512: Sha512::new(), bytes: 0 }
    }
    pub fn finish(self) -> (W, Digests) {
        (
            self.inner,
            Digests {
                md5: hex::encode(self.md5.finalize()),
                sha1: hex::encode(self.sha1.finalize()),
                sha512: hex::encode(self.sha512.finalize()),
            },
        )
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.md5.update(&buf[..n]);
        self.sha1.update(&buf[..n]);
        self.sha512.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Digests {
    pub md5: String,
    pub sha1: String,
    pub sha512: String,
}

impl Digests {
    /// Upstream's `.DIGESTS` text for a file named `name`.
    pub fn render(&self, name: &str) -> String {
        format!(
            "# MD5 HASH\n{}  {name}\n# SHA1 HASH\n{}  {name}\n# SHA512 HASH\n{}  {name}\n",
            self.md5, self.sha1, self.sha512
        )
    }
}

#[derive(Clone, Debug)]
pub struct Artifact {
    pub path: PathBuf,
    pub bytes: u64,
    pub digests_path: PathBuf,
}

/// How a disk is compressed.
#[derive(Clone, Copy, Debug)]
pub struct CompressOptions {
    pub compression: Compression,
    /// Defaults to the stock tool's.
    pub level: Option<u32>,
    pub threads: usize,
    /// Decode the result in full and compare it with the input before it
    /// is renamed into place.
    pub verify: bool,
}

/// What [`compress_partial`] wrote.
#[derive(Clone, Debug)]
pub struct Compressed {
    /// Bytes of the output file.
    pub bytes: u64,
    pub digests: Digests,
    /// The compressor's statistics (None when uncompressed).
    pub stats: Option<compress::Stats>,
}

/// Compresses `raw` into a temporary file in `dir` for the artifact
/// `name`, verified by a full decode unless `opts.verify` is off; the
/// caller publishes it. `progress` gets (step, bytes done, bytes total).
pub fn compress_partial(
    raw: &Path,
    dir: &Path,
    name: &str,
    opts: &CompressOptions,
    progress: &dyn Fn(&str, u64, u64),
) -> Result<(tempfile::NamedTempFile, Compressed)> {
    let dest = dir.join(name);
    let src =
        std::fs::File::open(raw).with_context(|| format!("{}: cannot open", raw.display()))?;
    let len = src.metadata().with_context(|| format!("{}: cannot stat", raw.display()))?.len();
    let tmp = outdir::partial_file(dir, name)?;
    let threads = opts.threads;
    let result = match opts.compression.codec() {
        Some(codec) => {
            let level = opts.level.unwrap_or(codec.default_level());
            let mut w = HashingWriter::new(std::io::BufWriter::with_capacity(
                1 << 20,
                tmp.as_file().try_clone()?,
            ));
            let st = compress::compress_sparse(&src, len, &mut w, codec, level, threads, &|d| {
                progress("compress", d, len)
            })
            .with_context(|| format!("compressing {} into {}", raw.display(), dest.display()))?;
            let bytes = w.bytes;
            let (inner, digests) = w.finish();
            inner
                .into_inner()
                .map_err(|e| anyhow!("{}: writing: {}", dest.display(), e.error()))?
                .sync_all()
                .with_context(|| format!("{}: writing", dest.display()))?;
            if opts.verify {
                compress::verify(tmp.path(), &src, codec, &st.members, threads, &|d| {
                    progress("verify", d, len)
                })?;
            }
            Compressed { bytes, digests, stats: Some(st) }
        }
        None => {
            if opts.level.is_some() {
                bail!("a compression level was given for an uncompressed output");
            }
            // Hash every byte, but keep the copy sparse.
            let mut h = HashingWriter::new(std::io::sink());
            std::io::copy(&mut std::io::BufReader::with_capacity(1 << 20, &src), &mut h)
                .with_context(|| format!("{}: reading", raw.display()))?;
            crate::io::sparse::splice(&src, 0, len, tmp.as_file(), 0, false)?;
            tmp.as_file().set_len(len)?;
            tmp.as_file().sync_all()?;
            Compressed { bytes: len, digests: h.finish().1, stats: None }
        }
    };
    Ok((tmp, result))
}

/// A disk to publish: `source` (the disk in its format) compressed into
/// `out_dir/<image_name><suffix>`, with its DIGESTS.
#[derive(Clone, Copy, Debug)]
pub struct DiskRequest<'a> {
    pub source: &'a Path,
    pub image_name: &'a str,
    pub out_dir: &'a Path,
    pub compress: CompressOptions,
}

/// Stages a disk (see [`DiskRequest`]) and its DIGESTS in `staged`; the
/// same image under the other compressions (and their DIGESTS), which an
/// earlier build may have left, are retired with the commit. The source
/// file is left in place. The returned paths are the final ones.
pub fn publish_disk(
    req: &DiskRequest,
    staged: &mut Staged,
    progress: &dyn Fn(&str, u64, u64),
) -> Result<Artifact> {
    let name = disk_name(req.image_name, req.compress.compression);
    let digests_name = format!("{name}.DIGESTS");
    let (tmp, c) = compress_partial(req.source, req.out_dir, &name, &req.compress, progress)?;
    staged.add(tmp, &name);
    staged.add_bytes(req.out_dir, &digests_name, c.digests.render(&name).as_bytes())?;
    for other in ALL_COMPRESSIONS {
        let n = disk_name(req.image_name, other);
        staged.retire(&format!("{n}.DIGESTS"));
        staged.retire(&n);
    }
    Ok(Artifact {
        path: req.out_dir.join(&name),
        bytes: c.bytes,
        digests_path: req.out_dir.join(digests_name),
    })
}

const ALL_COMPRESSIONS: [Compression; 5] =
    [Compression::None, Compression::Bz2, Compression::Gz, Compression::Zst, Compression::Xz];

/// The published disk's file name: the image name and the compression's suffix.
pub fn disk_name(image_name: &str, compression: Compression) -> String {
    format!("{image_name}{}", compression.suffix())
}

/// `version.txt` in upstream's keys, from the payload's os-release.
pub fn version_txt(os: &OsRelease, epoch: i64, sdk_version: &str) -> String {
    let v = os.version_id().unwrap_or("0.0.0");
    let mut parts = v.split(['.', '+', '-']);
    let (b, br, p) =
        (parts.next().unwrap_or("0"), parts.next().unwrap_or("0"), parts.next().unwrap_or("0"));
    format!(
        "FLATCAR_BUILD={b}\nFLATCAR_BRANCH={br}\nFLATCAR_PATCH={p}\nFLATCAR_VERSION={v}\nFLATCAR_VERSION_ID={v}\nFLATCAR_BUILD_ID=\"forge-{epoch}\"\nFLATCAR_SDK_VERSION={sdk_version}\n"
    )
}
