//! First-boot provisioning: the platform's user-data, handed to Ignition.
//!
//! Runs after ROOT is mounted at /sysroot and the verified /usr at
//! /sysroot/usr, on the first boot only. The tools come from the image's own
//! /usr (bound at /usr in the initramfs, so its binaries and libraries work
//! here as they do after the switch): Debian's Ignition, busybox's udhcpc
//! and iproute2 for the network, systemd-tmpfiles for the homes Ignition
//! writes keys into.
//!
//! 1. network (for HTTP user-data): DHCP on the first Ethernet interface
//!    that gets a lease (`/etc/forge-init/udhcpc.script` configures it);
//! 2. user-data: fetched (`userdata::fetch`) and classified; no user-data,
//!    an empty one, a cloud-config or a script: nothing to provision;
//! 3. Ignition, the real program, as `--platform=file` on the fetched
//!    config: stages fetch-offline [fetch], disks, mount, files, umount
//!    against /sysroot; any failure stops the boot (the caller powers off),
//!    so the machine never comes up half-configured;
//! 4. the network is taken down again and /usr unbound before the switch.

use crate::config::{BootConfig, UserData};
use crate::userdata::{self, Fetched, Kind};
use crate::{say, sys, Result};
use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PATH: &str = "/usr/sbin:/usr/bin";
const SYSROOT: &str = "/sysroot";
const CONFIG: &str = "/run/ignition/user.ign";
const NEEDNET: &str = "/run/ignition/neednet";
const RESULT: &str = "/sysroot/etc/.ignition-result.json";
const LOG: &str = "/sysroot/var/log/ignition.log";
const DHCP_SCRIPT: &str = "/etc/forge-init/udhcpc.script";
/// Where Ignition is: Debian's package keeps it in its dracut module.
const IGNITION: [&str; 2] = ["/usr/bin/ignition", "/usr/lib/dracut/modules.d/30ignition/ignition"];
/// How long the user-data may take to answer (Ignition's own default).
const FETCH_DEADLINE: Duration = Duration::from_secs(120);

pub fn run(cfg: &BootConfig) -> Result<()> {
    if !cfg.first_boot {
        say!("not the first boot: Ignition does not run");
        return Ok(());
    }
    let Some(src) = &cfg.userdata else {
        say!("first boot: the platform names no user-data (no forge.userdata=): Ignition does not run");
        return Ok(());
    };
    if Path::new(RESULT).exists() {
        say!("first boot flag set, but Ignition already provisioned this machine ({}): not running it again", &RESULT[SYSROOT.len()..]);
        return Ok(());
    }
    let t0 = Instant::now();
    say!("first boot: user-data from {src}");
    bind_usr()?;
    let mut net = Network::default();
    let outcome = provision(src, &mut net, t0);
    net.down();
    unbind_usr();
    sys::sync();
    outcome
}

fn provision(src: &UserData, net: &mut Network, t0: Instant) -> Result<()> {
    if matches!(src, UserData::Http { .. }) {
        net.up()?;
    }
    let data = match userdata::fetch(src, FETCH_DEADLINE, &|m| say!("{m}"))
        .map_err(|e| format!("user-data: {e}"))?
    {
        Fetched::None(why) => {
            say!("user-data: none ({why}): nothing to provision");
            return Ok(());
        }
        Fetched::Bytes(b) => b,
    };
    match userdata::classify(&data) {
        Kind::Empty => {
            say!("user-data: empty: nothing to provision");
            return Ok(());
        }
        Kind::CloudConfig => {
            say!("user-data is a cloud-config, not an Ignition config: skipped (nothing to provision)");
            return Ok(());
        }
        Kind::Script => {
            say!("user-data is a script, not an Ignition config: skipped (nothing to provision)");
            return Ok(());
        }
        Kind::Ignition => {}
    }
    say!("user-data: Ignition config ({} bytes), sha256 {}", data.len(), sha256_hex(&data));
    let ignition = IGNITION
        .iter()
        .find(|p| Path::new(p).exists())
        .ok_or("the user-data is an Ignition config, but this image has no Ignition (/usr/bin/ignition or Debian's /usr/lib/dracut/modules.d/30ignition/ignition)")?;
    std::fs::create_dir_all("/run/ignition").map_err(|e| format!("/run/ignition: {e}"))?;
    write_private(CONFIG, &data)?;
    prepare_root();

    let mut log = Vec::new();
    let mut stages = Vec::new();
    let result = (|| {
        for stage in ["fetch-offline", "fetch", "disks", "mount", "files", "umount"] {
            if stage == "fetch" {
                if !Path::new(NEEDNET).exists() {
                    continue;
                }
                net.up()?;
            }
            run_stage(ignition, stage, &mut log)?;
            stages.push(stage);
        }
        Ok::<(), String>(())
    })();
    save_log(&log);
    result?;
    say!(
        "Ignition: provisioned in {:.1}s (stages: {})",
        t0.elapsed().as_secs_f64(),
        stages.join(" ")
    );
    Ok(())
}

