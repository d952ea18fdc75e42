//! QEMU command lines from a boot-test file, and the running VM.
//!
//! Safety, enforced here and not left to the data: every NIC is QEMU user
//! networking with `restrict=on` (the guest reaches nothing outside the
//! machine), the metadata service is a local command (`guestfwd=…-cmd:`),
//! and every `hostfwd` listens on 127.0.0.1 only, whatever the
//! architecture.
//!
//! What differs between architectures is the table [`TARGETS`]: the QEMU
//! binary, machine and CPU, the UEFI firmware's code and variables files
//! (Debian's OVMF and AAVMF). The rest of a command line (disks, NICs,
//! fw_cfg, serial) is the same for all: virtio-scsi/virtio-blk and
//! virtio-net are PCI devices on q35 and on arm64's `virt` alike.

use crate::spec::{Arch, BootTest, DiskDevice, DiskSource, Firmware};
use anyhow::{bail, Context, Result};
use forge::tools::Tool;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// How QEMU boots one architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub arch: Arch,
    pub qemu: Tool,
    /// `-machine`.
    pub machine: &'static str,
    /// `-cpu` (None: the machine's default).
    pub cpu: Option<&'static str>,
    /// The UEFI firmware, read-only (pflash unit 0).
    pub uefi_code: Tool,
    /// The UEFI variables as shipped: each boot gets a writable copy (unit 1).
    pub uefi_vars: &'static str,
}

/// Every architecture's [`Target`].
pub const TARGETS: [Target; 2] = [
    Target {
        arch: Arch::Amd64,
        qemu: Tool { program: "qemu-system-x86_64", package: "qemu-system-x86" },
        machine: "q35",
        cpu: None,
        uefi_code: Tool { program: "/usr/share/OVMF/OVMF_CODE_4M.fd", package: "ovmf" },
        uefi_vars: "/usr/share/OVMF/OVMF_VARS_4M.fd",
    },
    Target {
        arch: Arch::Arm64,
        qemu: Tool { program: "qemu-system-aarch64", package: "qemu-system-arm" },
        machine: "virt",
        // TCG computes pointer authentication with the Arm-defined QARMA
        // cipher unless told to use its cheap implementation-defined one;
        // the guest cannot tell (it signs and checks with the same one).
        cpu: Some("max,pauth-impdef=on"),
        uefi_code: Tool { program: "/usr/share/AAVMF/AAVMF_CODE.fd", package: "qemu-efi-aarch64" },
        uefi_vars: "/usr/share/AAVMF/AAVMF_VARS.fd",
    },
];

/// How QEMU boots `arch`.
pub fn target(arch: Arch) -> &'static Target {
    TARGETS.iter().find(|t| t.arch == arch).expect("every architecture has a qemu::Target")
}

/// The QEMU binary for an architecture.
pub fn program(arch: Arch) -> Tool {
    target(arch).qemu
}

/// Files and ports of one boot.
#[derive(Clone, Debug)]
pub struct BootFiles {
    /// Disk paths, in the order of the file's `disks`.
    pub disks: Vec<PathBuf>,
    pub serial: PathBuf,
    /// The guestfwd command (already a single QEMU option value: no commas).
    pub responder: Option<String>,
    /// (fw_cfg name, file).
    pub fw_cfg: Vec<(String, PathBuf)>,
    /// A writable copy of the UEFI variables.
    pub uefi_vars: Option<PathBuf>,
    /// Guest port → host port on 127.0.0.1.
    pub host_ports: std::collections::BTreeMap<u16, u16>,
    /// The loopback port of the guest agent's channel (a virtio-serial port
    /// named `org.qemu.guest_agent.0`), if the boot has one.
    pub guest_agent: Option<u16>,
    /// The loopback port of QEMU's monitor (QMP), for a boot that
    /// hot-plugs disks.
    pub qmp: Option<u16>,
}

/// The guest agent's virtio-serial port name (QEMU's and Hetzner's).
pub const GUEST_AGENT_PORT: &str = "org.qemu.guest_agent.0";

fn no_commas(what: &str, s: &str) -> Result<()> {
    if s.contains(',') {
        bail!("{what} must not contain commas (QEMU option syntax): {s}");
    }
    Ok(())
}

