//! The harness: one architecture and firmware of a platform's boot test,
//! every boot of it, and the structured report.

use crate::check::{evaluate, parse_report, CheckResult, Observations};
use crate::metadata::Served;
use crate::qemu::{self, BootFiles, Vm};
use crate::spec::{Arch, Boot, BootTest, DiskSource, Firmware};
use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What one `run` found; written as JSON by `cargo xtask boot-test`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub platform: String,
    pub firmware: Firmware,
    pub arch: Arch,
    pub image: PathBuf,
    pub boots: Vec<BootReport>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BootReport {
    pub variant: String,
    pub negative: bool,
    /// Power-on to the marker the boot stopped at (None: it never stopped at one).
    pub seconds: Option<f64>,
    pub stopped_at: Option<String>,
    pub serial_log: PathBuf,
    pub checks: Vec<CheckResult>,
}

impl Report {
    pub fn passed(&self) -> usize {
        self.checks().filter(|c| c.ok).count()
    }
    pub fn failed(&self) -> usize {
        self.checks().filter(|c| !c.ok).count()
    }
    pub fn checks(&self) -> impl Iterator<Item = &CheckResult> {
        self.boots.iter().flat_map(|b| b.checks.iter())
    }
    /// Every boot ran at least one check and every check passed.
    pub fn ok(&self) -> bool {
        !self.boots.is_empty()
            && self.boots.iter().all(|b| !b.checks.is_empty())
            && self.failed() == 0
    }
}

pub struct Options {
    /// The image file (raw or compressed).
    pub image: PathBuf,
    pub platform: String,
    pub arch: Arch,
    pub firmware: Firmware,
    /// Program run as `<responder> metadata-respond --served FILE --log FILE`.
    pub responder: PathBuf,
    /// Overrides the file's `machine.timeout_seconds`.
    pub timeout: Option<Duration>,
    /// Overrides the file's `machine.disk_bytes`.
    pub disk_bytes: Option<u64>,
    /// Run the boots marked `negative`.
    pub negative: bool,
    pub accel: String,
    /// Where serial logs go (default: beside the image).
    pub log_dir: Option<PathBuf>,
}

/// `flatcar_production_hetzner_image.bin.bz2` → `flatcar_production_hetzner_image`.
pub fn stem(image: &Path) -> String {
    let mut s = image.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if let Some(c) = forge::io::codec::Codec::from_path(image) {
        s = s.trim_end_matches(c.suffix()).to_string();
    }
    for ext in [".bin", ".img", ".raw"] {
        if let Some(t) = s.strip_suffix(ext) {
            return t.to_string();
        }
    }
    s
}