/// One Ignition stage; its log lines go to `log`, and those with a level
/// (not DEBUG) to the console as `ignition: …`.
fn run_stage(ignition: &str, stage: &str, log: &mut Vec<String>) -> Result<()> {
    let (reader, writer) = std::io::pipe().map_err(|e| format!("pipe: {e}"))?;
    let writer2 = writer.try_clone().map_err(|e| format!("pipe: {e}"))?;
    let mut cmd = Command::new(ignition);
    cmd.args(["--root", SYSROOT, "--platform", "file", "--stage", stage, "--log-to-stdout"])
        .env_clear()
        .env("PATH", PATH)
        .env("IGNITION_CONFIG_FILE", CONFIG)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(writer2);
    let mut child = cmd.spawn().map_err(|e| format!("Ignition ({ignition}): {e}"))?;
    drop(cmd); // the parent's copies of the pipe's write end
               // Ignition's CRITICAL lines: the first names the problem (e.g. "error
               // at $.storage.files.0.path, …: path not absolute"), the last how it
               // ended ("Ignition failed: config is not valid").
    let mut critical: Vec<String> = Vec::new();
    for line in std::io::BufReader::new(reader).lines() {
        let Ok(line) = line else { break };
        if let Some(level) = level_of(&line) {
            if level == "CRITICAL" {
                critical.push(line.split_once(':').map_or(&line[..], |x| x.1).trim().to_string());
            }
            if level != "DEBUG" && !line.contains("failed to log systemd journal entry") {
                crate::console(&format!("ignition: {line}"));
            }
        }
        log.push(line);
    }
    let status = child.wait().map_err(|e| format!("Ignition {stage}: {e}"))?;
    if !status.success() {
        let why = match (critical.first(), critical.last()) {
            (Some(a), Some(b)) if a != b => format!("{a} ({b})"),
            (Some(a), _) => a.clone(),
            _ => format!("exited with {status}"),
        };
        return Err(format!("Ignition {stage} failed: {why}"));
    }
    Ok(())
}

/// The level of an Ignition log line (`INFO     : …`), None for the lines
/// of a multi-line message (the full config it prints on failure).
fn level_of(line: &str) -> Option<&str> {
    let (head, _) = line.split_once(':')?;
    let head = head.trim_end();
    matches!(
        head,
        "DEBUG" | "INFO" | "NOTICE" | "WARNING" | "ERROR" | "CRITICAL" | "ALERT" | "EMERGENCY"
    )
    .then_some(head)
}

fn save_log(log: &[String]) {
    let text = log.join("\n") + "\n";
    let _ = std::fs::create_dir_all("/sysroot/var/log");
    if let Err(e) = write_private(LOG, text.as_bytes()) {
        say!("warning: {e}");
    }
}

fn write_private(path: &str, data: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{path}: {e}"))?;
    f.write_all(data).map_err(|e| format!("{path}: {e}"))
}

/// Prepares the real root for what Ignition assumes of it: the shadow
/// suite's lock file (its relabelling lists /etc/.pwd.lock after any user
/// change and fails when the file is missing, as it is in an image whose
/// users were never edited), and the homes: Ignition writes SSH keys as the
/// user, into a home that must exist, and the payload declares homes as
/// tmpfiles (created on every boot, but only after Ignition).
fn prepare_root() {
    let lock = "/sysroot/etc/.pwd.lock";
    if !Path::new(lock).exists() {
        if let Err(e) = write_private(lock, b"") {
            say!("warning: {e}");
        }
    }
    match output(Command::new("systemd-tmpfiles").args([
        "--root",
        SYSROOT,
        "--create",
        "--prefix=/home",
        "--prefix=/root",
    ])) {
        Ok(_) => {}
        Err(e) => say!("warning: systemd-tmpfiles for /home: {e}"),
    }
}

fn bind_usr() -> Result<()> {
    let usr = Path::new("/usr");
    std::fs::create_dir_all(usr).map_err(|e| format!("/usr: {e}"))?;
    sys::mount(Path::new("/sysroot/usr"), usr, "", libc::MS_BIND, "")
}

fn unbind_usr() {
    let p = std::ffi::CString::new("/usr").unwrap();
    if unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) } != 0 {
        say!("warning: unmounting /usr: {}", std::io::Error::last_os_error());
    }
}

/// Runs a command with the image's PATH; its output when it succeeds.
fn output(cmd: &mut Command) -> Result<String> {
    let what = format!("{:?}", cmd.get_program());
    let o = cmd
        .env_clear()
        .env("PATH", PATH)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{what}: {e}"))?;
    let text =
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    if !o.status.success() {
        return Err(format!("{what}: {}: {}", o.status, text.trim()));
    }
    Ok(text)
}

