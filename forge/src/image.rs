//! The pipeline that turns a payload into a disk image, as named phases:
//!
//! ```text
//! plan ─► table ─► usr_and_verity ─► esp ─► other_partitions ─► verify ─► publish
//! ```
//!
//! - [`plan`]: the layout resolved into a [`DiskPlan`], host tools checked.
//! - [`table`]: the image sized, the GPT written, GRUB installed for BIOS.
//! - [`usr_and_verity`]: the `/usr` partitions and the dm-verity trees of
//!   the protected ones, whose root hashes the ESP carries.
//! - [`esp`]: the partition mounted at `/boot`, with the contents
//!   `boot::esp::contents` decides from the verity results.
//! - [`other_partitions`]: everything else (ROOT, OEM, …), by mount point.
//! - [`verify`]: GPT read back, fsck, verity recomputed.
//! - [`publish`]: the verity side file and the image staged, to be renamed
//!   into place together.
//!
//! Each phase takes plain data and gives plain data, so a test can drive one
//! alone; [`build`] strings them together, times them, and makes the output
//! atomic: the image and its verity side file are written under temporary
//! names in the (locked) output directory, verified, and only then renamed
//! together ([`outdir::Staged::commit`]), so a failed build leaves nothing
//! new under a final name and an earlier build's artifacts untouched.
//! [`build_staged`] leaves the commit to the caller, whose own artifacts
//! (a compressed disk, its DIGESTS) join the same step.

use crate::boot::esp::{self, EspInput};
use crate::boot::BootConfig;
use crate::fs::source::SourceDir;
use crate::fs::tree::{Dir, Source};
use crate::fs::{self, Content, FsJob, FsReport};
use crate::layout::{DiskPlan, Feature, FsKind, FsPlan, IdPolicy, LayoutFile, PartitionPlan};
use crate::outdir::{self, OutputDir, Staged};
use crate::payload::Payload;
use crate::seed::Seed;
use crate::verity::{self, ProtectedPartition};
use crate::{table, tools};
use anyhow::{anyhow, bail, Context, Result};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Everything a build needs besides the plan.
#[derive(Clone, Debug)]
pub struct BuildRequest {
    pub payload: Payload,
    /// The disk, from [`plan`].
    pub plan: DiskPlan,
    /// Derives volume IDs and verity salts and UUIDs.
    pub seed: Seed,
    /// File name of the raw image, e.g. `flatcar_production_image.bin`.
    pub image_name: String,
    /// Unix time stamped on every file and filesystem (SOURCE_DATE_EPOCH).
    pub epoch: i64,
    /// Contents of the partition mounted at `/oem`, if any.
    pub oem: Option<Dir>,
    /// System extension images the disk carries: each goes into USR as
    /// `/usr/share/flatcar/sysext/NAME.raw` (the payload's `usr/` staged by
    /// hard links with the image added, the payload itself untouched) and is
    /// enabled by the link `/etc/extensions/NAME.raw` on ROOT.
    pub extensions: Vec<BaseExtension>,
    /// Extra files for the ESP (`/`-separated paths).
    pub esp_extra: Vec<(String, Source)>,
    /// The boot chain (GRUB and initramfs); None for a disk without one.
    pub boot: Option<BootConfig>,
    /// Verify before publishing (GPT, fsck, verity); false only on request.
    pub verify: bool,
    /// Publish the image under `image_name`; false keeps it under its
    /// temporary name (deleted when the output is dropped), for builds whose
    /// published artifact is a compressed copy.
    pub publish: bool,
}

/// A system extension image carried by the disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseExtension {
    /// The extension's name: the image is `NAME.raw`.
    pub name: String,
    /// The image file (read, never changed: it is hard-linked or copied).
    pub raw: PathBuf,
}

impl BaseExtension {
    /// Its path in USR, below `usr/`.
    pub fn usr_path(&self) -> String {
        format!("{}/{}.raw", crate::sysext::USR_DIR, self.name)
    }
    /// The link on ROOT that enables it, and the link's target.
    pub fn link(&self) -> (String, String) {
        (
            format!("{}/{}.raw", crate::sysext::LINK_DIR, self.name),
            format!("/usr/{}", self.usr_path()),
        )
    }
}

