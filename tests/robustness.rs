//! Interrupted and starved builds: SIGINT or SIGKILL at any stage leaves no
//! artifact under its final name and the next run succeeds with the same
//! bytes; a full disk gives a clear error and leaves nothing behind.

#[path = "support/lib.rs"]
mod support;
use std::path::Path;
use std::process::Command;
use support::*;

const ARTIFACTS: &[&str] = &[
    "flatcar_production_hetzner_image.bin",
    "flatcar_production_hetzner_image.bin.bz2",
    "flatcar_production_hetzner_image.bin.bz2.DIGESTS",
    "version.txt",
    // Published with the disk, never before it: a killed build must not
    // leave a side file describing a disk that is not there.
    "flatcar_production_hetzner_image_verity.txt",
];

fn build_cmd(payload: &Path, out: &Path) -> Command {
    let mut c = Command::new(cli_path());
    c.args(["build-image", "--no-extensions", "--platform", "hetzner", "--base"])
        .arg(payload)
        .arg("--output-dir")
        .arg(out)
        .env("SOURCE_DATE_EPOCH", "1700000000");
    c.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    // SIGINT as at a terminal, whatever this test inherited: a shell starts
    // background jobs with SIGINT ignored, and an ignored signal stays
    // ignored across exec (the build would then run on, and the test fail).
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut c, || {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            Ok(())
        });
    }
    c
}

/// Where a build is interrupted: a line its log prints when it reaches that
/// stage (no wall-clock guesses), and the signal sent then.
const INTERRUPTIONS: &[(&str, i32)] = &[
    ("boot: initramfs", libc::SIGKILL),
    ("(USR-A, erofs): building", libc::SIGINT),
    ("dm-verity root hash", libc::SIGKILL),
    ("(ROOT, ext4): building", libc::SIGINT),
    ("verify: GPT, filesystems and dm-verity checked", libc::SIGKILL),
    // The first progress line of the compression (its percentages vary).
    ("compress: ", libc::SIGINT),
    // Compressed; the full decode-and-compare runs before anything is published.
    ("compress: 100%", libc::SIGKILL),
];

#[test]
fn interrupted_builds_leave_no_artifacts_and_the_next_run_succeeds() {
    use std::io::BufRead;
    let tmp = open_tempdir();
    let payload = tmp.path().join("payload");
    make_bootable_payload(&payload);
    // Reference build, uninterrupted.
    let reference = tmp.path().join("reference");
    assert!(build_cmd(&payload, &reference).status().unwrap().success());

    let mut last = None;
    for (i, (marker, sig)) in INTERRUPTIONS.iter().enumerate() {
        let out = tmp.path().join(format!("out-{i}"));
        let mut child =
            build_cmd(&payload, &out).stderr(std::process::Stdio::piped()).spawn().unwrap();
        let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let mut seen = Vec::new();
        let reached = loop {
            match lines.next() {
                Some(Ok(l)) => {
                    let hit = l.contains(marker);
                    seen.push(l);
                    if hit {
                        break true;
                    }
                }
                _ => break false,
            }
        };
        assert!(reached, "the build never logged {marker:?}:\n{}", seen.join("\n"));
        unsafe { libc::kill(child.id() as i32, *sig) };
        for l in lines.map_while(Result::ok) {
            seen.push(l);
        }
        let st = child.wait().unwrap();
        assert!(!st.success(), "signal {sig} at {marker:?}: the build still succeeded");
        for a in ARTIFACTS {
            assert!(
                !out.join(a).exists(),
                "signal {sig} at {marker:?} left {a} under its final name"
            );
        }
        last = Some(out);
    }
    // The next run in an interrupted directory succeeds, cleans the dead
    // run's temporary files, and gives the reference bytes.
    let out = last.unwrap();
    assert!(build_cmd(&payload, &out).status().unwrap().success());
    for a in &ARTIFACTS[1..] {
        assert!(
            out.join(a).exists() && reference.join(a).exists(),
            "{a} missing: {:?} / {:?}",
            std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name()).collect::<Vec<_>>(),
            std::fs::read_dir(&reference)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect::<Vec<_>>()
        );
        assert_eq!(sha256_file(&out.join(a)), sha256_file(&reference.join(a)), "{a}");
    }
    let leftovers: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".partial"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[test]
#[ignore = "needs root (mounts a 3 MiB tmpfs); `cargo xtask test` runs it as root"]
fn a_full_disk_is_a_clear_error_and_leaves_nothing() {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test mounts a tmpfs and needs root; run it as root or leave it ignored"
    );
    let tmp = open_tempdir();
    let payload = tmp.path().join("payload");
    make_bootable_payload(&payload);
    let full = tmp.path().join("full");
    std::fs::create_dir(&full).unwrap();
    sh(&format!("mount -t tmpfs -o size=3M tmpfs {}", full.display()));
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _u = Unmount(full.clone());
    for platform in ["generic", "hetzner"] {
        let out = full.join(platform);
        let o = cli(&[
            "build-image",
            "--no-extensions",
            "--platform",
            platform,
            "--base",
            payload.to_str().unwrap(),
            "--output-dir",
            out.to_str().unwrap(),
        ]);
        let err = stderr(&o);
        assert!(!o.status.success(), "{platform}: succeeded on a 3 MiB disk");
        assert!(err.contains("No space left on device"), "{platform}: {err}");
        let left: Vec<_> = std::fs::read_dir(&out)
            .map(|d| d.map(|e| e.unwrap().file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{platform}: left {left:?}");
    }
}
