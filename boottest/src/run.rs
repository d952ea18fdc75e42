//! The harness: one architecture and firmware of a platform's boot test,
//! every boot of it, and the structured report.

use crate::check::{evaluate, parse_report, CheckResult, Observations};
use crate::metadata::Served;
use crate::qemu::{self, BootFiles, Vm};
use crate::spec::{Arch, Boot, BootTest, DiskSource, DiskUse, Firmware, UserData};
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
    /// How the VM was stopped when the next boot takes over its disk
    /// (`"disk": "previous"`); None when it was simply killed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_off: Option<String>,
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
    /// After the last boot's checks, leave its VM running until Enter is
    /// pressed on stdin (or QEMU exits), printing how to reach it.
    pub keep: bool,
    /// The files built for the boot test's `artifacts` (name → file): at
    /// least those [`BootTest::artifacts_for`] names for this run.
    pub artifacts: BTreeMap<String, PathBuf>,
    /// Decode the image once for all runs given this directory
    /// ([`crate::disk::prepare_shared`]), not once per run.
    pub shared_disks: Option<PathBuf>,
}

/// The boot test reduced to trying one user-data file: the file's first
/// boot on `arch` that is not negative and has no mutation (as variant
/// "userdata"), serving `userdata` byte for byte wherever the file serves
/// user-data, with one check: the boot reaches its first `until` marker.
pub fn try_userdata(spec: &BootTest, arch: Arch, userdata: &Path) -> Result<BootTest> {
    let text = std::fs::read_to_string(userdata)
        .with_context(|| format!("{}: cannot read", userdata.display()))?;
    let mut t = spec.clone();
    let fws = spec.firmwares(arch);
    let first = t
        .boots
        .iter()
        .find(|b| !b.negative && b.mutation.is_none() && fws.iter().any(|f| b.runs_on(arch, *f)))
        .cloned()
        .ok_or_else(|| {
            anyhow!("{}: no boot of the image as built on {arch}", spec.file.display())
        })?;
    t.boots = vec![first];
    t.override_userdata(UserData::File {
        path: userdata.to_path_buf(),
        text,
        substitute: Vec::new(),
    });
    let marker = t.boots[0].until[0].clone();
    // Its own serial log name, beside (not over) the boot test's.
    t.boots[0].variant = "userdata".into();
    t.boots[0].disk = crate::spec::BootDisk::Fresh;
    t.boots[0].checks = vec![serde_json::from_value(serde_json::json!({
        "name": format!("boots to {marker:?}"),
        "observe": "stopped_at",
        "equals": marker,
    }))
    .context("the try check")?];
    Ok(t)
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
    check_declared(spec, opts.arch, opts.firmware)?;
    // The architecture's machine, as the only one: what reads
    // `spec.machine` from here on sees it.
    let mut spec = spec.clone();
    spec.machine = spec.machine_for(opts.arch);
    spec.machine_arch.clear();
    if let Some(b) = opts.disk_bytes {
        spec.machine.disk_bytes = b;
    }
    let spec = &spec;
    let target = qemu::target(opts.arch);
    let qemu = forge::tools::path(target.qemu)?;
    if opts.firmware == Firmware::Uefi {
        forge::tools::require(&[target.uefi_code])?;
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

    // The prepared disk; each boot gets a fresh copy (mutated if it asks),
    // or the disk the boot before it left behind.
    let t = Instant::now();
    let pristine = w.join("disk.raw");
    match &opts.shared_disks {
        Some(dir) => {
            crate::disk::prepare_shared(&image, &pristine, spec.machine.disk_bytes, dir, log)?
        }
        None => crate::disk::prepare(&image, &pristine, spec.machine.disk_bytes)?,
    }
    log(&format!(
        "{tag}: disk prepared ({} B, sparse) in {:.1}s",
        spec.machine.disk_bytes,
        t.elapsed().as_secs_f64()
    ));
    // An image of another architecture would only time out in QEMU.
    let disk = std::fs::File::open(&pristine)
        .with_context(|| format!("{}: cannot open", pristine.display()))?;
    match crate::disk::esp_arches(&disk)
        .with_context(|| format!("{}: the image's architecture", image.display()))?
    {
        Some(found) if !found.contains(&opts.arch) => {
            return Err(anyhow!(
                "{}: an image for {} (its ESP holds {}), not for {}",
                image.display(),
                found.iter().map(|a| a.name()).collect::<Vec<_>>().join(", "),
                found.iter().map(|a| a.efi_loader()).collect::<Vec<_>>().join(", "),
                opts.arch
            ))
        }
        Some(_) => {}
        None => log(&format!(
            "{tag}: the image has no GPT with an ESP holding an EFI loader: it is taken to be for {}",
            opts.arch
        )),
    }
    drop(disk);
    let steps = crate::spec::plan_arch(spec, opts.negative, opts.arch, opts.firmware);
    let mut report = Report {
        platform: opts.platform.clone(),
        firmware: opts.firmware,
        arch: opts.arch,
        image: image.clone(),
        boots: Vec::new(),
    };
    let mut current: Option<PathBuf> = None;
    let last = steps.len().saturating_sub(1);
    for (n, step) in steps.iter().enumerate() {
        let b = step.boot;
        let disk = match &step.disk {
            DiskUse::Previous => current.clone().ok_or_else(|| {
                anyhow!("{}: {}: no previous disk", spec.file.display(), b.variant)
            })?,
            fresh => {
                if let Some(old) = current.take() {
                    std::fs::remove_file(&old)
                        .with_context(|| format!("{}: cannot remove", old.display()))?;
                }
                let d = w.join(format!("disk-{}.raw", b.variant));
                crate::disk::copy(&pristine, &d)?;
                if let DiskUse::Mutated(m) = fresh {
                    let what = crate::disk::mutate(&d, m)?;
                    log(&format!("{tag}: variant {}: {what}", b.variant));
                }
                d
            }
        };
        current = Some(disk.clone());
        let serial = log_dir.join(format!("{stem}.{tag}.{}.serial.log", b.variant));
        let mut br = BootReport {
            variant: b.variant.clone(),
            negative: b.negative,
            seconds: None,
            stopped_at: None,
            serial_log: serial.clone(),
            checks: Vec::new(),
            power_off: None,
        };
        let ends = if step.hand_on {
            End::HandOn
        } else if opts.keep && n == last {
            End::Keep
        } else {
            End::Kill
        };
        if let Err(e) =
            boot_once(spec, opts, b, &qemu, &disk, &serial, w, &pubkey, &key, ends, &mut br, log)
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

/// The boot test declares `arch` and boots it with `firmware`; the error
/// names the file and what it declares.
pub fn check_declared(spec: &BootTest, arch: Arch, firmware: Firmware) -> Result<()> {
    let file = spec.file.display();
    let arches = spec.arch.iter().map(|a| a.name()).collect::<Vec<_>>().join(", ");
    if !spec.arch.contains(&arch) {
        return Err(anyhow!("{file}: does not declare {arch} (arch: {arches})"));
    }
    let fws = spec.firmwares(arch);
    if !fws.contains(&firmware) {
        let fws = fws.iter().map(|f| f.name()).collect::<Vec<_>>().join(", ");
        return Err(anyhow!(
            "{file}: {arch} does not boot with {} (its firmwares: {fws})",
            firmware.name()
        ));
    }
    Ok(())
}

/// What happens to a VM after its checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    Kill,
    /// The next boot takes over the disk: power off cleanly.
    HandOn,
    /// `--keep`: wait for the user.
    Keep,
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
    end: End,
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
        Served::new(spec.served(&ctx, b)?, &opts.artifacts)?.write(&served_file)?;
        Some(format!(
            "{} metadata-respond --served {} --log {}",
            opts.responder.display(),
            served_file.display(),
            mlog.display()
        ))
    } else {
        None
    };
    let fw_cfg = spec.fw_cfg_files(&ctx, &bw)?;
    // The file's NICs and disks, then the boot's extra ones.
    let machine = spec.for_boot(b);
    let spec = &machine;
    let mut disk_files = Vec::new();
    for (i, d) in spec.disks.iter().enumerate() {
        disk_files.push(match &d.source {
            DiskSource::Image => disk.to_path_buf(),
            _ => test_disk(spec, &d.source, &format!("disk-{i}"), &bw)?,
        });
    }
    let mut hotplug_files = Vec::new();
    for (i, d) in b.hotplug_disks.iter().enumerate() {
        hotplug_files.push(test_disk(spec, &d.source, &format!("hotplug-{i}"), &bw)?);
    }
    let uefi_vars = if opts.firmware == Firmware::Uefi {
        let shipped = Path::new(qemu::target(opts.arch).uefi_vars);
        let v = bw.join(shipped.file_name().unwrap_or("UEFI_VARS.fd".as_ref()));
        std::fs::copy(shipped, &v)
            .with_context(|| format!("copying {} to {}", shipped.display(), v.display()))?;
        Some(v)
    } else {
        None
    };
    let guest_ports = spec.forwarded_ports();
    let hotplug = !b.hotplug_disks.is_empty();
    let mut ports =
        qemu::free_ports(guest_ports.len() + usize::from(b.guest_agent) + usize::from(hotplug))?;
    let guest_agent = if b.guest_agent { ports.pop() } else { None };
    let qmp = if hotplug { ports.pop() } else { None };
    let host_ports: BTreeMap<u16, u16> = guest_ports.keys().copied().zip(ports).collect();
    let files = BootFiles {
        disks: disk_files,
        serial: serial.to_path_buf(),
        responder,
        fw_cfg,
        uefi_vars,
        host_ports: host_ports.clone(),
        guest_agent,
        qmp,
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
        guest_agent,
        qmp,
        hotplug: b.hotplug_disks.iter().cloned().zip(hotplug_files).collect(),
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
    match end {
        End::Kill => drop(vm),
        End::HandOn => {
            let how = power_off(&mut vm, &mut obs, &spec.poweroff_ssh_user);
            log(&format!("{tag}: {how}"));
            br.power_off = Some(how);
        }
        End::Keep => keep(&mut vm, &obs, &spec.poweroff_ssh_user, serial, log),
    }
    Ok(())
}

/// A disk a boot adds (blank or ext4), made in the boot's work directory
/// `dir` as `<name>.raw`.
fn test_disk(spec: &BootTest, source: &DiskSource, name: &str, dir: &Path) -> Result<PathBuf> {
    let f = dir.join(format!("{name}.raw"));
    match source {
        DiskSource::Image => {
            anyhow::bail!("{}: {name}: the image is not made here", spec.file.display())
        }
        DiskSource::Blank { bytes } => forge::io::sparse::create(&f, *bytes).map(drop)?,
        DiskSource::Ext4 { bytes, label, files } => {
            crate::disk::ext4(&f, *bytes, label.as_deref(), files, &dir.join(name))
                .with_context(|| format!("{}: {name}", spec.file.display()))?
        }
    }
    Ok(f)
}

/// How long the guest agent may take to answer (it starts when systemd sees
/// its channel, which may be after the boot's marker).
const GUEST_AGENT_WAIT: Duration = Duration::from_secs(120);

/// How long a guest may take to power off before it is killed.
const POWER_OFF_TIMEOUT: Duration = Duration::from_secs(120);

/// Stops the VM so that its writes are on the disk file: `sync` over SSH,
/// then `systemctl poweroff` and wait for QEMU to exit; the VM is killed
/// after a timeout, when the guest refuses to power off (after its `sync`),
/// or when SSH fails. Returns what happened.
fn power_off(vm: &mut Vm, obs: &mut VmObservations, user: &str) -> String {
    let t = Instant::now();
    let ssh = obs.ssh_status(user, "sync && systemctl --no-ask-password poweroff || exit 3", 22);
    let how = match ssh {
        // 255: the connection dropped as the guest went down.
        Ok((0 | 255, _)) => match vm.wait_exit(POWER_OFF_TIMEOUT) {
            Ok(true) => {
                return format!(
                    "powered off (systemctl poweroff) in {:.1}s",
                    t.elapsed().as_secs_f64()
                )
            }
            Ok(false) => format!(
                "synced, but still running {}s after systemctl poweroff",
                POWER_OFF_TIMEOUT.as_secs()
            ),
            Err(e) => format!("waiting for qemu: {e:#}"),
        },
        Ok((3, err)) => {
            format!("synced; the guest refused systemctl poweroff ({})", one_line(&err))
        }
        Ok((c, err)) => format!("ssh exited {c} ({}): not synced", one_line(&err)),
        Err(e) => format!("{e}: not synced"),
    };
    vm.kill();
    format!("{how}: killed")
}

/// Distinct non-empty lines of `s`, joined with "; ".
fn one_line(s: &str) -> String {
    let mut seen: Vec<&str> = Vec::new();
    for l in s.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if !seen.contains(&l) {
            seen.push(l);
        }
    }
    seen.join("; ")
}

/// `--keep`: prints how to reach the VM and waits for Enter or QEMU's exit.
fn keep(vm: &mut Vm, obs: &VmObservations, user: &str, serial: &Path, log: &dyn Fn(&str)) {
    log(&format!("VM kept running; serial log {}", serial.display()));
    for (guest, host) in &obs.host_ports {
        let how = match guest {
            22 => format!(
                "ssh -i {} -p {host} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null {user}@127.0.0.1",
                obs.key.display()
            ),
            _ => format!("127.0.0.1:{host}"),
        };
        log(&format!("  guest port {guest}: {how}"));
    }
    log("press Enter to stop it");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        let _ = tx.send(());
    });
    loop {
        if rx.try_recv().is_ok()
            || matches!(vm.wait_exit(Duration::from_millis(500)), Ok(true) | Err(_))
        {
            break;
        }
    }
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
    /// The loopback port of the guest agent's channel.
    guest_agent: Option<u16>,
    /// The loopback port of QEMU's monitor, and the disks it may attach.
    qmp: Option<u16>,
    hotplug: Vec<(crate::spec::Disk, PathBuf)>,
}