/// One timed step of a build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stage {
    pub name: String,
    pub elapsed: Duration,
}

/// One filesystem built into the image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuiltFs {
    /// The partition's number in the layout.
    pub number: u32,
    pub report: FsReport,
}

/// What a partition phase built: plain data out.
#[derive(Clone, Debug, Default)]
pub struct Built {
    pub filesystems: Vec<BuiltFs>,
    pub verity: Vec<ProtectedPartition>,
    pub stages: Vec<Stage>,
}

impl Built {
    fn extend(&mut self, other: Built) {
        self.filesystems.extend(other.filesystems);
        self.verity.extend(other.verity);
        self.stages.extend(other.stages);
    }
}

/// What a build produced: plain data out.
#[derive(Clone, Debug)]
pub struct BuildOutput {
    /// The image: its final path once published, else where it is now.
    pub image: PathBuf,
    pub plan: DiskPlan,
    pub filesystems: Vec<BuiltFs>,
    pub verity: Vec<ProtectedPartition>,
    /// The verity side file's final path.
    pub verity_file: Option<PathBuf>,
    pub stages: Vec<Stage>,
    /// Bytes the image occupies on disk (its non-zero blocks).
    pub allocated: u64,
    /// Holds the unpublished image (when `publish` was false) until dropped.
    pub temp: Option<Arc<tempfile::TempPath>>,
}

/// The image being built, as the partition phases see it.
pub struct Target<'a> {
    pub file: &'a File,
    pub path: &'a Path,
    pub plan: &'a DiskPlan,
    /// Directory for scratch files.
    pub scratch: &'a Path,
    pub epoch: i64,
    pub seed: &'a Seed,
    /// One line per step.
    pub log: &'a dyn Fn(&str),
    /// Called with a partition's size once its filesystem is built.
    pub built: &'a dyn Fn(u64),
}

struct Clock(Vec<Stage>, Instant);
impl Clock {
    fn new() -> Clock {
        Clock(Vec::new(), Instant::now())
    }
    fn mark(&mut self, name: &str) {
        let now = Instant::now();
        self.0.push(Stage { name: name.to_string(), elapsed: now - self.1 });
        self.1 = now;
    }
}

/// Phase 1: the layout `layout` of `layout_file` resolved into a plan with
/// every partition placed and identified, fitted to the installed tools
/// (`fs::adapt`: each fallback is logged as a warning). A platform checks
/// its limits on it (`Platform::check_plan`) before anything is built.
pub fn plan(
    layout_file: &Path,
    layout: &str,
    ids: &IdPolicy,
    log: &dyn Fn(&str),
) -> Result<DiskPlan> {
    let mut plan = LayoutFile::load(layout_file)?.plan(layout, ids)?;
    // What the installed tools cannot build as asked falls back, loudly.
    for w in fs::adapt(&mut plan) {
        log(&format!("warning: {w}"));
    }
    Ok(plan)
}

/// The host tools building and checking the plan's filesystems needs.
pub fn required_tools(plan: &DiskPlan) -> Vec<tools::Tool> {
    let mut needed = vec![tools::FSCK_FAT, tools::E2FSCK];
    for p in &plan.partitions {
        if let Some(f) = &p.fs {
            needed.extend(fs::tools_for(f.kind));
        }
    }
    needed
}

/// Phase 2: the image file sized to the plan, the protective MBR and both
/// GPTs written, and GRUB installed for BIOS when there is a boot chain.
pub fn table(
    image: &mut File,
    image_path: &Path,
    plan: &DiskPlan,
    boot: Option<&BootConfig>,
    log: &dyn Fn(&str),
) -> Result<()> {
    image
        .set_len(plan.total_bytes())
        .with_context(|| format!("{}: cannot size the image", image_path.display()))?;
    table::write(image, plan)
        .with_context(|| format!("{}: writing the GPT", image_path.display()))?;
    if let Some(g) = boot.and_then(|b| b.grub.bios.as_ref()) {
        let bios = crate::boot::grub::install_bios(image, plan, &g.boot_img, &g.core_img)
            .with_context(|| format!("{}: installing GRUB", image_path.display()))?;
        log(&format!("boot: GRUB boot.img in the MBR, core.img in {}", bios.label));
    }
    Ok(())
}

