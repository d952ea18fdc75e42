//! The package unpacker on an arbitrary tar stream (then the metadata it
//! recorded, read back over the tree).
//!
//! Each input is unpacked into `<parent>/dest`, a fresh directory inside a
//! fresh parent. Oracle: afterwards the parent holds nothing but `dest` (no
//! entry, symlink or hard link of the input wrote outside the destination),
//! and no input panics. The parent's path is fixed
//! (`/tmp/forge-fuzz-unpack/parent`) so the seed corpus can plant absolute
//! symlinks aiming at it; a second fuzzing process on the machine gets its
//! own, per-process path (found by a lock file).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::fs::{self, File};
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::sync::OnceLock;

const BASE: &str = "/tmp/forge-fuzz-unpack";

fn parent() -> &'static PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        fs::create_dir_all(BASE).expect("creating the fuzzing directory");
        let lock = File::create(format!("{BASE}/lock")).expect("creating the lock file");
        // SAFETY: flock on a descriptor we own; the file stays open (leaked)
        // for the life of the process, holding the lock.
        let free = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
        std::mem::forget(lock);
        if free {
            PathBuf::from(format!("{BASE}/parent"))
        } else {
            PathBuf::from(format!("{BASE}/parent.{}", std::process::id()))
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let parent = parent();
    if parent.exists() {
        fs::remove_dir_all(parent).expect("cleaning the parent directory");
    }
    let dest = parent.join("dest");
    fs::create_dir_all(&dest).expect("creating the destination");
    let root = forge::unpack::Root::open(&dest).expect("opening the destination");
    if root.unpack_tar(data, "fuzz.deb", &|_| {}).is_ok() {
        // The owners, modes and xattrs recorded from the archive, read
        // back over the tree as it ended up.
        let _ = root.metadata();
    }
    drop(root);
    let mut names: Vec<String> = fs::read_dir(parent)
        .expect("listing the parent directory")
        .map(|e| {
            e.expect("listing the parent directory").file_name().to_string_lossy().into_owned()
        })
        .collect();
    names.sort();
    assert_eq!(names, ["dest"], "the unpacker wrote outside its destination");
    let meta = fs::symlink_metadata(&dest).expect("stat of the destination");
    assert!(meta.is_dir(), "the destination was replaced by a non-directory");
});
