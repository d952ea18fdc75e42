//! The pipeline that turns a payload into a disk image:
//! payload → layout → partitions (GPT) → filesystems → dm-verity → boot files
//! → verify → publish. Each stage is a module taking plain data; this one only
//! strings them together, times them, and makes the output atomic: the image
//! is written under a temporary name in the output directory, verified, and
//! only then renamed, so a failed build leaves nothing under the final name.

use crate::fs::tree::{Dir, Source};
use crate::fs::{self, Content, FsJob, FsReport};
use crate::layout::{DiskPlan, Feature, IdPolicy, LayoutFile, PartitionPlan};
use crate::payload::Payload;
use crate::verity::{self, VerityInfo};
use crate::{table, tools};
use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Everything a build needs.
#[derive(Clone, Debug)]
pub struct BuildRequest {
    pub payload: PathBuf,
    pub layout_file: PathBuf,
    pub layout: String,
    pub output_dir: PathBuf,
    /// File name of the raw image, e.g. `flatcar_production_image.bin`.
    pub image_name: String,
    pub ids: IdPolicy,
    /// Unix time stamped on every file and filesystem (SOURCE_DATE_EPOCH).
    pub epoch: i64,
    /// Contents of the partition mounted at `/oem`, if any.
    pub oem: Option<Dir>,
    /// Extra files for the ESP (`/`-separated paths).
    pub esp_extra: Vec<(String, Source)>,
    /// The boot chain (GRUB and initramfs); None for a disk without one.
    pub boot: Option<BootConfig>,
    /// Verify before publishing (GPT, fsck, verity); false only on request.
    pub verify: bool,
    /// Rename the image to its final name; false keeps it under its
    /// temporary name (deleted when the output is dropped), for builds whose
    /// published artifact is a compressed copy.
    pub publish: bool,
}

/// Everything the boot chain needs besides the plan.
#[derive(Clone)]
pub struct BootConfig {
    pub grub: std::sync::Arc<crate::boot::grub::Images>,
    /// The main grub.cfg template (minijinja).
    pub template: String,
    pub os_name: String,
    /// The initramfs for the payload's kernel.
    pub initramfs: Vec<u8>,
}

impl std::fmt::Debug for BootConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootConfig")
            .field("os_name", &self.os_name)
            .field("initramfs", &self.initramfs.len())
            .finish()
    }
}

/// What a build produced: plain data out.
#[derive(Clone, Debug)]
pub struct BuildOutput {
    pub image: PathBuf,
    pub plan: DiskPlan,
    pub filesystems: Vec<(u32, FsReport)>,
    /// Per verity-protected partition: (partition number, slot letter, info).
    pub verity: Vec<(u32, String, VerityInfo)>,
    pub verity_file: Option<PathBuf>,
    pub stages: Vec<(String, Duration)>,
    /// Bytes the image occupies on disk (its non-zero blocks).
    pub allocated: u64,
    /// Holds the unpublished image (when `publish` was false) until dropped.
    pub temp: Option<std::sync::Arc<tempfile::TempPath>>,
}

/// Slot letter of an A/B partition from its label (`USR-A` → `a`).
pub fn slot_of(p: &PartitionPlan) -> Option<String> {
    let l = &p.label;
    let (head, tail) = l.rsplit_once('-')?;
    (!head.is_empty() && tail.len() == 1 && tail.chars().all(|c| c.is_ascii_alphabetic()))
        .then(|| tail.to_ascii_lowercase())
}

/// The GRUB fragment on the ESP that carries one slot's verity parameters.
pub fn verity_cfg_path(slot: &str) -> String {
    format!("flatcar/verity-{slot}.cfg")
}

pub fn verity_cfg(info: &VerityInfo) -> String {
    format!(
        "# dm-verity parameters of this slot's /usr, written by the image build\nset verity_usrhash=\"{}\"\nset verity_usrsalt=\"{}\"\nset verity_usrdatablocks=\"{}\"\nset verity_usrhashoffset=\"{}\"\n",
        info.root_hex(),
        info.salt_hex(),
        info.data_blocks,
        info.hash_offset
    )
}

struct Stages(Vec<(String, Duration)>, Instant);
impl Stages {
    fn mark(&mut self, name: &str) {
        let now = Instant::now();
        self.0.push((name.to_string(), now - self.1));
        self.1 = now;
    }
}

