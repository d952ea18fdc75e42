//! `cargo xtask inspect`: an image's partitions, filesystems, OEM content and
//! verity state; fails when a dm-verity root hash does not match or the
//! report has errors (a truncated image, unusable partition entries,
//! filesystems or verity trees that do not fit; see `forge::inspect`).
//! Given a system extension image (`NAME.raw`, EROFS), prints its
//! extension-release fields instead (read back with `fsck.erofs --extract`).

use anyhow::{bail, Result};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    pub image: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> Result<()> {
    if forge::inspect::is_erofs_image(&a.image)? {
        let i = forge::sysext::inspect_image(&a.image, &std::env::temp_dir())?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&i)?);
        } else {
            print!("{}", forge::inspect::render_sysext(&i));
        }
        if !i.errors.is_empty() {
            bail!("{}: {} error(s) in the report", a.image.display(), i.errors.len());
        }
        return Ok(());
    }
    let r = forge::inspect::inspect(&a.image)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", forge::inspect::render(&r));
    }
    let bad: Vec<String> = r
        .partitions
        .iter()
        .filter(|p| p.verity.as_ref().and_then(|v| v.matches) == Some(false))
        .map(|p| p.label.clone())
        .collect();
    if !bad.is_empty() {
        bail!("dm-verity root hash mismatch on {}", bad.join(", "));
    }
    if !r.errors.is_empty() {
        bail!("{}: {} error(s) in the report", a.image.display(), r.errors.len());
    }
    Ok(())
}