fn describe(p: &PartitionPlan, f: &FsPlan) -> String {
    format!("partition {} ({}, {})", p.number, p.label, f.kind.name())
}

/// Builds one partition's filesystem from `content`.
fn build_fs(t: &Target, p: &PartitionPlan, content: &Content, built: &mut Built) -> Result<()> {
    let start = Instant::now();
    let fsp = p.fs.as_ref().ok_or_else(|| anyhow!("partition {} has no filesystem", p.number))?;
    let what = describe(p, fsp);
    (t.log)(&format!("{what}: building {} B filesystem", fsp.bytes()));
    let job = FsJob {
        plan: fsp,
        content,
        image: t.file,
        image_path: t.path,
        offset: t.plan.offset(p),
        first_lba: p.first_block,
        epoch: t.epoch,
        scratch: t.scratch,
        volume_id: t.seed.u32(&format!("volume-id:{}", p.label)),
    };
    let report = fs::build(&job).with_context(|| what.clone())?;
    built.filesystems.push(BuiltFs { number: p.number, report });
    built.stages.push(Stage { name: format!("fs {}", p.label), elapsed: start.elapsed() });
    Ok(())
}

/// Whether a partition belongs to [`usr_and_verity`].
fn is_usr(p: &PartitionPlan) -> bool {
    p.fs.is_some() && (p.mount.as_deref() == Some("/usr") || p.has(Feature::Verity))
}

/// What goes into a partition other than the ESP, by where the OS mounts it
/// (and the scratch directory a staged tree lives in, kept until built).
fn content_for(
    p: &PartitionPlan,
    payload: &Payload,
    oem: Option<&Dir>,
    extensions: &[BaseExtension],
    scratch: &Path,
) -> Result<(Content, Option<tempfile::TempDir>)> {
    Ok(match p.mount.as_deref() {
        Some("/usr") if p.slot().is_some_and(|s| s != "a") => {
            (Content::Tree(Dir::new()), None) // the update slot starts empty
        }
        Some("/usr") if extensions.is_empty() => (Content::Directory(payload.usr_source()), None),
        Some("/usr") => {
            let (dir, guard) = usr_tree(payload, extensions, scratch)?;
            (Content::Directory(dir), Some(guard))
        }
        Some("/") => {
            let (dir, guard) = root_tree(payload, extensions, scratch)?;
            (Content::Directory(dir), Some(guard))
        }
        Some("/oem") => (Content::Tree(oem.cloned().unwrap_or_default()), None),
        _ => (Content::Tree(Dir::new()), None),
    })
}

/// The ROOT partition's tree: the payload's top-level entries besides
/// `usr/`, staged by hard links (see `fs::source::stage`) with the
/// payload's metadata.
fn root_tree(
    payload: &Payload,
    extensions: &[BaseExtension],
    scratch: &Path,
) -> Result<(SourceDir, tempfile::TempDir)> {
    let tmp = tempfile::Builder::new()
        .prefix(".root-")
        .tempdir_in(scratch)
        .with_context(|| format!("{}: cannot create a staging directory", scratch.display()))?;
    let dir = tmp.path().join("root");
    crate::fs::source::stage(&payload.root, &dir, "usr")
        .with_context(|| format!("payload {}: staging ROOT", payload.root.display()))?;
    for e in extensions {
        let (link, target) = e.link();
        let at = staged_new_entry(&dir, &link, payload, "")?;
        std::os::unix::fs::symlink(&target, &at)
            .with_context(|| format!("{}: cannot create the link", at.display()))?;
    }
    Ok((SourceDir { dir, meta: Some(payload.meta.clone()), rel: String::new() }, tmp))
}

