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
//! 6. on the first boot, provision the machine from the platform's
//!    user-data with Ignition (`firstboot.rs`, `userdata.rs`);
//! 7. switch_root into systemd.
//!
//! Any failure prints `forge-init: FATAL: …` on the console and powers off.

mod config;
mod dm;
mod firstboot;
mod gpt;
mod sys;
mod userdata;

use config::{BootConfig, DevSpec};
use forge_formats::modules::ModulesDep;
use forge_formats::{cmdline, os_release};
use std::collections::HashSet;
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

fn mkdir(p: &Path) -> Result<()> {
    std::fs::create_dir_all(p).map_err(|e| format!("{}: {e}", p.display()))
}

fn run() -> Result<()> {
    sys::mount_basics()?;
    let t0 = Instant::now();
    let raw =
        std::fs::read_to_string("/proc/cmdline").map_err(|e| format!("/proc/cmdline: {e}"))?;
    say!("starting; cmdline: {}", raw.trim());
    let cfg = BootConfig::from_cmdline(&cmdline::parse(&raw))?;
    load_modules()?;

    // dm-verity /usr
    let usr_dev = wait_for(&cfg.usr, Duration::from_secs(60))?;
    say!("USR is {} ({})", usr_dev.display(), cfg.usr);
    let dm_dev = dm::setup_verity("usr", &usr_dev, cfg.hash_offset, &cfg.usr_hash)?;
    let _ = std::fs::create_dir_all("/dev/mapper");
    let _ = std::os::unix::fs::symlink(
        format!("../{}", dm_dev.file_name().unwrap_or_default().to_string_lossy()),
        "/dev/mapper/usr",
    );
    if cfg.verify_usr_fully {
        let t = Instant::now();
        let n = dm::read_all(&dm_dev)
            .map_err(|e| format!("dm-verity: /usr does not match verity.usrhash ({e})"))?;
        say!("dm-verity: all {n} bytes of /usr verified in {:.1}s", t.elapsed().as_secs_f64());
    }

    // ROOT
    let root_dev = wait_for(&cfg.root, Duration::from_secs(30))?;
    let sysroot = Path::new("/sysroot");
    mkdir(sysroot)?;
    sys::mount(&root_dev, sysroot, "ext4", 0, "")?;
    say!("ROOT {} mounted on /sysroot", root_dev.display());
    match gpt::grow_root(&root_dev, sysroot) {
        Ok(Some((old, new))) => say!("grew ROOT from {old} to {new} bytes to fill the disk"),
        Ok(None) => {}
        Err(e) => say!("warning: could not grow ROOT: {e}"),
    }

    // /usr (read-only, verified)
    let usr_mnt = Path::new("/sysroot/usr");
    mkdir(usr_mnt)?;
    sys::mount(&dm_dev, usr_mnt, &cfg.usr_fstype, libc::MS_RDONLY, "")?;
    say!("/usr mounted read-only from {} ({}, dm-verity)", dm_dev.display(), cfg.usr_fstype);

    // OEM
    match find(&DevSpec::Label("OEM".into())) {
        Some(oem_dev) => {
            let oem = Path::new("/sysroot/oem");
            mkdir(oem)?;
            match sys::mount(&oem_dev, oem, "ext4", 0, "") {
                Ok(()) => {
                    say!("OEM {} mounted on /oem", oem_dev.display());
                    if let Some(id) = &cfg.oem_id {
                        link_oem_sysext(id)?;
                    }
                }
                Err(e) => say!("warning: OEM not mounted: {e}"),
            }
        }
        None => say!("no OEM partition"),
    }
    if cfg.oem_id.is_none() {
        say!("no flatcar.oem.id on the command line: no OEM extension");
    }

    // First boot: the platform's user-data, applied by Ignition.
    firstboot::run(&cfg)?;

    say!("switching root after {:.1}s; exec {}", t0.elapsed().as_secs_f64(), cfg.init);
    sys::switch_root(sysroot, &cfg.init)
}

/// The sysext image to activate for OEM `id` among the file names in
/// /oem/sysext: the version /oem/oem-release names (`VERSION_ID`) if that
/// image exists, otherwise the last by name.
fn pick_sysext(id: &str, names: &[String], oem_release: Option<&str>) -> Option<String> {
    let prefix = format!("oem-{id}-");
    let mut images: Vec<&String> =
        names.iter().filter(|n| n.starts_with(&prefix) && n.ends_with(".raw")).collect();
    images.sort();
    let want = oem_release
        .and_then(|t| os_release::parse(t).remove("VERSION_ID"))
        .map(|v| format!("{prefix}{v}.raw"));
    want.filter(|w| images.contains(&w)).or_else(|| images.last().map(|s| s.to_string()))
}

