//! Disk formats: the raw image as built, or a conversion of it. Each format
//! is one type implementing [`DiskFormat`] in its own file and one entry in
//! [`ALL`]; `oem/<id>/platform.json` selects one by [`DiskFormat::name`].

pub mod qcow2;
pub mod raw;

use crate::outdir;
use anyhow::{Context, Result};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

pub trait DiskFormat: Sync {
    /// The name `platform.json`'s `format` uses.
    fn name(&self) -> &'static str;
    /// Whether the format's bytes are the raw image's: then the raw image is
    /// used as it is and [`DiskFormat::write`] is not needed.
    fn is_raw(&self) -> bool {
        false
    }
    /// Writes the first `len` bytes of the raw image `raw` in this format to
    /// `out` (a new, empty file); returns a line for the log.
    fn write(&self, raw: &File, len: u64, out: &mut dyn Write) -> Result<String>;
    /// Checks that `written` holds exactly the raw image at `raw`; returns a
    /// line for the log.
    fn verify(&self, written: &Path, raw: &Path) -> Result<String>;
}

/// Every format, by name.
pub const ALL: &[&dyn DiskFormat] = &[&raw::Raw, &qcow2::Qcow2];

pub fn by_name(name: &str) -> Option<&'static dyn DiskFormat> {
    ALL.iter().copied().find(|f| f.name() == name)
}

pub fn names() -> Vec<&'static str> {
    ALL.iter().map(|f| f.name()).collect()
}

/// A disk in its format: the raw image itself, or a converted copy under a
/// temporary name in the output directory (removed when this is dropped).
pub struct Converted {
    pub path: PathBuf,
    _temp: Option<tempfile::TempPath>,
}

/// Converts the raw image at `raw` to `format` in `out_dir` (a temporary
/// file for the artifact `name`), verified against the raw image when
/// `verify` is set. A raw format returns the raw image's path.
pub fn convert(
    format: &dyn DiskFormat,
    raw: &Path,
    out_dir: &Path,
    name: &str,
    verify: bool,
    log: &dyn Fn(&str),
) -> Result<Converted> {
    if format.is_raw() {
        return Ok(Converted { path: raw.to_path_buf(), _temp: None });
    }
    let tmp = outdir::partial_file(out_dir, name)?;
    let src = File::open(raw).with_context(|| format!("{}: cannot open", raw.display()))?;
    let len = src.metadata().with_context(|| format!("{}: cannot stat", raw.display()))?.len();
    let file = tmp.as_file().try_clone()?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    let what = format!("{}: writing {}", tmp.path().display(), format.name());
    let line = format.write(&src, len, &mut w).with_context(|| what.clone())?;
    w.flush().with_context(|| what.clone())?;
    w.get_ref().sync_all().with_context(|| what.clone())?;
    log(&format!("{}: {line}", format.name()));
    if verify {
        let line = format.verify(tmp.path(), raw)?;
        log(&format!("verify: {line}"));
    }
    let path = tmp.path().to_path_buf();
    Ok(Converted { path, _temp: Some(tmp.into_temp_path()) })
}

/// `platform.json`'s `format`: a name from [`ALL`].
#[derive(Clone, Copy)]
pub struct Format(pub &'static dyn DiskFormat);

impl std::ops::Deref for Format {
    type Target = dyn DiskFormat;
    fn deref(&self) -> &Self::Target {
        self.0
    }
}

impl std::fmt::Debug for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.name())
    }
}

impl PartialEq for Format {
    fn eq(&self, other: &Self) -> bool {
        self.0.name() == other.0.name()
    }
}

impl<'de> serde::Deserialize<'de> for Format {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        by_name(&s).map(Format).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown disk format '{s}' (known: {})",
                names().join(", ")
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_found_by_name_and_names_are_unique() {
        for f in ALL {
            assert_eq!(by_name(f.name()).unwrap().name(), f.name());
        }
        let mut n = names();
        n.sort();
        n.dedup();
        assert_eq!(n.len(), ALL.len());
        assert!(by_name("vhd").is_none());
        let e = serde_json::from_str::<Format>("\"vhd\"").unwrap_err().to_string();
        assert!(e.contains("unknown disk format 'vhd'") && e.contains("qcow2"), "{e}");
        assert_eq!(serde_json::from_str::<Format>("\"qcow2\"").unwrap().name(), "qcow2");
    }

    #[test]
    fn raw_is_used_in_place() {
        let d = tempfile::tempdir().unwrap();
        let raw = d.path().join("disk.bin");
        std::fs::write(&raw, b"disk").unwrap();
        let c = convert(&raw::Raw, &raw, d.path(), "disk.bin", true, &|_| {}).unwrap();
        assert_eq!(c.path, raw);
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }
}
