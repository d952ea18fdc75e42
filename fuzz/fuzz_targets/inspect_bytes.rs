//! `inspect` on arbitrary bytes: the input, cut to 1 MiB, is the disk image.
//! Nothing may panic or allocate without bound (run with
//! `-rss_limit_mb=2048 -malloc_limit_mb=512`); errors are fine.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::io::Write;

const MAX: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let mut f = tempfile::NamedTempFile::new().expect("temp file");
    f.write_all(&data[..data.len().min(MAX)]).expect("write");
    if let Ok(r) = forge::inspect::inspect(f.path()) {
        let _ = forge::inspect::render(&r);
    }
});
