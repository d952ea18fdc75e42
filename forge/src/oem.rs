//! Platforms as data: `oem/<id>/platform.json` declares a platform (ID,
//! name, the architectures it is built for and the firmware each boots
//! with, layout, disk format, compression, GRUB settings, oem-release
//! fields) and `oem/<id>/sysext/` holds its OEM system extension's files.
//! This module turns one into the OEM partition's contents:
//! `/sysext/oem-<id>-<version>.raw` (an erofs systemd-sysext image),
//! `/sysext/active-oem-<id>`, `/oem-release` and `/grub.cfg`.

use crate::arch::{Arch, Firmware};
use crate::fs::tree::{Dir, Source};
use crate::payload::OsRelease;
use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Bz2,
    Gz,
    Zst,
    Xz,
}

impl Compression {
    pub fn suffix(self) -> &'static str {
        self.codec().map_or("", crate::io::codec::Codec::suffix)
    }

    pub fn codec(self) -> Option<crate::io::codec::Codec> {
        use crate::io::codec::Codec;
        match self {
            Compression::None => None,
            Compression::Bz2 => Some(Codec::Bz2),
            Compression::Gz => Some(Codec::Gz),
            Compression::Zst => Some(Codec::Zst),
            Compression::Xz => Some(Codec::Xz),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrubSettings {
    /// Defaults to the platform ID.
    pub oem_id: Option<String>,
    pub linux_append: Option<String>,
    pub linux_console: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SysextSettings {
    pub name: Option<String>,
    /// The OEM extension's recipe: a folder of `sysext/` (named
    /// `oem-<id>`), built like any extension against the payload. Without
    /// one, the extension holds `oem/<id>/sysext/` as it is.
    pub recipe: Option<String>,
}

/// What a platform says about one architecture.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ArchSettings {
    /// The firmware the platform's machines of this architecture boot with:
    /// the image carries the boot code of each (and only of those).
    pub firmware: Vec<Firmware>,
}

fn default_architectures() -> BTreeMap<Arch, ArchSettings> {
    BTreeMap::from([(Arch::Amd64, ArchSettings { firmware: vec![Firmware::Bios, Firmware::Uefi] })])
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Platform {
    #[serde(rename = "_comment")]
    _comment: Option<serde_json::Value>,
    pub id: String,
    pub name: String,
    pub layout: String,
    /// The disk format, by name (see `format::ALL`).
    pub format: crate::format::Format,
    pub compression: Compression,
    /// Defaults to the stock tool's level (bzip2 9, gzip 6, zstd 3, xz 6).
    pub compression_level: Option<u32>,
    pub image_name: String,
    /// The architectures the platform is built for, each with the firmware
    /// its machines start the image with (absent: amd64, BIOS and UEFI).
    #[serde(default = "default_architectures")]
    pub architectures: BTreeMap<Arch, ArchSettings>,
    pub max_disk_bytes: Option<u64>,
    #[serde(default)]
    pub grub: GrubSettings,
    #[serde(default)]
    pub oem_release: BTreeMap<String, String>,
    #[serde(default)]
    pub sysext: SysextSettings,
    /// The system extensions (folders of `sysext/`) the image carries in
    /// USR under `/usr/share/flatcar/sysext/NAME.raw`, enabled by links in
    /// ROOT's `/etc/extensions/`; an extension's `depends` must be listed too.
    #[serde(default)]
    pub extensions: Vec<String>,
    #[serde(skip)]
    pub dir: PathBuf,
}

/// Platform IDs under `oem_root`.
pub fn list(oem_root: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(oem_root)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.path().join("platform.json").exists())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

pub fn load(oem_root: &Path, id: &str) -> Result<Platform> {
    let dir = oem_root.join(id);
    let file = dir.join("platform.json");
    if !file.exists() {
        let mut known = list(oem_root);
        known.insert(0, "generic".into());
        bail!("unknown platform '{id}' (known: {}; a platform is a folder {}/<id>/ with platform.json)", known.join(", "), oem_root.display());
    }
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("{}: cannot read", file.display()))?;
    let mut p: Platform =
        serde_json::from_str(&text).map_err(|e| anyhow!("{}: {e}", file.display()))?;
    if p.id != id {
        bail!("{}: id '{}' does not match its folder name '{id}'", file.display(), p.id);
    }
    if !p.id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        bail!("{}: id '{}' may hold only a-z, 0-9, '-' and '_'", file.display(), p.id);
    }
    if p.id.is_empty() || p.id.len() > MAX_ID {
        bail!("{}: id '{}' must be 1 to {MAX_ID} bytes long", file.display(), p.id);
    }
    check_image_name(&p.image_name)
        .map_err(|e| anyhow!("{}: image_name {:?}: {e}", file.display(), p.image_name))?;
    let quoted = [
        ("grub.oem_id", p.grub.oem_id.as_deref()),
        ("grub.linux_append", p.grub.linux_append.as_deref()),
        ("grub.linux_console", p.grub.linux_console.as_deref()),
        ("name", Some(p.name.as_str())),
        ("sysext.name", p.sysext.name.as_deref()),
    ];
    for (field, v) in quoted.into_iter().filter_map(|(f, v)| Some((f, v?))) {
        check_quoted(v).map_err(|e| anyhow!("{}: {field} {v:?}: {e}", file.display()))?;
    }
    for (k, v) in &p.oem_release {
        if !k.bytes().next().is_some_and(|b| b.is_ascii_uppercase())
            || !k.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        {
            bail!(
                "{}: oem_release key {k:?}: must be A-Z, 0-9 and '_', starting with a letter",
                file.display()
            );
        }
        check_quoted(v).map_err(|e| anyhow!("{}: oem_release.{k} {v:?}: {e}", file.display()))?;
    }
    for (i, e) in p.extensions.iter().enumerate() {
        if !crate::sysext::is_name(e) || e.len() > crate::sysext::MAX_NAME {
            bail!(
                "{}: extensions[{i}]: {e:?} is not an extension name (1 to {} of a-z, 0-9, '-' and '_')",
                file.display(),
                crate::sysext::MAX_NAME
            );
        }
        if p.extensions[..i].contains(e) {
            bail!("{}: extensions[{i}]: '{e}' is listed twice", file.display());
        }
    }
    if let Some(r) = &p.sysext.recipe {
        if *r != format!("oem-{}", p.id) {
            bail!(
                "{}: sysext.recipe {r:?}: the OEM extension's recipe is the folder oem-{} of sysext/ (its name is the extension's, which systemd-sysext matches to oem-{}.raw)",
                file.display(),
                p.id,
                p.id
            );
        }
        if dir.join("sysext").exists() {
            bail!(
                "{}: sysext.recipe names the OEM extension's recipe, and {} holds its files too: keep one",
                file.display(),
                dir.join("sysext").display()
            );
        }
    }
    if p.architectures.is_empty() {
        bail!("{}: architectures: name at least one (amd64, arm64)", file.display());
    }
    for (arch, a) in &p.architectures {
        if a.firmware.is_empty() {
            bail!(
                "{}: architectures.{arch}.firmware: name at least one (bios, uefi)",
                file.display()
            );
        }
        if let Some(f) = a.firmware.iter().find(|f| !f.on(*arch)) {
            bail!(
                "{}: architectures.{arch}.firmware: {arch} machines have no {} firmware",
                file.display(),
                f.name()
            );
        }
    }
    if let Some(level) = p.compression_level {
        match p.compression.codec() {
            Some(c) => c
                .check_level(level)
                .map_err(|e| anyhow!("{}: compression_level: {e}", file.display()))?,
            None => bail!("{}: compression_level is set but compression is none", file.display()),
        }
    }
    p.dir = dir;
    Ok(p)
}

/// Longest platform ID: it is part of file names on the OEM partition
/// (`oem-<id>-<version>.raw`, `extension-release.oem-<id>`).
pub const MAX_ID: usize = 64;

/// Longest `image_name`, so that every name derived from it fits a file
/// name (NAME_MAX, 255 bytes): the longest is the temporary file of the
/// DIGESTS, `.<image_name>.bz2.DIGESTS.<pid>.<random>.partial`, 39 bytes
/// more (see the test `every_artifact_name_of_the_longest_image_name_fits`).
pub const MAX_IMAGE_NAME: usize = 200;

/// An image name is a plain file name in the output directory: not empty,
/// no `/`, not hidden (so not `.` or `..` either), no control characters,
/// at most [`MAX_IMAGE_NAME`] bytes. Anything else could write outside the
/// output directory (`../x.bin`, `/tmp/x.bin`) or hide the artifacts.
pub fn check_image_name(name: &str) -> Result<()> {
    if name.is_empty() {
        bail!("an image name must not be empty");
    }
    if name.contains('/') {
        bail!("an image name is a plain file name, without '/' (the output directory is --output-dir)");
    }
    if name.starts_with('.') {
        bail!("an image name must not start with '.' (hidden files, '.' and '..')");
    }
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        bail!("an image name must not hold control characters (found {c:?})");
    }
    if name.len() > MAX_IMAGE_NAME {
        bail!(
            "an image name is at most {MAX_IMAGE_NAME} bytes (this one is {}), so every artifact name derived from it fits a file name",
            name.len()
        );
    }
    Ok(())
}