/// USR's tree when the disk carries extensions: the payload's `usr/`
/// staged by hard links (see `fs::source::stage`), the images added under
/// `share/flatcar/sysext/` (hard-linked from the cache, or copied), owned by
/// root, mode 0644. The payload is not changed.
fn usr_tree(
    payload: &Payload,
    extensions: &[BaseExtension],
    scratch: &Path,
) -> Result<(SourceDir, tempfile::TempDir)> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::Builder::new()
        .prefix(".usr-")
        .tempdir_in(scratch)
        .with_context(|| format!("{}: cannot create a staging directory", scratch.display()))?;
    let dir = tmp.path().join("usr");
    crate::fs::source::stage(&payload.usr(), &dir, "")
        .with_context(|| format!("payload {}: staging USR", payload.root.display()))?;
    let mut meta = (*payload.meta).clone();
    for e in extensions {
        let rel = e.usr_path();
        let at = staged_new_entry(&dir, &rel, payload, "usr/")?;
        let m = std::fs::metadata(&e.raw)
            .with_context(|| format!("{}: cannot stat the extension image", e.raw.display()))?;
        if !m.is_file() {
            bail!("{}: the extension image is not a regular file", e.raw.display());
        }
        if std::fs::hard_link(&e.raw, &at).is_err() {
            std::fs::copy(&e.raw, &at)
                .with_context(|| format!("copying {} to {}", e.raw.display(), at.display()))?;
            std::fs::set_permissions(&at, std::fs::Permissions::from_mode(0o644))
                .with_context(|| format!("{}: cannot set the mode", at.display()))?;
        }
        meta.entries.insert(
            format!("usr/{rel}"),
            crate::meta::Attrs { uid: 0, gid: 0, mode: 0o644, ..Default::default() },
        );
    }
    Ok((SourceDir { dir, meta: Some(Arc::new(meta)), rel: "usr".into() }, tmp))
}

/// `rel` below the staged tree `dir`, its missing parent directories
/// created (0755): an error naming the payload's path when the payload
/// already has something there (`shown` is `dir`'s place in the payload).
fn staged_new_entry(dir: &Path, rel: &str, payload: &Payload, shown: &str) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let at = dir.join(rel);
    let mut p = dir.to_path_buf();
    let parts: Vec<&str> = rel.split('/').collect();
    for (i, c) in parts.iter().enumerate() {
        p.push(c);
        let last = i + 1 == parts.len();
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() && !last => {}
            Ok(_) => bail!(
                "payload {}: {shown}{} is in the way of the extension image's {}",
                payload.root.display(),
                parts[..=i].join("/"),
                if last { "place" } else { "directory" },
            ),
            Err(_) if last => {}
            Err(_) => {
                std::fs::create_dir(&p)
                    .with_context(|| format!("{}: cannot create", p.display()))?;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))
                    .with_context(|| format!("{}: cannot set the mode", p.display()))?;
            }
        }
    }
    Ok(at)
}

/// Phase 3: the `/usr` partitions (slot A gets the payload's `usr/`, other
/// slots start empty) and every verity-protected partition, each followed
/// by its dm-verity tree. Verity partitions need an A/B label like `USR-A`.
pub fn usr_and_verity(
    t: &Target,
    payload: &Payload,
    extensions: &[BaseExtension],
) -> Result<Built> {
    let mut built = Built::default();
    for p in t.plan.partitions.iter().filter(|p| is_usr(p)) {
        let fsp = p.fs.as_ref().expect("is_usr checks the filesystem");
        let what = describe(p, fsp);
        let (content, _staged) = content_for(p, payload, None, extensions, t.scratch)?;
        build_fs(t, p, &content, &mut built)?;
        if p.has(Feature::Verity) {
            let start = Instant::now();
            let slot = p
                .slot()
                .ok_or_else(|| anyhow!("{what}: verity partitions need an A/B label like USR-A"))?;
            let info = verity::format(
                t.file,
                t.plan.offset(p),
                t.plan.size(p),
                fsp.bytes() / verity::BLOCK,
                fsp.bytes(),
                t.seed.bytes(&format!("verity-salt:{}", p.label)),
                t.seed.uuid(&format!("verity-uuid:{}", p.label)),
            )
            .with_context(|| what.clone())?;
            (t.log)(&format!("{what}: dm-verity root hash {}", info.root_hex()));
            built.verity.push(ProtectedPartition { number: p.number, slot, info });
            built
                .stages
                .push(Stage { name: format!("verity {}", p.label), elapsed: start.elapsed() });
        }
        (t.built)(t.plan.size(p));
    }
    Ok(built)
}