/// Builds an image. `log` receives one line per step, `progress` (step,
/// bytes done, bytes total) as each filesystem is built and checked.
pub fn build(
    req: &BuildRequest,
    log: &dyn Fn(&str),
    progress: &dyn Fn(&str, u64, u64),
) -> Result<BuildOutput> {
    let mut st = Stages(Vec::new(), Instant::now());
    let payload = Payload::open(&req.payload)?;
    st.mark("payload");
    let mut plan = LayoutFile::load(&req.layout_file)?.plan(&req.layout, &req.ids)?;
    // What the installed tools cannot build as asked falls back, loudly.
    for w in fs::adapt(&mut plan) {
        log(&format!("warning: {w}"));
    }
    let mut needed = vec![tools::FSCK_FAT, tools::E2FSCK];
    for p in &plan.partitions {
        if let Some(f) = &p.fs {
            needed.extend(fs::tools_for(f.kind));
        }
    }
    tools::require(&needed)?;
    st.mark("layout");
    log(&format!(
        "layout '{}' from {}: {} partitions, disk {} sectors ({} B)",
        plan.layout,
        plan.source.display(),
        plan.partitions.len(),
        plan.total_blocks,
        plan.total_bytes()
    ));

    std::fs::create_dir_all(&req.output_dir).with_context(|| {
        format!("{}: cannot create the output directory", req.output_dir.display())
    })?;
    let final_path = req.output_dir.join(&req.image_name);
    clean_stale(&req.output_dir);
    let tmp = partial_file(&req.output_dir, &req.image_name)?;
    let image_path = tmp.path().to_path_buf();
    let mut image = tmp.as_file().try_clone()?;
    image
        .set_len(plan.total_bytes())
        .with_context(|| format!("{}: cannot size the image", image_path.display()))?;
    table::write(&mut image, &plan)?;
    if let Some(b) = &req.boot {
        crate::boot::grub::install_bios(&image, &plan, &b.grub.boot_img, &b.grub.core_img)?;
        log("boot: GRUB boot.img in the MBR, core.img in BIOS-BOOT");
    }
    st.mark("partitions");

    let scratch_guard = scratch_dir(&req.output_dir)?;
    let scratch = scratch_guard.path();
    let mut filesystems = Vec::new();
    let mut verity_infos = Vec::new();
    // Verity-protected partitions first: the ESP carries their root hashes.
    let mut order: Vec<&PartitionPlan> =
        plan.partitions.iter().filter(|p| p.fs.is_some()).collect();
    order.sort_by_key(|p| (!p.has(Feature::Verity), p.mount.as_deref() == Some("/boot"), p.number));
    let fs_total: u64 = order.iter().map(|p| plan.size(p)).sum();
    let mut fs_done = 0;
    for p in order {
        let fsp = p.fs.as_ref().unwrap();
        let what = format!("partition {} ({}, {})", p.number, p.label, fsp.kind.name());
        let content = content_for(req, &payload, &plan, p, &verity_infos)?;
        log(&format!("{what}: building {} B filesystem", fsp.bytes()));
        let job = FsJob {
            plan: fsp,
            content: &content,
            image: &image,
            image_path: &image_path,
            offset: plan.offset(p),
            first_lba: p.first_block,
            epoch: req.epoch,
            scratch,
            volume_id: req.ids.seed.u32(&format!("volume-id:{}", p.label)),
        };
        let rep = fs::build(&job).with_context(|| what.clone())?;
        st.mark(&format!("fs {}", p.label));
        if p.has(Feature::Verity) {
            let slot = slot_of(p)
                .ok_or_else(|| anyhow!("{what}: verity partitions need an A/B label like USR-A"))?;
            let info = verity::format(
                &image,
                plan.offset(p),
                plan.size(p),
                fsp.bytes() / verity::BLOCK,
                fsp.bytes(),
                req.ids.seed.bytes(&format!("verity-salt:{}", p.label)),
                req.ids.seed.uuid(&format!("verity-uuid:{}", p.label)),
            )
            .with_context(|| what.clone())?;
            log(&format!("{what}: dm-verity root hash {}", info.root_hex()));
            verity_infos.push((p.number, slot, info));
            st.mark(&format!("verity {}", p.label));
        }
        filesystems.push((p.number, rep));
        fs_done += plan.size(p);
        progress("filesystems", fs_done, fs_total);
    }

    if req.verify {
        verify(&image, &image_path, &plan, &verity_infos, scratch, log, progress)?;
    } else {
        log("verify: SKIPPED (--no-verify): GPT, filesystems and dm-verity were not checked");
    }
    st.mark("verify");

    image.sync_all()?;
    let allocated = crate::io::sparse::allocated_bytes(&image)?;
    let verity_file = match verity_infos.first() {
        Some((_, _, info)) => {
            let p = req
                .output_dir
                .join(format!("{}_verity.txt", req.image_name.trim_end_matches(".bin")));
            write_atomic(&p, info.side_file().as_bytes())?;
            Some(p)
        }
        None => None,
    };
    let (image_path, temp) = if req.publish {
        tmp.persist(&final_path).map_err(|e| {
            anyhow!("{}: cannot rename into place: {}", final_path.display(), e.error)
        })?;
        (final_path, None)
    } else {
        let tp = tmp.into_temp_path();
        (tp.to_path_buf(), Some(std::sync::Arc::new(tp)))
    };
    st.mark("publish");
    Ok(BuildOutput {
        image: image_path,
        plan,
        filesystems,
        verity: verity_infos,
        verity_file,
        stages: st.0,
        allocated,
        temp,
    })
}

