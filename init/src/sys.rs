//! Thin wrappers over the system calls PID 1 needs.

use crate::Result;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn errno() -> String {
    std::io::Error::last_os_error().to_string()
}

pub fn mount(src: &Path, dst: &Path, fstype: &str, flags: libc::c_ulong, data: &str) -> Result<()> {
    let (s, d, t, o) =
        (cstr(src), cstr(dst), CString::new(fstype).unwrap(), CString::new(data).unwrap());
    let r = unsafe {
        libc::mount(s.as_ptr(), d.as_ptr(), t.as_ptr(), flags, o.as_ptr() as *const libc::c_void)
    };
    if r != 0 {
        return Err(format!(
            "mount {} on {} ({fstype}): {}",
            src.display(),
            dst.display(),
            errno()
        ));
    }
    Ok(())
}

pub fn mount_basics() -> Result<()> {
    for (src, dst, t, data) in [
        ("proc", "/proc", "proc", ""),
        ("sysfs", "/sys", "sysfs", ""),
        ("devtmpfs", "/dev", "devtmpfs", "mode=0755"),
        ("tmpfs", "/run", "tmpfs", "mode=0755"),
    ] {
        let _ = std::fs::create_dir_all(dst);
        let flags = libc::MS_NOSUID | if t == "devtmpfs" { 0 } else { libc::MS_NODEV };
        if let Err(e) = mount(Path::new(src), Path::new(dst), t, flags, data) {
            if !(t == "devtmpfs" && e.contains("busy")) {
                return Err(e);
            }
        }
    }
    Ok(())
}

pub fn uname_release() -> String {
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    unsafe { libc::uname(&mut u) };
    let b: Vec<u8> = u.release.iter().take_while(|c| **c != 0).map(|c| *c as u8).collect();
    String::from_utf8_lossy(&b).into_owned()
}

pub fn load_module(path: &Path) -> Result<()> {
    let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    use std::os::unix::io::AsRawFd;
    let empty = CString::new("").unwrap();
    let r = unsafe { libc::syscall(libc::SYS_finit_module, f.as_raw_fd(), empty.as_ptr(), 0) };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EEXIST) {
            return Ok(());
        }
        return Err(format!("{}: finit_module: {e}", path.display()));
    }
    Ok(())
}

#[derive(Clone, Debug)]
pub struct BlockDev {
    pub name: String,
    pub dev: PathBuf,
    /// Partition number, for partitions.
    pub partition: Option<u32>,
    /// Whole-disk device, for partitions.
    pub parent: Option<PathBuf>,
}

pub fn block_devices() -> Vec<BlockDev> {
    let mut v = Vec::new();
    let Ok(rd) = std::fs::read_dir("/sys/class/block") else { return v };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let sys = e.path();
        let partition =
            std::fs::read_to_string(sys.join("partition")).ok().and_then(|s| s.trim().parse().ok());
        let parent = if partition.is_some() {
            std::fs::canonicalize(&sys).ok().and_then(|p| {
                p.parent().map(|q| PathBuf::from("/dev").join(q.file_name().unwrap()))
            })
        } else {
            None
        };
        let dev = PathBuf::from("/dev").join(&name);
        if dev.exists() {
            v.push(BlockDev { name, dev, partition, parent });
        }
    }
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

/// Filesystem label from the superblock (ext2/3/4, FAT32, erofs, squashfs);
/// None when the device cannot be read or holds no known filesystem.
pub fn fs_label(dev: &Path) -> Option<String> {
    let f = std::fs::File::open(dev).ok()?;
    let mut b = vec![0u8; forge_formats::fs::PROBE_BYTES];
    f.read_exact_at(&mut b, 0).ok()?;
    forge_formats::fs::probe(&b).ok()??.label
}

pub fn sync() {
    unsafe { libc::sync() };
}

pub fn poweroff() -> ! {
    unsafe { libc::reboot(libc::RB_POWER_OFF) };
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

/// Moves the API filesystems under `new`, makes it `/`, and execs `init`.
pub fn switch_root(new: &Path, init: &str) -> Result<()> {
    for m in ["/dev", "/proc", "/sys", "/run"] {
        let target = new.join(&m[1..]);
        let _ = std::fs::create_dir_all(&target);
        let (s, d) = (cstr(Path::new(m)), cstr(&target));
        if unsafe {
            libc::mount(s.as_ptr(), d.as_ptr(), std::ptr::null(), libc::MS_MOVE, std::ptr::null())
        } != 0
        {
            return Err(format!("moving {m} to {}: {}", target.display(), errno()));
        }
    }
    std::env::set_current_dir(new).map_err(|e| format!("{}: {e}", new.display()))?;
    let dot = CString::new(".").unwrap();
    let slash = CString::new("/").unwrap();
    if unsafe {
        libc::mount(dot.as_ptr(), slash.as_ptr(), std::ptr::null(), libc::MS_MOVE, std::ptr::null())
    } != 0
    {
        return Err(format!("moving {} to /: {}", new.display(), errno()));
    }
    if unsafe { libc::chroot(dot.as_ptr()) } != 0 {
        return Err(format!("chroot into {}: {}", new.display(), errno()));
    }
    std::env::set_current_dir("/").map_err(|e| format!("/ (the new root): {e}"))?;
    let prog = CString::new(init).unwrap();
    let argv = [prog.as_ptr(), std::ptr::null()];
    unsafe { libc::execv(prog.as_ptr(), argv.as_ptr()) };
    Err(format!("exec {init}: {}", errno()))
}
