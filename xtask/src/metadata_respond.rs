//! `cargo xtask metadata-respond` (internal, hidden): one request of the fake
//! metadata service the boot test runs, served on stdin/stdout.

use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    pub values: PathBuf,
    #[arg(long)]
    pub log: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    let v: forge::metadata::Values = serde_json::from_slice(&std::fs::read(&a.values)?)?;
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut output = std::io::stdout().lock();
    forge::metadata::respond(&v, &mut input, &mut output, a.log.as_deref())
}
