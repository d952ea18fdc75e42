//! The test disk: the image (raw or compressed) written to a sparse disk of
//! the platform's size, the named mutations of the negative boots, and the
//! architecture an image is for, read from its ESP.

use crate::spec::{Arch, Mutation};
use anyhow::{anyhow, bail, Context, Result};
use forge::io::sparse;
use std::fs::File;
use std::path::Path;

/// The first bytes of a qcow2 file.
const QCOW2_MAGIC: &[u8; 4] = b"QFI\xfb";

/// Whether the file starts with the qcow2 magic.
pub fn is_qcow2(image: &Path) -> Result<bool> {
    use std::io::Read;
    let mut f =
        std::fs::File::open(image).with_context(|| format!("{}: cannot open", image.display()))?;
    let mut m = [0u8; 4];
    match f.read_exact(&mut m) {
        Ok(()) => Ok(&m == QCOW2_MAGIC),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e).with_context(|| format!("{}: cannot read", image.display())),
    }
}

/// A sparse disk of `bytes` that is one ext4 filesystem (no partition
/// table) holding `files` (relative path → content), written first into
/// `staging`; `mkfs.ext4 -d`, no root needed (files owned by root).
pub fn ext4(
    path: &Path,
    bytes: u64,
    label: Option<&str>,
    files: &std::collections::BTreeMap<String, String>,
    staging: &Path,
) -> Result<()> {
    std::fs::create_dir_all(staging)
        .with_context(|| format!("{}: cannot create", staging.display()))?;
    for (rel, content) in files {
        let p = staging.join(rel);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d)
                .with_context(|| format!("{}: cannot create", d.display()))?;
        }
        std::fs::write(&p, content).with_context(|| format!("{}: cannot write", p.display()))?;
    }
    sparse::create(path, bytes)?;
    let mkfs = forge::tools::path(forge::tools::MKFS_EXT4)?;
    let mut args: Vec<std::ffi::OsString> =
        vec!["-q".into(), "-F".into(), "-E".into(), "root_owner=0:0".into(), "-d".into()];
    args.push(staging.into());
    if let Some(l) = label {
        args.extend(["-L".into(), l.into()]);
    }
    args.push(path.into());
    forge::fs::run(
        forge::tools::dying_with_parent(duct::cmd(mkfs, args)),
        "mkfs.ext4 (a test volume)",
    )?;
    Ok(())
}

/// Writes the image (raw, qcow2, .bz2, .gz, .zst or .xz) as a sparse raw disk of `disk_bytes`.
pub fn prepare(image: &Path, dest: &Path, disk_bytes: u64) -> Result<()> {
    let written = decode(image, dest)?;
    grow(image, dest, written, disk_bytes)
}

/// [`prepare`] through a decoded copy of the image shared by the boot-test
/// runs given the same `dir`: `<dir>/<key>/disk.raw`, the key naming the
/// image file (its path, size and modification time). The first run decodes
/// it while the others wait on the directory's lock; then each copies it
/// (only its data: the copy is sparse). Whoever made `dir` removes it.
pub fn prepare_shared(
    image: &Path,
    dest: &Path,
    disk_bytes: u64,
    dir: &Path,
    log: &dyn Fn(&str),
) -> Result<()> {
    let raw = decoded_shared(image, dir, log)?;
    copy(&raw, dest)?;
    let len = std::fs::metadata(dest).with_context(|| format!("{}: stat", dest.display()))?.len();
    grow(image, dest, len, disk_bytes)
}