/// Links /etc/extensions/oem-<id>.raw to the active OEM sysext image.
fn link_oem_sysext(id: &str) -> Result<()> {
    let dir = Path::new("/sysroot/oem/sysext");
    if !dir.join(format!("active-oem-{id}")).exists() {
        say!("OEM '{id}': no /oem/sysext/active-oem-{id}; no extension linked");
        return Ok(());
    }
    let names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let release = std::fs::read_to_string("/sysroot/oem/oem-release").ok();
    let Some(img) = pick_sysext(id, &names, release.as_deref()) else {
        say!("OEM '{id}': no sysext image in /oem/sysext");
        return Ok(());
    };
    let ext = Path::new("/sysroot/etc/extensions");
    mkdir(ext)?;
    let link = ext.join(format!("oem-{id}.raw"));
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(format!("/oem/sysext/{img}"), &link)
        .map_err(|e| format!("{}: {e}", link.display()))?;
    say!("linked /etc/extensions/oem-{id}.raw -> /oem/sysext/{img}");
    Ok(())
}

/// The modules to load, in order, for the names in `wanted` (one per line,
/// `#` comments): each one's dependencies first, every path once. Names
/// modules.dep does not know are built in or not shipped: nothing to load.
fn modules_to_load(deps: &ModulesDep, wanted: &str) -> Vec<String> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for w in wanted.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        for p in deps.load_order(w).unwrap_or_default() {
            if seen.insert(p) {
                out.push(p.to_string());
            }
        }
    }
    out
}

/// Loads the modules named in /etc/forge-init/modules and their dependencies.
fn load_modules() -> Result<()> {
    let release = sys::uname_release();
    let base = PathBuf::from(format!("/usr/lib/modules/{release}"));
    let dep_path = base.join("modules.dep");
    let deps = match std::fs::read_to_string(&dep_path) {
        Ok(text) => ModulesDep::parse(&text).map_err(|e| format!("{}: {e}", dep_path.display()))?,
        Err(e) => {
            say!("no modules for kernel {release} ({}: {e})", dep_path.display());
            ModulesDep::default()
        }
    };
    let wanted = std::fs::read_to_string(MODULE_LIST).unwrap_or_default();
    let mut count = 0;
    for p in modules_to_load(&deps, &wanted) {
        match sys::load_module(&base.join(&p)) {
            Ok(()) => count += 1,
            Err(e) => say!("warning: {e}"),
        }
    }
    say!("loaded {count} modules for kernel {release}");
    Ok(())
}

const MODULE_LIST: &str = "/etc/forge-init/modules";

/// Polls until a device appears.
fn wait_for(spec: &DevSpec, timeout: Duration) -> Result<PathBuf> {
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

fn find(spec: &DevSpec) -> Option<PathBuf> {
    if let DevSpec::Path(p) = spec {
        return p.exists().then(|| p.clone());
    }
    for d in sys::block_devices() {
        let hit = match spec {
            DevSpec::PartUuid(v) => {
                d.partition.is_some()
                    && gpt::partuuid(&d).is_some_and(|u| u.eq_ignore_ascii_case(v))
            }
            DevSpec::PartLabel(v) => {
                d.partition.is_some() && gpt::partlabel(&d).is_some_and(|l| l == *v)
            }
            DevSpec::Label(v) => sys::fs_label(&d.dev).is_some_and(|l| l == *v),
            DevSpec::Path(_) => false,
        };
        if hit {
            return Some(d.dev.clone());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_load_order() {
        let deps = ModulesDep::parse(
            "kernel/drivers/md/dm-verity.ko: kernel/drivers/md/dm-bufio.ko kernel/lib/rs.ko\n\
             kernel/drivers/md/dm-bufio.ko:\n\
             kernel/lib/rs.ko:\n\
             kernel/fs/erofs/erofs.ko: kernel/lib/lz4.ko\n\
             kernel/lib/lz4.ko:\n",
        )
        .unwrap();
        let order = modules_to_load(&deps, "# for /usr\ndm-verity\n\n  dm_bufio \next4\nerofs\n");
        assert_eq!(
            order,
            [
                "kernel/lib/rs.ko",
                "kernel/drivers/md/dm-bufio.ko",
                "kernel/drivers/md/dm-verity.ko",
                "kernel/lib/lz4.ko",
                "kernel/fs/erofs/erofs.ko"
            ]
        );
        assert!(modules_to_load(&ModulesDep::default(), "dm-verity\n").is_empty());
    }

    #[test]
    fn sysext_choice() {
        let names: Vec<String> = [
            "oem-hetzner-1.0.0.raw",
            "oem-hetzner-2.0.0.raw",
            "oem-other-9.raw",
            "active-oem-hetzner",
            "oem-hetzner-3.raw.tmp",
        ]
        .map(String::from)
        .into();
        let pick = |rel: Option<&str>| pick_sysext("hetzner", &names, rel);
        assert_eq!(
            pick(Some("ID=hetzner\nVERSION_ID=\"1.0.0\"\n")).as_deref(),
            Some("oem-hetzner-1.0.0.raw")
        );
        assert_eq!(pick(Some("VERSION_ID=1.0.0")).as_deref(), Some("oem-hetzner-1.0.0.raw"));
        // A version without an image, or no oem-release: the last by name.
        assert_eq!(pick(Some("VERSION_ID=7")).as_deref(), Some("oem-hetzner-2.0.0.raw"));
        assert_eq!(pick(None).as_deref(), Some("oem-hetzner-2.0.0.raw"));
        assert_eq!(pick_sysext("azure", &names, None), None);
    }
}
