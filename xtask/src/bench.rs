//! `cargo xtask bench …`: our pipeline and a reference pipeline built from
//! standard tools, run on the same input in the same invocation, with wall
//! time, peak RSS (wait4 rusage of the whole process tree) and peak scratch
//! disk (free space sampled every 20 ms) side by side.

use anyhow::{bail, Context, Result};
use clap::{Subcommand, ValueEnum};
use forge::layout::{FsKind, IdPolicy, LayoutFile};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub which: Which,
}

#[derive(Subcommand)]
pub enum Which {
    /// Compress the Hetzner image (12.3 GiB, its real data): ours against lbzip2 -n2 -9 and pbzip2 -p2 -9
    /// (gz: pigz -p2 and gzip; zst: zstd -T2; xz: xz -T2).
    Compress {
        /// A raw image to compress (default: the Hetzner image from the demo payload, built once).
        #[arg(long)]
        image: Option<PathBuf>,
        /// Compression format.
        #[arg(long, value_enum, default_value = "bz2")]
        format: Format,
        #[arg(long)]
        work_dir: Option<PathBuf>,
    },
    /// The whole `build-image --platform hetzner` from a cached payload: stages, peak RSS, scratch disk.
    Build {
        #[arg(long)]
        work_dir: Option<PathBuf>,
    },
    /// Build the generic image from a ~250 MB payload tree, against sfdisk + mkfs.* + veritysetup + dd.
    Assemble {
        /// Payload size to assemble from the host's /usr/lib, in MB.
        #[arg(long, default_value_t = 250)]
        size_mb: u64,
        /// Working directory (default: .cache/bench in the checkout).
        #[arg(long)]
        work_dir: Option<PathBuf>,
    },
}

/// The formats `bench compress` compares (each has reference tools).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Bz2,
    Gz,
    Zst,
    Xz,
}

impl Format {
    /// The name `compress --format` takes, and the output files' suffix.
    pub fn name(self) -> &'static str {
        match self {
            Format::Bz2 => "bz2",
            Format::Gz => "gz",
            Format::Zst => "zst",
            Format::Xz => "xz",
        }
    }
}

pub fn run(a: Args) -> Result<()> {
    match a.which {
        Which::Assemble { size_mb, work_dir } => assemble(size_mb, work_dir),
        Which::Compress { image, format, work_dir } => compress(image, format, work_dir),
        Which::Build { work_dir } => build(work_dir),
    }
}

pub struct Measure {
    pub wall: Duration,
    pub cpu: Duration,
    pub max_rss_kib: u64,
    pub scratch_peak: u64,
}

/// Runs `cmd`, measuring wall time, peak RSS of its process tree and the
/// peak disk space used on the filesystem holding `dir`.
pub fn measure(mut cmd: Command, dir: &Path) -> Result<Measure> {
    let free0 = free_bytes(dir)?;
    let min_free = Arc::new(AtomicU64::new(free0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (min_free, done, dir) = (min_free.clone(), done.clone(), dir.to_path_buf());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if let Ok(f) = free_bytes(&dir) {
                    min_free.fetch_min(f, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let start = Instant::now();
    let child = cmd.spawn().context("starting the benchmarked command")?;
    let mut status = 0;
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut ru) };
    let wall = start.elapsed();
    done.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    if r < 0 {
        bail!("wait4: {}", std::io::Error::last_os_error());
    }
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        bail!("benchmarked command failed (status {status}): {cmd:?}");
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    Ok(Measure {
        wall,
        cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
        max_rss_kib: ru.ru_maxrss as u64,
        scratch_peak: free0.saturating_sub(min_free.load(Ordering::Relaxed)),
    })
}

fn free_bytes(dir: &Path) -> Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())?;
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        bail!("statvfs {}: {}", dir.display(), std::io::Error::last_os_error());
    }
    Ok(s.f_bavail as u64 * s.f_frsize as u64)
}

/// Bytes in non-zero 4 KiB blocks of a file.
pub fn nonzero_bytes(p: &Path) -> Result<u64> {
    nonzero_blocks(p, None)
}

/// Counts the image's non-zero 4 KiB blocks' bytes; with `copy`, writes them
/// there back to back.
fn nonzero_blocks(p: &Path, mut copy: Option<&mut dyn std::io::Write>) -> Result<u64> {
    let f = std::fs::File::open(p)?;
    let len = f.metadata()?.len();
    let mut n = 0;
    forge::io::sparse::for_each_data_chunk(&f, 0, len, &mut |_, buf| {
        for c in buf.chunks(4096).filter(|c| !forge::io::sparse::is_zero(c)) {
            n += c.len() as u64;
            if let Some(w) = copy.as_mut() {
                w.write_all(c)?;
            }
        }
        Ok(())
    })?;
    Ok(n)
}

