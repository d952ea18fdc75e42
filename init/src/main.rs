//! forge-init: the initramfs's PID 1, a minimal stand-in for Flatcar's
//! bootengine. Built as a static binary (glibc, crt-static), no other
//! programs in the initramfs.
//!
//! 1. mount /proc, /sys, /dev (devtmpfs), /run;
//! 2. load the kernel modules listed in /etc/forge-init/modules (with their
//!    dependencies from modules.dep);
//! 3. find USR by `verity.usr=PARTUUID=…`, set up dm-verity "usr" from
//!    `verity.usrhash=` (salt and size from the on-disk verity superblock at
//!    `verity.usrhashoffset=`), and read it end to end so a /usr that does not
//!    match is refused before anything mounts it;
//! 4. mount ROOT (`root=LABEL=ROOT`) read-write at /sysroot; on first boot
//!    (or whenever ROOT does not reach the end of the disk) grow the GPT,
//!    the partition and the ext4 filesystem to fill the disk;
//! 5. mount /usr read-only, OEM at /oem, and link
//!    /etc/extensions/oem-<id>.raw to the active OEM sysext;
//! 6. switch_root into systemd.
//!
//! Any failure prints `forge-init: FATAL: …` on the console and powers off.

mod dm;
mod gpt;
mod sys;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub type Result<T> = std::result::Result<T, String>;

macro_rules! say {
    ($($a:tt)*) => {{ $crate::console(&format!("forge-init: {}", format!($($a)*))); }};
}

/// Prints a line on every active console (/dev/console is only the last
/// `console=`; the serial console must see our messages too).
pub fn console(line: &str) {
    use std::io::Write;
    let active = std::fs::read_to_string("/sys/class/tty/console/active").unwrap_or_default();
    let mut wrote = false;
    for name in active.split_whitespace() {
        if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(format!("/dev/{name}")) {
            let _ = writeln!(f, "{line}\r");
            wrote = true;
        }
    }
    if !wrote {
        println!("{line}");
    }
}
pub(crate) use say;

const DEFAULT_HASH_OFFSET: u64 = 1_065_345_024;

fn main() {
    if std::process::id() != 1 {
        eprintln!("forge-init: not PID 1; this is the initramfs init");
        std::process::exit(1);
    }
    if let Err(e) = run() {
        console(&format!("forge-init: FATAL: {e}"));
        console("forge-init: refusing to boot; powering off");
        sys::sync();
        std::thread::sleep(Duration::from_secs(2));
        sys::poweroff();
    }
}

struct Cmdline {
    args: HashMap<String, String>,
    raw: String,
}

impl Cmdline {
    fn parse(s: &str) -> Cmdline {
        let mut args = HashMap::new();
        for w in s.split_whitespace() {
            let (k, v) = w.split_once('=').unwrap_or((w, ""));
            args.insert(k.to_string(), v.trim_matches('"').to_string());
        }
        Cmdline { args, raw: s.trim().to_string() }
    }
    fn get(&self, k: &str) -> Option<&str> {
        self.args.get(k).map(String::as_str)
    }
}

