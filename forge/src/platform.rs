//! A platform image build: the disk pipeline (`image`) plus the boot chain
//! (`boot`), the OEM partition (`oem`) and the artifacts (`artifacts`), as
//! declared by `oem/<id>/platform.json`.

use crate::artifacts::{self, Artifact};
use crate::boot;
use crate::image::{self, BootConfig, BuildOutput, BuildRequest};
use crate::layout::IdPolicy;
use crate::oem::Platform;
use crate::payload::Payload;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct PlatformRequest {
    pub platform: Platform,
    pub payload: PathBuf,
    pub layout_file: PathBuf,
    /// Overrides the platform's layout.
    pub layout: Option<String>,
    pub output_dir: PathBuf,
    pub ids: IdPolicy,
    pub epoch: i64,
    /// The static forge-init binary.
    pub init: PathBuf,
    /// Kernel modules the initramfs loads.
    pub initramfs_modules: Vec<String>,
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
}

pub struct PlatformOutput {
    pub build: BuildOutput,
    pub disk: Artifact,
    pub version_txt: PathBuf,
    pub raw_kept: bool,
    pub stages: Vec<(String, std::time::Duration)>,
}

pub fn build(req: &PlatformRequest, log: &dyn Fn(&str)) -> Result<PlatformOutput> {
    let t = std::time::Instant::now();
    let p = &req.platform;
    let payload = Payload::open(&req.payload)?;
    std::fs::create_dir_all(&req.output_dir).with_context(|| {
        format!("{}: cannot create the output directory", req.output_dir.display())
    })?;
    crate::image::clean_stale(&req.output_dir);
    let scratch = crate::image::scratch_dir(&req.output_dir)?;
    let kernel = std::fs::read(&payload.kernel)?;
    let initramfs = boot::initramfs::build(
        &payload.root,
        &kernel,
        &req.init,
        &req.initramfs_modules,
        req.epoch,
    )?;
    log(&format!(
        "boot: initramfs {} B (forge-init + {} modules requested)",
        initramfs.len(),
        req.initramfs_modules.len()
    ));
    let grub = boot::grub::make_images("EFI-SYSTEM", scratch.path())?;
    log(&format!(
        "boot: GRUB core.img {} B, bootx64.efi {} B",
        grub.core_img.len(),
        grub.efi.len()
    ));
    let (oem_tree, _oem_guard) = crate::oem::build_tree(
        p,
        &payload.os_release,
        scratch.path(),
        req.epoch,
        req.ids.seed.uuid("oem-sysext"),
    )?;
    let mut stages = vec![("boot+oem".to_string(), t.elapsed())];
    let os_name = payload
        .os_release
        .get("PRETTY_NAME")
        .or(payload.os_release.get("NAME"))
        .unwrap_or("Linux")
        .to_string();
    let breq = BuildRequest {
        payload: req.payload.clone(),
        layout_file: req.layout_file.clone(),
        layout: req.layout.clone().unwrap_or_else(|| p.layout.clone()),
        output_dir: req.output_dir.clone(),
        image_name: p.image_name.clone(),
        ids: req.ids.clone(),
        epoch: req.epoch,
        oem: Some(oem_tree),
        esp_extra: Vec::new(),
        boot: Some(BootConfig {
            grub: Arc::new(grub),
            template: req.grub_template.clone(),
            os_name,
            initramfs,
        }),
        verify: req.verify,
        publish: req.keep_raw || p.compression == crate::oem::Compression::None,
    };
    let progress = crate::progress::reporter(req.progress.as_ref(), log);
    let out = image::build(&breq, log, &progress)?;
    stages.extend(out.stages.iter().cloned());
    if let Some(max) = p.max_disk_bytes {
        if out.plan.total_bytes() > max {
            let _ = std::fs::remove_file(&out.image);
            bail!(
                "platform {}: the disk image is {} B but the platform's smallest disk holds {max} B (layout '{}')",
                p.id,
                out.plan.total_bytes(),
                out.plan.layout
            );
        }
    }
    let t = std::time::Instant::now();
    // The disk in the platform's format: raw as built, or qcow2 converted from it.
    let _qcow2_guard;
    let disk_src = match p.format {
        crate::oem::Format::Raw => out.image.clone(),
        crate::oem::Format::Qcow2 => {
            let tmp = crate::image::partial_file(&req.output_dir, &p.image_name)?;
            let raw = std::fs::File::open(&out.image)?;
            let len = raw.metadata()?.len();
            let mut w = std::io::BufWriter::with_capacity(1 << 20, tmp.as_file().try_clone()?);
            let st = crate::io::qcow2::write(&raw, len, &mut w)?;
            std::io::Write::flush(&mut w)?;
            log(&format!("qcow2: {} data clusters, {} B", st.data_clusters, st.file_size));
            if req.verify {
                verify_qcow2(tmp.path(), &out.image)?;
                log("verify: qemu-img check clean, qemu-img compare identical to the raw image");
            }
            let path = tmp.path().to_path_buf();
            _qcow2_guard = tmp.into_temp_path();
            path
        }
    };
    let disk = artifacts::publish_disk(
        &disk_src,
        &p.image_name,
        &req.output_dir,
        p.compression,
        p.compression_level,
        req.threads,
        req.verify,
        &progress,
    )?;
    if req.verify {
        log(&format!(
            "verify: {} decoded in full and compared with the raw image",
            disk.path.display()
        ));
    }
    stages.push(("compress".into(), t.elapsed()));
    let raw_kept = out.temp.is_none();
    let version_txt = req.output_dir.join("version.txt");
    image::write_atomic(
        &version_txt,
        artifacts::version_txt(&payload.os_release, req.epoch, &req.sdk_version).as_bytes(),
    )?;
    Ok(PlatformOutput { build: out, disk, version_txt, raw_kept, stages })
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

/// `qemu-img check` and `qemu-img compare` against the raw image.
pub fn verify_qcow2(qcow2: &Path, raw: &Path) -> Result<()> {
    let qemu_img =
        crate::tools::path(crate::tools::Tool { program: "qemu-img", package: "qemu-utils" })?;
    crate::fs::run(duct::cmd!(&qemu_img, "check", "-q", "-f", "qcow2", qcow2), "qemu-img check")?;
    crate::fs::run(
        duct::cmd!(&qemu_img, "compare", "-q", "-f", "raw", "-F", "qcow2", raw, qcow2),
        "qemu-img compare",
    )?;
    Ok(())
}
