//! `cargo xtask metadata-respond` (internal, hidden): one request of the fake
//! metadata service the boot test runs, served on stdin/stdout from the
//! boot's rendered paths (`forge_boottest::metadata`).

use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The boot's paths and bodies (JSON written by the boot test).
    #[arg(long)]
    pub served: PathBuf,
    /// Appends "METHOD PATH STATUS" here.
    #[arg(long)]
    pub log: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    let served = forge_boottest::metadata::Served::read(&a.served)?;
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut output = std::io::stdout().lock();
    forge_boottest::metadata::respond(&served, &mut input, &mut output, a.log.as_deref())
}