/// A payload of about `size_mb` MB made from the host's /usr/lib (cached).
fn bench_payload(work: &Path, size_mb: u64) -> Result<PathBuf> {
    let root = work.join(format!("payload-{size_mb}"));
    let marker = root.join(".complete");
    if marker.exists() {
        return Ok(root);
    }
    let _ = std::fs::remove_dir_all(&root);
    let usr = root.join("usr");
    std::fs::create_dir_all(usr.join("boot"))?;
    let mut budget = size_mb * 1_000_000;
    copy_tree(Path::new("/usr/lib"), &usr.join("lib"), &mut budget)?;
    std::fs::write(usr.join("lib/os-release"), "ID=benchos\nNAME=\"Bench OS\"\nVERSION_ID=1.0\n")?;
    let kernel = std::fs::read_dir("/boot").ok().and_then(|d| {
        d.filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("vmlinuz"))
    });
    match kernel {
        Some(k) => {
            std::fs::copy(k, usr.join("boot/vmlinuz"))?;
        }
        None => {
            // No host kernel: 8 MiB of incompressible bytes stand in for one.
            let mut v = vec![0u8; 8 << 20];
            let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
            for b in v.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            std::fs::write(usr.join("boot/vmlinuz"), v)?;
        }
    }
    std::fs::write(&marker, "")?;
    Ok(root)
}

fn copy_tree(src: &Path, dst: &Path, budget: &mut u64) -> Result<()> {
    std::fs::create_dir_all(dst)?;
    let mut entries: Vec<_> = match std::fs::read_dir(src) {
        Ok(d) => d.filter_map(|e| e.ok()).collect(),
        Err(_) => return Ok(()),
    };
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        if *budget == 0 {
            return Ok(());
        }
        let (s, d) = (e.path(), dst.join(e.file_name()));
        let Ok(m) = std::fs::symlink_metadata(&s) else { continue };
        if m.file_type().is_symlink() {
            if let Ok(t) = std::fs::read_link(&s) {
                let _ = std::os::unix::fs::symlink(t, &d);
            }
        } else if m.is_dir() {
            copy_tree(&s, &d, budget)?;
        } else if m.is_file() && std::fs::File::open(&s).is_ok() && std::fs::copy(&s, &d).is_ok() {
            *budget = budget.saturating_sub(m.len());
        }
    }
    Ok(())
}

/// The same image built by standard tools: sfdisk, mkfs.fat + mtools,
/// mkfs.erofs + veritysetup + dd, mkfs.ext4.
fn reference_script(payload: &Path, image: &Path, scratch: &Path) -> Result<String> {
    let layout_file = crate::util::repo_root().join("layouts/disk_layout.json");
    let plan = LayoutFile::load(&layout_file)?.plan("base", &IdPolicy::default())?;
    let img = image.display();
    let mut s = String::from("set -euo pipefail\n");
    writeln!(s, "rm -f {img}\ntruncate -s {} {img}", plan.total_bytes())?;
    writeln!(s, "sfdisk -q --no-reread --no-tell-kernel {img} <<'EOF'\nlabel: gpt\nlabel-id: {}\nfirst-lba: 34", plan.disk_guid)?;
    for p in &plan.partitions {
        let bits: Vec<String> =
            (48..64).filter(|b| p.attributes & (1u64 << b) != 0).map(|b| b.to_string()).collect();
        let attrs = if bits.is_empty() {
            String::new()
        } else {
            format!(", attrs=\"GUID:{}\"", bits.join(","))
        };
        writeln!(
            s,
            "{img}{}: start={}, size={}, type={}, uuid={}, name=\"{}\"{attrs}",
            p.number, p.first_block, p.blocks, p.type_guid, p.uuid, p.label
        )?;
    }
    s.push_str("EOF\n");
    for p in &plan.partitions {
        let Some(fs) = &p.fs else { continue };
        let off = p.first_block * 512;
        match (fs.kind, p.mount.as_deref()) {
            (FsKind::Vfat, _) => {
                writeln!(
                    s,
                    "mkfs.fat -F 32 -n {} --offset {} {img} {} >/dev/null 2>&1",
                    fs.label.as_deref().unwrap_or("ESP"),
                    p.first_block,
                    fs.bytes() / 1024
                )?;
                writeln!(s, "mmd -i {img}@@{off} ::/flatcar\nmcopy -i {img}@@{off} {}/usr/boot/vmlinuz ::/flatcar/vmlinuz-a", payload.display())?;
            }
            (FsKind::Erofs, Some("/usr")) => {
                let u = scratch.join("usr.img");
                let u = u.display();
                let z = fs.compression.as_ref().map(|c| format!(" -z{c}")).unwrap_or_default();
                writeln!(
                    s,
                    "rm -f {u}\nmkfs.erofs --quiet -T0 --all-root -x-1{z} {u} {}/usr",
                    payload.display()
                )?;
                writeln!(s, "truncate -s {} {u}", p.blocks * 512)?;
                writeln!(
                    s,
                    "veritysetup format --hash-offset={} --data-blocks={} {u} {u} >/dev/null",
                    fs.bytes(),
                    fs.blocks
                )?;
                writeln!(
                    s,
                    "dd if={u} of={img} bs=1M seek={} conv=notrunc,sparse status=none\nrm -f {u}",
                    off / (1 << 20)
                )?;
            }
            (FsKind::Ext4, _) => {
                writeln!(
                    s,
                    "mkfs.ext4 -q -F -E offset={off},nodiscard -L {} {img} {}",
                    fs.label.as_deref().unwrap_or("x"),
                    fs.blocks
                )?;
            }
            (k, m) => bail!("reference pipeline: no recipe for {} at {:?}", k.name(), m),
        }
    }
    Ok(s)
}