fn run() -> Result<()> {
    sys::mount_basics()?;
    let t0 = Instant::now();
    let cmdline = Cmdline::parse(
        &std::fs::read_to_string("/proc/cmdline").map_err(|e| format!("/proc/cmdline: {e}"))?,
    );
    say!("starting; cmdline: {}", cmdline.raw);
    load_modules()?;

    // dm-verity /usr
    let usr_spec = cmdline.get("verity.usr").ok_or("no verity.usr= on the kernel command line")?;
    let root_hash =
        cmdline.get("verity.usrhash").ok_or("no verity.usrhash= on the kernel command line")?;
    if root_hash.len() != 64 || !root_hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("verity.usrhash={root_hash} is not 64 hex digits"));
    }
    let hash_offset: u64 = match cmdline.get("verity.usrhashoffset") {
        Some(v) => v.parse().map_err(|_| format!("verity.usrhashoffset={v} is not a number"))?,
        None => DEFAULT_HASH_OFFSET,
    };
    let usr_dev = wait_for(usr_spec, Duration::from_secs(60))?;
    say!("USR is {} ({usr_spec})", usr_dev.display());
    let dm_dev = dm::setup_verity("usr", &usr_dev, hash_offset, root_hash)?;
    let _ = std::fs::create_dir_all("/dev/mapper");
    let _ = std::os::unix::fs::symlink(
        format!("../{}", dm_dev.file_name().unwrap().to_string_lossy()),
        "/dev/mapper/usr",
    );
    if cmdline.get("verity.usrcheck") != Some("lazy") {
        let t = Instant::now();
        let n = dm::read_all(&dm_dev)
            .map_err(|e| format!("dm-verity: /usr does not match verity.usrhash ({e})"))?;
        say!("dm-verity: all {n} bytes of /usr verified in {:.1}s", t.elapsed().as_secs_f64());
    }

    // ROOT
    let root_spec = cmdline.get("root").unwrap_or("LABEL=ROOT");
    let root_dev = wait_for(root_spec, Duration::from_secs(30))?;
    std::fs::create_dir_all("/sysroot").map_err(|e| e.to_string())?;
    sys::mount(&root_dev, Path::new("/sysroot"), "ext4", 0, "")?;
    say!("ROOT {} mounted on /sysroot", root_dev.display());
    match gpt::grow_root(&root_dev, Path::new("/sysroot")) {
        Ok(Some((old, new))) => say!("grew ROOT from {old} to {new} bytes to fill the disk"),
        Ok(None) => {}
        Err(e) => say!("warning: could not grow ROOT: {e}"),
    }

    // /usr (read-only, verified)
    let usr_mnt = Path::new("/sysroot/usr");
    std::fs::create_dir_all(usr_mnt).map_err(|e| format!("/sysroot/usr: {e}"))?;
    let usr_fs = cmdline.get("mount.usrfstype").unwrap_or("erofs");
    sys::mount(&dm_dev, usr_mnt, usr_fs, libc::MS_RDONLY, "")?;
    say!("/usr mounted read-only from {} ({usr_fs}, dm-verity)", dm_dev.display());

    // OEM
    let oem_id = cmdline
        .get("flatcar.oem.id")
        .or_else(|| cmdline.get("coreos.oem.id"))
        .filter(|s| !s.is_empty());
    match find("LABEL=OEM") {
        Some(oem_dev) => {
            std::fs::create_dir_all("/sysroot/oem").map_err(|e| e.to_string())?;
            match sys::mount(&oem_dev, Path::new("/sysroot/oem"), "ext4", 0, "") {
                Ok(()) => {
                    say!("OEM {} mounted on /oem", oem_dev.display());
                    if let Some(id) = oem_id {
                        link_oem_sysext(id)?;
                    }
                }
                Err(e) => say!("warning: OEM not mounted: {e}"),
            }
        }
        None => say!("no OEM partition"),
    }
    if oem_id.is_none() {
        say!("no flatcar.oem.id on the command line: no OEM extension");
    }

    let init = cmdline.get("init").unwrap_or("/usr/lib/systemd/systemd").to_string();
    say!("switching root after {:.1}s; exec {init}", t0.elapsed().as_secs_f64());
    sys::switch_root(Path::new("/sysroot"), &init)
}