impl VmObservations {
    fn host_port(&self, guest: u16) -> Result<u16, String> {
        self.host_ports
            .get(&guest)
            .copied()
            .ok_or_else(|| format!("guest port {guest} is not forwarded"))
    }

    fn ssh_output(
        &self,
        user: &str,
        command: &str,
        guest_port: u16,
    ) -> Result<std::process::Output, String> {
        let port = self.host_port(guest_port)?;
        forge::cmd!(
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
            "-o",
            "ServerAliveInterval=5",
            "-o",
            "ServerAliveCountMax=3",
            format!("{user}@127.0.0.1"),
            command
        )
        .stdout_capture()
        .stderr_capture()
        .unchecked()
        .run()
        .map_err(|e| format!("running ssh: {e}"))
    }

    /// ssh's exit code and stderr.
    fn ssh_status(
        &self,
        user: &str,
        command: &str,
        guest_port: u16,
    ) -> Result<(i32, String), String> {
        let o = self.ssh_output(user, command, guest_port)?;
        Ok((o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stderr).into_owned()))
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
        let o = self.ssh_output(user, command, guest_port)?;
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
    fn hotplug(&mut self, disk: usize) -> Result<(), String> {
        let (Some(port), Some((d, file))) = (self.qmp, self.hotplug.get(disk)) else {
            return Err(format!("the boot has no hotplug_disks[{disk}]"));
        };
        crate::qmp::hotplug(port, &format!("hot{disk}"), file, d).map_err(|e| format!("{e:#}"))
    }
    fn guest_agent(&mut self, request: &serde_json::Value) -> Result<String, String> {
        let port = self
            .guest_agent
            .ok_or("the boot has no guest agent channel (\"guest_agent\": true)")?;
        crate::qga::request(port, request, GUEST_AGENT_WAIT).map_err(|e| format!("{e:#}"))
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

#[cfg(test)]
mod tests {
    use super::*;

    const REPO_OEM: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../oem");

    #[test]
    fn reports_name_the_arch_as_debian_does_and_read_older_names() {
        let r = Report {
            platform: "hetzner".into(),
            firmware: Firmware::Uefi,
            arch: Arch::Arm64,
            image: "/i".into(),
            boots: Vec::new(),
        };
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["arch"], "arm64");
        assert_eq!(j["firmware"], "uefi");
        let amd = serde_json::to_value(Report { arch: Arch::Amd64, ..r.clone() }).unwrap();
        assert_eq!(amd["arch"], "amd64");
        // Reports written before forge::arch said "x86-64".
        let mut old = amd.clone();
        old["arch"] = "x86-64".into();
        let back: Report = serde_json::from_value(old).unwrap();
        assert_eq!(back.arch, Arch::Amd64);
    }

    #[test]
    fn one_line_joins_distinct_lines() {
        assert_eq!(one_line("a\n\n b \na\nc\n"), "a; b; c");
        assert_eq!(one_line(""), "");
    }

    #[test]
    fn trying_userdata_boots_the_image_as_built_once_with_the_file() {
        let spec = crate::spec::load_for(Path::new(REPO_OEM), "hetzner").unwrap().unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let mine = tmp.path().join("mine.ign");
        std::fs::write(&mine, "{\"ignition\":{\"version\":\"3.3.0\"}} {{ssh_public_key}}").unwrap();
        let t = try_userdata(&spec, Arch::Amd64, &mine).unwrap();
        assert_eq!(t.boots.len(), 1);
        let b = &t.boots[0];
        assert_eq!(b.variant, "userdata");
        assert_eq!(b.checks.len(), 1);
        assert_eq!(b.checks[0].name, "boots to \"FORGE-REPORT end\"");
        let ctx =
            t.context(Arch::Amd64, Firmware::Bios, "hetzner", b, "ssh-ed25519 AAAAk c").unwrap();
        // Byte for byte: the file is not a template.
        assert_eq!(
            t.served(&ctx, b).unwrap()["/hetzner/v1/userdata"].body,
            "{\"ignition\":{\"version\":\"3.3.0\"}} {{ssh_public_key}}"
        );
        let steps = crate::spec::plan_arch(&t, true, Arch::Amd64, Firmware::Bios);
        assert_eq!(steps.len(), 1);
        assert_eq!(steps[0].disk, DiskUse::Fresh);
        assert!(!steps[0].hand_on);
        let e = try_userdata(&spec, Arch::Amd64, &tmp.path().join("missing.ign"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.ign: cannot read"), "{e}");
    }

    #[test]
    fn qemu_boots_have_the_fw_cfg_entry_and_no_metadata_service() {
        let spec = crate::spec::load_for(Path::new(REPO_OEM), "qemu").unwrap().unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let ctx = spec
            .context(Arch::Amd64, Firmware::Bios, "qemu", &spec.boots[0], "ssh-ed25519 AAAAk c")
            .unwrap();
        let files = BootFiles {
            disks: vec![tmp.path().join("disk.raw")],
            serial: tmp.path().join("serial.log"),
            responder: None,
            fw_cfg: spec.fw_cfg_files(&ctx, tmp.path()).unwrap(),
            uefi_vars: None,
            host_ports: BTreeMap::from([(22, 40022)]),
            guest_agent: None,
            qmp: None,
        };
        let a = qemu::args(&spec, Arch::Amd64, Firmware::Bios, "tcg", &files).unwrap().join(" ");
        assert!(
            a.contains(&format!(
                "-fw_cfg name=opt/org.flatcar-linux/config,file={}",
                tmp.path().join("fw_cfg-0").display()
            )),
            "{a}"
        );
        assert!(
            a.contains("-netdev user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:40022-:22 "),
            "{a}"
        );
        assert!(!a.contains("guestfwd"), "{a}");
        assert!(a.contains("virtio-blk-pci,drive=d0,bootindex=0"), "{a}");
    }
}