/// QEMU's arguments for one boot.
pub fn args(
    t: &BootTest,
    arch: Arch,
    fw: Firmware,
    accel: &str,
    files: &BootFiles,
) -> Result<Vec<String>> {
    let target = target(arch);
    if !fw.on(arch) {
        bail!("{arch} has no {} firmware", fw.name());
    }
    let m = t.machine_for(arch);
    let mut a: Vec<String> = vec!["-machine".into(), target.machine.into()];
    if let Some(cpu) = target.cpu {
        a.extend(["-cpu".into(), cpu.into()]);
    }
    a.extend([
        "-accel".into(),
        accel.into(),
        "-m".into(),
        m.memory_mib.to_string(),
        "-smp".into(),
        m.cpus.to_string(),
        "-display".into(),
        "none".into(),
        "-monitor".into(),
        "none".into(),
        "-no-reboot".into(),
        "-serial".into(),
        format!("file:{}", files.serial.display()),
    ]);
    no_commas("the serial log path", &files.serial.display().to_string())?;
    if files.qmp.is_some() || t.disks.iter().any(|d| d.device == DiskDevice::ScsiHd) {
        a.extend(["-device".into(), "virtio-scsi-pci,id=scsi0".into()]);
    }
    if files.disks.len() != t.disks.len() {
        bail!("{} disks declared, {} files given", t.disks.len(), files.disks.len());
    }
    for (i, (d, f)) in t.disks.iter().zip(&files.disks).enumerate() {
        no_commas("a disk path", &f.display().to_string())?;
        a.extend([
            "-drive".into(),
            format!("file={},if=none,id=d{i},format=raw,cache=unsafe", f.display()),
        ]);
        let mut dev = match d.device {
            DiskDevice::ScsiHd => format!("scsi-hd,drive=d{i},bus=scsi0.0"),
            DiskDevice::VirtioBlk => format!("virtio-blk-pci,drive=d{i}"),
        };
        if matches!(d.source, DiskSource::Image) {
            dev.push_str(",bootindex=0");
        }
        for (k, v) in [("vendor", &d.vendor), ("product", &d.product), ("serial", &d.serial)] {
            if let Some(v) = v {
                dev.push_str(&format!(",{k}={v}"));
            }
        }
        a.extend(["-device".into(), dev]);
    }
    let listen = t.metadata.as_ref().map(|md| md.listen.clone());
    for (i, n) in t.nics.iter().enumerate() {
        let mut netdev = format!("user,id=n{i},restrict=on");
        if let Some(u) = &n.user_net {
            netdev.push_str(&format!(",net={},host={},dhcpstart={}", u.net, u.host, u.dhcpstart));
        }
        for p in &n.hostfwd {
            let host = files
                .host_ports
                .get(p)
                .with_context(|| format!("no host port for guest port {p}"))?;
            netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{p}"));
        }
        if n.metadata {
            let (Some(listen), Some(cmd)) = (&listen, &files.responder) else {
                bail!("nics[{i}] carries the metadata service, but none is running");
            };
            no_commas("the metadata responder command", cmd)?;
            netdev.push_str(&format!(",guestfwd=tcp:{listen}-cmd:{cmd}"));
        }
        a.extend([
            "-netdev".into(),
            netdev,
            "-device".into(),
            format!("{},netdev=n{i},mac={}", n.model, n.mac),
        ]);
    }
    if let Some(port) = files.qmp {
        a.extend(["-qmp".into(), format!("tcp:127.0.0.1:{port},server=on,wait=off")]);
    }
    if let Some(port) = files.guest_agent {
        a.extend([
            "-device".into(),
            "virtio-serial-pci,id=vser0".into(),
            "-chardev".into(),
            format!("socket,id=qga0,host=127.0.0.1,port={port},server=on,wait=off"),
            "-device".into(),
            format!("virtserialport,bus=vser0.0,chardev=qga0,name={GUEST_AGENT_PORT}"),
        ]);
    }
    for (name, file) in &files.fw_cfg {
        no_commas("an fw_cfg file path", &file.display().to_string())?;
        a.extend(["-fw_cfg".into(), format!("name={name},file={}", file.display())]);
    }
    if fw == Firmware::Uefi {
        let vars = files.uefi_vars.as_ref().context("UEFI boot without a variables file")?;
        no_commas("the UEFI variables path", &vars.display().to_string())?;
        a.extend([
            "-drive".into(),
            format!("if=pflash,format=raw,unit=0,readonly=on,file={}", target.uefi_code.program),
            "-drive".into(),
            format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
        ]);
    }
    Ok(a)
}

/// `n` different loopback ports free right now (all bound at once: one
/// released before the next is asked for may be handed out again).
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    let held = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    held.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

