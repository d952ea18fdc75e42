//! The raw disk: the image as built, byte for byte.

use super::DiskFormat;
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

pub struct Raw;

impl DiskFormat for Raw {
    fn name(&self) -> &'static str {
        "raw"
    }
    fn is_raw(&self) -> bool {
        true
    }
    fn write(&self, raw: &File, len: u64, out: &mut dyn Write) -> Result<String> {
        let n = std::io::copy(&mut std::io::BufReader::new(raw).take(len), out)?;
        if n != len {
            bail!("the raw image ended after {n} of {len} B");
        }
        Ok(format!("{n} B"))
    }
    fn verify(&self, written: &Path, raw: &Path) -> Result<String> {
        let open = |p: &Path| -> Result<std::io::BufReader<File>> {
            Ok(std::io::BufReader::with_capacity(
                1 << 20,
                File::open(p).with_context(|| format!("{}: cannot open", p.display()))?,
            ))
        };
        let (mut a, mut b) = (open(written)?, open(raw)?);
        let (mut x, mut y) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
        let mut at = 0u64;
        loop {
            let n = a.read(&mut x).with_context(|| format!("{}: reading", written.display()))?;
            if n == 0 {
                let m = b.read(&mut y[..1])?;
                if m != 0 {
                    bail!("{}: shorter than {} ({at} B)", written.display(), raw.display());
                }
                return Ok(format!("{} identical to the raw image ({at} B)", written.display()));
            }
            b.read_exact(&mut y[..n])
                .with_context(|| format!("{}: longer than {}", written.display(), raw.display()))?;
            if x[..n] != y[..n] {
                bail!("{}: differs from {} near byte {at}", written.display(), raw.display());
            }
            at += n as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_copies_and_verify_compares() {
        let d = tempfile::tempdir().unwrap();
        let raw = d.path().join("raw");
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&raw, &data).unwrap();
        let mut out = Vec::new();
        Raw.write(&File::open(&raw).unwrap(), data.len() as u64, &mut out).unwrap();
        assert_eq!(out, data);
        let copy = d.path().join("copy");
        std::fs::write(&copy, &out).unwrap();
        Raw.verify(&copy, &raw).unwrap();
        out[150_000] ^= 1;
        std::fs::write(&copy, &out).unwrap();
        let e = Raw.verify(&copy, &raw).unwrap_err().to_string();
        assert!(e.contains("differs"), "{e}");
        std::fs::write(&copy, &data[..1000]).unwrap();
        assert!(Raw.verify(&copy, &raw).unwrap_err().to_string().contains("shorter"));
    }
}
