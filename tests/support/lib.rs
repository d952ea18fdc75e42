#![allow(dead_code)]
// Helpers shared by the integration tests: a synthetic payload, running the
// CLI, and running the independent host tools that judge the images.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Path of the CLI binary built for the tests.
pub fn cli_path() -> PathBuf {
    // Integration tests of this package get the binary's path at compile time.
    PathBuf::from(env!("CARGO_BIN_EXE_forge-cli"))
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Runs the CLI with `args` and a fixed SOURCE_DATE_EPOCH.
pub fn cli(args: &[&str]) -> Output {
    Command::new(cli_path())
        .args(args)
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .expect("run forge-cli")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs a shell command, panicking with its output on failure.
pub fn sh(cmd: &str) -> String {
    let o = Command::new("bash").args(["-euo", "pipefail", "-c", cmd]).output().expect("bash");
    assert!(
        o.status.success(),
        "command failed: {cmd}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs a shell command and returns (success, stdout+stderr).
pub fn sh_status(cmd: &str) -> (bool, String) {
    let o = Command::new("bash").args(["-uo", "pipefail", "-c", cmd]).output().expect("bash");
    (
        o.status.success(),
        format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)),
    )
}

/// Deterministic pseudo-random bytes.
pub fn bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A synthetic payload: os-release, kernel, initrd, nested directories, small
/// and large files (some compressible), empty files, long and odd names,
/// symlinks, an executable, and an `etc/` for ROOT.
pub fn make_payload(dir: &Path) {
    let w = |p: &str, data: &[u8]| {
        let p = dir.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    };
    w("usr/lib/os-release", b"ID=testos\nNAME=\"Test OS\"\nVERSION_ID=1.2.3\n");
    w("usr/boot/vmlinuz", &bytes(1, 3_000_000));
    w("usr/boot/initrd.img", &bytes(2, 500_000));
    w("usr/bin/tool", &bytes(3, 70_000));
    std::fs::set_permissions(dir.join("usr/bin/tool"), std::fs::Permissions::from_mode(0o755))
        .unwrap();
    w("usr/share/doc/empty", b"");
    w("usr/share/doc/readme.txt", &b"hello world\n".repeat(5000));
    w("usr/share/a file with spaces.txt", b"spaces\n");
    w(&format!("usr/share/{}", "long".repeat(40)), b"long name\n");
    w("usr/lib/modules/6.1.0/kernel/drivers/virtio.ko", &bytes(4, 250_000));
    for i in 0..200 {
        w(&format!("usr/share/many/f{i:03}"), &bytes(100 + i, (i as usize * 37) % 5000));
    }
    std::os::unix::fs::symlink("tool", dir.join("usr/bin/tool-link")).unwrap();
    std::os::unix::fs::symlink("../lib/os-release", dir.join("usr/share/os-release")).unwrap();
    w("etc/motd", b"welcome to the test OS\n");
    sh(&format!("chmod -R a+rX {}", dir.display()));
}

/// A fresh directory world-readable (and writable) so an unprivileged user
/// can use it too.
pub fn open_tempdir() -> tempfile::TempDir {
    let d = tempfile::Builder::new().prefix("forge-test-").tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    d
}

/// The sha256 of a file's bytes, in hex.
pub fn sha256_file(p: &Path) -> String {
    use sha2::Digest;
    let f = std::fs::File::open(p).unwrap();
    let len = f.metadata().unwrap().len();
    let mut h = sha2::Sha256::new();
    // Holes are hashed as the zeros they read as, without reading them: a
    // 12 GiB image of a few hundred MiB of data costs no 12 GiB of reads.
    let zeros = vec![0u8; 1 << 20];
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0;
    for (start, end) in data_extents(&f, len, p) {
        while pos < start {
            let n = (start - pos).min(zeros.len() as u64) as usize;
            h.update(&zeros[..n]);
            pos += n as u64;
        }
        while pos < end {
            let n = (end - pos).min(buf.len() as u64) as usize;
            read_exact_at(&f, &mut buf[..n], pos, p);
            h.update(&buf[..n]);
            pos += n as u64;
        }
    }
    while pos < len {
        let n = (len - pos).min(zeros.len() as u64) as usize;
        h.update(&zeros[..n]);
        pos += n as u64;
    }
    hex::encode(h.finalize())
}

/// forge's `SEEK_DATA`/`SEEK_HOLE` walk of the whole file.
fn data_extents(f: &std::fs::File, len: u64, p: &Path) -> Vec<(u64, u64)> {
    forge::io::sparse::data_extents(f, 0, len).unwrap_or_else(|e| panic!("{}: {e:#}", p.display()))
}

fn read_exact_at(f: &std::fs::File, buf: &mut [u8], at: u64, p: &Path) {
    use std::os::unix::fs::FileExt;
    f.read_exact_at(buf, at).unwrap_or_else(|e| panic!("{}: read at {at}: {e}", p.display()));
}

/// Whether two files have the same bytes, and if not, the first offset
/// where they differ (or their lengths). Sparse files are compared where
/// either has data; where both have holes they agree without a read.
pub fn compare_files(a: &Path, b: &Path) -> Result<(), String> {
    let fa = std::fs::File::open(a).unwrap_or_else(|e| panic!("{}: {e}", a.display()));
    let fb = std::fs::File::open(b).unwrap_or_else(|e| panic!("{}: {e}", b.display()));
    let (la, lb) = (fa.metadata().unwrap().len(), fb.metadata().unwrap().len());
    if la != lb {
        return Err(format!("{} is {la} B, {} is {lb} B", a.display(), b.display()));
    }
    let mut ranges = data_extents(&fa, la, a);
    ranges.extend(data_extents(&fb, lb, b));
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (s, e) in ranges {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    for (s, e) in merged {
        let mut pos = s;
        while pos < e {
            let n = (e - pos).min(x.len() as u64) as usize;
            read_exact_at(&fa, &mut x[..n], pos, a);
            read_exact_at(&fb, &mut y[..n], pos, b);
            if x[..n] != y[..n] {
                let i = x[..n].iter().zip(&y[..n]).position(|(p, q)| p != q).unwrap();
                return Err(format!(
                    "{} and {} differ first at byte {}",
                    a.display(),
                    b.display(),
                    pos + i as u64
                ));
            }
            pos += n as u64;
        }
    }
    Ok(())
}

/// Panics unless the two files have the same bytes ([`compare_files`]).
pub fn assert_same_bytes(a: &Path, b: &Path) {
    if let Err(e) = compare_files(a, b) {
        panic!("{e}");
    }
}

/// Copies one partition out of an image as a sparse file, with dd.
pub fn extract_partition(image: &Path, start_sector: u64, sectors: u64, dest: &Path) {
    sh(&format!(
        "dd if={} of={} bs=1M iflag=skip_bytes,count_bytes skip={} count={} conv=sparse status=none",
        image.display(),
        dest.display(),
        start_sector * 512,
        sectors * 512
    ));
}

pub const TEST_KERNEL_VERSION: &str = "6.1.0-test";

/// A payload the platform build accepts: `make_payload` plus a kernel with
/// an x86 setup header naming its version, and a modules directory whose
/// modules.builtin lists every module the initramfs asks for.
pub fn make_bootable_payload(dir: &Path) {
    make_payload(dir);
    let mut k = bytes(9, 2_000_000);
    k[0x202..0x206].copy_from_slice(b"HdrS");
    let at = 0x1000usize;
    k[0x20e..0x210].copy_from_slice(&((at - 0x200) as u16).to_le_bytes());
    let v = format!("{TEST_KERNEL_VERSION} (forge@test) #1 SMP\0");
    k[at..at + v.len()].copy_from_slice(v.as_bytes());
    std::fs::write(dir.join("usr/boot/vmlinuz"), k).unwrap();
    let m = dir.join(format!("usr/lib/modules/{TEST_KERNEL_VERSION}"));
    std::fs::create_dir_all(m.join("kernel/drivers")).unwrap();
    std::fs::write(m.join("kernel/drivers/dm-verity.ko"), bytes(11, 3000)).unwrap();
    std::fs::write(m.join("kernel/drivers/dm-mod.ko"), bytes(12, 3000)).unwrap();
    std::fs::write(
        m.join("modules.dep"),
        "kernel/drivers/dm-verity.ko: kernel/drivers/dm-mod.ko\nkernel/drivers/dm-mod.ko:\n",
    )
    .unwrap();
    let builtin: String =
        ["virtio_pci", "virtio_scsi", "virtio_blk", "sd_mod", "erofs", "ext4", "virtio_net"]
            .iter()
            .map(|n| format!("kernel/x/{n}.ko\n"))
            .collect();
    std::fs::write(m.join("modules.builtin"), builtin).unwrap();
    sh(&format!("chmod -R a+rX {}", dir.display()));
}

/// [`make_bootable_payload`] for arm64: its kernel an arm64 `Image` (the
/// boot protocol's `ARM\x64` magic, the release in its banner).
pub fn make_bootable_arm64_payload(dir: &Path) {
    make_bootable_payload(dir);
    let mut k = bytes(10, 2_000_000);
    k[0x38..0x3c].copy_from_slice(b"ARM\x64");
    let v = format!("Linux version {TEST_KERNEL_VERSION} (forge@test) #1 SMP\0");
    k[0x4000..0x4000 + v.len()].copy_from_slice(v.as_bytes());
    std::fs::write(dir.join("usr/boot/vmlinuz"), k).unwrap();
}