/// The image decoded (not grown) into `<dir>/<key>/disk.raw`, once.
fn decoded_shared(image: &Path, dir: &Path, log: &dyn Fn(&str)) -> Result<std::path::PathBuf> {
    use sha2::Digest;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let canon = image.canonicalize().with_context(|| format!("{}: not found", image.display()))?;
    let m = std::fs::metadata(&canon).with_context(|| format!("{}: stat", canon.display()))?;
    let mut h = sha2::Sha256::new();
    h.update(canon.as_os_str().as_bytes());
    h.update(m.len().to_le_bytes());
    h.update(m.mtime().to_le_bytes());
    h.update(m.mtime_nsec().to_le_bytes());
    let key = hex::encode(&h.finalize()[..8]);
    let held = forge::outdir::OutputDir::lock(
        &dir.join(&key),
        forge::outdir::IfLocked::Wait,
        &|m: &str| log(&format!("{m} (another run decoding {})", image.display())),
    )?;
    let raw = held.path().join("disk.raw");
    if !raw.exists() {
        let tmp = forge::outdir::partial_file(held.path(), "disk.raw")?;
        decode(image, tmp.path())?;
        tmp.persist(&raw)
            .with_context(|| format!("{}: cannot rename into place", raw.display()))?;
    }
    Ok(raw)
}

/// Writes the image as a sparse raw file (a qcow2 converted, a compressed
/// one decoded); its length.
fn decode(image: &Path, dest: &Path) -> Result<u64> {
    let f =
        std::fs::File::open(image).with_context(|| format!("{}: cannot open", image.display()))?;
    if forge::io::codec::Codec::from_path(image).is_none() && is_qcow2(image)? {
        qcow2_to_raw(image, dest)?;
        return Ok(std::fs::metadata(dest)
            .with_context(|| format!("{}: stat", dest.display()))?
            .len());
    }
    let out = sparse::create(dest, 0)?;
    if let Some(codec) = forge::io::codec::Codec::from_path(image) {
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let written = forge::io::compress::decompress_sparse(image, codec, &out, threads)
            .with_context(|| format!("{}: decompressing", image.display()))?;
        // Trailing zeros may have been skipped, not written.
        out.set_len(written).with_context(|| format!("{}: set_len", dest.display()))?;
        Ok(written)
    } else {
        let len = f.metadata().with_context(|| format!("{}: stat", image.display()))?.len();
        sparse::splice(&f, 0, len, &out, 0, false)
            .with_context(|| format!("{}: copying to {}", image.display(), dest.display()))?;
        Ok(len)
    }
}

/// Grows the decoded image at `dest` (`written` bytes) to `disk_bytes`.
fn grow(image: &Path, dest: &Path, written: u64, disk_bytes: u64) -> Result<()> {
    if written > disk_bytes {
        bail!(
            "{}: the image ({written} B) is larger than the test disk ({disk_bytes} B)",
            image.display()
        );
    }
    let out = std::fs::OpenOptions::new()
        .write(true)
        .open(dest)
        .with_context(|| format!("{}: cannot open", dest.display()))?;
    out.set_len(disk_bytes).with_context(|| format!("{}: set_len", dest.display()))?;
    Ok(())
}

/// `qemu-img convert` of a qcow2 image to a raw file.
fn qcow2_to_raw(image: &Path, dest: &Path) -> Result<()> {
    let qemu_img =
        forge::tools::path(forge::tools::Tool { program: "qemu-img", package: "qemu-utils" })?;
    forge::fs::run(
        forge::cmd!(&qemu_img, "convert", "-f", "qcow2", "-O", "raw", image, dest),
        &format!("qemu-img convert {} to raw", image.display()),
    )?;
    Ok(())
}

/// A sparse copy of a disk.
pub fn copy(src: &Path, dst: &Path) -> Result<()> {
    let s = std::fs::File::open(src).with_context(|| format!("{}: cannot open", src.display()))?;
    let len = s.metadata().with_context(|| format!("{}: stat", src.display()))?.len();
    let d = sparse::create(dst, len)?;
    sparse::splice(&s, 0, len, &d, 0, false)
        .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
    Ok(())
}

/// Byte offset and length of the partition labelled `label`.
pub fn partition(disk: &Path, label: &str) -> Result<(u64, u64)> {
    let f =
        std::fs::File::open(disk).with_context(|| format!("{}: cannot open", disk.display()))?;
    let t = forge::table::read_primary(&f)
        .with_context(|| format!("{}: reading the GPT", disk.display()))?;
    let e = t
        .entries
        .iter()
        .find(|e| e.name == label)
        .ok_or_else(|| anyhow!("{}: no partition labelled {label}", disk.display()))?;
    Ok((e.first_lba * 512, e.sectors() * 512))
}

