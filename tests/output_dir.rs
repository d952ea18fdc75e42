//! The output directory is the build's alone, and holds one build's
//! artifacts: a second build into a locked directory stops (or waits with
//! `--wait`); a build that fails after writing its image publishes nothing
//! and leaves an earlier build's artifacts as they were; platform folders
//! cannot send artifacts elsewhere or ask for a layout that does not exist.

#[path = "support/lib.rs"]
mod support;
use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use support::*;

const NAME: &str = "flatcar_production_hetzner_image.bin";
const VERITY: &str = "flatcar_production_hetzner_image_verity.txt";
const LOCK: &str = ".forge-build.lock";

fn build_args<'a>(payload: &'a Path, out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "build-image",
        "--no-extensions",
        "--platform",
        "hetzner",
        "--base",
        payload.to_str().unwrap(),
        "--output-dir",
        out.to_str().unwrap(),
    ];
    v.extend_from_slice(extra);
    v
}

/// Every file in `dir` (recursively) with its sha256; directories as "dir".
fn contents(dir: &Path) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let n = e.file_name().to_string_lossy().into_owned();
        let v = if e.file_type().unwrap().is_dir() { "dir".into() } else { sha256_file(&e.path()) };
        m.insert(n, v);
    }
    m
}

/// Holds `dir`'s build lock the way another build would: an flock on the
/// lock file, with that build's PID in it.
struct HeldLock(#[allow(dead_code)] std::fs::File);
fn hold_lock(dir: &Path, pid: u32) -> HeldLock {
    std::fs::create_dir_all(dir).unwrap();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(dir.join(LOCK))
        .unwrap();
    assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }, 0);
    writeln!(f, "{pid}").unwrap();
    HeldLock(f)
}

#[test]
fn a_second_build_into_a_locked_directory_stops_at_once() {
    let tmp = open_tempdir();
    let out = tmp.path().join("out");
    let _held = hold_lock(&out, 4242);
    // No payload: the lock is checked before the payload, forge-init or
    // anything else is looked at.
    let payload = tmp.path().join("no-payload");
    let t = std::time::Instant::now();
    let o = cli(&build_args(&payload, &out, &[]));
    let err = stderr(&o);
    assert!(!o.status.success(), "built into a locked directory");
    assert!(
        err.contains(&format!("{}: another build (PID 4242) is writing", out.display())),
        "{err}"
    );
    assert!(err.contains("--wait"), "{err}");
    assert!(!err.contains("boot:") && !err.contains("payload"), "{err}");
    assert!(t.elapsed() < std::time::Duration::from_secs(60));
    // The generic build and `compress` take the same lock.
    let generic = tmp.path().join("generic-payload");
    make_payload(&generic);
    let o = cli(&[
        "build-image",
        "--no-extensions",
        "--base",
        generic.to_str().unwrap(),
        "--output-dir",
        out.to_str().unwrap(),
    ]);
    assert!(stderr(&o).contains("another build (PID 4242)"), "{}", stderr(&o));
    let raw = tmp.path().join("raw.bin");
    std::fs::write(&raw, vec![0u8; 4096]).unwrap();
    let o = cli(&["compress", raw.to_str().unwrap(), out.join("x.bz2").to_str().unwrap()]);
    assert!(stderr(&o).contains("another build (PID 4242)"), "{}", stderr(&o));
    assert_eq!(contents(&out).keys().collect::<Vec<_>>(), [LOCK]);
}

#[test]
fn with_wait_a_second_build_waits_for_the_first() {
    let tmp = open_tempdir();
    let out = tmp.path().join("out");
    let held = hold_lock(&out, std::process::id());
    let payload = tmp.path().join("payload");
    make_bootable_payload(&payload);
    let mut child = Command::new(cli_path())
        .args(build_args(&payload, &out, &["--wait"]))
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stderr.take().unwrap()));
    let first = lines.next().unwrap().unwrap();
    assert!(
        first.contains(&format!(
            "{}: waiting for another build (PID {}) to finish",
            out.display(),
            std::process::id()
        )),
        "{first}"
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(child.try_wait().unwrap().is_none(), "it did not wait");
    assert!(!out.join(format!("{NAME}.bz2")).exists());
    drop(held);
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(child.wait().unwrap().success(), "{}", rest.join("\n"));
    let c = contents(&out);
    assert!(c.contains_key(&format!("{NAME}.bz2")) && c.contains_key(VERITY), "{c:?}");
    assert!(!c.contains_key(LOCK), "the lock file was left: {c:?}");
}