/// Text that goes between double quotes into a GRUB config or an
/// os-release-style file: a quote, backslash, `$` or backtick would end
/// the string or be expanded, a control character start a new line.
fn check_quoted(v: &str) -> Result<()> {
    if let Some(c) = v.chars().find(|c| c.is_control() || matches!(c, '"' | '\\' | '$' | '`')) {
        bail!(
            "must not hold {c:?} (the value is written between double quotes into a config file)"
        );
    }
    Ok(())
}

impl Platform {
    /// The `platform.json` this platform was loaded from.
    pub fn file(&self) -> PathBuf {
        self.dir.join("platform.json")
    }

    /// Checks up front, before any work, that the layout the platform asks
    /// for (or `override_layout`, from the command line) is in `layouts`;
    /// the error names the platform.json (or the override), the layout and
    /// the layouts the file has.
    pub fn check_layout(
        &self,
        layouts: &crate::layout::LayoutFile,
        override_layout: Option<&str>,
    ) -> Result<()> {
        let names = layouts.names();
        let wanted = override_layout.unwrap_or(&self.layout);
        if names.iter().any(|n| n == wanted) {
            return Ok(());
        }
        let asked_by = match override_layout {
            Some(_) => "--layout".to_string(),
            None => format!("{}: layout", self.file().display()),
        };
        bail!(
            "{asked_by} '{wanted}' is not in {} (it has: {})",
            layouts.path().display(),
            names.join(", ")
        )
    }