/// Boots the image once per declared boot (negative ones with `negative`)
/// and evaluates each boot's checks. Errors only when the test cannot be set
/// up; a boot that fails (QEMU exits early, a probe errors) is recorded as a
/// failed check in the report.
pub fn run(spec: &BootTest, opts: &Options, log: &dyn Fn(&str)) -> Result<Report> {
    if !spec.arch.contains(&opts.arch) || !spec.firmware.contains(&opts.firmware) {
        return Err(anyhow!(
            "{}: {} {} is not declared (arch {:?}, firmware {:?})",
            spec.file.display(),
            opts.arch.name(),
            opts.firmware.name(),
            spec.arch.iter().map(|a| a.name()).collect::<Vec<_>>(),
            spec.firmware.iter().map(|f| f.name()).collect::<Vec<_>>()
        ));
    }
    let mut spec = spec.clone();
    if let Some(b) = opts.disk_bytes {
        spec.machine.disk_bytes = b;
    }
    let spec = &spec;
    let qemu = forge::tools::path(qemu::program(opts.arch)?)?;
    if opts.firmware == Firmware::Uefi {
        forge::tools::require(&[forge::tools::Tool { program: qemu::OVMF_CODE, package: "ovmf" }])?;
    }
    let tag = format!("{}-{}", opts.arch.name(), opts.firmware.name());
    let image = opts
        .image
        .canonicalize()
        .with_context(|| format!("{}: not found", opts.image.display()))?;
    let image_dir = image.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
    let log_dir = opts.log_dir.clone().unwrap_or_else(|| image_dir.clone());
    let stem = stem(&image);
    let work = tempfile::Builder::new()
        .prefix(&format!(".boot-test-{tag}-"))
        .tempdir_in(&image_dir)
        .with_context(|| format!("{}: cannot create a work directory", image_dir.display()))?;
    let w = work.path();

    // The test's SSH key.
    let key = w.join("id_ed25519");
    forge::fs::run(
        forge::cmd!(
            "ssh-keygen",
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "forge-boot-test",
            "-f",
            &key
        ),
        "ssh-keygen",
    )?;
    let pubkey_file = key.with_extension("pub");
    let pubkey = std::fs::read_to_string(&pubkey_file)
        .with_context(|| format!("{}: cannot read", pubkey_file.display()))?;

    // The prepared disk, and a mutated copy per boot that asks for one
    // (made before any boot writes to the disk).
    let t = Instant::now();
    let disk = w.join("disk.raw");
    crate::disk::prepare(&image, &disk, spec.machine.disk_bytes)?;
    log(&format!(
        "{tag}: disk prepared ({} B, sparse) in {:.1}s",
        spec.machine.disk_bytes,
        t.elapsed().as_secs_f64()
    ));
    let boots: Vec<&Boot> = spec.boots.iter().filter(|b| opts.negative || !b.negative).collect();
    let mut disks = BTreeMap::new();
    for b in &boots {
        if let Some(m) = &b.mutation {
            let d = w.join(format!("disk-{}.raw", b.variant));
            crate::disk::copy(&disk, &d)?;
            let what = crate::disk::mutate(&d, m)?;
            log(&format!("{tag}: variant {}: {what}", b.variant));
            disks.insert(b.variant.clone(), d);
        }
    }

    let mut report = Report {
        platform: opts.platform.clone(),
        firmware: opts.firmware,
        arch: opts.arch,
        image: image.clone(),
        boots: Vec::new(),
    };
    for b in boots {
        let serial = log_dir.join(format!("{stem}.{tag}.{}.serial.log", b.variant));
        let disk = disks.get(&b.variant).cloned().unwrap_or_else(|| disk.clone());
        let mut br = BootReport {
            variant: b.variant.clone(),
            negative: b.negative,
            seconds: None,
            stopped_at: None,
            serial_log: serial.clone(),
            checks: Vec::new(),
        };
        if let Err(e) =
            boot_once(spec, opts, b, &qemu, &disk, &serial, w, &pubkey, &key, &mut br, log)
        {
            let c =
                CheckResult { name: "the boot ran".into(), ok: false, detail: format!("{e:#}") };
            log(&format!("{tag} {}: FAIL {} — {}", b.variant, c.name, c.detail));
            br.checks.push(c);
        }
        report.boots.push(br);
    }
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
fn boot_once(
    spec: &BootTest,
    opts: &Options,
    b: &Boot,
    qemu: &Path,
    disk: &Path,
    serial: &Path,
    w: &Path,
    pubkey: &str,
    key: &Path,
    br: &mut BootReport,
    log: &dyn Fn(&str),
) -> Result<()> {
    let tag = format!("{}-{} {}", opts.arch.name(), opts.firmware.name(), b.variant);
    let ctx = spec.context(opts.arch, opts.firmware, &opts.platform, b, pubkey)?;
    let bw = w.join(&b.variant);
    std::fs::create_dir_all(&bw).with_context(|| format!("{}: cannot create", bw.display()))?;
    let mlog = bw.join("metadata-requests.log");
    let responder = if spec.metadata.is_some() {
        let served_file = bw.join("served.json");
        Served::new(spec.served(&ctx)?).write(&served_file)?;
        Some(format!(
            "{} metadata-respond --served {} --log {}",
            opts.responder.display(),
            served_file.display(),
            mlog.display()
        ))
    } else {
        None
    };
    let mut fw_cfg = Vec::new();
    for (i, f) in spec.fw_cfg.iter().enumerate() {
        let file = bw.join(format!("fw_cfg-{i}"));
        let content = crate::spec::render(&f.content, &ctx)
            .map_err(|e| anyhow!("{}: fw_cfg[{i}]: {e}", spec.file.display()))?;
        std::fs::write(&file, content)
            .with_context(|| format!("{}: cannot write", file.display()))?;
        fw_cfg.push((f.name.clone(), file));
    }
    let mut disk_files = Vec::new();
    for (i, d) in spec.disks.iter().enumerate() {
        match d.source {
            DiskSource::Image => disk_files.push(disk.to_path_buf()),
            DiskSource::Blank { bytes } => {
                let f = bw.join(format!("blank-{i}.raw"));
                forge::io::sparse::create(&f, bytes)?;
                disk_files.push(f);
            }
        }
    }
    let uefi_vars = if opts.firmware == Firmware::Uefi {
        let v = bw.join("OVMF_VARS.fd");
        std::fs::copy(qemu::OVMF_VARS, &v)
            .with_context(|| format!("copying {} to {}", qemu::OVMF_VARS, v.display()))?;
        Some(v)
    } else {
        None
    };
    let mut host_ports = BTreeMap::new();
    for p in spec.forwarded_ports().keys() {
        host_ports.insert(*p, qemu::free_port()?);
    }
    let files = BootFiles {
        disks: disk_files,
        serial: serial.to_path_buf(),
        responder,
        fw_cfg,
        uefi_vars,
        host_ports: host_ports.clone(),
    };
    let args = qemu::args(spec, opts.arch, opts.firmware, &opts.accel, &files)?;
    let timeout = opts.timeout.unwrap_or(Duration::from_secs(spec.machine.timeout_seconds));
    log(&format!("{tag}: booting (until {:?}, at most {}s)", b.until, timeout.as_secs()));
    let mut vm = Vm::start(qemu, &args, serial, &bw.join("qemu.stderr"))?;
    let (text, seen) = vm.wait_serial(&b.until, timeout)?;
    let secs = vm.started.elapsed().as_secs_f64();
    br.seconds = seen.as_ref().map(|_| secs);
    br.stopped_at = seen.clone();
    let report = parse_report(&text);
    let mut obs = VmObservations {
        report,
        serial: text,
        stopped_at: seen,
        seconds: secs,
        metadata_log: mlog,
        key: key.to_path_buf(),
        host_ports,
        disk: disk.to_path_buf(),
        disk_bytes: spec.machine.disk_bytes,
    };
    for c in &b.checks {
        let r = evaluate(c, &ctx, &mut obs);
        log(&format!(
            "{tag}: {} {}{}",
            if r.ok { "PASS" } else { "FAIL" },
            r.name,
            if r.detail.is_empty() { String::new() } else { format!(" — {}", r.detail) }
        ));
        br.checks.push(r);
    }
    drop(vm);
    Ok(())
}

struct VmObservations {
    report: BTreeMap<String, String>,
    serial: String,
    stopped_at: Option<String>,
    seconds: f64,
    metadata_log: PathBuf,
    key: PathBuf,
    host_ports: BTreeMap<u16, u16>,
    disk: PathBuf,
    disk_bytes: u64,
}

impl VmObservations {
    fn host_port(&self, guest: u16) -> Result<u16, String> {
        self.host_ports
            .get(&guest)
            .copied()
            .ok_or_else(|| format!("guest port {guest} is not forwarded"))
    }
}

impl Observations for VmObservations {
    fn report(&self) -> &BTreeMap<String, String> {
        &self.report
    }
    fn serial(&self) -> &str {
        &self.serial
    }
    fn stopped_at(&self) -> Option<&str> {
        self.stopped_at.as_deref()
    }
    fn seconds(&self) -> f64 {
        self.seconds
    }
    fn metadata_requests(&mut self) -> String {
        std::fs::read_to_string(&self.metadata_log).unwrap_or_default()
    }
    fn ssh(&mut self, user: &str, command: &str, guest_port: u16) -> Result<String, String> {
        let port = self.host_port(guest_port)?;
        let o = forge::cmd!(
            "ssh",
            "-i",
            &self.key,
            "-p",
            port.to_string(),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=20",
            "-o",
            "LogLevel=ERROR",
            format!("{user}@127.0.0.1"),
            command
        )
        .stdout_capture()
        .stderr_capture()
        .unchecked()
        .run()
        .map_err(|e| format!("running ssh: {e}"))?;
        if o.status.success() {
            Ok(String::from_utf8_lossy(&o.stdout).into_owned())
        } else {
            Err(format!("{}: {}", o.status, String::from_utf8_lossy(&o.stderr).trim()))
        }
    }
    fn http(&mut self, guest_port: u16, path: &str) -> Result<String, String> {
        let port = self.host_port(guest_port)?;
        let mut last = String::from("no answer");
        for _ in 0..20 {
            match http_get(port, path) {
                Ok(b) if !b.is_empty() => return Ok(b),
                Ok(_) => last = "empty body".into(),
                Err(e) => last = format!("{e:#}"),
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        Err(last)
    }
    fn disk_bytes(&self) -> u64 {
        self.disk_bytes
    }
    fn partition_offset(&mut self, label: &str) -> Result<u64> {
        Ok(crate::disk::partition(&self.disk, label)?.0)
    }
}

/// GET `path` from 127.0.0.1:`port`; the body.
fn http_get(port: u16, path: &str) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())?;
    let mut r = String::new();
    s.read_to_string(&mut r)?;
    Ok(r.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
}
