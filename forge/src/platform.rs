//! A platform image build: the disk pipeline (`image`) plus the boot chain
//! (`boot`), the OEM partition (`oem`) and the artifacts (`artifacts`), as
//! declared by `oem/<id>/platform.json`. Every artifact (the disk, its
//! DIGESTS, the verity side file, `version.txt`, the raw image when kept)
//! is published in one step once all are written and verified.

use crate::artifacts::{self, Artifact, CompressOptions, DiskRequest};
use crate::boot::{self, BootConfig};
use crate::image::{self, BuildOutput, BuildRequest, Stage};
use crate::layout::IdPolicy;
use crate::oem::Platform;
use crate::outdir::{self, OutputDir, Staged};
use crate::payload::Payload;
use anyhow::{anyhow, Context, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

pub struct PlatformRequest {
    pub platform: Platform,
    /// The architecture built (the platform must list it, the payload be for it).
    pub arch: crate::arch::Arch,
    /// Downloads of other architectures' tools (GRUB modules) and, for the
    /// platform's extensions, their trees and images.
    pub cache: crate::recipe::Cache,
    pub payload: PathBuf,
    pub layout_file: PathBuf,
    /// Overrides the platform's layout.
    pub layout: Option<String>,
    pub ids: IdPolicy,
    pub epoch: i64,
    /// The static forge-init binary.
    pub init: PathBuf,
    /// Kernel modules the initramfs loads.
    pub initramfs_modules: Vec<String>,
    /// Other files the initramfs carries (`boot/initramfs/`).
    pub initramfs_files: Vec<boot::initramfs::Extra>,
    /// The main grub.cfg template.
    pub grub_template: String,
    /// Keep the uncompressed image beside the compressed one.
    pub keep_raw: bool,
    pub threads: usize,
    pub sdk_version: String,
    /// Check everything before publishing (fsck, GPT, verity, a full decode of the compressed disk).
    pub verify: bool,
    /// Progress of long steps: (step, bytes done, bytes total). None: log lines every 10 %.
    pub progress: Option<crate::progress::Sink>,
    /// Where the platform's `extensions` come from; needed when it lists any.
    pub sysext: Option<SysextInputs>,
}

/// What building a platform's base extensions needs (see `sysext::Request`).
pub struct SysextInputs {
    /// The folder of extension recipes (`sysext/` of the checkout).
    pub sysext_dir: PathBuf,
    /// The epoch recipe trees are stamped with.
    pub recipe_epoch: i64,
    /// Build the packages of the OEM extension's recipe (false: its
    /// overlay alone, for a payload without a `packages.lock`).
    pub oem_packages: bool,
}

/// The platform's `extensions`, each built for the payload (or taken from
/// the cache: one build per payload and architecture), in the order listed.
fn base_extensions(
    req: &PlatformRequest,
    payload: &Payload,
    log: &dyn Fn(&str),
) -> Result<Vec<image::BaseExtension>> {
    let p = &req.platform;
    let Some(inputs) = &req.sysext else {
        return Ok(Vec::new());
    };
    let progress = crate::progress::reporter(req.progress.as_ref(), log);
    let mut v = Vec::new();
    for name in &p.extensions {
        let sreq = crate::sysext::Request {
            sysext_dir: inputs.sysext_dir.clone(),
            name: name.clone(),
            base: payload.root.clone(),
            cache: &req.cache,
            arch: req.arch,
            recipe_epoch: inputs.recipe_epoch,
            epoch: req.epoch,
            seed: req.ids.seed.clone(),
            release_extra: Vec::new(),
        };
        let c = crate::sysext::build_cached(&sreq, log, &progress)
            .with_context(|| format!("{}: extensions: '{name}'", p.file().display()))?;
        log(&format!(
            "sysext '{name}': {} B{}, into USR as /usr/{}/{name}.raw",
            c.bytes,
            if c.reused { " (cached)" } else { "" },
            crate::sysext::USR_DIR
        ));
        v.push(image::BaseExtension { name: name.clone(), raw: c.path });
    }
    Ok(v)
}

pub struct PlatformOutput {
    pub build: BuildOutput,
    pub disk: Artifact,
    pub version_txt: PathBuf,
    pub raw_kept: bool,
    pub stages: Vec<Stage>,
}

/// The file name of the raw image when it is kept (`--keep-raw`) beside a
/// disk in another format or compression: `image_name` when that is free,
/// else `<image_name>.raw` (a qcow2 disk published uncompressed takes
/// `image_name` itself). None when the disk artifact is the raw image.
pub fn kept_raw_name(p: &crate::oem::Platform) -> Option<String> {
    let disk = artifacts::disk_name(&p.image_name, p.compression);
    if disk != p.image_name {
        Some(p.image_name.clone())
    } else if !p.format.is_raw() {
        Some(format!("{}.raw", p.image_name))
    } else {
        None
    }
}

/// Builds a platform's image into `out` (locked by the caller for the
/// whole build; see [`OutputDir::lock`]).
pub fn build(req: &PlatformRequest, out: &OutputDir, log: &dyn Fn(&str)) -> Result<PlatformOutput> {
    let t = Instant::now();
    let p = &req.platform;
    // First: the platform is built for this architecture.
    let firmware = p.arch(req.arch)?.firmware.clone();
    // Plan first: a layout the platform cannot take fails before anything is built.
    let layout = req.layout.as_deref().unwrap_or(&p.layout);
    p.check_layout(&crate::layout::LayoutFile::load(&req.layout_file)?, req.layout.as_deref())?;
    let plan = image::plan(&req.layout_file, layout, &req.ids, log)?;
    p.check_plan(&plan)?;
    if !p.extensions.is_empty() {
        let inputs = req.sysext.as_ref().ok_or_else(|| {
            anyhow!(
                "{}: extensions are listed but this build was given no sysext folder",
                p.file().display()
            )
        })?;
        crate::sysext::check_listed(&inputs.sysext_dir, &p.extensions, &p.file(), req.arch)?;
    }
    let payload = Payload::open(&req.payload)?;
    payload.check_arch(req.arch)?;
    let mut stages = vec![Stage { name: "plan".into(), elapsed: t.elapsed() }];

    let t = Instant::now();
    let scratch = outdir::scratch_dir(out.path())?;
    let initramfs = boot::initramfs::build(
        &payload,
        &req.init,
        &req.initramfs_modules,
        &req.initramfs_files,
        req.epoch,
    )?;
    log(&format!(
        "boot: initramfs {} B (forge-init + {} modules requested)",
        initramfs.len(),
        req.initramfs_modules.len()
    ));
    let dirs = boot::grub::module_dirs(req.arch, &firmware, &req.cache, log)?;
    for d in &dirs.downloaded {
        log(&format!("boot: GRUB modules for {} from {d}", req.arch));
    }
    let grub = boot::grub::make_images(&dirs, plan.fs_label("/boot")?, scratch.path())?;
    if let Some(b) = &grub.bios {
        log(&format!("boot: GRUB core.img {} B (BIOS)", b.core_img.len()));
    }
    if let Some(e) = &grub.efi {
        log(&format!("boot: GRUB {} {} B (UEFI)", e.path, e.bytes.len()));
    }
    // The sysext image lives in `_oem_scratch` (or the cache) until the image is built.
    let oem_recipe = req.sysext.as_ref().map(|s| crate::oem::OemRecipe {
        sysext_dir: &s.sysext_dir,
        base: &payload.root,
        cache: &req.cache,
        recipe_epoch: s.recipe_epoch,
        seed: &req.ids.seed,
        packages: s.oem_packages,
    });
    let crate::oem::OemTree { tree: oem_tree, scratch: _oem_scratch } = crate::oem::build_tree(
        p,
        &payload.os_release,
        req.arch,
        scratch.path(),
        req.epoch,
        req.ids.seed.uuid("oem-sysext"),
        oem_recipe.as_ref(),
        log,
        &crate::progress::reporter(req.progress.as_ref(), log),
    )?;
    stages.push(Stage { name: "boot+oem".into(), elapsed: t.elapsed() });
    let t = Instant::now();
    let extensions = base_extensions(req, &payload, log)?;
    if !extensions.is_empty() {
        stages.push(Stage { name: "extensions".into(), elapsed: t.elapsed() });
    }
    let os_name = payload
        .os_release
        .get("PRETTY_NAME")
        .or(payload.os_release.get("NAME"))
        .unwrap_or("Linux")
        .to_string();
    let breq = BuildRequest {
        payload,
        plan,
        seed: req.ids.seed.clone(),
        image_name: p.image_name.clone(),
        epoch: req.epoch,
        oem: Some(oem_tree),
        extensions,
        esp_extra: Vec::new(),
        boot: Some(BootConfig {
            grub: Arc::new(grub),
            template: req.grub_template.clone(),
            os_name,
            initramfs,
        }),
        verify: req.verify,
        // The raw image is staged here below, under the name it is kept as.
        publish: false,
    };
    let progress = crate::progress::reporter(req.progress.as_ref(), log);
    let mut staged = Staged::new();
    let mut built = image::build_staged(&breq, out, &mut staged, log, &progress)?;
    stages.extend(built.stages.iter().cloned());
    let t = Instant::now();
    // The disk in the platform's format: raw as built, or converted from it.
    let disk_src = crate::format::convert(
        p.format.0,
        &built.image,
        out.path(),
        &p.image_name,
        req.verify,
        log,
    )?;
    let disk = artifacts::publish_disk(
        &DiskRequest {
            source: &disk_src.path,
            image_name: &p.image_name,
            out_dir: out.path(),
            compress: CompressOptions {
                compression: p.compression,
                level: p.compression_level,
                threads: req.threads,
                verify: req.verify,
            },
        },
        &mut staged,
        &progress,
    )?;
    if req.verify {
        log(&format!(
            "verify: {} decoded in full and compared with the raw image",
            disk.path.display()
        ));
    }
    stages.push(Stage { name: "compress".into(), elapsed: t.elapsed() });
    let t = Instant::now();
    drop(disk_src);
    // The raw image, when kept under a name of its own.
    let raw_name = kept_raw_name(p);
    let mut raw_kept = false;
    if let Some(n) = &raw_name {
        if req.keep_raw {
            let temp = built.temp.take().and_then(|t| std::sync::Arc::try_unwrap(t).ok());
            let temp = temp.ok_or_else(|| anyhow!("the raw image is still in use"))?;
            staged.add_path(temp, n);
            built.image = out.path().join(n);
            raw_kept = true;
        } else {
            staged.retire(n);
        }
    }
    let version_txt = out.path().join("version.txt");
    staged.add_bytes(
        out.path(),
        "version.txt",
        artifacts::version_txt(&breq.payload.os_release, req.epoch, &req.sdk_version).as_bytes(),
    )?;
    // Everything is written and verified: publish it all in one step.
    staged.commit(out)?;
    stages.push(Stage { name: "commit".into(), elapsed: t.elapsed() });
    Ok(PlatformOutput { build: built, disk, version_txt, raw_kept, stages })
}

/// Reads `boot/initramfs-modules.txt`-style lists.
pub fn read_list(path: &Path) -> Result<Vec<String>> {
    let t = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    Ok(t.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disk_too_large_for_the_platform_fails_before_anything_is_built() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut platform = crate::oem::load(&root.join("oem"), "hetzner").unwrap();
        platform.max_disk_bytes = Some(1 << 20);
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        let req = request_without_inputs(platform, &root, d.path());
        let dir = OutputDir::lock(&out, outdir::IfLocked::Fail, &|_| {}).unwrap();
        let e = match build(&req, &dir, &|_| {}) {
            Ok(_) => panic!("built a disk larger than the platform allows"),
            Err(e) => format!("{e:#}"),
        };
        assert!(e.contains("platform hetzner: the disk image is"), "{e}");
        assert!(e.contains("smallest disk holds 1048576 B"), "{e}");
        let written: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != outdir::LOCK_FILE)
            .collect();
        assert!(written.is_empty(), "wrote {written:?}");
    }

    /// A request whose payload and init binary do not exist, so a check
    /// that must come first is seen to come before either is read.
    fn request_without_inputs(platform: Platform, root: &Path, d: &Path) -> PlatformRequest {
        PlatformRequest {
            platform,
            arch: crate::arch::Arch::Amd64,
            cache: crate::recipe::Cache { root: d.join("cache") },
            payload: d.join("no-payload"),
            layout_file: root.join("layouts/disk_layout.json"),
            layout: None,
            ids: IdPolicy::default(),
            epoch: 0,
            init: d.join("no-init"),
            initramfs_modules: Vec::new(),
            initramfs_files: Vec::new(),
            grub_template: String::new(),
            keep_raw: false,
            threads: 1,
            sdk_version: "0".into(),
            verify: true,
            progress: None,
            sysext: None,
        }
    }

    #[test]
    fn an_unknown_layout_fails_first_naming_the_platform_json() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut platform = crate::oem::load(&root.join("oem"), "hetzner").unwrap();
        platform.layout = "no-such-layout".into();
        let d = tempfile::tempdir().unwrap();
        let mut req = request_without_inputs(platform, &root, d.path());
        let dir = OutputDir::lock(&d.path().join("out"), outdir::IfLocked::Fail, &|_| {}).unwrap();
        let e = format!("{:#}", build(&req, &dir, &|_| {}).err().unwrap());
        assert!(e.contains("oem/hetzner/platform.json: layout 'no-such-layout'"), "{e}");
        assert!(e.contains("disk_layout.json (it has: ") && e.contains("vm"), "{e}");
        // A layout given on the command line is named as such.
        req.layout = Some("nope".into());
        let e = format!("{:#}", build(&req, &dir, &|_| {}).err().unwrap());
        assert!(e.starts_with("--layout 'nope' is not in "), "{e}");
    }
}
