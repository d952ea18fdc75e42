//! Boot tests: an image booted in QEMU as a Hetzner server would boot it,
//! observed from inside (the demo payload's report on the serial console)
//! and from the host (HTTP and SSH through `hostfwd`, the metadata service's
//! request log).
//!
//! Safety: the guest's network is QEMU user networking with `restrict=on`
//! (it can reach nothing outside the machine); the metadata service at
//! 169.254.169.254:80 is our own responder run by QEMU (`guestfwd` to a
//! command), and the only host ports are loopback `hostfwd`s.

use crate::io::sparse;
use crate::metadata::Values;
use crate::table;
use anyhow::{anyhow, bail, Context, Result};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firmware {
    Bios,
    Uefi,
}

impl Firmware {
    pub fn name(self) -> &'static str {
        match self {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
        }
    }
}

pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

pub struct Config {
    pub image: PathBuf,
    pub oem_id: String,
    pub firmware: Firmware,
    /// Size the disk is grown to (a Hetzner disk is larger than the image).
    pub disk_bytes: u64,
    /// Program run as `<responder> metadata-respond --values FILE --log FILE`.
    pub responder: PathBuf,
    pub timeout: Duration,
    pub negative: bool,
    pub accel: String,
}

#[derive(Clone, Debug)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub checks: Vec<Check>,
    pub boot_secs: Option<f64>,
    pub serial_logs: Vec<PathBuf>,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.ok)
    }
    fn check(
        &mut self,
        name: impl Into<String>,
        ok: bool,
        detail: impl Into<String>,
        log: &dyn Fn(&str),
    ) {
        let c = Check { name: name.into(), ok, detail: detail.into() };
        log(&format!(
            "{} {}{}",
            if c.ok { "PASS" } else { "FAIL" },
            c.name,
            if c.detail.is_empty() { String::new() } else { format!(" — {}", c.detail) }
        ));
        self.checks.push(c);
    }
}

/// Writes the image (raw, .bz2, .gz, .zst or .xz) as a sparse raw disk of `disk_bytes`.
pub fn prepare_disk(image: &Path, dest: &Path, disk_bytes: u64) -> Result<()> {
    let out = sparse::create(dest, 0)?;
    let f =
        std::fs::File::open(image).with_context(|| format!("{}: cannot open", image.display()))?;
    let written = if let Some(codec) = crate::io::codec::Codec::from_path(image) {
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        crate::io::compress::decompress_sparse(image, codec, &out, threads)
            .with_context(|| format!("{}: decompressing", image.display()))?
    } else {
        let len = f.metadata()?.len();
        sparse::splice(&f, 0, len, &out, 0, false)?;
        len
    };
    if written > disk_bytes {
        bail!(
            "{}: the image ({written} B) is larger than the test disk ({disk_bytes} B)",
            image.display()
        );
    }
    out.set_len(disk_bytes)?;
    Ok(())
}

fn copy_disk(src: &Path, dst: &Path) -> Result<()> {
    let s = std::fs::File::open(src)?;
    let len = s.metadata()?.len();
    let d = sparse::create(dst, len)?;
    sparse::splice(&s, 0, len, &d, 0, false)?;
    Ok(())
}

fn partition(disk: &Path, label: &str) -> Result<(u64, u64)> {
    let t = table::read_primary(&std::fs::File::open(disk)?)?;
    let e = t
        .entries
        .iter()
        .find(|e| e.name == label)
        .ok_or_else(|| anyhow!("{}: no partition labelled {label}", disk.display()))?;
    Ok((e.first_lba * 512, e.sectors() * 512))
}