/// Phase 4: the partition mounted at `/boot` (the ESP) with `contents`
/// (from `boot::esp::contents`); nothing when the layout has none.
pub fn esp(t: &Target, contents: Dir) -> Result<Built> {
    let mut built = Built::default();
    if let Some(p) = t.plan.by_mount("/boot").filter(|p| p.fs.is_some() && !is_usr(p)) {
        build_fs(t, p, &Content::Tree(contents), &mut built)?;
        (t.built)(t.plan.size(p));
    }
    Ok(built)
}

/// Phase 5: every other partition with a filesystem, by mount point (`/`
/// gets the payload's top-level entries besides `usr/`, `/oem` gets `oem`,
/// the rest start empty).
pub fn other_partitions(
    t: &Target,
    payload: &Payload,
    oem: Option<&Dir>,
    extensions: &[BaseExtension],
) -> Result<Built> {
    let mut built = Built::default();
    for p in t.plan.partitions.iter() {
        if p.fs.is_none() || is_usr(p) || p.mount.as_deref() == Some("/boot") {
            continue;
        }
        let (content, _staged) = content_for(p, payload, oem, extensions, t.scratch)?;
        build_fs(t, p, &content, &mut built)?;
        (t.built)(t.plan.size(p));
    }
    Ok(built)
}

/// Builds an image into the output directory `out` (locked by the caller
/// for the whole build): every phase after [`plan`], then the image and its
/// verity side file published together. `log` receives one line per step,
/// `progress` (step, bytes done, bytes total) as each filesystem is built
/// and checked.
pub fn build(
    req: &BuildRequest,
    out: &OutputDir,
    log: &dyn Fn(&str),
    progress: &dyn Fn(&str, u64, u64),
) -> Result<BuildOutput> {
    let mut staged = Staged::new();
    let mut built = build_staged(req, out, &mut staged, log, progress)?;
    let t = Instant::now();
    staged.commit(out)?;
    if req.publish {
        built.image = out.path().join(&req.image_name);
    }
    if let Some(s) = built.stages.iter_mut().find(|s| s.name == "publish") {
        s.elapsed += t.elapsed();
    }
    Ok(built)
}

/// [`build`] without the commit: the image (when `req.publish`) and the
/// verity side file are added to `staged`, for the caller to publish with
/// its own artifacts once they are verified too.
pub fn build_staged(
    req: &BuildRequest,
    out: &OutputDir,
    staged: &mut Staged,
    log: &dyn Fn(&str),
    progress: &dyn Fn(&str, u64, u64),
) -> Result<BuildOutput> {
    let plan = &req.plan;
    let mut clock = Clock::new();
    tools::require(&required_tools(plan))?;
    log(&format!(
        "layout '{}' from {}: {} partitions, disk {} sectors ({} B)",
        plan.layout,
        plan.source.display(),
        plan.partitions.len(),
        plan.total_blocks,
        plan.total_bytes()
    ));
    let tmp = outdir::partial_file(out.path(), &req.image_name)?;
    let image_path = tmp.path().to_path_buf();
    let mut image = tmp
        .as_file()
        .try_clone()
        .with_context(|| format!("{}: cannot reopen", image_path.display()))?;
    table(&mut image, &image_path, plan, req.boot.as_ref(), log)?;
    clock.mark("partitions");

    let scratch = outdir::scratch_dir(out.path())?;
    let fs_total: u64 =
        plan.partitions.iter().filter(|p| p.fs.is_some()).map(|p| plan.size(p)).sum();
    let fs_done = std::cell::Cell::new(0);
    let on_built = |bytes: u64| {
        fs_done.set(fs_done.get() + bytes);
        progress("filesystems", fs_done.get(), fs_total);
    };
    let target = Target {
        file: &image,
        path: &image_path,
        plan,
        scratch: scratch.path(),
        epoch: req.epoch,
        seed: &req.seed,
        log,
        built: &on_built,
    };
    let mut built = usr_and_verity(&target, &req.payload, &req.extensions)?;
    let esp_tree = esp::contents(&EspInput {
        plan,
        payload: &req.payload,
        boot: req.boot.as_ref(),
        verity: &built.verity,
        extra: &req.esp_extra,
    })?;
    built.extend(esp(&target, esp_tree)?);
    built.extend(other_partitions(&target, &req.payload, req.oem.as_ref(), &req.extensions)?);
    clock.0.append(&mut built.stages);
    clock.1 = Instant::now();

    if req.verify {
        verify(&image, &image_path, plan, &built.verity, scratch.path(), log, progress)?;
    } else {
        log("verify: SKIPPED (--no-verify): GPT, filesystems and dm-verity were not checked");
    }
    clock.mark("verify");

    image.sync_all().with_context(|| format!("{}: cannot sync", image_path.display()))?;
    let allocated = crate::io::sparse::allocated_bytes(&image)?;
    let published = publish(tmp, req, out.path(), &built.verity, staged)?;
    clock.mark("publish");
    Ok(BuildOutput {
        image: published.image,
        plan: req.plan.clone(),
        filesystems: built.filesystems,
        verity: built.verity,
        verity_file: published.verity_file,
        stages: clock.0,
        allocated,
        temp: published.temp,
    })
}

