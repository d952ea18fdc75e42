//! `inspect`: what is on a disk image, read from the image alone, whichever
//! tool made it: the GPT (CRCs checked), each partition's filesystem type,
//! label and UUID, the OEM partition's ID and sysexts, the base system
//! extensions (USR-A's `/usr/share/flatcar/sysext/`, and which ROOT's
//! `/etc/extensions/` enables), and a recomputation of each dm-verity tree's
//! root hash against the one recorded on the ESP.
//!
//! Images are hostile input: nothing in one makes `inspect` panic, loop or
//! allocate more than the image's size. What is wrong but readable is a
//! warning (a corrupt primary GPT, read from the backup as `sfdisk` does; a
//! corrupt or misplaced backup); what makes a partition or check unusable is
//! an error in the report (a truncated image; entries reversed, past the
//! disk's end, outside the usable area or overlapping; a filesystem or
//! verity superblock that does not fit its partition; a FAT chain loop or
//! directory cycle). Partitions not on the disk are listed but not read.
//! `cargo xtask inspect` prints the report and fails when it has errors.

use crate::arch::Arch;
use crate::fs::fat::FatReader;
use crate::{layout, table, tools, verity};
use anyhow::{Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub image: String,
    pub size_bytes: u64,
    pub sector_size: u64,
    pub disk_guid: String,
    /// The GPT copy the partitions were read from.
    pub gpt: table::GptCopy,
    pub partitions: Vec<PartInfo>,
    pub oem: Option<OemInfo>,
    /// The base extensions in USR-A and the links on ROOT (None: the image
    /// has no USR-A with EROFS, or no ROOT with ext4, to read them from).
    pub extensions: Option<Extensions>,
    /// What the boot files on the ESP are built for (None: no FAT ESP).
    pub architecture: Option<Architecture>,
    /// Wrong but readable (see the module documentation).
    pub warnings: Vec<String>,
    /// Wrong: partitions or checks that could not be used.
    pub errors: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PartInfo {
    pub number: u32,
    pub label: String,
    pub type_guid: String,
    pub type_name: Option<String>,
    pub uuid: String,
    pub attributes: u64,
    pub attributes_decoded: Vec<String>,
    pub first_sector: u64,
    pub sectors: u64,
    pub size_bytes: u64,
    pub fs: Option<FsInfo>,
    pub verity: Option<VerityCheck>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct FsInfo {
    #[serde(rename = "type")]
    pub kind: String,
    pub label: Option<String>,
    pub uuid: Option<String>,
    /// Size the filesystem says it has.
    pub size_bytes: Option<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct VerityCheck {
    pub hash_offset: u64,
    pub data_blocks: u64,
    pub salt: String,
    pub computed_root_hash: String,
    /// Root hash recorded for this slot on the ESP, if found.
    pub recorded_root_hash: Option<String>,
    /// Whether the computed and the recorded hash agree (None: nothing recorded).
    pub matches: Option<bool>,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Extensions {
    /// `NAME.raw` files in USR-A's `/usr/share/flatcar/sysext/`.
    pub base: Vec<BaseExtension>,
    /// ROOT's `/etc/extensions/` entries: name → link target (`None`: not a link).
    pub enabled: BTreeMap<String, Option<String>>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct BaseExtension {
    pub file: String,
    pub bytes: u64,
}

/// The architecture of an image, as its ESP's boot files tell it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Architecture {
    /// The removable-media EFI loaders present (`EFI/boot/bootx64.efi`,
    /// `bootaa64.efi`), each checked to be a PE program of its architecture.
    pub efi_loaders: Vec<Arch>,
    /// Slot A's kernel (`flatcar/vmlinuz-a`): its format and release.
    pub kernel: Option<KernelInfo>,
    /// The one architecture both say (None: they disagree, or say nothing).
    pub arch: Option<Arch>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct KernelInfo {
    pub path: String,
    pub format: String,
    pub release: String,
    pub arch: Option<Arch>,
}

#[derive(Clone, Debug, Serialize)]
pub struct OemInfo {
    pub partition: u32,
    pub id: Option<String>,
    pub release: BTreeMap<String, String>,
    pub sysexts: Vec<String>,
    pub grub_cfg: Option<String>,
}

pub fn inspect(path: &Path) -> Result<Report> {
    let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let size = file.metadata().with_context(|| format!("{}: stat", path.display()))?.len();
    let t = table::read(&file)
        .with_context(|| format!("{}: reading the partition table", path.display()))?;
    let ss = t.sector_size;
    let disk_sectors = size / ss;
    let mut errors = t.errors.clone();
    let mut parts = Vec::new();
    for e in &t.entries {
        let on_disk = e.on_disk(disk_sectors);
        // Inside the file (checked above): no overflow.
        let (off, len) = if on_disk { (e.first_lba * ss, e.sectors() * ss) } else { (0, 0) };
        let fs = match on_disk.then(|| probe_fs(&file, off, len)) {
            Some(Ok(fs)) => fs,
            Some(Err(err)) => {
                errors.push(format!("partition {}: {err:#}", e.number));
                None
            }
            None => None,
        };
        parts.push(PartInfo {
            number: e.number,
            label: e.name.clone(),
            type_guid: e.type_guid.to_string(),
            type_name: layout::type_name(&e.type_guid).map(str::to_string),
            uuid: e.uuid.to_string(),
            attributes: e.attributes,
            attributes_decoded: table::describe_attributes(e.attributes),
            first_sector: e.first_lba,
            sectors: e.sectors(),
            size_bytes: e.sectors().saturating_mul(ss),
            fs,
            verity: None,
        });
    }
    // Verity: look for a superblock after each filesystem.
    let esp = parts
        .iter()
        .find(|p| p.fs.as_ref().is_some_and(|f| f.kind == "vfat"))
        .map(|p| (p.first_sector * ss, p.size_bytes));
    for p in parts.iter_mut() {
        let (Some(fs), off) = (&p.fs, p.first_sector * ss) else { continue };
        let Some(fs_len) = fs.size_bytes else { continue };
        let checked = find_verity(&file, off, fs_len, p.size_bytes).and_then(|found| {
            let Some(hash_offset) = found else { return Ok(None) };
            check_verity(&file, off, p.size_bytes, hash_offset, esp, &p.label).map(Some)
        });
        match checked {
            Ok(v) => p.verity = v,
            Err(err) => errors.push(format!("partition {}: dm-verity: {err:#}", p.number)),
        }
    }
    let mut warnings = t.warnings.clone();
    let architecture = match esp {
        Some((off, len)) => match FatReader::open(&file, off, len) {
            Ok(fat) => {
                let (a, w) = architecture(&fat);
                warnings.extend(w);
                Some(a)
            }
            // The FAT itself is judged elsewhere (recorded hashes, OEM).
            Err(_) => None,
        },
        None => None,
    };
    let oem = match parts.iter().find(|p| p.label == "OEM" && p.fs.is_some()) {
        Some(p) => match read_oem(&file, path, p, ss) {
            Ok(o) => Some(o),
            Err(err) => {
                errors.push(format!("partition {} (OEM): {err:#}", p.number));
                None
            }
        },
        None => None,
    };
    let usr = parts
        .iter()
        .find(|p| p.label == "USR-A" && p.fs.as_ref().is_some_and(|f| f.kind == "erofs"));
    let root = parts
        .iter()
        .find(|p| p.label == "ROOT" && p.fs.as_ref().is_some_and(|f| f.kind.starts_with("ext")));
    let extensions = match (usr, root) {
        (Some(u), Some(r)) => match read_extensions(&file, path, u, r, ss) {
            Ok(x) => Some(x),
            Err(err) => {
                errors.push(format!("base extensions: {err:#}"));
                None
            }
        },
        _ => None,
    };
    Ok(Report {
        extensions,
        image: path.display().to_string(),
        size_bytes: size,
        sector_size: ss,
        disk_guid: t.disk_guid.to_string(),
        gpt: t.source,
        partitions: parts,
        oem,
        architecture,
        warnings,
        errors,
    })
}

/// The removable-media EFI loaders ([`Arch::efi_loader`]) on the ESP: for
/// each one present, the architecture its name is for and the one its PE
/// header says (None: not a PE program of a known machine). Callers judge
/// (boot-test refuses a mismatch; inspect warns).
pub fn esp_loaders(fat: &FatReader) -> Vec<(Arch, Option<Arch>)> {
    Arch::ALL
        .into_iter()
        .filter_map(|a| {
            let bytes = fat.read(a.efi_loader()).ok()?;
            let machine = forge_formats::kernel::pe_machine(&bytes)
                .and_then(forge_formats::kernel::pe_to_elf_machine)
                .and_then(Arch::from_elf_machine);
            Some((a, machine))
        })
        .collect()
}

/// What the ESP's EFI loaders and slot A's kernel say about the
/// architecture, and warnings where they contradict themselves or each
/// other (a loader built for another architecture than its name's). Files
/// that are not loaders or kernels of a known machine say nothing.
pub fn architecture(fat: &FatReader) -> (Architecture, Vec<String>) {
    let mut warnings = Vec::new();
    let mut efi_loaders = Vec::new();
    for (named, is) in esp_loaders(fat) {
        match is {
            Some(m) if m == named => efi_loaders.push(named),
            Some(m) => warnings.push(format!(
                "the ESP's {} is a program for {m}, not {named}",
                named.efi_loader()
            )),
            None => {}
        }
    }
    let path = "flatcar/vmlinuz-a";
    let kernel = fat.read(path).ok().and_then(|b| forge_formats::kernel::parse(&b).ok()).map(|k| {
        KernelInfo {
            path: path.into(),
            format: k.format.into(),
            release: k.version,
            arch: Arch::from_elf_machine(k.machine),
        }
    });
    let mut said: Vec<Arch> = efi_loaders.clone();
    said.extend(kernel.as_ref().and_then(|k| k.arch));
    said.sort();
    said.dedup();
    let arch = match said.as_slice() {
        [a] => Some(*a),
        [] => None,
        _ => {
            warnings.push(format!(
                "the ESP's boot files are for several architectures: EFI loaders {}, kernel {}",
                efi_loaders.iter().map(|a| a.debian()).collect::<Vec<_>>().join(", "),
                kernel.as_ref().and_then(|k| k.arch).map_or("-", |a| a.debian())
            ));
            None
        }
    };
    (Architecture { efi_loaders, kernel, arch }, warnings)
}

fn check_verity(
    file: &File,
    off: u64,
    part_len: u64,
    hash_offset: u64,
    esp: Option<(u64, u64)>,
    label: &str,
) -> Result<VerityCheck> {
    let sb = verity::read_superblock(file, off + hash_offset)?
        .context("the verity superblock vanished")?;
    let root = verity::compute_root(file, off, part_len, hash_offset)?
        .context("the verity superblock vanished")?;
    let slot = label.rsplit_once('-').map(|(_, s)| s.to_ascii_lowercase());
    let recorded = match (esp, slot) {
        (Some((esp, esp_len)), Some(slot)) => recorded_hash(file, esp, esp_len, &slot),
        _ => None,
    };
    let computed = hex::encode(root);
    Ok(VerityCheck {
        hash_offset,
        data_blocks: sb.data_blocks,
        salt: hex::encode(&sb.salt),
        matches: recorded.as_ref().map(|r| *r == computed),
        computed_root_hash: computed,
        recorded_root_hash: recorded,
    })
}

fn recorded_hash(file: &File, esp_off: u64, esp_len: u64, slot: &str) -> Option<String> {
    let r = FatReader::open(file, esp_off, esp_len).ok()?;
    let text = String::from_utf8(r.read(&crate::boot::esp::verity_cfg_path(slot)).ok()?).ok()?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix("set verity_usrhash="))
        .map(|v| v.trim_matches('"').to_string())
}

/// Finds a verity superblock at the first data after the filesystem's end.
fn find_verity(file: &File, off: u64, fs_len: u64, part_len: u64) -> Result<Option<u64>> {
    let Some(start) = fs_len.checked_next_multiple_of(verity::BLOCK) else { return Ok(None) };
    if start.saturating_add(512) > part_len {
        return Ok(None);
    }
    let extents = crate::io::sparse::data_extents(file, off + start, off + part_len)?;
    let mut buf = vec![0u8; verity::BLOCK as usize];
    for (s, e) in extents {
        // The first block boundary (relative to the partition) in the extent.
        let mut pos = off + (s - off).div_ceil(verity::BLOCK) * verity::BLOCK;
        while pos + verity::BLOCK <= e {
            file.read_exact_at(&mut buf, pos)?;
            if forge_formats::verity::has_magic(&buf) {
                return Ok(Some(pos - off));
            }
            if !crate::io::sparse::is_zero(&buf) {
                return Ok(None);
            }
            pos += verity::BLOCK;
        }
    }
    Ok(None)
}

/// Recognizes the filesystem at `off` by its superblock.
pub fn probe_fs(file: &File, off: u64, len: u64) -> Result<Option<FsInfo>> {
    use forge_formats::fs;
    if len < 4096 {
        return Ok(None);
    }
    let mut b = vec![0u8; fs::PROBE_BYTES];
    file.read_exact_at(&mut b, off)
        .with_context(|| format!("reading the filesystem superblock at offset {off}"))?;
    let mut found = fs::probe(&b).with_context(|| format!("at offset {off}"))?;
    let at = off + fs::BTRFS_SUPERBLOCK_OFFSET;
    if found.is_none() && len >= fs::BTRFS_SUPERBLOCK_OFFSET + fs::BTRFS_PROBE_BYTES as u64 {
        let mut s = vec![0u8; fs::BTRFS_PROBE_BYTES];
        file.read_exact_at(&mut s, at)
            .with_context(|| format!("reading the btrfs superblock at offset {at}"))?;
        found = fs::probe_btrfs(&s).with_context(|| format!("at offset {at}"))?;
    }
    Ok(found.map(|f| FsInfo {
        kind: f.kind.as_str().into(),
        label: f.label,
        uuid: f.uuid,
        size_bytes: Some(f.size_bytes),
    }))
}

fn read_oem(file: &File, path: &Path, p: &PartInfo, ss: u64) -> Result<OemInfo> {
    let off = p.first_sector * ss;
    let kind = p.fs.as_ref().map(|f| f.kind.as_str()).unwrap_or("");
    let (release, sysexts, grub) = match kind {
        "vfat" => {
            let r = FatReader::open(file, off, p.size_bytes)?;
            let rel = r.read("oem-release").ok().map(|b| String::from_utf8_lossy(&b).into_owned());
            let grub = r.read("grub.cfg").ok().map(|b| String::from_utf8_lossy(&b).into_owned());
            let sys = r
                .walk()?
                .into_iter()
                .filter_map(|f| f.strip_prefix("/sysext/").map(str::to_string))
                .collect();
            (rel, sys, grub)
        }
        "ext2" | "ext3" | "ext4" => {
            let target = format!("{}?offset={off}", path.display());
            let debugfs = tools::path(tools::DEBUGFS)?;
            let cat = |f: &str| -> Option<String> {
                let o = crate::cmd!(&debugfs, "-R", format!("cat {f}"), &target)
                    .stdout_capture()
                    .stderr_null()
                    .unchecked()
                    .run()
                    .ok()?;
                (o.status.success() && !o.stdout.is_empty())
                    .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
            };
            let ls = crate::cmd!(&debugfs, "-R", "ls -p /sysext", &target)
                .stdout_capture()
                .stderr_null()
                .unchecked()
                .run()?;
            // `ls -p` lines: /inode/mode/uid/gid/name/size/
            let sys = String::from_utf8_lossy(&ls.stdout)
                .lines()
                .filter_map(|l| l.split('/').nth(5).map(str::to_string))
                .filter(|n| !n.is_empty() && n != "." && n != "..")
                .collect();
            (cat("/oem-release"), sys, cat("/grub.cfg"))
        }
        _ => (None, Vec::new(), None),
    };
    let release = release.map(|r| crate::payload::OsRelease::parse(&r).0).unwrap_or_default();
    Ok(OemInfo {
        partition: p.number,
        id: release.get("ID").cloned(),
        release,
        sysexts,
        grub_cfg: grub,
    })
}

/// The base extensions: USR-A's filesystem is copied (sparsely) to a
/// temporary file for `dump.erofs`, which takes no offset; ROOT is read in
/// place with `debugfs`.
fn read_extensions(
    file: &File,
    path: &Path,
    usr: &PartInfo,
    root: &PartInfo,
    ss: u64,
) -> Result<Extensions> {
    let dump = tools::path(tools::DUMP_EROFS)?;
    let fs_len = usr.fs.as_ref().and_then(|f| f.size_bytes).unwrap_or(usr.size_bytes);
    let fs_len = fs_len.min(usr.size_bytes);
    let tmp = tempfile::Builder::new()
        .prefix(".forge-inspect-usr-")
        .tempfile()
        .context("creating a temporary file for USR-A")?;
    crate::io::sparse::splice(file, usr.first_sector * ss, fs_len, tmp.as_file(), 0, false)
        .with_context(|| format!("{}: copying USR-A", path.display()))?;
    let dir = format!("/{}", crate::sysext::USR_DIR.trim_start_matches("usr/"));
    let run = |args: &[String]| -> Result<(bool, String)> {
        // Joined first, then captured: the other order sends stderr to our stdout.
        let o = crate::tools::cmd(&dump, args)
            .stderr_to_stdout()
            .stdout_capture()
            .unchecked()
            .run()
            .context("running dump.erofs")?;
        Ok((o.status.success(), String::from_utf8_lossy(&o.stdout).into_owned()))
    };
    let img = tmp.path().display().to_string();
    let (ok, listing) = run(&["--ls".into(), format!("--path={dir}"), img.clone()])?;
    let mut base = Vec::new();
    if ok {
        // Lines after the header: `NID TYPE FILENAME`; TYPE 1 is a regular file.
        for l in listing.lines() {
            let f: Vec<&str> = l.split_whitespace().collect();
            if let [_, "1", name] = f[..] {
                if !name.ends_with(".raw") {
                    continue;
                }
                let (_, info) = run(&[format!("--path={dir}/{name}"), img.clone()])?;
                let bytes = info
                    .lines()
                    .find_map(|l| l.strip_prefix("Size: "))
                    .and_then(|s| s.split_whitespace().next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                base.push(BaseExtension { file: name.to_string(), bytes });
            }
        }
    }
    let debugfs = tools::path(tools::DEBUGFS)?;
    let target = format!("{}?offset={}", path.display(), root.first_sector * ss);
    let out = |cmd: String| -> Result<String> {
        let o = crate::cmd!(&debugfs, "-R", cmd, &target)
            .stdout_capture()
            .stderr_null()
            .unchecked()
            .run()
            .context("running debugfs")?;
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let mut enabled = BTreeMap::new();
    let dir = format!("/{}", crate::sysext::LINK_DIR);
    // `ls -p` lines: /inode/mode/uid/gid/name/size/
    for l in out(format!("ls -p {dir}"))?.lines() {
        let f: Vec<&str> = l.split('/').collect();
        let (Some(mode), Some(name)) = (f.get(2), f.get(5)) else { continue };
        if name.is_empty() || *name == "." || *name == ".." {
            continue;
        }
        let link = if mode.starts_with("12") {
            let stat = out(format!("stat {dir}/{name}"))?;
            stat.lines()
                .find_map(|l| l.trim().strip_prefix("Fast link dest: "))
                .map(|d| d.trim_matches('"').to_string())
                .or(Some(String::new()))
        } else {
            None
        };
        enabled.insert(name.to_string(), link);
    }
    Ok(Extensions { base, enabled })
}

/// Plain-text rendering of a report.
pub fn render(r: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "image: {} ({} B, {} B sectors)", r.image, r.size_bytes, r.sector_size);
    let copy = match r.gpt {
        table::GptCopy::Primary => "primary",
        table::GptCopy::Backup => "backup",
    };
    let _ = writeln!(s, "disk GUID: {} (read from the {copy} GPT)", r.disk_guid);
    for p in &r.partitions {
        let _ = writeln!(
            s,
            "{:>3} {:<12} start {:>10} sectors {:>10} ({} B)\n      type {} ({})\n      guid {}  attrs 0x{:016x} [{}]",
            p.number,
            p.label,
            p.first_sector,
            p.sectors,
            p.size_bytes,
            p.type_guid,
            p.type_name.as_deref().unwrap_or("unknown"),
            p.uuid,
            p.attributes,
            p.attributes_decoded.join(" ")
        );
        if let Some(f) = &p.fs {
            let _ = writeln!(
                s,
                "      fs {} label {} uuid {}",
                f.kind,
                f.label.as_deref().unwrap_or("-"),
                f.uuid.as_deref().unwrap_or("-")
            );
        }
        if let Some(v) = &p.verity {
            let verdict = match v.matches {
                Some(true) => "matches the ESP's record",
                Some(false) => "DOES NOT MATCH the ESP's record",
                None => "no record on the ESP",
            };
            let _ = writeln!(
                s,
                "      verity root {} at offset {} ({verdict})",
                v.computed_root_hash, v.hash_offset
            );
        }
    }
    if let Some(a) = &r.architecture {
        let loaders: Vec<&str> = a.efi_loaders.iter().map(|x| x.efi_loader()).collect();
        let _ = writeln!(
            s,
            "architecture: {} (EFI loader {}; kernel {})",
            a.arch.map_or("unknown".to_string(), |x| x.to_string()),
            if loaders.is_empty() { "none".to_string() } else { loaders.join(", ") },
            a.kernel.as_ref().map_or("none".to_string(), |k| format!(
                "{} {}, {}",
                k.format,
                k.release,
                k.arch.map_or("unknown", |x| x.debian())
            ))
        );
    }
    if let Some(o) = &r.oem {
        let _ =
            writeln!(s, "OEM (partition {}): id {}", o.partition, o.id.as_deref().unwrap_or("-"));
        for x in &o.sysexts {
            let _ = writeln!(s, "      sysext {x}");
        }
    }
    if let Some(x) = &r.extensions {
        let _ = writeln!(
            s,
            "system extensions: {} base (USR-A /usr/{}), {} in ROOT /{}",
            x.base.len(),
            crate::sysext::USR_DIR,
            x.enabled.len(),
            crate::sysext::LINK_DIR
        );
        for b in &x.base {
            let name = b.file.trim_end_matches(".raw");
            let state = match x.enabled.get(&b.file) {
                Some(Some(t)) if t.ends_with(&format!("/{}", b.file)) => "enabled".to_string(),
                Some(Some(t)) => format!("linked to {t}: not enabled"),
                Some(None) => "replaced by a file in ROOT".to_string(),
                None => "not enabled (no link)".to_string(),
            };
            let _ = writeln!(s, "      base {name} ({} B): {state}", b.bytes);
        }
        for (n, t) in &x.enabled {
            if !x.base.iter().any(|b| &b.file == n) {
                let _ = writeln!(
                    s,
                    "      /{}/{n} -> {}",
                    crate::sysext::LINK_DIR,
                    t.as_deref().unwrap_or("(a file)")
                );
            }
        }
    }
    for w in &r.warnings {
        let _ = writeln!(s, "warning: {w}");
    }
    for e in &r.errors {
        let _ = writeln!(s, "error: {e}");
    }
    s
}

/// Whether `path` is a bare EROFS image (a system extension), not a disk.
pub fn is_erofs_image(path: &Path) -> Result<bool> {
    let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let len = file.metadata().with_context(|| format!("{}: stat", path.display()))?.len();
    Ok(probe_fs(&file, 0, len)
        .with_context(|| path.display().to_string())?
        .is_some_and(|f| f.kind == "erofs"))
}

/// Plain-text rendering of a system extension image's fields.
pub fn render_sysext(i: &crate::sysext::ImageInfo) -> String {
    let mut s = format!("system extension {} ({} B, EROFS)\n", i.name, i.bytes);
    s.push_str(&format!(
        "  {}/extension-release.{}:\n",
        crate::sysext::RELEASE_DIR,
        i.release_name
    ));
    for (k, v) in &i.fields {
        s.push_str(&format!("    {k}={v}\n"));
    }
    for e in &i.errors {
        s.push_str(&format!("  error: {e}\n"));
    }
    s
}
