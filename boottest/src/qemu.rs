//! QEMU command lines from a boot-test file, and the running VM.
//!
//! Safety, enforced here and not left to the data: every NIC is QEMU user
//! networking with `restrict=on` (the guest reaches nothing outside the
//! machine), the metadata service is a local command (`guestfwd=…-cmd:`),
//! and every `hostfwd` listens on 127.0.0.1 only.

use crate::spec::{Arch, BootTest, DiskDevice, DiskSource, Firmware};
use anyhow::{bail, Context, Result};
use forge::tools::Tool;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// The QEMU binary for an architecture.
pub fn program(arch: Arch) -> Result<Tool> {
    match arch {
        Arch::Amd64 => Ok(Tool { program: "qemu-system-x86_64", package: "qemu-system-x86" }),
        Arch::Arm64 => bail!(
            "arm64 boot tests are not implemented yet (qemu-system-aarch64 -M virt with AAVMF)"
        ),
    }
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
}

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
    program(arch)?;
    let m = t.machine_for(arch);
    let mut a: Vec<String> = vec![
        "-machine".into(),
        "q35".into(),
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
    ];
    no_commas("the serial log path", &files.serial.display().to_string())?;
    if t.disks.iter().any(|d| d.device == DiskDevice::ScsiHd) {
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
        if d.source == DiskSource::Image {
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
    for (name, file) in &files.fw_cfg {
        no_commas("an fw_cfg file path", &file.display().to_string())?;
        a.extend(["-fw_cfg".into(), format!("name={name},file={}", file.display())]);
    }
    if fw == Firmware::Uefi {
        let vars = files.uefi_vars.as_ref().context("UEFI boot without a variables file")?;
        no_commas("the UEFI variables path", &vars.display().to_string())?;
        a.extend([
            "-drive".into(),
            format!("if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"),
            "-drive".into(),
            format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
        ]);
    }
    Ok(a)
}

/// A loopback port free right now.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
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
            "arch": ["x86-64"],
            "firmware": ["bios", "uefi"],
            "machine": { "memory_mib": 2048, "disk_bytes": 21474836480u64 },
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
        }
    }

    #[test]
    fn every_nic_is_restricted_and_forwards_only_to_loopback() {
        let a = args(&spec(true), Arch::Amd64, Firmware::Uefi, "tcg", &files()).unwrap();
        let netdevs: Vec<&String> = a
            .iter()
            .zip(a.iter().skip(1))
            .filter(|(k, _)| *k == "-netdev")
            .map(|(_, v)| v)
            .collect();
        assert_eq!(netdevs.len(), 2);
        for n in &netdevs {
            assert!(n.starts_with("user,") && n.contains(",restrict=on"), "{n}");
            for part in n.split(',').filter(|p| p.starts_with("hostfwd=")) {
                assert!(part.starts_with("hostfwd=tcp:127.0.0.1:"), "{part}");
            }
        }
        assert_eq!(
            netdevs[0].as_str(),
            "user,id=n0,restrict=on,net=169.254.0.0/16,host=169.254.0.2,dhcpstart=169.254.0.15,hostfwd=tcp:127.0.0.1:40080-:80,hostfwd=tcp:127.0.0.1:40022-:22,guestfwd=tcp:169.254.169.254:80-cmd:/bin/xtask metadata-respond --served /w/s.json --log /w/l"
        );
        assert_eq!(netdevs[1].as_str(), "user,id=n1,restrict=on");
        let joined = a.join(" ");
        assert!(joined.contains("-device e1000,netdev=n1,mac=52:54:00:12:34:57"), "{joined}");
        assert!(joined.contains("scsi-hd,drive=d0,bus=scsi0.0,bootindex=0"), "{joined}");
        assert!(
            joined.contains("scsi-hd,drive=d1,bus=scsi0.0,vendor=ACME,product=Disk,serial=S1"),
            "{joined}"
        );
        assert!(joined.contains("-fw_cfg name=opt/org.flatcar-linux/config,file=/w/fw0"));
        assert!(joined.contains(&format!("readonly=on,file={OVMF_CODE}")));
        assert!(joined.contains("if=pflash,format=raw,unit=1,file=/w/VARS.fd"));
        assert!(joined.contains("-m 2048 -smp 1"));
    }

    #[test]
    fn bios_has_no_pflash_and_commas_in_paths_are_refused() {
        let a = args(&spec(false), Arch::Amd64, Firmware::Bios, "tcg", &files()).unwrap();
        assert!(!a.join(" ").contains("pflash"));
        let mut f = files();
        f.responder = Some("/bin/x metadata-respond --served /w,x/s.json".into());
        let e = args(&spec(false), Arch::Amd64, Firmware::Bios, "tcg", &f).unwrap_err();
        assert!(e.to_string().contains("must not contain commas"), "{e}");
        let mut f = files();
        f.disks[0] = "/w,1/disk.raw".into();
        assert!(args(&spec(false), Arch::Amd64, Firmware::Bios, "tcg", &f).is_err());
        let e = args(&spec(false), Arch::Arm64, Firmware::Uefi, "tcg", &files()).unwrap_err();
        assert!(e.to_string().contains("arm64 boot tests are not implemented yet"), "{e}");
    }
}