fn assemble(size_mb: u64, work_dir: Option<PathBuf>) -> Result<()> {
    forge::tools::require(&[
        forge::tools::Tool { program: "sfdisk", package: "fdisk" },
        forge::tools::Tool { program: "mkfs.fat", package: "dosfstools" },
        forge::tools::Tool { program: "mcopy", package: "mtools" },
        forge::tools::Tool { program: "veritysetup", package: "cryptsetup-bin" },
        forge::tools::MKFS_EROFS,
        forge::tools::MKFS_EXT4,
    ])?;
    let work = work_dir.unwrap_or_else(|| crate::util::repo_root().join(".cache/bench"));
    std::fs::create_dir_all(&work)?;
    let work = work.canonicalize()?;
    eprintln!("preparing a {size_mb} MB payload from /usr/lib under {}", work.display());
    let payload = bench_payload(&work, size_mb)?;
    let payload_bytes = dir_bytes(&payload)?;

    let ours_dir = work.join("ours");
    let _ = std::fs::remove_dir_all(&ours_dir);
    std::fs::create_dir_all(&ours_dir)?;
    let mut cmd = forge::tools::command(std::env::current_exe()?);
    cmd.args(["build-image", "--platform", "generic", "--base"])
        .arg(&payload)
        .arg("--output-dir")
        .arg(&ours_dir)
        .env("SOURCE_DATE_EPOCH", "0");
    cmd.stderr(std::process::Stdio::null());
    eprintln!("running ours …");
    let ours = measure(cmd, &work)?;
    let ours_img = ours_dir.join("flatcar_production_image.bin");
    let ours_nz = nonzero_bytes(&ours_img)?;

    let ref_dir = work.join("reference");
    let _ = std::fs::remove_dir_all(&ref_dir);
    std::fs::create_dir_all(&ref_dir)?;
    let ref_img = ref_dir.join("image.bin");
    let script = reference_script(&payload, &ref_img, &ref_dir)?;
    std::fs::write(ref_dir.join("reference.sh"), &script)?;
    let mut cmd = forge::tools::command("bash");
    cmd.arg(ref_dir.join("reference.sh"));
    eprintln!("running the reference pipeline (sfdisk + mkfs.fat/mtools + mkfs.erofs/veritysetup/dd + mkfs.ext4) …");
    let reference = measure(cmd, &work)?;
    let ref_nz = nonzero_bytes(&ref_img)?;

    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "bench assemble: payload {:.1} MiB, generic image (layout base, {} B)",
        mib(payload_bytes),
        std::fs::metadata(&ours_img)?.len()
    );
    println!(
        "{:<34} {:>9} {:>14} {:>16} {:>16} {:>8}",
        "pipeline", "wall s", "peak RSS MiB", "scratch MiB", "non-zero MiB", "scr/nz"
    );
    for (name, m, nz) in [
        ("ours (cargo xtask build-image)", &ours, ours_nz),
        ("reference (sfdisk+mkfs+dd)", &reference, ref_nz),
    ] {
        println!(
            "{:<34} {:>9.2} {:>14.1} {:>16.1} {:>16.1} {:>8.2}",
            name,
            m.wall.as_secs_f64(),
            m.max_rss_kib as f64 / 1024.0,
            mib(m.scratch_peak),
            mib(nz),
            m.scratch_peak as f64 / nz.max(1) as f64
        );
    }
    println!(
        "speedup {:.2}x; targets: faster than reference [{}], peak RSS < 256 MiB [{}], scratch <= 1.2 x non-zero [{}]",
        reference.wall.as_secs_f64() / ours.wall.as_secs_f64(),
        if ours.wall < reference.wall { "met" } else { "MISSED" },
        if ours.max_rss_kib < 256 * 1024 { "met" } else { "MISSED" },
        if (ours.scratch_peak as f64) <= 1.2 * ours_nz as f64 { "met" } else { "MISSED" },
    );
    Ok(())
}