    /// The platform's settings for `arch`; an architecture it is not built
    /// for is an error naming the platform.json and what it lists.
    pub fn arch(&self, arch: Arch) -> Result<&ArchSettings> {
        self.architectures.get(&arch).ok_or_else(|| {
            anyhow!(
                "platform {} has no {arch} build ({}: architectures lists {})",
                self.id,
                self.file().display(),
                self.architectures.keys().map(|a| a.debian()).collect::<Vec<_>>().join(", ")
            )
        })
    }

    pub fn oem_id(&self) -> &str {
        self.grub.oem_id.as_deref().unwrap_or(&self.id)
    }
    pub fn sysext_file(&self, version: &str) -> String {
        format!("oem-{}-{version}.raw", self.id)
    }
    /// Checks a disk plan against the platform's limits (`max_disk_bytes`),
    /// before anything is built.
    pub fn check_plan(&self, plan: &crate::layout::DiskPlan) -> Result<()> {
        if let Some(max) = self.max_disk_bytes {
            if plan.total_bytes() > max {
                bail!(
                    "platform {}: the disk image is {} B but the platform's smallest disk holds {max} B (layout '{}')",
                    self.id,
                    plan.total_bytes(),
                    plan.layout
                );
            }
        }
        Ok(())
    }
}

/// The fields an OEM extension's extension-release file has beyond an
/// extension's: its pretty name and version (the OS's).
pub fn release_extra(p: &Platform, os: &OsRelease) -> Vec<(String, String)> {
    vec![
        ("SYSEXT_NAME".into(), format!("\"{}\"", p.sysext.name.as_deref().unwrap_or(&p.name))),
        ("SYSEXT_VERSION_ID".into(), os.version_id().unwrap_or("0").into()),
    ]
}