/// Removes `/grub.cfg` from the OEM partition (debugfs, at its offset).
pub fn remove_oem_grub_cfg(disk: &Path) -> Result<()> {
    let (off, _) = partition(disk, "OEM")?;
    let target = format!("{}?offset={off}", disk.display());
    crate::fs::run(
        duct::cmd!(crate::tools::path(crate::tools::DEBUGFS)?, "-w", "-R", "rm /grub.cfg", &target),
        "debugfs rm /grub.cfg",
    )?;
    let out = crate::fs::run(
        duct::cmd!(crate::tools::path(crate::tools::DEBUGFS)?, "-R", "ls /", &target),
        "debugfs ls",
    )?;
    if out.contains("grub.cfg") {
        bail!("OEM grub.cfg still present after removal");
    }
    Ok(())
}

/// Flips one byte in the middle of USR-A's filesystem; returns its offset.
pub fn flip_usr_byte(disk: &Path) -> Result<u64> {
    let (off, len) = partition(disk, "USR-A")?;
    let f = std::fs::OpenOptions::new().read(true).write(true).open(disk)?;
    let fs = crate::inspect::probe_fs(&f, off, len)?
        .ok_or_else(|| anyhow!("USR-A holds no filesystem"))?;
    let at = off + fs.size_bytes.unwrap_or(len) / 2 + 123;
    let mut b = [0u8; 1];
    use std::os::unix::fs::FileExt;
    f.read_exact_at(&mut b, at)?;
    f.write_all_at(&[b[0] ^ 0xff], at)?;
    f.sync_all()?;
    Ok(at)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

struct Vm {
    child: Child,
    serial: PathBuf,
    http_port: u16,
    ssh_port: u16,
    started: Instant,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_vm(
    cfg: &Config,
    disk: &Path,
    serial: &Path,
    work: &Path,
    values_file: &Path,
    mlog: &Path,
) -> Result<Vm> {
    let qemu = crate::tools::path(crate::tools::Tool {
        program: "qemu-system-x86_64",
        package: "qemu-system-x86",
    })?;
    let (http_port, ssh_port) = (free_port()?, free_port()?);
    let _ = std::fs::remove_file(serial);
    let responder = format!(
        "{} metadata-respond --values {} --log {}",
        cfg.responder.display(),
        values_file.display(),
        mlog.display()
    );
    if responder.contains(',') {
        bail!("paths for the metadata responder must not contain commas: {responder}");
    }
    let netdev = format!(
        "user,id=n0,restrict=on,net=169.254.0.0/16,host=169.254.0.2,dhcpstart=169.254.0.15,hostfwd=tcp:127.0.0.1:{http_port}-:80,hostfwd=tcp:127.0.0.1:{ssh_port}-:22,guestfwd=tcp:169.254.169.254:80-cmd:{responder}"
    );
    let mut args: Vec<String> = vec![
        "-machine".into(),
        "q35".into(),
        "-accel".into(),
        cfg.accel.clone(),
        "-m".into(),
        "2048".into(),
        "-smp".into(),
        "1".into(),
        "-display".into(),
        "none".into(),
        "-monitor".into(),
        "none".into(),
        "-no-reboot".into(),
        "-serial".into(),
        format!("file:{}", serial.display()),
        "-device".into(),
        "virtio-scsi-pci,id=scsi0".into(),
        "-drive".into(),
        format!("file={},if=none,id=d0,format=raw,cache=unsafe", disk.display()),
        "-device".into(),
        "scsi-hd,drive=d0,bus=scsi0.0".into(),
        "-netdev".into(),
        netdev,
        "-device".into(),
        "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56".into(),
    ];
    if cfg.firmware == Firmware::Uefi {
        crate::tools::require(&[crate::tools::Tool { program: OVMF_CODE, package: "ovmf" }])?;
        let vars = work.join("OVMF_VARS.fd");
        std::fs::copy(OVMF_VARS, &vars)?;
        args.extend([
            "-drive".into(),
            format!("if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"),
            "-drive".into(),
            format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
        ]);
    }
    let child = Command::new(qemu)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(work.join("qemu.stderr"))?)
        .spawn()
        .context("starting qemu")?;
    Ok(Vm { child, serial: serial.to_path_buf(), http_port, ssh_port, started: Instant::now() })
}

/// Waits for one of `markers` in the serial log; returns the log and whether
/// a marker was seen (false: timeout or QEMU exited first).
fn wait_serial(
    vm: &mut Vm,
    markers: &[&str],
    timeout: Duration,
) -> Result<(String, Option<String>)> {
    loop {
        let text =
            String::from_utf8_lossy(&std::fs::read(&vm.serial).unwrap_or_default()).into_owned();
        if let Some(m) = markers.iter().find(|m| text.contains(**m)) {
            return Ok((text, Some(m.to_string())));
        }
        if vm.started.elapsed() > timeout {
            return Ok((text, None));
        }
        if let Some(st) = vm.child.try_wait()? {
            std::thread::sleep(Duration::from_millis(300));
            let text = String::from_utf8_lossy(&std::fs::read(&vm.serial).unwrap_or_default())
                .into_owned();
            let seen = markers.iter().find(|m| text.contains(**m)).map(|m| m.to_string());
            if seen.is_none() {
                return Err(anyhow!("qemu exited ({st}) before the boot finished"));
            }
            return Ok((text, seen));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// "FORGE-REPORT key=value" lines → map.
fn report(serial: &str) -> std::collections::BTreeMap<String, String> {
    serial
        .lines()
        .filter_map(|l| l.split("FORGE-REPORT ").nth(1))
        .filter_map(|l| l.trim_end_matches('\r').split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn http_get(port: u16) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut r = String::new();
    s.read_to_string(&mut r)?;
    Ok(r.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
}

/// Runs the positive boot (and, with `negative`, the two negative boots).
pub fn run(cfg: &Config, log: &dyn Fn(&str)) -> Result<Outcome> {
    let fw = cfg.firmware.name();
    let image_dir = cfg.image.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
    let stem = cfg
        .image
        .file_name()
        .unwrap()
        .to_string_lossy()
        .trim_end_matches(".bz2")
        .trim_end_matches(".bin")
        .to_string();
    let work =
        tempfile::Builder::new().prefix(&format!(".boot-test-{fw}-")).tempdir_in(&image_dir)?;
    let w = work.path();
    let mut out = Outcome::default();

    // Test key and metadata values.
    let key = w.join("id_ed25519");
    crate::fs::run(
        duct::cmd!(
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
    let pubkey = std::fs::read_to_string(key.with_extension("pub"))?;
    let values = Values::test(&pubkey);
    let values_file = w.join("metadata.json");
    std::fs::write(&values_file, serde_json::to_vec(&values)?)?;

    let t = Instant::now();
    let disk = w.join("disk.raw");
    prepare_disk(&cfg.image, &disk, cfg.disk_bytes)?;
    log(&format!(
        "{fw}: disk prepared ({} B, sparse) in {:.1}s",
        cfg.disk_bytes,
        t.elapsed().as_secs_f64()
    ));
    let (root_off, _) = partition(&disk, "ROOT")?;
    let variants = if cfg.negative {
        let no_oem = w.join("disk-no-oem.raw");
        copy_disk(&disk, &no_oem)?;
        remove_oem_grub_cfg(&no_oem)?;
        let bad = w.join("disk-bad-usr.raw");
        copy_disk(&disk, &bad)?;
        let at = flip_usr_byte(&bad)?;
        log(&format!(
            "{fw}: negative variants: OEM grub.cfg removed; USR-A byte at offset {at} flipped"
        ));
        Some((no_oem, bad))
    } else {
        None
    };

    // 1. The image as built.
    let serial = image_dir.join(format!("{stem}.{fw}.serial.log"));
    out.serial_logs.push(serial.clone());
    let mlog = w.join("metadata.log");
    let mut vm = start_vm(cfg, &disk, &serial, w, &values_file, &mlog)?;
    let (text, seen) =
        wait_serial(&mut vm, &["FORGE-REPORT end", "forge-init: FATAL"], cfg.timeout)?;
    let boot = vm.started.elapsed().as_secs_f64();
    let r = report(&text);
    let reached = seen.as_deref() == Some("FORGE-REPORT end");
    out.check(
        format!("{fw}: boots to the report"),
        reached,
        if reached {
            format!("{boot:.1}s from power-on")
        } else {
            format!("not reached: {}", seen.unwrap_or_else(|| "timeout".into()))
        },
        log,
    );
    if reached {
        out.boot_secs = Some(boot);
    }
    let g = |k: &str| r.get(k).cloned().unwrap_or_default();
    let cmdline = g("cmdline");
    out.check(
        format!("{fw}: kernel command line has flatcar.oem.id={}", cfg.oem_id),
        cmdline.split_whitespace().any(|a| a == format!("flatcar.oem.id={}", cfg.oem_id)),
        "",
        log,
    );
    let hash =
        cmdline.split_whitespace().find_map(|a| a.strip_prefix("verity.usrhash=")).unwrap_or("");
    out.check(
        format!("{fw}: kernel command line has the verity arguments"),
        hash.len() == 64
            && cmdline.contains("verity.usr=PARTUUID=")
            && cmdline.contains("mount.usr=/dev/mapper/usr"),
        format!("verity.usrhash={hash}"),
        log,
    );
    out.check(
        format!("{fw}: first boot detected"),
        cmdline.contains("flatcar.first_boot=detected"),
        "",
        log,
    );
    let dm = g("dm");
    let usr = g("usr_mounts");
    out.check(
        format!("{fw}: /usr is a read-only dm-verity device"),
        dm.starts_with("usr ")
            && dm.contains("ro=1")
            && (usr.contains("erofs /dev/mapper/usr ro") || usr.contains("erofs /dev/dm-0 ro")),
        format!("dm: {dm}; /usr mounts: {usr}"),
        log,
    );
    let sysext = g("sysext");
    out.check(
        format!("{fw}: systemd-sysext lists oem-{}", cfg.oem_id),
        sysext.contains(&format!("oem-{}", cfg.oem_id))
            && g("sysext_status").contains(&format!("oem-{}", cfg.oem_id)),
        g("sysext_status"),
        log,
    );
    let md = g("metadata");
    let (h, id) = (
        format!("COREOS_HETZNER_HOSTNAME={}", values.hostname),
        format!("COREOS_HETZNER_INSTANCE_ID={}", values.instance_id),
    );
    out.check(
        format!("{fw}: /run/metadata/flatcar has the service's hostname and instance ID"),
        md.contains(&h) && md.contains(&id),
        md.clone(),
        log,
    );
    out.check(
        format!("{fw}: hostname is set from the metadata"),
        g("hostname") == values.hostname,
        g("hostname"),
        log,
    );
    out.check(
        format!("{fw}: the test SSH key is installed for core"),
        g("ssh_keys").contains(pubkey.split_whitespace().nth(1).unwrap_or("?")),
        "",
        log,
    );
    // "root_dev=/dev/sda9 root_fs_bytes=… root_part_bytes=… disk_bytes=…" is one line.
    let root_line = g("root_dev");
    let field = |k: &str| -> u64 {
        root_line
            .split_whitespace()
            .find_map(|p| p.strip_prefix(&format!("{k}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let (part, fsb, diskb) =
        (field("root_part_bytes"), field("root_fs_bytes"), field("disk_bytes"));
    let expect = cfg.disk_bytes - root_off - 34 * 512;
    out.check(
        format!("{fw}: ROOT grew to fill the {} GiB disk", cfg.disk_bytes >> 30),
        diskb == cfg.disk_bytes && part + (1 << 20) >= expect && fsb as f64 >= 0.95 * part as f64,
        format!("partition {part} B of {expect} B possible, filesystem {fsb} B, disk {diskb} B"),
        log,
    );
    // Host side: HTTP through hostfwd, SSH with the test key, the service's log.
    let mut body = String::new();
    for _ in 0..20 {
        if let Ok(b) = http_get(vm.http_port) {
            body = b;
            if !body.is_empty() {
                break;
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    out.check(
        format!("{fw}: host fetches \"Hello from {}\" over HTTP", values.hostname),
        body.trim() == format!("Hello from {}", values.hostname),
        body.trim().to_string(),
        log,
    );
    let ssh = duct::cmd!(
        "ssh",
        "-i",
        &key,
        "-p",
        vm.ssh_port.to_string(),
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
        "core@127.0.0.1",
        "id -un"
    )
    .stdout_capture()
    .stderr_capture()
    .unchecked()
    .run()?;
    let who = String::from_utf8_lossy(&ssh.stdout).trim().to_string();
    out.check(
        format!("{fw}: SSH login as core with the test key"),
        ssh.status.success() && who == "core",
        if who.is_empty() { String::from_utf8_lossy(&ssh.stderr).trim().to_string() } else { who },
        log,
    );
    let served = std::fs::read_to_string(&mlog).unwrap_or_default();
    out.check(
        format!("{fw}: the agent fetched /hetzner/v1/metadata from the fake service"),
        served.lines().any(|l| l.starts_with("GET /hetzner/v1/metadata 200")),
        format!("{} requests", served.lines().count()),
        log,
    );
    drop(vm);

    if let Some((no_oem, bad)) = variants {
        // 2. Without the OEM grub.cfg: no platform ID, no agent.
        let serial = image_dir.join(format!("{stem}.{fw}-no-oem.serial.log"));
        out.serial_logs.push(serial.clone());
        let mlog2 = w.join("metadata-no-oem.log");
        let mut vm = start_vm(cfg, &no_oem, &serial, w, &values_file, &mlog2)?;
        let (text, seen) =
            wait_serial(&mut vm, &["FORGE-REPORT end", "forge-init: FATAL"], cfg.timeout)?;
        let r = report(&text);
        let cl = r.get("cmdline").cloned().unwrap_or_default();
        out.check(
            format!("{fw} without OEM grub.cfg: boots"),
            seen.as_deref() == Some("FORGE-REPORT end"),
            "",
            log,
        );
        out.check(
            format!("{fw} without OEM grub.cfg: no flatcar.oem.id on the command line"),
            !cl.is_empty() && !cl.contains("flatcar.oem.id"),
            cl,
            log,
        );
        let agent = r.get("agent").cloned().unwrap_or_default();
        let served = std::fs::read_to_string(&mlog2).unwrap_or_default();
        out.check(
            format!("{fw} without OEM grub.cfg: the agent does not run"),
            agent == "inactive"
                && r.get("metadata").is_some_and(|m| m.is_empty())
                && served.is_empty(),
            format!("agent {agent}, {} metadata requests", served.lines().count()),
            log,
        );
        drop(vm);

        // 3. One flipped byte in USR-A: no /usr.
        let serial = image_dir.join(format!("{stem}.{fw}-bad-usr.serial.log"));
        out.serial_logs.push(serial.clone());
        let mut vm = start_vm(cfg, &bad, &serial, w, &values_file, &w.join("metadata-bad.log"))?;
        let (text, seen) = wait_serial(
            &mut vm,
            &["forge-init: refusing to boot", "FORGE-REPORT end", "/usr mounted read-only"],
            cfg.timeout,
        )?;
        out.check(
            format!("{fw} with a flipped byte in USR-A: /usr is not mounted"),
            seen.as_deref() == Some("forge-init: refusing to boot")
                && text.contains("forge-init: FATAL: dm-verity")
                && !text.contains("/usr mounted read-only"),
            text.lines()
                .find(|l| l.contains("FATAL"))
                .unwrap_or("no FATAL line")
                .trim()
                .to_string(),
            log,
        );
        drop(vm);
    }
    Ok(out)
}