fn dir_bytes(p: &Path) -> Result<u64> {
    let mut n = 0;
    for e in std::fs::read_dir(p)? {
        let e = e?;
        let m = std::fs::symlink_metadata(e.path())?;
        if m.is_dir() {
            n += dir_bytes(&e.path())?;
        } else if m.is_file() {
            n += m.len();
        }
    }
    Ok(n)
}

/// The reference tools for a format, at the level ours uses by default, on two threads.
fn reference_compressors(format: Format) -> Vec<(&'static str, &'static str, forge::tools::Tool)> {
    use forge::tools::Tool;
    match format {
        Format::Bz2 => vec![
            ("lbzip2 -n2 -9", "lbzip2 -n2 -9 -c", Tool { program: "lbzip2", package: "lbzip2" }),
            ("pbzip2 -p2 -9", "pbzip2 -p2 -9 -c", Tool { program: "pbzip2", package: "pbzip2" }),
        ],
        Format::Gz => vec![
            ("pigz -p2 -6", "pigz -p2 -6 -n -c", Tool { program: "pigz", package: "pigz" }),
            ("gzip -6", "gzip -6 -n -c", Tool { program: "gzip", package: "gzip" }),
        ],
        Format::Zst => {
            vec![("zstd -T2 -3", "zstd -q -T2 -3 -c", Tool { program: "zstd", package: "zstd" })]
        }
        Format::Xz => {
            vec![("xz -T2 -6", "xz -T2 -6 -c", Tool { program: "xz", package: "xz-utils" })]
        }
    }
}

fn compress(image: Option<PathBuf>, format: Format, work_dir: Option<PathBuf>) -> Result<()> {
    let refs = reference_compressors(format);
    let format = format.name();
    forge::tools::require(&refs.iter().map(|r| r.2).collect::<Vec<_>>())?;
    let work = work_dir.unwrap_or_else(|| crate::util::repo_root().join(".cache/bench"));
    std::fs::create_dir_all(&work)?;
    let image = match image {
        Some(i) => i,
        None => {
            let dir = work.join("hetzner");
            let raw = dir.join("flatcar_production_hetzner_image.bin");
            if !raw.exists() {
                eprintln!("building the Hetzner image (raw kept) into {}", dir.display());
                let st = forge::tools::command(std::env::current_exe()?)
                    .args([
                        "build-image",
                        "--platform",
                        "hetzner",
                        "--keep-raw",
                        "--no-verify",
                        "--output-dir",
                    ])
                    .arg(&dir)
                    .status()?;
                if !st.success() {
                    bail!("building the Hetzner image failed");
                }
            }
            raw
        }
    };
    let len = std::fs::metadata(&image)?.len();
    let nz = nonzero_bytes(&image)?;
    let out = work.join("compress-out");
    std::fs::create_dir_all(&out)?;
    let mut rows = Vec::new();
    let mut cases: Vec<(String, Command, PathBuf)> = Vec::new();
    let ours_out = out.join(format!("ours.{format}"));
    let mut ours = forge::tools::command(std::env::current_exe()?);
    ours.args(["compress", "--format", format, "--no-verify"]).arg(&image).arg(&ours_out);
    cases.push(("ours (zero-aware, parallel)".into(), ours, ours_out));
    for (i, (name, cmdline, _)) in refs.iter().enumerate() {
        let path = out.join(format!("ref{i}.{format}"));
        let mut c = forge::tools::command("bash");
        c.arg("-c").arg(format!("{cmdline} {} > {}", image.display(), path.display()));
        cases.push((name.to_string(), c, path));
    }
    // The floor for any zero-skipping compressor built on the reference's
    // encoder: the reference on the image's non-zero blocks alone.
    let data_only = out.join("nonzero-blocks.bin");
    {
        let mut w = std::io::BufWriter::new(std::fs::File::create(&data_only)?);
        nonzero_blocks(&image, Some(&mut w))?;
        std::io::Write::flush(&mut w)?;
    }
    let floor_out = out.join(format!("floor.{format}"));
    let mut c = forge::tools::command("bash");
    c.arg("-c").arg(format!("{} {} > {}", refs[0].1, data_only.display(), floor_out.display()));
    cases.push((format!("{} on non-zero blocks only", refs[0].0), c, floor_out));
    for (name, cmd, path) in cases {
        eprintln!("running {name} …");
        let m = measure(cmd, &work)?;
        let size = std::fs::metadata(&path)?.len();
        rows.push((name, m, size));
    }
    let lb = rows[1].1.wall.as_secs_f64();
    let lb_name = &rows[1].0;
    println!(
        "bench compress: {} ({len} B, {:.1} MiB non-zero)",
        image.display(),
        nz as f64 / (1 << 20) as f64
    );
    println!(
        "{:<42} {:>9} {:>9} {:>13} {:>14} {:>12}",
        "compressor",
        "wall s",
        "CPU s",
        "peak RSS MiB",
        "output B",
        format!("vs {}", lb_name.split(' ').next().unwrap_or(""))
    );
    for (name, m, size) in &rows {
        println!(
            "{:<42} {:>9.2} {:>9.2} {:>13.1} {:>14} {:>11.2}x",
            name,
            m.wall.as_secs_f64(),
            m.cpu.as_secs_f64(),
            m.max_rss_kib as f64 / 1024.0,
            size,
            lb / m.wall.as_secs_f64()
        );
    }
    let _ = std::fs::remove_file(&data_only);
    let speed = lb / rows[0].1.wall.as_secs_f64();
    if format == "bz2" {
        println!(
            "ours is {speed:.1}x faster than lbzip2 (target 8x: {})",
            if speed >= 8.0 { "met" } else { "MISSED" }
        );
    } else {
        println!("ours is {speed:.1}x faster than {lb_name}");
    }
    let floor = lb / rows.last().unwrap().1.wall.as_secs_f64();
    println!("({lb_name} itself on the non-zero blocks alone: {floor:.1}x, what skipping zeros can give with its encoder)");
    Ok(())
}