/// `extension-release.oem-<id>` of a platform without a recipe: matches
/// the payload's os-release so systemd-sysext accepts the image on that OS.
pub fn extension_release(p: &Platform, os: &OsRelease, arch: Arch) -> String {
    let mut s = format!("ID={}\n", os.id());
    match os.version_id() {
        Some(v) => s.push_str(&format!("VERSION_ID={v}\n")),
        None => s.push_str(&format!("SYSEXT_LEVEL={}\n", os.get("SYSEXT_LEVEL").unwrap_or("1.0"))),
    }
    s.push_str(&format!("ARCHITECTURE={}\nSYSEXT_ID=oem-{}\n", arch.systemd(), p.id));
    for (k, v) in release_extra(p, os) {
        s.push_str(&format!("{k}={v}\n"));
    }
    s.push_str("EXTENSION_RELOAD_MANAGER=1\n");
    s
}

/// The OEM partition's tree and the scratch directory its sysext image
/// lives in (kept until the image is written).
pub struct OemTree {
    pub tree: Dir,
    pub scratch: tempfile::TempDir,
}

/// What building the OEM extension from its recipe (`sysext.recipe`) needs.
pub struct OemRecipe<'a> {
    /// The folder of extension recipes (`sysext/` of the checkout).
    pub sysext_dir: &'a Path,
    /// The payload's root (its `packages.lock` beside it).
    pub base: &'a Path,
    pub cache: &'a crate::recipe::Cache,
    pub recipe_epoch: i64,
    pub seed: &'a crate::seed::Seed,
    /// Build the recipe's packages too; false (`build-image
    /// --no-extensions`, a payload without `packages.lock`): its overlay
    /// alone, which is said in the log.
    pub packages: bool,
}

