//! `cargo xtask compress`: a raw disk image compressed (zero-aware, on every
//! core), and its DIGESTS file beside it.

use crate::progress::{end_bars, logger, progress_bars};
use anyhow::{anyhow, Result};
use clap::ValueEnum;
use forge::oem::Compression;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    pub input: PathBuf,
    pub output: PathBuf,
    /// Compression format.
    #[arg(long, value_enum, default_value = "bz2")]
    pub format: Format,
    /// The format's level (default: the stock tool's: bz2 9, gz 6, zst 3, xz 6).
    #[arg(long)]
    pub level: Option<u32>,
    /// Skip the full decode-and-compare before publishing.
    #[arg(long)]
    pub no_verify: bool,
}

/// The formats of `compress --format`: forge's compressions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    None,
    Bz2,
    Gz,
    Zst,
    Xz,
}

impl From<Format> for Compression {
    fn from(f: Format) -> Self {
        match f {
            Format::None => Compression::None,
            Format::Bz2 => Compression::Bz2,
            Format::Gz => Compression::Gz,
            Format::Zst => Compression::Zst,
            Format::Xz => Compression::Xz,
        }
    }
}

pub fn run(a: Args) -> Result<()> {
    let verify = !a.no_verify;
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let bars = progress_bars();
    let log = logger();
    let progress = forge::progress::reporter(bars.as_ref(), &log);
    let t = std::time::Instant::now();
    let opts = forge::artifacts::CompressOptions {
        compression: a.format.into(),
        level: a.level,
        threads,
        verify,
    };
    let name = a
        .output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| anyhow!("{}: the output needs a file name", a.output.display()))?;
    let dir = a.output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    // The output and its DIGESTS are published together, under the
    // directory's lock, like a build's artifacts.
    let out_dir = forge::outdir::OutputDir::lock(dir, forge::outdir::IfLocked::Fail, &log)?;
    let (tmp, forge::artifacts::Compressed { bytes, digests, stats }) =
        forge::artifacts::compress_partial(&a.input, dir, &name, &opts, &progress)?;
    end_bars();
    if let Some(st) = stats {
        eprintln!(
            "{} B in, {bytes} B out in {:.1}s, {} members ({} B data, {} B zero runs){}",
            st.input,
            t.elapsed().as_secs_f64(),
            st.members.len(),
            st.data_bytes,
            st.zero_bytes,
            if verify { ", verified by a full decode" } else { ", NOT verified (--no-verify)" }
        );
    }
    let dname = format!("{name}.DIGESTS");
    let mut staged = forge::outdir::Staged::new();
    staged.add(tmp, &name);
    staged.add_bytes(dir, &dname, digests.render(&name).as_bytes())?;
    staged.commit(&out_dir)?;
    let dpath = dir.join(dname);
    eprintln!("{}: sha512 {}", dpath.display(), digests.sha512);
    Ok(())
}