/// A build that fails at its very end (the place of one artifact is taken
/// by a directory) publishes none of its artifacts, and an earlier good
/// build's artifacts stay as they were: never half a set.
#[test]
fn a_failed_build_publishes_nothing_and_keeps_the_earlier_set() {
    let tmp = open_tempdir();
    let payload = tmp.path().join("payload");
    make_bootable_payload(&payload);

    // Fails after the image was written and verified: nothing under a final name.
    let fresh = tmp.path().join("fresh");
    std::fs::create_dir_all(fresh.join("version.txt")).unwrap();
    let o = cli(&build_args(&payload, &fresh, &[]));
    assert!(!o.status.success(), "succeeded with a directory named version.txt");
    assert!(stderr(&o).contains("version.txt: is a directory"), "{}", stderr(&o));
    let c = contents(&fresh);
    assert_eq!(c.keys().collect::<Vec<_>>(), ["version.txt"], "{c:?}");

    // A good build, then one with another seed whose raw image cannot be
    // kept: the first build's set is untouched.
    let out = tmp.path().join("out");
    let o = cli(&build_args(&payload, &out, &[]));
    assert!(o.status.success(), "{}", stderr(&o));
    let before = contents(&out);
    for a in
        [format!("{NAME}.bz2"), format!("{NAME}.bz2.DIGESTS"), VERITY.into(), "version.txt".into()]
    {
        assert!(before.contains_key(&a), "{a} missing: {before:?}");
    }
    std::fs::create_dir(out.join(NAME)).unwrap();
    let o = cli(&build_args(&payload, &out, &["--keep-raw", "--seed", "another"]));
    assert!(!o.status.success(), "succeeded with a directory where the raw image goes");
    assert!(stderr(&o).contains(&format!("{NAME}: is a directory")), "{}", stderr(&o));
    let mut after = contents(&out);
    assert_eq!(after.remove(NAME).as_deref(), Some("dir"));
    assert_eq!(after, before, "the earlier build's artifacts changed");

    // The same build without the obstacle replaces the whole set.
    std::fs::remove_dir(out.join(NAME)).unwrap();
    let o = cli(&build_args(&payload, &out, &["--keep-raw", "--seed", "another"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let new = contents(&out);
    for a in [format!("{NAME}.bz2"), format!("{NAME}.bz2.DIGESTS"), VERITY.into()] {
        assert_ne!(new[&a], before[&a], "{a} was not replaced");
    }
    assert!(new.contains_key(NAME));
    // And a build without --keep-raw retires the raw image of the other disk.
    let o = cli(&build_args(&payload, &out, &[]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(contents(&out), before, "not the first build's set again");
}

fn platform_dir(tmp: &Path, field: &str, value: serde_json::Value) -> PathBuf {
    let oem = tmp.join("oem");
    std::fs::create_dir_all(oem.join("evil")).unwrap();
    let mut j: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("oem/hetzner/platform.json")).unwrap(),
    )
    .unwrap();
    j["id"] = "evil".into();
    j["compression"] = "none".into();
    // Hetzner's OEM recipe is Hetzner's own (named oem-hetzner).
    j["sysext"].as_object_mut().unwrap().remove("recipe");
    j[field] = value;
    std::fs::write(oem.join("evil/platform.json"), j.to_string()).unwrap();
    oem
}

#[test]
fn an_image_name_cannot_leave_the_output_directory() {
    let tmp = open_tempdir();
    let payload = tmp.path().join("payload");
    make_bootable_payload(&payload);
    let out = tmp.path().join("a/b/out");
    for name in ["../../escaped.bin", "/../../../tmp/escaped-forge-test.bin", "", "."] {
        let oem = platform_dir(tmp.path(), "image_name", name.into());
        let o = cli(&[
            "build-image",
            "--no-extensions",
            "--platform",
            "evil",
            "--oem-dir",
            oem.to_str().unwrap(),
            "--base",
            payload.to_str().unwrap(),
            "--output-dir",
            out.to_str().unwrap(),
        ]);
        let err = stderr(&o);
        assert!(!o.status.success(), "image_name {name:?}: built");
        assert!(err.contains("evil/platform.json: image_name "), "{name:?}: {err}");
        assert!(!out.exists(), "{name:?}: the output directory was created");
    }
    assert!(!tmp.path().join("a/escaped.bin").exists());
    assert!(!Path::new("/tmp/escaped-forge-test.bin").exists());
}

#[test]
fn an_unknown_layout_is_reported_first_naming_the_platform_json() {
    let tmp = open_tempdir();
    let oem = platform_dir(tmp.path(), "layout", "no-such-layout".into());
    let out = tmp.path().join("out");
    let o = cli(&[
        "build-image",
        "--no-extensions",
        "--platform",
        "evil",
        "--oem-dir",
        oem.to_str().unwrap(),
        // No payload: nothing is built or read before the layout is checked.
        "--base",
        tmp.path().join("no-payload").to_str().unwrap(),
        "--output-dir",
        out.to_str().unwrap(),
    ]);
    let err = stderr(&o);
    assert!(!o.status.success());
    assert!(err.contains("evil/platform.json: layout 'no-such-layout' is not in "), "{err}");
    assert!(err.contains("disk_layout.json (it has: ") && err.contains(", vm)"), "{err}");
    assert!(!err.contains("boot:") && !err.contains("forge-init"), "{err}");
    assert!(!out.exists(), "the output directory was created");
}