/// The OEM partition's tree. The sysext image is built into `scratch`, or
/// from the platform's recipe into the cache (one build per payload).
#[allow(clippy::too_many_arguments)]
pub fn build_tree(
    p: &Platform,
    os: &OsRelease,
    arch: Arch,
    scratch: &Path,
    epoch: i64,
    uuid: uuid::Uuid,
    recipe: Option<&OemRecipe>,
    log: &dyn Fn(&str),
    progress: &dyn Fn(&str, u64, u64),
) -> Result<OemTree> {
    let version = os.version_id().unwrap_or("0").to_string();
    let tmp = tempfile::Builder::new().prefix(".oem-").tempdir_in(scratch)?;
    let built_from_recipe = match (&p.sysext.recipe, recipe) {
        (Some(name), Some(r)) if r.packages => {
            let req = crate::sysext::Request {
                sysext_dir: r.sysext_dir.to_path_buf(),
                name: name.clone(),
                base: r.base.to_path_buf(),
                cache: r.cache,
                arch,
                recipe_epoch: r.recipe_epoch,
                epoch,
                seed: r.seed.clone(),
                release_extra: release_extra(p, os),
            };
            let c = crate::sysext::build_cached(&req, log, progress)
                .with_context(|| format!("{}: sysext.recipe '{name}'", p.file().display()))?;
            log(&format!(
                "oem: the {name} extension {} B{}, from {}",
                c.bytes,
                if c.reused { " (cached)" } else { "" },
                r.sysext_dir.join(name).display()
            ));
            Some(c.path)
        }
        (Some(name), None) => bail!(
            "{}: sysext.recipe '{name}': this build was given no sysext folder",
            p.file().display()
        ),
        _ => None,
    };
    let raw = match built_from_recipe {
        Some(raw) => raw,
        None => {
            let from = match (&p.sysext.recipe, recipe) {
                (Some(name), Some(r)) => {
                    let overlay = r.sysext_dir.join(name).join("overlay");
                    log(&format!(
                        "oem: the {name} extension from {} alone (its packages are left out: the payload has no package list)",
                        overlay.display()
                    ));
                    overlay
                }
                _ => p.dir.join("sysext"),
            };
            let mut content = if from.is_dir() { Dir::from_checkout(&from)? } else { Dir::new() };
            content.add_file(
                &format!("usr/lib/extension-release.d/extension-release.oem-{}", p.id),
                Source::Bytes(extension_release(p, os, arch).into_bytes()),
            )?;
            let staged = tmp.path().join("sysext-root");
            content.materialize(&staged, epoch)?;
            let raw = tmp.path().join(p.sysext_file(&version));
            let src = crate::fs::source::SourceDir { dir: staged, meta: None, rel: String::new() };
            crate::fs::erofs::make_image(&src, tmp.path(), &raw, epoch, uuid, None)
                .with_context(|| format!("building the oem-{} sysext image", p.id))?;
            raw
        }
    };

    let mut t = Dir::new();
    t.add_file(&format!("sysext/{}", p.sysext_file(&version)), Source::File(raw))?;
    t.add_file(&format!("sysext/active-oem-{}", p.id), Source::Bytes(Vec::new()))?;
    let mut rel = format!("ID={}\nNAME=\"{}\"\nVERSION_ID={version}\n", p.id, p.name);
    for (k, v) in &p.oem_release {
        rel.push_str(&format!("{k}=\"{v}\"\n"));
    }
    t.add_file("oem-release", Source::Bytes(rel.into_bytes()))?;
    let mut g = format!(
        "# OEM settings for {}, sourced by the main GRUB config\nset oem_id=\"{}\"\n",
        p.name,
        p.oem_id()
    );
    if let Some(a) = &p.grub.linux_append {
        g.push_str(&format!("set linux_append=\"{a}\"\n"));
    }
    if let Some(c) = &p.grub.linux_console {
        g.push_str(&format!("set linux_console=\"{c}\"\n"));
    }
    t.add_file("grub.cfg", Source::Bytes(g.into_bytes()))?;
    Ok(OemTree { tree: t, scratch: tmp })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn platform(max: Option<u64>) -> Platform {
        let mut j = serde_json::json!({
            "id": "t", "name": "T", "layout": "vm", "format": "raw",
            "compression": "none", "image_name": "t.bin"
        });
        if let Some(m) = max {
            j["max_disk_bytes"] = m.into();
        }
        serde_json::from_value(j).unwrap()
    }

    #[test]
    fn plan_is_checked_against_the_platforms_disk_size() {
        let f = Path::new(env!("CARGO_MANIFEST_DIR")).join("../layouts/disk_layout.json");
        let plan = crate::layout::LayoutFile::load(&f)
            .unwrap()
            .plan("vm", &crate::layout::IdPolicy::default())
            .unwrap();
        platform(None).check_plan(&plan).unwrap();
        platform(Some(plan.total_bytes())).check_plan(&plan).unwrap();
        let e = platform(Some(plan.total_bytes() - 1)).check_plan(&plan).unwrap_err().to_string();
        assert!(e.contains("platform t: the disk image is"), "{e}");
        assert!(e.contains("smallest disk holds") && e.contains("layout 'vm'"), "{e}");
    }

    fn load_json(j: serde_json::Value) -> Result<Platform> {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("t")).unwrap();
        std::fs::write(d.path().join("t/platform.json"), j.to_string()).unwrap();
        load(d.path(), "t")
    }

    fn with(field: &str, value: serde_json::Value) -> serde_json::Value {
        let mut j = serde_json::json!({
            "id": "t", "name": "T", "layout": "vm", "format": "raw",
            "compression": "bz2", "image_name": "t.bin"
        });
        let mut at = &mut j;
        let parts: Vec<&str> = field.split('.').collect();
        for p in &parts[..parts.len() - 1] {
            at = at.as_object_mut().unwrap().entry(*p).or_insert(serde_json::json!({}));
        }
        at[parts[parts.len() - 1]] = value;
        j
    }

    #[test]
    fn an_image_name_is_a_plain_file_name() {
        load_json(with("image_name", "flatcar_production_t_image.bin".into())).unwrap();
        load_json(with("image_name", "a".repeat(MAX_IMAGE_NAME).into())).unwrap();
        for bad in [
            "/../../../tmp/x.bin",
            "./../x.bin",
            "../x.bin",
            "sub/x.bin",
            "/tmp/x.bin",
            "",
            ".",
            "..",
            ".hidden.bin",
            "x\nbin",
            "x\u{7f}.bin",
        ] {
            let e = match load_json(with("image_name", bad.into())) {
                Ok(_) => panic!("image_name {bad:?} was accepted"),
                Err(e) => e.to_string(),
            };
            assert!(e.contains("t/platform.json: image_name "), "{bad:?}: {e}");
        }
        let long = "a".repeat(MAX_IMAGE_NAME + 1);
        let e = load_json(with("image_name", long.into())).unwrap_err().to_string();
        assert!(e.contains("at most 200 bytes"), "{e}");
    }

    #[test]
    fn every_artifact_name_of_the_longest_image_name_fits() {
        // The names the build derives, and their temporary names, are
        // created for real: each must fit NAME_MAX.
        let d = tempfile::tempdir().unwrap();
        let name = format!("{}.bin", "a".repeat(MAX_IMAGE_NAME - 4));
        let p = with("image_name", name.clone().into());
        let p: Platform = serde_json::from_value(p).unwrap();
        let mut names = vec![
            crate::image::verity_file_name(&name),
            crate::platform::kept_raw_name(&p).unwrap(),
            format!("{name}.raw"),
        ];
        for c in [Compression::None, Compression::Bz2, Compression::Gz, Compression::Zst] {
            let disk = crate::artifacts::disk_name(&name, c);
            names.push(format!("{disk}.DIGESTS"));
            names.push(disk);
        }
        for n in &names {
            let tmp = crate::outdir::partial_file(d.path(), n).unwrap();
            let tmp_name = tmp.path().file_name().unwrap().len();
            assert!(tmp_name <= 255, "{tmp_name}");
            std::fs::write(d.path().join(n), b"x").unwrap();
        }
    }

    #[test]
    fn quoted_settings_cannot_break_out_of_their_quotes() {
        for (field, bad) in [
            ("grub.linux_append", "console=ttyS0\"\nset root=evil"),
            ("grub.oem_id", "x$y"),
            ("grub.linux_console", "a\\b"),
            ("name", "T\nID=other"),
            ("sysext.name", "a`b`"),
            ("oem_release.HOME_URL", "x\"y"),
        ] {
            let e = match load_json(with(field, bad.into())) {
                Ok(_) => panic!("{field} {bad:?} was accepted"),
                Err(e) => e.to_string(),
            };
            assert!(e.contains(&format!("platform.json: {field} ")), "{e}");
        }
        let e = load_json(with("oem_release.home url", "x".into())).unwrap_err().to_string();
        assert!(e.contains("oem_release key \"home url\""), "{e}");
        load_json(with("grub.linux_append", "flatcar.autologin console=ttyS0,115200n8".into()))
            .unwrap();
    }

    #[test]
    fn extensions_are_names_listed_once() {
        let p = load_json(with(
            "extensions",
            serde_json::json!(["containerd-flatcar", "docker-flatcar"]),
        ))
        .unwrap();
        assert_eq!(p.extensions, ["containerd-flatcar", "docker-flatcar"]);
        assert!(load_json(with("id", "t".into())).unwrap().extensions.is_empty());
        for (v, want) in [
            (serde_json::json!(["a", "../b"]), "extensions[1]: \"../b\" is not an extension name"),
            (serde_json::json!(["a", "a"]), "extensions[1]: 'a' is listed twice"),
            (serde_json::json!([""]), "extensions[0]: \"\" is not"),
            (serde_json::json!("a"), "invalid type"),
        ] {
            let e = load_json(with("extensions", v.clone())).unwrap_err().to_string();
            assert!(e.contains("platform.json: ") && e.contains(want), "{v}: {e}");
        }
    }

    #[test]
    fn architectures_and_their_firmware() {
        let p = load_json(with("id", "t".into())).unwrap();
        assert_eq!(p.arch(Arch::Amd64).unwrap().firmware, [Firmware::Bios, Firmware::Uefi]);
        let e = p.arch(Arch::Arm64).unwrap_err().to_string();
        assert!(
            e.contains("platform t has no arm64 build") && e.contains("architectures lists amd64"),
            "{e}"
        );
        let both = serde_json::json!({"amd64": {"firmware": ["bios", "uefi"]}, "arm64": {"firmware": ["uefi"]}});
        let p = load_json(with("architectures", both)).unwrap();
        assert_eq!(p.arch(Arch::Arm64).unwrap().firmware, [Firmware::Uefi]);
        for (v, want) in [
            (
                serde_json::json!({"arm64": {"firmware": ["bios"]}}),
                "architectures.arm64.firmware: arm64 machines have no bios firmware",
            ),
            (
                serde_json::json!({"arm64": {"firmware": []}}),
                "architectures.arm64.firmware: name at least one",
            ),
            (serde_json::json!({}), "architectures: name at least one"),
            (serde_json::json!({"sparc": {"firmware": ["uefi"]}}), "unknown variant `sparc`"),
            (
                serde_json::json!({"amd64": {"firmware": ["coreboot"]}}),
                "unknown variant `coreboot`",
            ),
        ] {
            let e = load_json(with("architectures", v.clone())).unwrap_err().to_string();
            assert!(e.contains("platform.json: ") && e.contains(want), "{v}: {e}");
        }
    }

    #[test]
    fn the_oem_extension_names_the_architecture() {
        let p = load_json(with("id", "t".into())).unwrap();
        let os = OsRelease::parse("ID=flatcar\nVERSION_ID=1.2.3\n");
        assert_eq!(
            extension_release(&p, &os, Arch::Amd64),
            "ID=flatcar\nVERSION_ID=1.2.3\nARCHITECTURE=x86-64\nSYSEXT_ID=oem-t\nSYSEXT_NAME=\"T\"\nSYSEXT_VERSION_ID=1.2.3\nEXTENSION_RELOAD_MANAGER=1\n"
        );
        assert!(extension_release(&p, &os, Arch::Arm64).contains("\nARCHITECTURE=arm64\n"));
    }

    #[test]
    fn the_oem_recipe_is_the_platforms_own() {
        let p = load_json(with("sysext.recipe", "oem-t".into())).unwrap();
        assert_eq!(p.sysext.recipe.as_deref(), Some("oem-t"));
        let e = load_json(with("sysext.recipe", "oem-hetzner".into())).unwrap_err().to_string();
        assert!(
            e.contains("platform.json: sysext.recipe \"oem-hetzner\": the OEM extension's recipe is the folder oem-t"),
            "{e}"
        );
        // A recipe and the platform's own sysext/ folder: one or the other.
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("t/sysext/usr")).unwrap();
        std::fs::write(
            d.path().join("t/platform.json"),
            with("sysext.recipe", "oem-t".into()).to_string(),
        )
        .unwrap();
        let e = load(d.path(), "t").unwrap_err().to_string();
        assert!(e.contains("holds its files too: keep one"), "{e}");
        // The repository's Hetzner platform names its recipe, which exists.
        let oem = Path::new(env!("CARGO_MANIFEST_DIR")).join("../oem");
        let h = load(&oem, "hetzner").unwrap();
        let r = h.sysext.recipe.as_deref().unwrap();
        assert!(oem.join("../sysext").join(r).join(crate::sysext::DESCRIPTOR).is_file());
    }

    #[test]
    fn an_unknown_format_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("t")).unwrap();
        std::fs::write(
            d.path().join("t/platform.json"),
            r#"{"id": "t", "name": "T", "layout": "vm", "format": "vhdx", "compression": "none", "image_name": "t.bin"}"#,
        )
        .unwrap();
        let e = load(d.path(), "t").unwrap_err().to_string();
        assert!(e.contains("platform.json") && e.contains("unknown disk format 'vhdx'"), "{e}");
    }
}