/// A running QEMU; killed when dropped.
pub struct Vm {
    child: Child,
    pub serial: PathBuf,
    pub started: Instant,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Vm {
    pub fn start(program: &Path, args: &[String], serial: &Path, stderr: &Path) -> Result<Vm> {
        let _ = std::fs::remove_file(serial);
        let child = forge::tools::command(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(stderr)
                    .with_context(|| format!("{}: cannot create", stderr.display()))?,
            )
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        Ok(Vm { child, serial: serial.to_path_buf(), started: Instant::now() })
    }

    /// Waits up to `timeout` for QEMU to exit; true if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<bool> {
        let t = Instant::now();
        loop {
            if self.child.try_wait()?.is_some() {
                return Ok(true);
            }
            if t.elapsed() >= timeout {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Kills QEMU and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn read_serial(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.serial).unwrap_or_default()).into_owned()
    }

    /// Waits for one of `markers` in the serial log; returns the log and the
    /// first marker of the list that is present (None: timeout).
    pub fn wait_serial(
        &mut self,
        markers: &[String],
        timeout: Duration,
    ) -> Result<(String, Option<String>)> {
        let first = |text: &str| markers.iter().find(|m| text.contains(m.as_str())).cloned();
        loop {
            let text = self.read_serial();
            if let Some(m) = first(&text) {
                return Ok((text, Some(m)));
            }
            if self.started.elapsed() > timeout {
                return Ok((text, None));
            }
            if let Some(st) = self.child.try_wait()? {
                std::thread::sleep(Duration::from_millis(300));
                let text = self.read_serial();
                let seen = first(&text);
                if seen.is_none() {
                    bail!("qemu exited ({st}) before any of {markers:?} appeared on the serial console");
                }
                return Ok((text, seen));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn spec(extra_nic: bool) -> BootTest {
        let mut nics = vec![serde_json::json!({
            "mac": "52:54:00:12:34:56",
            "user_net": { "net": "169.254.0.0/16", "host": "169.254.0.2", "dhcpstart": "169.254.0.15" },
            "metadata": true,
            "hostfwd": [80, 22]
        })];
        if extra_nic {
            nics.push(serde_json::json!({ "mac": "52:54:00:12:34:57", "model": "e1000" }));
        }
        let v = serde_json::json!({
            "arch": ["x86-64", "arm64"],
            "firmware": ["bios", "uefi"],
            "machine": { "memory_mib": 2048, "disk_bytes": 21474836480u64 },
            "machine_arch": { "arm64": { "memory_mib": 3072, "cpus": 2 } },
            "metadata": { "listen": "169.254.169.254:80", "paths": { "/x": "y" } },
            "nics": nics,
            "disks": [
                { "source": "image", "device": "scsi-hd" },
                { "source": { "blank": { "bytes": 1048576 } }, "device": "scsi-hd", "vendor": "ACME", "product": "Disk", "serial": "S1" }
            ],
            "fw_cfg": [{ "name": "opt/org.flatcar-linux/config", "content": "{{userdata}}" }],
            "boots": [{ "variant": "a", "until": ["x"], "checks": [{ "name": "n", "observe": "serial", "contains": "x" }] }]
        });
        crate::spec::parse(&v.to_string(), Path::new("t/boot-test.json")).unwrap()
    }

    fn files() -> BootFiles {
        BootFiles {
            disks: vec!["/w/disk.raw".into(), "/w/blank.raw".into()],
            serial: "/w/serial.log".into(),
            responder: Some("/bin/xtask metadata-respond --served /w/s.json --log /w/l".into()),
            fw_cfg: vec![("opt/org.flatcar-linux/config".into(), "/w/fw0".into())],
            uefi_vars: Some("/w/VARS.fd".into()),
            host_ports: BTreeMap::from([(80, 40080), (22, 40022)]),
            guest_agent: None,
            qmp: None,
        }
    }

    /// The value after each occurrence of `key`.
    fn values<'a>(a: &'a [String], key: &str) -> Vec<&'a str> {
        a.iter().zip(a.iter().skip(1)).filter(|(k, _)| *k == key).map(|(_, v)| v.as_str()).collect()
    }

    #[test]
    fn every_nic_is_restricted_and_forwards_only_to_loopback_on_every_arch() {
        for arch in Arch::ALL {
            let a = args(&spec(true), arch, Firmware::Uefi, "tcg", &files()).unwrap();
            let netdevs = values(&a, "-netdev");
            assert_eq!(netdevs.len(), 2, "{arch}");
            for n in &netdevs {
                assert!(n.starts_with("user,") && n.contains(",restrict=on"), "{arch}: {n}");
                for part in n.split(',').filter(|p| p.starts_with("hostfwd=")) {
                    assert!(part.starts_with("hostfwd=tcp:127.0.0.1:"), "{arch}: {part}");
                }
            }
            assert_eq!(
                netdevs[0],
                "user,id=n0,restrict=on,net=169.254.0.0/16,host=169.254.0.2,dhcpstart=169.254.0.15,hostfwd=tcp:127.0.0.1:40080-:80,hostfwd=tcp:127.0.0.1:40022-:22,guestfwd=tcp:169.254.169.254:80-cmd:/bin/xtask metadata-respond --served /w/s.json --log /w/l",
                "{arch}"
            );
            assert_eq!(netdevs[1], "user,id=n1,restrict=on", "{arch}");
            let joined = a.join(" ");
            assert!(joined.contains("-device e1000,netdev=n1,mac=52:54:00:12:34:57"), "{joined}");
            assert!(
                joined.contains("-device virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56"),
                "{joined}"
            );
            assert!(joined.contains("-device virtio-scsi-pci,id=scsi0"), "{joined}");
            assert!(joined.contains("scsi-hd,drive=d0,bus=scsi0.0,bootindex=0"), "{joined}");
            assert!(
                joined.contains("scsi-hd,drive=d1,bus=scsi0.0,vendor=ACME,product=Disk,serial=S1"),
                "{joined}"
            );
            assert!(joined.contains("-fw_cfg name=opt/org.flatcar-linux/config,file=/w/fw0"));
            assert!(joined.contains("if=pflash,format=raw,unit=1,file=/w/VARS.fd"), "{joined}");
        }
    }

    #[test]
    fn the_guest_agent_and_the_monitor_are_on_loopback_sockets() {
        let a = args(&spec(false), Arch::Amd64, Firmware::Bios, "tcg", &files()).unwrap();
        assert!(!a.join(" ").contains("virtserialport"));
        let with = BootFiles { guest_agent: Some(40023), qmp: Some(40024), ..files() };
        for arch in Arch::ALL {
            let fw = if arch == Arch::Amd64 { Firmware::Bios } else { Firmware::Uefi };
            let a = args(&spec(false), arch, fw, "tcg", &with).unwrap();
            assert_eq!(
                values(&a, "-chardev"),
                ["socket,id=qga0,host=127.0.0.1,port=40023,server=on,wait=off"]
            );
            assert_eq!(values(&a, "-qmp"), ["tcp:127.0.0.1:40024,server=on,wait=off"]);
            let devices = values(&a, "-device");
            assert!(devices.contains(&"virtio-serial-pci,id=vser0"), "{devices:?}");
            assert!(devices
                .contains(&"virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0"));
        }
    }

    #[test]
    fn amd64_boots_q35_with_ovmf() {
        let a = args(&spec(false), Arch::Amd64, Firmware::Uefi, "tcg", &files()).unwrap();
        assert_eq!(a[..6], ["-machine", "q35", "-accel", "tcg", "-m", "2048"]);
        assert!(values(&a, "-cpu").is_empty());
        assert_eq!(values(&a, "-smp"), ["1"]);
        assert_eq!(
            values(&a, "-drive").iter().filter(|d| d.contains("pflash")).collect::<Vec<_>>(),
            [
                &"if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
                &"if=pflash,format=raw,unit=1,file=/w/VARS.fd"
            ]
        );
        assert_eq!(program(Arch::Amd64).program, "qemu-system-x86_64");
    }

    #[test]
    fn arm64_boots_virt_with_the_max_cpu_and_aavmf() {
        let a = args(&spec(false), Arch::Arm64, Firmware::Uefi, "tcg", &files()).unwrap();
        assert_eq!(
            a[..12],
            [
                "-machine",
                "virt",
                "-cpu",
                "max,pauth-impdef=on",
                "-accel",
                "tcg",
                "-m",
                "3072",
                "-smp",
                "2",
                "-display",
                "none"
            ],
            "the machine, CPU and arm64's machine_arch"
        );
        assert!(!a.iter().any(|x| x.contains("q35") || x.contains("OVMF")), "{a:?}");
        assert_eq!(
            values(&a, "-drive").iter().filter(|d| d.contains("pflash")).collect::<Vec<_>>(),
            [
                &"if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/AAVMF/AAVMF_CODE.fd",
                &"if=pflash,format=raw,unit=1,file=/w/VARS.fd"
            ]
        );
        assert_eq!(values(&a, "-serial"), ["file:/w/serial.log"]);
        assert!(a.iter().any(|x| x == "-no-reboot"));
        assert_eq!(program(Arch::Arm64).program, "qemu-system-aarch64");
        assert_eq!(target(Arch::Arm64).uefi_vars, "/usr/share/AAVMF/AAVMF_VARS.fd");
        // arm64 has no BIOS; UEFI needs its variables.
        let e = args(&spec(false), Arch::Arm64, Firmware::Bios, "tcg", &files()).unwrap_err();
        assert_eq!(e.to_string(), "arm64 has no bios firmware");
        let mut f = files();
        f.uefi_vars = None;
        let e = args(&spec(false), Arch::Arm64, Firmware::Uefi, "tcg", &f).unwrap_err();
        assert!(e.to_string().contains("UEFI boot without a variables file"), "{e}");
    }

    #[test]
    fn free_ports_are_distinct() {
        let p = free_ports(64).unwrap();
        assert_eq!(p.iter().collect::<std::collections::BTreeSet<_>>().len(), 64);
    }

    #[test]
    fn every_arch_has_one_target_named_consistently() {
        for arch in Arch::ALL {
            let t = target(arch);
            assert_eq!(t.arch, arch);
            assert_eq!(TARGETS.iter().filter(|x| x.arch == arch).count(), 1, "{arch}");
            // qemu-system-<the GNU triplet's CPU>: x86_64, aarch64.
            let cpu = arch.gnu_triplet().split('-').next().unwrap();
            assert_eq!(t.qemu.program, format!("qemu-system-{cpu}"), "{arch}");
            assert!(
                t.uefi_code.program.starts_with("/usr/share/")
                    && t.uefi_vars.starts_with("/usr/share/")
            );
        }
    }

    #[test]
    fn bios_has_no_pflash_and_commas_in_paths_are_refused() {
        let a = args(&spec(false), Arch::Amd64, Firmware::Bios, "tcg", &files()).unwrap();
        assert!(!a.join(" ").contains("pflash"));
        assert!(a.join(" ").contains("-m 2048 -smp 1"));
        for arch in Arch::ALL {
            let mut f = files();
            f.responder = Some("/bin/x metadata-respond --served /w,x/s.json".into());
            let e = args(&spec(false), arch, Firmware::Uefi, "tcg", &f).unwrap_err();
            assert!(e.to_string().contains("must not contain commas"), "{e}");
            let mut f = files();
            f.disks[0] = "/w,1/disk.raw".into();
            assert!(args(&spec(false), arch, Firmware::Uefi, "tcg", &f).is_err());
            let mut f = files();
            f.uefi_vars = Some("/w,x/VARS.fd".into());
            assert!(args(&spec(false), arch, Firmware::Uefi, "tcg", &f).is_err());
        }
    }

    /// Each architecture's whole command line, as the harness makes it,
    /// is accepted by its QEMU: started paused (`-S`), it is still up after
    /// a few seconds, then killed. Skipped for a QEMU or firmware that is
    /// not installed.
    #[test]
    fn qemu_accepts_every_arch_command_line() {
        for arch in Arch::ALL {
            let t = target(arch);
            let (Some(qemu), Some(_)) =
                (forge::tools::find(t.qemu.program), forge::tools::find(t.uefi_code.program))
            else {
                println!("skipped {arch}: needs {} and {}", t.qemu.program, t.uefi_code.program);
                continue;
            };
            let tmp = tempfile::tempdir().unwrap();
            let p = |n: &str| tmp.path().join(n);
            forge::io::sparse::create(&p("disk.raw"), 1 << 20).unwrap();
            forge::io::sparse::create(&p("blank.raw"), 1 << 20).unwrap();
            std::fs::write(p("fw0"), "{}").unwrap();
            std::fs::copy(t.uefi_vars, p("VARS.fd")).unwrap();
            let ports = free_ports(4).unwrap();
            let files = BootFiles {
                disks: vec![p("disk.raw"), p("blank.raw")],
                serial: p("serial.log"),
                responder: Some("/bin/true".into()),
                fw_cfg: vec![("opt/org.flatcar-linux/config".into(), p("fw0"))],
                uefi_vars: Some(p("VARS.fd")),
                host_ports: [80, 22].into_iter().zip(ports.iter().copied()).collect(),
                guest_agent: Some(ports[2]),
                qmp: Some(ports[3]),
            };
            let mut a = args(&spec(true), arch, Firmware::Uefi, "tcg", &files).unwrap();
            a.push("-S".into());
            let mut vm = Vm::start(&qemu, &a, &p("serial.log"), &p("stderr")).unwrap();
            let exited = vm.wait_exit(Duration::from_secs(3)).unwrap();
            vm.kill();
            let stderr = std::fs::read_to_string(p("stderr")).unwrap_or_default();
            assert!(!exited, "{arch}: {} exited: {stderr}", t.qemu.program);
        }
    }
}