/// What goes into a partition, by where the OS mounts it.
fn content_for(
    req: &BuildRequest,
    payload: &Payload,
    plan: &DiskPlan,
    p: &PartitionPlan,
    verity: &[(u32, String, VerityInfo)],
) -> Result<Content> {
    Ok(match p.mount.as_deref() {
        Some("/usr") => {
            if slot_of(p).as_deref().is_some_and(|s| s != "a") {
                Content::Tree(Dir::new()) // the update slot starts empty
            } else {
                Content::Directory(payload.usr())
            }
        }
        Some("/boot") => {
            let mut t = Dir::new();
            t.add_file("flatcar/vmlinuz-a", Source::File(payload.kernel.clone()))?;
            match (&req.boot, &payload.initrd) {
                (Some(b), _) => {
                    t.add_file("flatcar/initrd-a", Source::Bytes(b.initramfs.clone()))?
                }
                (None, Some(i)) => t.add_file("flatcar/initrd-a", Source::File(i.clone()))?,
                (None, None) => {}
            }
            if let Some(b) = &req.boot {
                let slots: Vec<crate::boot::grub::Slot> = plan
                    .partitions
                    .iter()
                    .filter(|q| {
                        q.mount.as_deref() == Some("/usr")
                            || Some(q.type_guid) == crate::layout::type_guid("flatcar-rootfs")
                    })
                    .filter_map(|q| {
                        slot_of(q).map(|letter| crate::boot::grub::Slot {
                            letter,
                            partuuid: q.uuid.to_string(),
                        })
                    })
                    .collect();
                let ctx = crate::boot::grub::ConfigContext::flatcar(&b.os_name, slots);
                t.add_file(
                    "flatcar/grub/grub.cfg",
                    Source::Bytes(
                        crate::boot::grub::render_config(&b.template, &ctx)?.into_bytes(),
                    ),
                )?;
                t.add_file("EFI/boot/bootx64.efi", Source::Bytes(b.grub.efi.clone()))?;
                t.add_file("flatcar/first_boot", Source::Bytes(Vec::new()))?;
            }
            for (_, slot, info) in verity {
                t.add_file(&verity_cfg_path(slot), Source::Bytes(verity_cfg(info).into_bytes()))?;
            }
            for (path, src) in &req.esp_extra {
                t.add_file(path, src.clone())?;
            }
            Content::Tree(t)
        }
        Some("/") => {
            let mut t = Dir::new();
            for extra in payload.root_extras()? {
                let name = extra.file_name().unwrap().to_string_lossy().into_owned();
                let m = std::fs::symlink_metadata(&extra)?;
                if m.is_dir() {
                    t.add(&name, crate::fs::tree::Node::Dir(Dir::from_path(&extra)?))?;
                } else if m.is_file() {
                    t.add_file(&name, Source::File(extra.clone()))?;
                } else if m.file_type().is_symlink() {
                    t.add(
                        &name,
                        crate::fs::tree::Node::Symlink(
                            std::fs::read_link(&extra)?.to_string_lossy().into_owned(),
                        ),
                    )?;
                }
            }
            Content::Tree(t)
        }
        Some("/oem") => Content::Tree(req.oem.clone().unwrap_or_default()),
        _ => Content::Tree(Dir::new()),
    })
}