/// Links /etc/extensions/oem-<id>.raw to the active OEM sysext image.
fn link_oem_sysext(id: &str) -> Result<()> {
    let dir = Path::new("/sysroot/oem/sysext");
    if !dir.join(format!("active-oem-{id}")).exists() {
        say!("OEM '{id}': no /oem/sysext/active-oem-{id}; no extension linked");
        return Ok(());
    }
    let prefix = format!("oem-{id}-");
    let mut images: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| format!("/oem/sysext: {e}"))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix) && n.ends_with(".raw"))
        .collect();
    images.sort();
    // The version named by /oem/oem-release wins; otherwise the newest by name.
    let want = std::fs::read_to_string("/sysroot/oem/oem-release")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("VERSION_ID=").map(|v| v.trim_matches('"').to_string())
            })
        })
        .map(|v| format!("{prefix}{v}.raw"));
    let pick = want.filter(|w| images.contains(w)).or_else(|| images.last().cloned());
    let Some(img) = pick else {
        say!("OEM '{id}': no sysext image in /oem/sysext");
        return Ok(());
    };
    let ext = Path::new("/sysroot/etc/extensions");
    std::fs::create_dir_all(ext).map_err(|e| format!("/etc/extensions: {e}"))?;
    let link = ext.join(format!("oem-{id}.raw"));
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(format!("/oem/sysext/{img}"), &link)
        .map_err(|e| format!("{}: {e}", link.display()))?;
    say!("linked /etc/extensions/oem-{id}.raw -> /oem/sysext/{img}");
    Ok(())
}

/// Loads the modules named in /etc/forge-init/modules and their dependencies.
fn load_modules() -> Result<()> {
    let release = sys::uname_release();
    let base = PathBuf::from(format!("/lib/modules/{release}"));
    let dep_text = std::fs::read_to_string(base.join("modules.dep")).unwrap_or_default();
    let mut deps: HashMap<String, (String, Vec<String>)> = HashMap::new();
    for line in dep_text.lines() {
        let Some((m, d)) = line.split_once(':') else { continue };
        let name = module_name(m);
        deps.insert(name, (m.to_string(), d.split_whitespace().map(str::to_string).collect()));
    }
    let wanted = std::fs::read_to_string("/etc/forge-init/modules").unwrap_or_default();
    let mut loaded = std::collections::HashSet::new();
    let mut count = 0;
    for w in wanted.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let key = w.replace('-', "_");
        let Some((path, ds)) = deps.get(&key) else {
            continue; // built in, or not shipped: nothing to load
        };
        // modules.dep lists dependencies deepest-last; load them in reverse.
        for p in ds.iter().rev().chain(std::iter::once(path)) {
            if loaded.insert(p.clone()) {
                match sys::load_module(&base.join(p)) {
                    Ok(()) => count += 1,
                    Err(e) => say!("warning: {p}: {e}"),
                }
            }
        }
    }
    say!("loaded {count} modules for kernel {release}");
    Ok(())
}

fn module_name(path: &str) -> String {
    let f = path.rsplit('/').next().unwrap_or(path);
    let f = f.split(".ko").next().unwrap_or(f);
    f.replace('-', "_")
}

/// Polls until a device spec (`PARTUUID=…`, `LABEL=…`, `PARTLABEL=…`, `/dev/…`) resolves.
fn wait_for(spec: &str, timeout: Duration) -> Result<PathBuf> {
    let start = Instant::now();
    loop {
        if let Some(p) = find(spec) {
            return Ok(p);
        }
        if start.elapsed() > timeout {
            let devs: Vec<String> = sys::block_devices().iter().map(|d| d.name.clone()).collect();
            return Err(format!(
                "device {spec} did not appear within {}s (block devices: {})",
                timeout.as_secs(),
                devs.join(" ")
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn find(spec: &str) -> Option<PathBuf> {
    if spec.starts_with("/dev/") {
        return Path::new(spec).exists().then(|| PathBuf::from(spec));
    }
    let (kind, value) = spec.split_once('=')?;
    for d in sys::block_devices() {
        let hit = match kind {
            "PARTUUID" => {
                d.partition.is_some()
                    && gpt::partuuid(&d).is_some_and(|u| u.eq_ignore_ascii_case(value))
            }
            "PARTLABEL" => d.partition.is_some() && gpt::partlabel(&d).is_some_and(|l| l == value),
            "LABEL" => sys::fs_label(&d.dev).is_some_and(|l| l == value),
            _ => false,
        };
        if hit {
            return Some(d.dev.clone());
        }
    }
    None
}