fn build(work_dir: Option<PathBuf>) -> Result<()> {
    let work = work_dir.unwrap_or_else(|| crate::util::repo_root().join(".cache/bench"));
    std::fs::create_dir_all(&work)?;
    // Make sure the payload is cached, so the measured run is the image build.
    crate::payload::build(None, None, forge::arch::Arch::Amd64)?;
    let out = work.join("build");
    let _ = std::fs::remove_dir_all(&out);
    let log = work.join("build.log");
    let mut cmd = forge::tools::command(std::env::current_exe()?);
    cmd.args(["build-image", "--platform", "hetzner", "--keep-raw", "--output-dir"]).arg(&out);
    cmd.stderr(std::fs::File::create(&log)?);
    eprintln!("running build-image --platform hetzner (cached payload) …");
    let m = measure(cmd, &work)?;
    let raw = out.join("flatcar_production_hetzner_image.bin");
    let nz = nonzero_bytes(&raw)?;
    let artifacts: u64 = std::fs::read_dir(&out)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name() != "flatcar_production_hetzner_image.bin")
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum();
    let text = std::fs::read_to_string(&log)?;
    println!("bench build: build-image --platform hetzner from the cached demo payload");
    println!("stages (s):");
    for l in text
        .lines()
        .filter(|l| l.starts_with("  ") && l.trim_end().ends_with('s') && l.contains('.'))
    {
        println!("{l}");
    }
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "wall {:.2} s, CPU {:.2} s, peak RSS {:.1} MiB (target < 256 MiB: {})",
        m.wall.as_secs_f64(),
        m.cpu.as_secs_f64(),
        m.max_rss_kib as f64 / 1024.0,
        if m.max_rss_kib < 256 * 1024 { "met" } else { "MISSED" }
    );
    // The raw image is kept here only to count its non-zero bytes; a normal build
    // holds it under a temporary name until the compressed copy is verified.
    let scratch = m.scratch_peak.saturating_sub(artifacts);
    println!(
        "disk: peak {:.1} MiB in all, of which {:.1} MiB published artifacts (.bz2, DIGESTS, …); scratch {:.1} MiB = {:.2} x the image's {:.1} MiB non-zero bytes (target <= 1.2: {})",
        mib(m.scratch_peak),
        mib(artifacts),
        mib(scratch),
        scratch as f64 / nz.max(1) as f64,
        mib(nz),
        if scratch as f64 <= 1.2 * nz as f64 { "met" } else { "MISSED" }
    );
    Ok(())
}