/// Checks the finished image before it is published: the GPT read back with
/// both CRCs matches the plan; FAT and ext filesystems pass their fsck; each
/// verity tree's root hash recomputed from the partition matches.
pub fn verify(
    image: &std::fs::File,
    image_path: &Path,
    plan: &DiskPlan,
    verity: &[(u32, String, VerityInfo)],
    scratch: &Path,
    log: &dyn Fn(&str),
    progress: &dyn Fn(&str, u64, u64),
) -> Result<()> {
    let t = table::read(image).context("verify: reading back the GPT")?;
    if t.disk_guid != plan.disk_guid || t.entries.len() != plan.partitions.len() {
        bail!("verify: the GPT read back does not match the layout");
    }
    for (e, p) in t.entries.iter().zip(&plan.partitions) {
        if e.number != p.number
            || e.first_lba != p.first_block
            || e.sectors() != p.blocks
            || e.uuid != p.uuid
            || e.type_guid != p.type_guid
            || e.name != p.label
            || e.attributes != p.attributes
        {
            bail!("verify: GPT entry {} read back differs from the layout", e.number);
        }
    }
    let fsck = |f: &crate::layout::FsPlan| {
        matches!(
            f.kind,
            crate::layout::FsKind::Vfat | crate::layout::FsKind::Ext2 | crate::layout::FsKind::Ext4
        )
    };
    let total: u64 = plan
        .partitions
        .iter()
        .filter(|p| p.fs.as_ref().is_some_and(fsck))
        .map(|p| plan.size(p))
        .sum::<u64>()
        + verity
            .iter()
            .filter_map(|(num, _, _)| plan.partitions.iter().find(|p| p.number == *num))
            .map(|p| plan.size(p))
            .sum::<u64>();
    let mut done = 0;
    for p in &plan.partitions {
        let Some(f) = &p.fs else { continue };
        if fsck(f) {
            fs::check(f.kind, image, image_path, plan.offset(p), f.bytes(), scratch)
                .with_context(|| format!("verify: partition {} ({})", p.number, p.label))?;
            done += plan.size(p);
            progress("verify", done, total);
        }
    }
    for (num, _, info) in verity {
        let p = plan.partitions.iter().find(|p| p.number == *num).unwrap();
        let root = verity::compute_root(image, plan.offset(p), info.hash_offset)?;
        if root != Some(info.root_hash) {
            bail!(
                "verify: partition {} ({}): dm-verity root hash does not match the data",
                p.number,
                p.label
            );
        }
        done += plan.size(p);
        progress("verify", done, total);
    }
    log("verify: GPT, filesystems and dm-verity checked");
    Ok(())
}

/// A temporary file in `dir` for the artifact `name`, named
/// `.<name>.<pid>.<random>.partial` so a later run can tell it was left by a
/// process that died (SIGKILL leaves no chance to clean up) and remove it.
pub fn partial_file(dir: &Path, name: &str) -> Result<tempfile::NamedTempFile> {
    tempfile::Builder::new()
        .prefix(&format!(".{name}.{}.", std::process::id()))
        .suffix(".partial")
        .tempfile_in(dir)
        .with_context(|| format!("{}: cannot create a temporary file", dir.display()))
}

/// A scratch directory in `dir` for one run, removed when dropped, and by a
/// later run if this process dies.
pub fn scratch_dir(dir: &Path) -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(&format!(".forge-scratch.{}.", std::process::id()))
        .suffix(".partial")
        .tempdir_in(dir)
        .with_context(|| format!("{}: cannot create a scratch directory", dir.display()))
}

/// Removes `.*.<pid>.*.partial` files and directories in `dir` whose process is gone.
pub fn clean_stale(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if !(n.starts_with('.') && n.ends_with(".partial")) {
            continue;
        }
        let parts: Vec<&str> = n.trim_end_matches(".partial").rsplitn(3, '.').collect();
        let Some(pid) = parts.get(1).and_then(|p| p.parse::<i32>().ok()) else { continue };
        let alive = unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        if !alive {
            if e.path().is_dir() {
                let _ = std::fs::remove_dir_all(e.path());
            } else {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Writes a small file under a temporary name, then renames it into place.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = partial_file(dir, &name)?;
    std::fs::write(tmp.path(), data)
        .with_context(|| format!("{}: cannot write", tmp.path().display()))?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .map_err(|e| anyhow!("{}: cannot rename into place: {}", path.display(), e.error))?;
    Ok(())
}
