//! Interrupted and starved builds: SIGINT or SIGKILL at any stage leaves no
//! artifact under its final name and the next run succeeds with the same
//! bytes; a full disk gives a clear error and leaves nothing behind.

#[path = "support/lib.rs"]
mod support;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use support::*;

const ARTIFACTS: &[&str] = &[
    "flatcar_production_hetzner_image.bin",
    "flatcar_production_hetzner_image.bin.bz2",
    "flatcar_production_hetzner_image.bin.bz2.DIGESTS",
    "version.txt",
];

fn build_cmd(payload: &Path, out: &Path) -> Command {
    let mut c = Command::new(cli_path());
    c.args(["build-image", "--platform", "hetzner", "--base"])
        .arg(payload)
        .arg("--output-dir")
        .arg(out)
        .env("SOURCE_DATE_EPOCH", "1700000000");
    c.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    c
}

#[test]
fn interrupted_builds_leave_no_artifacts_and_the_next_run_succeeds() {
    let tmp = open_tempdir();
    let payload = tmp.path().join("payload");
    make_bootable_payload(&payload);
    // Reference build, uninterrupted.
    let reference = tmp.path().join("reference");
    assert!(build_cmd(&payload, &reference).status().unwrap().success());

    let mut interrupted = 0;
    let mut last = None;
    for (i, (sig, ms)) in [
        (libc::SIGKILL, 150),
        (libc::SIGINT, 600),
        (libc::SIGKILL, 1500),
        (libc::SIGINT, 3000),
        (libc::SIGKILL, 4500),
    ]
    .into_iter()
    .enumerate()
    {
        let out = tmp.path().join(format!("out-{i}"));
        let mut child = build_cmd(&payload, &out).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(ms));
        unsafe { libc::kill(child.id() as i32, sig) };
        let st = child.wait().unwrap();
        if st.success() {
            continue; // finished before the signal: nothing to check here
        }
        interrupted += 1;
        for a in ARTIFACTS {
            assert!(
                !out.join(a).exists(),
                "signal {sig} after {ms} ms left {a} under its final name"
            );
        }
        last = Some(out);
    }
    assert!(
        interrupted >= 3,
        "only {interrupted} builds were interrupted; the build finished too fast to test"
    );
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
fn a_full_disk_is_a_clear_error_and_leaves_nothing() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("a_full_disk_is_a_clear_error_and_leaves_nothing: not root, cannot mount a small tmpfs; not run");
        return;
    }
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