/// Checks the finished image before it is published: the GPT read back with
/// both CRCs matches the plan; FAT and ext filesystems pass their fsck; each
/// verity tree's root hash recomputed from the partition matches.
pub fn verify(
    image: &File,
    image_path: &Path,
    plan: &DiskPlan,
    verity: &[ProtectedPartition],
    scratch: &Path,
    log: &dyn Fn(&str),
    progress: &dyn Fn(&str, u64, u64),
) -> Result<()> {
    let t = table::read(image).context("verify: reading back the GPT")?;
    if !t.is_clean() {
        bail!("verify: the GPT read back: {}", [t.errors, t.warnings].concat().join("; "));
    }
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
    let fsck = |f: &FsPlan| matches!(f.kind, FsKind::Vfat | FsKind::Ext2 | FsKind::Ext4);
    let protected = |v: &ProtectedPartition| -> Result<&PartitionPlan> {
        plan.partitions
            .iter()
            .find(|p| p.number == v.number)
            .ok_or_else(|| anyhow!("verify: no partition {} in the layout", v.number))
    };
    let mut total: u64 = plan
        .partitions
        .iter()
        .filter(|p| p.fs.as_ref().is_some_and(fsck))
        .map(|p| plan.size(p))
        .sum();
    for v in verity {
        total += plan.size(protected(v)?);
    }
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
    for v in verity {
        let p = protected(v)?;
        let root = verity::compute_root(image, plan.offset(p), plan.size(p), v.info.hash_offset)?;
        if root != Some(v.info.root_hash) {
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

/// What [`publish`] staged.
pub struct Published {
    /// Where the image is until the commit.
    pub image: PathBuf,
    /// The verity side file's final path.
    pub verity_file: Option<PathBuf>,
    pub temp: Option<Arc<tempfile::TempPath>>,
}

/// The file name of the verity side file for the image `image_name`.
pub fn verity_file_name(image_name: &str) -> String {
    format!("{}_verity.txt", image_name.trim_end_matches(".bin"))
}

/// Phase 7: the first verity partition's side file and the image (unless
/// `req.publish` is false: then it stays under its temporary name) staged
/// in `dir` for [`outdir::Staged::commit`]. Without a verity partition, a
/// side file an earlier build left under the name is retired with the
/// commit: it would describe another disk.
pub fn publish(
    tmp: tempfile::NamedTempFile,
    req: &BuildRequest,
    dir: &Path,
    verity: &[ProtectedPartition],
    staged: &mut Staged,
) -> Result<Published> {
    let verity_name = verity_file_name(&req.image_name);
    let verity_file = match verity.first() {
        Some(v) => {
            staged.add_bytes(dir, &verity_name, v.info.side_file().as_bytes())?;
            Some(dir.join(&verity_name))
        }
        None => {
            staged.retire(&verity_name);
            None
        }
    };
    if req.publish {
        let image = tmp.path().to_path_buf();
        staged.add(tmp, &req.image_name);
        Ok(Published { image, verity_file, temp: None })
    } else {
        let tp = tmp.into_temp_path();
        Ok(Published { image: tp.to_path_buf(), verity_file, temp: Some(Arc::new(tp)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::fat::FatReader;

    fn plan() -> DiskPlan {
        let f = Path::new(env!("CARGO_MANIFEST_DIR")).join("../layouts/disk_layout.json");
        LayoutFile::load(&f).unwrap().plan("vm", &IdPolicy::default()).unwrap()
    }

    #[test]
    fn table_phase_writes_the_plans_gpt() {
        let plan = plan();
        let tmp = tempfile::NamedTempFile::new().unwrap();
        let mut f = tmp.reopen().unwrap();
        table(&mut f, tmp.path(), &plan, None, &|_| {}).unwrap();
        assert_eq!(f.metadata().unwrap().len(), plan.total_bytes());
        let t = table::read(&f).unwrap();
        assert_eq!(t.disk_guid, plan.disk_guid);
        let got: Vec<(u32, &str)> = t.entries.iter().map(|e| (e.number, e.name.as_str())).collect();
        let want: Vec<(u32, &str)> =
            plan.partitions.iter().map(|p| (p.number, p.label.as_str())).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn esp_phase_builds_the_boot_partition_alone() {
        let plan = plan();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.bin");
        let mut f = crate::io::sparse::create(&path, 0).unwrap();
        table(&mut f, &path, &plan, None, &|_| {}).unwrap();
        let mut tree = Dir::new();
        tree.add_file("flatcar/verity-a.cfg", Source::Bytes(b"set x=1\n".to_vec())).unwrap();
        let sizes = std::cell::RefCell::new(Vec::new());
        let on_built = |b: u64| sizes.borrow_mut().push(b);
        let t = Target {
            file: &f,
            path: &path,
            plan: &plan,
            scratch: dir.path(),
            epoch: 0,
            seed: &Seed::default(),
            log: &|_| {},
            built: &on_built,
        };
        let built = esp(&t, tree).unwrap();
        let p = plan.by_mount("/boot").unwrap();
        assert_eq!(built.filesystems.len(), 1);
        assert_eq!(built.filesystems[0].number, p.number);
        assert_eq!(built.filesystems[0].report.kind, FsKind::Vfat);
        assert_eq!(built.stages[0].name, format!("fs {}", p.label));
        assert!(built.verity.is_empty());
        assert_eq!(*sizes.borrow(), [plan.size(p)]);
        let r = FatReader::open(&f, plan.offset(p), plan.size(p)).unwrap();
        assert_eq!(r.read("flatcar/verity-a.cfg").unwrap(), b"set x=1\n");
    }

    fn tiny_payload(d: &Path) -> Payload {
        let p = d.join("payload");
        for dir in ["usr/lib", "usr/boot", "usr/share", "etc"] {
            std::fs::create_dir_all(p.join(dir)).unwrap();
        }
        std::fs::write(p.join(crate::payload::OS_RELEASE), "ID=t\nVERSION_ID=1\n").unwrap();
        std::fs::write(p.join(crate::payload::KERNEL), "kernel").unwrap();
        std::fs::write(p.join("usr/lib/a"), "a").unwrap();
        std::fs::write(p.join("etc/hostname"), "h").unwrap();
        Payload::open(&p).unwrap()
    }

    /// Every path below `dir` (relative, sorted), with `/` after a
    /// directory and ` -> target` after a link.
    fn listing(dir: &Path) -> Vec<String> {
        fn walk(root: &Path, p: &Path, v: &mut Vec<String>) {
            let mut names: Vec<_> =
                std::fs::read_dir(p).unwrap().map(|e| e.unwrap().file_name()).collect();
            names.sort();
            for n in names {
                let c = p.join(&n);
                let rel = c.strip_prefix(root).unwrap().display().to_string();
                let m = std::fs::symlink_metadata(&c).unwrap();
                if m.is_dir() {
                    v.push(format!("{rel}/"));
                    walk(root, &c, v);
                } else if m.file_type().is_symlink() {
                    v.push(format!("{rel} -> {}", std::fs::read_link(&c).unwrap().display()));
                } else {
                    v.push(rel);
                }
            }
        }
        let mut v = Vec::new();
        walk(dir, dir, &mut v);
        v
    }

    #[test]
    fn extensions_go_into_usr_and_are_linked_from_root_leaving_the_payload_alone() {
        let d = tempfile::tempdir().unwrap();
        let payload = tiny_payload(d.path());
        let before = listing(&payload.root);
        let raw = d.path().join("cache-x.raw");
        std::fs::write(&raw, "erofs bytes").unwrap();
        let exts = [BaseExtension { name: "x".into(), raw: raw.clone() }];
        let (usr, _g1) = usr_tree(&payload, &exts, d.path()).unwrap();
        assert_eq!(usr.rel, "usr");
        assert_eq!(
            listing(&usr.dir),
            [
                "boot/",
                "boot/vmlinuz",
                "lib/",
                "lib/a",
                "lib/os-release",
                "share/",
                "share/flatcar/",
                "share/flatcar/sysext/",
                "share/flatcar/sysext/x.raw"
            ]
        );
        assert_eq!(
            std::fs::read(usr.dir.join("share/flatcar/sysext/x.raw")).unwrap(),
            b"erofs bytes"
        );
        let a = usr.meta.as_ref().unwrap().attrs("usr/share/flatcar/sysext/x.raw", 0o600);
        assert_eq!((a.uid, a.gid, a.mode), (0, 0, 0o644));
        let (root, _g2) = root_tree(&payload, &exts, d.path()).unwrap();
        assert_eq!(
            listing(&root.dir),
            [
                "etc/",
                "etc/extensions/",
                "etc/extensions/x.raw -> /usr/share/flatcar/sysext/x.raw",
                "etc/hostname"
            ]
        );
        // The payload and the cached image are as they were.
        assert_eq!(listing(&payload.root), before);
        assert_eq!(std::fs::read(&raw).unwrap(), b"erofs bytes");
    }

    #[test]
    fn an_extension_over_a_payload_file_is_an_error_naming_it() {
        let d = tempfile::tempdir().unwrap();
        let payload = tiny_payload(d.path());
        std::fs::write(payload.root.join("usr/share/flatcar"), "a file").unwrap();
        std::fs::create_dir_all(payload.root.join("etc/extensions/x.raw")).unwrap();
        let raw = d.path().join("x.raw");
        std::fs::write(&raw, "x").unwrap();
        let exts = [BaseExtension { name: "x".into(), raw }];
        let e = format!("{:#}", usr_tree(&payload, &exts, d.path()).err().unwrap());
        assert!(
            e.contains("usr/share/flatcar is in the way of the extension image's directory"),
            "{e}"
        );
        let e = format!("{:#}", root_tree(&payload, &exts, d.path()).err().unwrap());
        assert!(
            e.contains(": etc/extensions/x.raw is in the way of the extension image's place"),
            "{e}"
        );
    }

    #[test]
    fn partitions_go_to_one_phase_each() {
        let plan = plan();
        let with_fs: Vec<&PartitionPlan> =
            plan.partitions.iter().filter(|p| p.fs.is_some()).collect();
        let usr: Vec<u32> = with_fs.iter().filter(|p| is_usr(p)).map(|p| p.number).collect();
        let boot = plan.by_mount("/boot").unwrap().number;
        assert_eq!(usr, [plan.by_mount("/usr").unwrap().number]);
        assert!(!usr.contains(&boot));
        // Every partition with a filesystem is in exactly one of the three phases.
        let others: Vec<u32> = with_fs
            .iter()
            .filter(|p| !is_usr(p) && p.mount.as_deref() != Some("/boot"))
            .map(|p| p.number)
            .collect();
        assert_eq!(usr.len() + 1 + others.len(), with_fs.len());
    }
}
