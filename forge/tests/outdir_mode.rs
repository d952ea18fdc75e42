//! Published artifacts get mode 0666 minus the umask. The umask is
//! process-wide, so this test lives alone in its own test binary.

use std::os::unix::fs::PermissionsExt;

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn published_files_get_0666_minus_the_umask() {
    let d = tempfile::tempdir().unwrap();
    for (umask, want) in [(0o027, 0o640), (0o002, 0o664), (0o077, 0o600)] {
        unsafe { libc::umask(umask) };
        let small = d.path().join(format!("version-{umask:o}.txt"));
        forge::outdir::write_atomic(&small, b"v").unwrap();
        assert_eq!(mode(&small), want, "write_atomic under umask {umask:o}");

        let big = d.path().join(format!("disk-{umask:o}.bin"));
        let tmp = forge::outdir::partial_file(d.path(), "disk.bin").unwrap();
        std::fs::write(tmp.path(), b"disk").unwrap();
        forge::outdir::publish(tmp, &big).unwrap();
        assert_eq!(mode(&big), want, "publish under umask {umask:o}");
    }
}