/// The interfaces this boot configured, so they can be taken down again.
#[derive(Default)]
struct Network {
    up: Option<String>,
}

impl Network {
    /// DHCP on the first Ethernet interface that answers.
    fn up(&mut self) -> Result<()> {
        if self.up.is_some() {
            return Ok(());
        }
        let t = Instant::now();
        let _ = output(Command::new("ip").args(["link", "set", "lo", "up"]));
        let mut ifaces = Vec::new();
        while ifaces.is_empty() && t.elapsed() < Duration::from_secs(10) {
            ifaces = ethernet_interfaces();
            if ifaces.is_empty() {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        if ifaces.is_empty() {
            return Err("network: no Ethernet interface appeared within 10s (is its driver in boot/initramfs-modules.txt?)".into());
        }
        let mut tried = Vec::new();
        for i in &ifaces {
            output(Command::new("ip").args(["link", "set", i, "up"]))?;
            let dhcp = output(Command::new("busybox").args([
                "udhcpc",
                "-i",
                i,
                "-f",
                "-q",
                "-n",
                "-t",
                "6",
                "-T",
                "2",
                "-O",
                "staticroutes",
                "-s",
                DHCP_SCRIPT,
            ]));
            match dhcp {
                Ok(_) => {
                    let addr =
                        output(Command::new("ip").args(["-4", "-o", "addr", "show", "dev", i]))
                            .unwrap_or_default();
                    let addr =
                        addr.split_whitespace().skip_while(|w| *w != "inet").nth(1).unwrap_or("?");
                    say!("network: {i} has {addr} by DHCP ({:.1}s)", t.elapsed().as_secs_f64());
                    self.up = Some(i.clone());
                    return Ok(());
                }
                Err(e) => {
                    let _ = output(Command::new("ip").args(["link", "set", i, "down"]));
                    tried.push(format!("{i}: {}", e.lines().last().unwrap_or_default()));
                }
            }
        }
        Err(format!("network: no DHCP lease ({})", tried.join("; ")))
    }

    /// Leaves the interface as the real root expects to find it: down, no
    /// address, no routes.
    fn down(&mut self) {
        if let Some(i) = self.up.take() {
            let _ = output(Command::new("ip").args(["addr", "flush", "dev", &i]));
            let _ = output(Command::new("ip").args(["route", "flush", "dev", &i]));
            let _ = output(Command::new("ip").args(["link", "set", &i, "down"]));
        }
    }
}

/// Ethernet interfaces (ARPHRD_ETHER) by name.
fn ethernet_interfaces() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/sys/class/net")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| std::fs::read_to_string(e.path().join("type")).is_ok_and(|t| t.trim() == "1"))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// SHA-256 (FIPS 180-4), for the console line that identifies the config
/// (forge-init depends on nothing but libc and forge-formats).
pub fn sha256_hex(data: &[u8]) -> String {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in msg.chunks(64) {
        let mut w = [0u32; 64];
        for i in 0..16 {
            w[i] = u32::from_be_bytes(block[i * 4..i * 4 + 4].try_into().unwrap());
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16].wrapping_add(s0).wrapping_add(w[i - 7]).wrapping_add(s1);
        }
        let mut v = h;
        for i in 0..64 {
            let s1 = v[4].rotate_right(6) ^ v[4].rotate_right(11) ^ v[4].rotate_right(25);
            let ch = (v[4] & v[5]) ^ (!v[4] & v[6]);
            let t1 = v[7].wrapping_add(s1).wrapping_add(ch).wrapping_add(K[i]).wrapping_add(w[i]);
            let s0 = v[0].rotate_right(2) ^ v[0].rotate_right(13) ^ v[0].rotate_right(22);
            let maj = (v[0] & v[1]) ^ (v[0] & v[2]) ^ (v[1] & v[2]);
            let t2 = s0.wrapping_add(maj);
            v = [t1.wrapping_add(t2), v[0], v[1], v[2], v[3].wrapping_add(t1), v[4], v[5], v[6]];
        }
        for (a, b) in h.iter_mut().zip(v) {
            *a = a.wrapping_add(b);
        }
    }
    h.iter().map(|x| format!("{x:08x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_matches_known_digests() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        // Two blocks (the padding spills over).
        let d = b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
        assert_eq!(
            sha256_hex(d),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
    }

    #[test]
    fn ignition_log_levels() {
        assert_eq!(level_of("INFO     : files: op(1): [started]  writing file"), Some("INFO"));
        assert_eq!(level_of("CRITICAL : Ignition failed: x"), Some("CRITICAL"));
        assert_eq!(level_of("DEBUG    : parsed url"), Some("DEBUG"));
        assert_eq!(level_of("  \"ignition\": {"), None);
        assert_eq!(level_of("Full config:"), None);
        assert_eq!(level_of("files failed"), None);
    }
}