/// Applies a mutation to `disk`; returns what was done, for the log.
pub fn mutate(disk: &Path, m: &Mutation) -> Result<String> {
    match m {
        Mutation::RemoveFile { partition: label, path } => {
            remove_file(disk, label, path)?;
            Ok(format!("{path} removed from {label}"))
        }
        Mutation::FlipByte { partition: label } => {
            let at = flip_byte(disk, label)?;
            Ok(format!("{label} byte at offset {at} flipped"))
        }
    }
}

/// Removes a file from an ext4 partition (debugfs at its offset) and checks it is gone.
pub fn remove_file(disk: &Path, label: &str, path: &str) -> Result<()> {
    if path.contains(['"', '\n']) || !path.starts_with('/') {
        bail!("remove_file: {path:?} is not an absolute path debugfs can take");
    }
    let (off, _) = partition(disk, label)?;
    let target = format!("{}?offset={off}", disk.display());
    let debugfs = forge::tools::path(forge::tools::DEBUGFS)?;
    forge::fs::run(
        forge::cmd!(&debugfs, "-w", "-R", format!("rm \"{path}\""), &target),
        &format!("debugfs rm {path} on {label}"),
    )?;
    let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
    let dir = if dir.is_empty() { "/" } else { dir };
    let out = forge::fs::run(
        forge::cmd!(&debugfs, "-R", format!("ls -l \"{dir}\""), &target),
        &format!("debugfs ls {dir} on {label}"),
    )?;
    if out.split_whitespace().any(|w| w == name) {
        bail!("{}: {path} still present on {label} after removal", disk.display());
    }
    Ok(())
}

/// Flips one byte in the middle of the partition's filesystem; returns its offset.
pub fn flip_byte(disk: &Path, label: &str) -> Result<u64> {
    let (off, len) = partition(disk, label)?;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .with_context(|| format!("{}: cannot open for writing", disk.display()))?;
    let fs = forge::inspect::probe_fs(&f, off, len)?
        .ok_or_else(|| anyhow!("{}: {label} holds no filesystem", disk.display()))?;
    let at = off + fs.size_bytes.unwrap_or(len) / 2 + 123;
    let mut b = [0u8; 1];
    use std::os::unix::fs::FileExt;
    f.read_exact_at(&mut b, at).with_context(|| format!("{}: read at {at}", disk.display()))?;
    f.write_all_at(&[b[0] ^ 0xff], at)
        .with_context(|| format!("{}: write at {at}", disk.display()))?;
    f.sync_all()?;
    Ok(at)
}

/// The architectures whose removable-media EFI loader
/// ([`Arch::efi_loader`]: `EFI/boot/bootx64.efi`, `EFI/boot/bootaa64.efi`)
/// is on the ESP (the first partition of the EFI System type) of a raw
/// disk, each a PE program for its architecture. None: the disk cannot
/// tell (no GPT, no ESP, or no loader on it). A loader built for another
/// architecture than its name says, or an ESP that is not FAT, is an error.
pub fn esp_arches(disk: &File) -> Result<Option<Vec<Arch>>> {
    let Ok(t) = forge::table::read_primary(disk) else { return Ok(None) };
    let efi = forge::layout::type_guid("efi").expect("the EFI System type is known");
    let Some(e) = t.entries.iter().find(|e| e.type_guid == efi) else { return Ok(None) };
    let (off, len) = (e.first_lba * 512, e.sectors() * 512);
    let fat = forge::fs::fat::FatReader::open(disk, off, len)
        .with_context(|| format!("the ESP (partition {})", e.number))?;
    let mut found = Vec::new();
    for (a, is) in forge::inspect::esp_loaders(&fat) {
        match is {
            Some(m) if m == a => found.push(a),
            Some(m) => bail!("the ESP's {} is a program for {m}, not {a}", a.efi_loader()),
            None => bail!("the ESP's {} is not a PE program of a known machine", a.efi_loader()),
        }
    }
    Ok((!found.is_empty()).then_some(found))
}

