//! The compressed formats a platform may ask for, as whole independent
//! members: a bzip2 stream, a gzip member, a zstd frame, an xz stream. Each
//! format defines a file of concatenated members as the concatenation of
//! their contents, which is what lets `io::compress` compress pieces of an
//! image apart, in parallel, and splice precomputed members for zero runs.

use anyhow::{bail, Context, Result};
use std::io::{BufRead, Read, Write};
use std::ops::RangeInclusive;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Codec {
    Bz2,
    Gz,
    Zst,
    Xz,
}

impl Codec {
    pub const ALL: [Codec; 4] = [Codec::Bz2, Codec::Gz, Codec::Zst, Codec::Xz];

    /// The file name suffix, as the stock tools write it.
    pub fn suffix(self) -> &'static str {
        match self {
            Codec::Bz2 => ".bz2",
            Codec::Gz => ".gz",
            Codec::Zst => ".zst",
            Codec::Xz => ".xz",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Codec::Bz2 => "bzip2",
            Codec::Gz => "gzip",
            Codec::Zst => "zstd",
            Codec::Xz => "xz",
        }
    }

    /// The stock command-line tool's default level (bzip2's is -9).
    pub fn default_level(self) -> u32 {
        match self {
            Codec::Bz2 => 9,
            Codec::Gz => 6,
            Codec::Zst => 3,
            Codec::Xz => 6,
        }
    }

    pub fn levels(self) -> RangeInclusive<u32> {
        match self {
            Codec::Bz2 | Codec::Gz => 1..=9,
            Codec::Zst => 1..=19,
            Codec::Xz => 0..=9,
        }
    }

    pub fn check_level(self, level: u32) -> Result<()> {
        let r = self.levels();
        if !r.contains(&level) {
            bail!("{} level {level} is out of range ({}..={})", self.name(), r.start(), r.end());
        }
        Ok(())
    }

    /// Compresses `data` into one complete member. Deterministic: no
    /// timestamps or names in headers (gzip's MTIME is 0).
    pub fn encode(self, data: &[u8], level: u32) -> Result<Vec<u8>> {
        self.check_level(level)?;
        let cap = data.len() / 3 + 256;
        let out = match self {
            Codec::Bz2 => {
                let mut e = bzip2::write::BzEncoder::new(
                    Vec::with_capacity(cap),
                    bzip2::Compression::new(level),
                );
                e.write_all(data)?;
                e.finish()?
            }
            Codec::Gz => {
                let mut e = flate2::GzBuilder::new()
                    .mtime(0)
                    .write(Vec::with_capacity(cap), flate2::Compression::new(level));
                e.write_all(data)?;
                e.finish()?
            }
            Codec::Zst => {
                // As the zstd tool writes frames: content size and checksum.
                let mut c = zstd::bulk::Compressor::new(level as i32)?;
                c.include_checksum(true)?;
                c.include_contentsize(true)?;
                c.compress(data)?
            }
            Codec::Xz => {
                // xz's defaults: the preset's LZMA2 filter, CRC64 check.
                let mut e = liblzma::write::XzEncoder::new(Vec::with_capacity(cap), level);
                e.write_all(data)?;
                e.finish()?
            }
        };
        Ok(out)
    }

    /// Decodes exactly one member, which must span all of `member` (bytes
    /// left over mean it was not one member).
    pub fn decode_member(self, member: &[u8], size_hint: usize) -> Result<Vec<u8>> {
        let mut rest: &[u8] = member;
        let mut out = Vec::with_capacity(size_hint);
        let r = match self {
            Codec::Bz2 => bzip2::bufread::BzDecoder::new(&mut rest).read_to_end(&mut out),
            Codec::Gz => flate2::bufread::GzDecoder::new(&mut rest).read_to_end(&mut out),
            Codec::Zst => zstd::stream::read::Decoder::with_buffer(&mut rest)?
                .single_frame()
                .read_to_end(&mut out),
            Codec::Xz => liblzma::bufread::XzDecoder::new(&mut rest).read_to_end(&mut out),
        };
        r.with_context(|| format!("decoding a {} member", self.name()))?;
        if !rest.is_empty() {
            bail!("{} B after the end of a {} member", rest.len(), self.name());
        }
        Ok(out)
    }

    /// A decoder for a whole file of concatenated members, in order.
    pub fn reader<'a, R: BufRead + 'a>(self, r: R) -> Result<Box<dyn Read + 'a>> {
        Ok(match self {
            Codec::Bz2 => Box::new(bzip2::bufread::MultiBzDecoder::new(r)),
            Codec::Gz => Box::new(flate2::bufread::MultiGzDecoder::new(r)),
            Codec::Zst => Box::new(zstd::stream::read::Decoder::with_buffer(r)?),
            Codec::Xz => Box::new(liblzma::bufread::XzDecoder::new_multi_decoder(r)),
        })
    }

    /// The codec of a file, by its name's suffix.
    pub fn from_path(p: &std::path::Path) -> Option<Codec> {
        let name = p.file_name()?.to_str()?;
        Codec::ALL.into_iter().find(|c| name.ends_with(c.suffix()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_roundtrip_and_concatenate() {
        let a: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let b = b"second member".to_vec();
        for c in Codec::ALL {
            assert_eq!(
                Codec::from_path(std::path::Path::new(&format!("/x/disk.bin{}", c.suffix()))),
                Some(c)
            );
            let ma = c.encode(&a, c.default_level()).unwrap();
            let mb = c.encode(&b, c.default_level()).unwrap();
            assert_eq!(c.decode_member(&ma, 0).unwrap(), a, "{c:?}");
            // Deterministic.
            assert_eq!(c.encode(&a, c.default_level()).unwrap(), ma, "{c:?}");
            // Two members are not one.
            let mut both = ma.clone();
            both.extend_from_slice(&mb);
            assert!(c.decode_member(&both, 0).is_err(), "{c:?}");
            // A truncated member fails.
            assert!(c.decode_member(&ma[..ma.len() - 3], 0).is_err(), "{c:?}");
            // The whole-file reader gives the concatenation.
            let mut out = Vec::new();
            c.reader(&both[..]).unwrap().read_to_end(&mut out).unwrap();
            assert_eq!(out.len(), a.len() + b.len(), "{c:?}");
            assert_eq!(&out[a.len()..], &b[..], "{c:?}");
        }
        assert!(Codec::Zst.check_level(22).is_err());
        assert_eq!(Codec::from_path(std::path::Path::new("disk.bin")), None);
    }
}
