//! `inspect` on arbitrary bytes: the input, cut to 1 MiB, is the disk image.
//! Nothing may panic or allocate without bound (run with
//! `-rss_limit_mb=2048 -malloc_limit_mb=512`); errors are fine.
#![no_main]

use libfuzzer_sys::fuzz_target;

const MAX: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    // One scratch file for every run.
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let path = DIR.get_or_init(|| tempfile::tempdir().expect("temp dir")).path().join("disk.img");
    std::fs::write(&path, &data[..data.len().min(MAX)]).expect("write");
    if let Ok(r) = forge::inspect::inspect(&path) {
        let _ = forge::inspect::render(&r);
    }
});