/// The one architecture `found` (from [`esp_arches`]) names, and how.
fn one_arch(found: Option<Vec<Arch>>) -> Result<Arch> {
    match found.as_deref() {
        Some([a]) => Ok(*a),
        Some(several) => bail!(
            "its ESP holds the EFI loaders of {}: pass --arch",
            several.iter().map(|a| a.efi_loader()).collect::<Vec<_>>().join(" and ")
        ),
        None => bail!(
            "no GPT with an ESP holding an EFI loader ({}) to tell its architecture by: pass --arch",
            Arch::ALL.iter().map(|a| a.efi_loader()).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// The architecture of an image (raw, qcow2, .bz2, .gz, .zst or .xz), from
/// the EFI loader on its ESP (see [`esp_arches`]). A compressed image is
/// decompressed only up to its ESP's end, a qcow2 converted, into a
/// scratch directory beside it.
pub fn image_arch(image: &Path) -> Result<Arch> {
    let what = || format!("{}: the image's architecture", image.display());
    let open = |p: &Path| File::open(p).with_context(|| format!("{}: cannot open", p.display()));
    let codec = forge::io::codec::Codec::from_path(image);
    if codec.is_none() && !is_qcow2(image)? {
        return esp_arches(&open(image)?).and_then(one_arch).with_context(what);
    }
    let dir = image.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let scratch = tempfile::Builder::new()
        .prefix(".boot-test-arch-")
        .tempdir_in(dir)
        .with_context(|| format!("{}: cannot create a scratch directory", dir.display()))?;
    let raw = scratch.path().join("head.raw");
    match codec {
        Some(c) => decompress_through_esp(image, c, &raw).with_context(what)?,
        None => qcow2_to_raw(image, &raw)?,
    }
    esp_arches(&open(&raw)?).and_then(one_arch).with_context(what)
}

/// Writes the start of a compressed image to `dest` (sparse): its GPT,
/// then on to the end of its ESP (or what there is of the image).
fn decompress_through_esp(image: &Path, codec: forge::io::codec::Codec, dest: &Path) -> Result<()> {
    use std::io::Read;
    use std::os::unix::fs::FileExt;
    let f = File::open(image).with_context(|| format!("{}: cannot open", image.display()))?;
    let mut r = codec.reader(std::io::BufReader::new(f))?;
    let out = sparse::create(dest, 0)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    // The GPT is in the first MiB; the ESP's end is known once it is read.
    let mut end: Option<u64> = None;
    loop {
        let want = end.map_or(1 << 20, |e| e.saturating_sub(pos)).min(buf.len() as u64) as usize;
        if want == 0 {
            break;
        }
        let mut got = 0;
        while got < want {
            match r.read(&mut buf[got..want]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e).with_context(|| format!("decoding {}", image.display())),
            }
        }
        if !sparse::is_zero(&buf[..got]) {
            out.write_all_at(&buf[..got], pos)
                .with_context(|| format!("{}: cannot write", dest.display()))?;
        }
        pos += got as u64;
        out.set_len(pos).with_context(|| format!("{}: set_len", dest.display()))?;
        if got < want {
            break; // the image's end
        }
        if end.is_none() {
            let efi = forge::layout::type_guid("efi").expect("the EFI System type is known");
            end = Some(match forge::table::read_primary(&out) {
                Ok(t) => t
                    .entries
                    .iter()
                    .find(|e| e.type_guid == efi)
                    .map_or(pos, |e| e.last_lba.saturating_add(1).saturating_mul(512)),
                Err(_) => pos, // no GPT: esp_arches says so
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PE header for the machine (what `pe_machine` reads).
    fn pe(machine: u16) -> Vec<u8> {
        let mut b = vec![0u8; 0x80];
        b[..2].copy_from_slice(b"MZ");
        b[0x3c..0x40].copy_from_slice(&0x40u32.to_le_bytes());
        b[0x40..0x44].copy_from_slice(b"PE\0\0");
        b[0x44..0x46].copy_from_slice(&machine.to_le_bytes());
        b
    }

    const ESP_START: u64 = 1 << 20;
    const ESP_BYTES: u64 = 64 << 20;

    /// A GPT disk (sfdisk) with a 64 MiB partition of `type_guid` at 1 MiB
    /// holding a FAT with `files`, and non-zero bytes after it; None
    /// without sfdisk.
    fn disk(dir: &Path, type_guid: &str, files: &[(&str, Vec<u8>)]) -> Option<std::path::PathBuf> {
        let Some(sfdisk) = forge::tools::find("sfdisk") else {
            println!("skipped: needs sfdisk (fdisk)");
            return None;
        };
        let path = dir.join("disk.raw");
        let f = sparse::create(&path, ESP_START + ESP_BYTES + (4 << 20)).unwrap();
        let script = format!(
            "label: gpt\nstart={}, size={}, type={type_guid}\n",
            ESP_START / 512,
            ESP_BYTES / 512
        );
        forge::cmd!(sfdisk, "--quiet", &path).stdin_bytes(script).run().unwrap();
        let mut t = forge::fs::tree::Dir::new();
        for (name, bytes) in files {
            t.add_file(name, forge::fs::tree::Source::Bytes(bytes.clone())).unwrap();
        }
        let params = forge::fs::fat::FatParams {
            label: Some("EFI-SYSTEM".into()),
            volume_id: 1,
            size_bytes: ESP_BYTES,
            hidden_sectors: ESP_START / 512,
            epoch: 0,
        };
        forge::fs::fat::build(&t, &params, &f, ESP_START).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(&[0x5a; 4096], ESP_START + ESP_BYTES + (1 << 20)).unwrap();
        Some(path)
    }

    #[test]
    fn an_ext4_volume_holds_its_files_and_fscks_clean() {
        let tmp = tempfile::tempdir().unwrap();
        let (Some(e2fsck), Some(debugfs)) =
            (forge::tools::find("e2fsck"), forge::tools::find("debugfs"))
        else {
            println!("skipped: needs e2fsck and debugfs (e2fsprogs)");
            return;
        };
        let img = tmp.path().join("vol.raw");
        let files = std::collections::BTreeMap::from([
            ("hello.txt".to_string(), "Hello from volume 101\n".to_string()),
            ("sub/dir/x".to_string(), "x".to_string()),
        ]);
        ext4(&img, 16 << 20, Some("vol101"), &files, &tmp.path().join("staging")).unwrap();
        assert_eq!(std::fs::metadata(&img).unwrap().len(), 16 << 20);
        forge::cmd!(e2fsck, "-fn", &img).stdout_null().run().unwrap();
        let cat = forge::cmd!(&debugfs, "-R", "cat /hello.txt", &img).stderr_null().read().unwrap();
        assert_eq!(cat, "Hello from volume 101");
        let st = forge::cmd!(&debugfs, "-R", "stat /sub/dir/x", &img).stderr_null().read().unwrap();
        assert!(st.contains("User:     0   Group:     0"), "{st}");
        let label = forge::cmd!("blkid", "-p", "-o", "value", "-s", "LABEL", &img).read().unwrap();
        assert_eq!(label, "vol101");
    }

    const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
    const LINUX_TYPE: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

    #[test]
    fn the_esp_loader_tells_the_architecture() {
        let tmp = tempfile::tempdir().unwrap();
        let Some(d) = disk(tmp.path(), ESP_TYPE, &[("EFI/boot/bootaa64.efi", pe(0xaa64))]) else {
            return;
        };
        let open = |p: &Path| File::open(p).unwrap();
        assert_eq!(esp_arches(&open(&d)).unwrap(), Some(vec![Arch::Arm64]));
        assert_eq!(image_arch(&d).unwrap(), Arch::Arm64);
        // Compressed: decoded only through the ESP (not the bytes after it).
        let zst = tmp.path().join("image.bin.zst");
        let c = forge::io::codec::Codec::Zst;
        std::fs::write(&zst, c.encode(&std::fs::read(&d).unwrap(), 3).unwrap()).unwrap();
        let head = tmp.path().join("head.raw");
        decompress_through_esp(&zst, c, &head).unwrap();
        assert_eq!(std::fs::metadata(&head).unwrap().len(), ESP_START + ESP_BYTES);
        assert_eq!(image_arch(&zst).unwrap(), Arch::Arm64);
        let left: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".boot-test-arch-"))
            .collect();
        assert!(left.is_empty(), "scratch left behind: {left:?}");
        // amd64's loader.
        let tmp = tempfile::tempdir().unwrap();
        let d = disk(tmp.path(), ESP_TYPE, &[("EFI/boot/bootx64.efi", pe(0x8664))]).unwrap();
        assert_eq!(image_arch(&d).unwrap(), Arch::Amd64);
    }

    #[test]
    fn an_esp_that_cannot_tell_is_an_error_naming_the_image() {
        let tmp = tempfile::tempdir().unwrap();
        // The loader's name and its machine disagree.
        let Some(d) = disk(tmp.path(), ESP_TYPE, &[("EFI/boot/bootaa64.efi", pe(0x8664))]) else {
            return;
        };
        let e = format!("{:#}", image_arch(&d).unwrap_err());
        assert!(
            e.contains(&format!("{}: the image's architecture", d.display()))
                && e.contains("EFI/boot/bootaa64.efi is a program for amd64, not arm64"),
            "{e}"
        );
        // Not a PE program.
        let tmp = tempfile::tempdir().unwrap();
        let d = disk(tmp.path(), ESP_TYPE, &[("EFI/boot/bootx64.efi", b"efi".to_vec())]).unwrap();
        let e = format!("{:#}", image_arch(&d).unwrap_err());
        assert!(e.contains("bootx64.efi is not a PE program"), "{e}");
        // Both loaders.
        let tmp = tempfile::tempdir().unwrap();
        let both = [("EFI/boot/bootx64.efi", pe(0x8664)), ("EFI/boot/bootaa64.efi", pe(0xaa64))];
        let d = disk(tmp.path(), ESP_TYPE, &both).unwrap();
        assert_eq!(
            esp_arches(&File::open(&d).unwrap()).unwrap(),
            Some(vec![Arch::Amd64, Arch::Arm64])
        );
        let e = format!("{:#}", image_arch(&d).unwrap_err());
        assert!(e.contains("EFI/boot/bootx64.efi and EFI/boot/bootaa64.efi: pass --arch"), "{e}");
        // No loader; no ESP at all (the FAT is in a Linux partition).
        let tmp = tempfile::tempdir().unwrap();
        let d = disk(tmp.path(), ESP_TYPE, &[("EFI/other.efi", pe(0x8664))]).unwrap();
        assert_eq!(esp_arches(&File::open(&d).unwrap()).unwrap(), None);
        let tmp = tempfile::tempdir().unwrap();
        let d = disk(tmp.path(), LINUX_TYPE, &[("EFI/boot/bootx64.efi", pe(0x8664))]).unwrap();
        assert_eq!(esp_arches(&File::open(&d).unwrap()).unwrap(), None);
        let e = format!("{:#}", image_arch(&d).unwrap_err());
        assert!(
            e.contains("no GPT with an ESP holding an EFI loader") && e.contains("pass --arch"),
            "{e}"
        );
        let blank = tmp.path().join("blank.raw");
        std::fs::write(&blank, vec![0u8; 1 << 20]).unwrap();
        assert_eq!(esp_arches(&File::open(&blank).unwrap()).unwrap(), None);
    }

    #[test]
    fn qcow2_images_become_sparse_raw_disks() {
        let tmp = tempfile::tempdir().unwrap();
        let raw = tmp.path().join("image.raw");
        let mut data = vec![0u8; 4 << 20];
        data[..8].copy_from_slice(b"GPTTEST!");
        data[3 << 20] = 0x5a;
        std::fs::write(&raw, &data).unwrap();
        assert!(!is_qcow2(&raw).unwrap());
        std::fs::write(tmp.path().join("short"), b"QF").unwrap();
        assert!(!is_qcow2(&tmp.path().join("short")).unwrap());
        let qemu_img = match forge::tools::path(forge::tools::Tool {
            program: "qemu-img",
            package: "qemu-utils",
        }) {
            Ok(p) => p,
            Err(_) => {
                println!("skipped: needs qemu-img (qemu-utils)");
                return;
            }
        };
        let qcow = tmp.path().join("image.img");
        forge::fs::run(
            forge::cmd!(&qemu_img, "convert", "-f", "raw", "-O", "qcow2", &raw, &qcow),
            "qemu-img convert",
        )
        .unwrap();
        assert!(is_qcow2(&qcow).unwrap());
        let disk = tmp.path().join("disk.raw");
        prepare(&qcow, &disk, 16 << 20).unwrap();
        let got = std::fs::read(&disk).unwrap();
        assert_eq!(got.len(), 16 << 20);
        assert_eq!(&got[..4 << 20], &data[..]);
        assert!(got[4 << 20..].iter().all(|b| *b == 0));
        let e = prepare(&qcow, &disk, 1 << 20).unwrap_err().to_string();
        assert!(e.contains("is larger than the test disk"), "{e}");
    }

    #[test]
    fn runs_sharing_a_directory_decode_the_image_once() {
        let tmp = tempfile::tempdir().unwrap();
        // 8 MiB: data at its start and at 5 MiB, then a trailing zero run.
        let mut data = vec![0u8; 8 << 20];
        data[..8].copy_from_slice(b"GPTTEST!");
        data[5 << 20] = 0xa5;
        let zst = tmp.path().join("image.bin.zst");
        let c = forge::io::codec::Codec::Zst;
        std::fs::write(&zst, c.encode(&data, 3).unwrap()).unwrap();
        let shared = tmp.path().join("shared");
        let alone = tmp.path().join("alone.raw");
        prepare(&zst, &alone, 16 << 20).unwrap();
        // Two runs at once: each gets the whole disk, grown to its size.
        let (a, b) = (tmp.path().join("a.raw"), tmp.path().join("b.raw"));
        std::thread::scope(|s| {
            for d in [&a, &b] {
                let shared = &shared;
                let zst = &zst;
                s.spawn(move || prepare_shared(zst, d, 16 << 20, shared, &|_| {}).unwrap());
            }
        });
        let want = std::fs::read(&alone).unwrap();
        assert_eq!(want.len(), 16 << 20);
        assert_eq!(&want[..8 << 20], &data[..]);
        for d in [&a, &b] {
            assert!(std::fs::read(d).unwrap() == want, "{}", d.display());
        }
        // One decoded copy, of the image's own length, nothing partial left.
        let keys: Vec<_> = std::fs::read_dir(&shared).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(keys.len(), 1, "{keys:?}");
        let left: Vec<_> = std::fs::read_dir(&keys[0])
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, ["disk.raw"]);
        assert_eq!(std::fs::metadata(keys[0].join("disk.raw")).unwrap().len(), 8 << 20);
        // A later run reuses it; a smaller disk than the image is refused.
        let e = prepare_shared(&zst, &a, 1 << 20, &shared, &|_| {}).unwrap_err().to_string();
        assert!(e.contains("is larger than the test disk"), "{e}");
        // A changed image is another key.
        std::fs::write(&zst, c.encode(&data[..4 << 20], 3).unwrap()).unwrap();
        let f = File::options().write(true).open(&zst).unwrap();
        f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5)).unwrap();
        prepare_shared(&zst, &a, 16 << 20, &shared, &|_| {}).unwrap();
        assert_eq!(std::fs::read_dir(&shared).unwrap().count(), 2);
    }
}
