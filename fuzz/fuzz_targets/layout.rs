//! Layout parser and planner on arbitrary text.
//!
//! Oracle: every plan that validates is a disk a GPT can describe: its size in
//! bytes fits a file offset, every partition is non-empty, lies inside the
//! disk and outside both GPTs (protective MBR + header + 16 KiB of entries at
//! the start; entries + header at the end), no two partitions overlap, and
//! each filesystem fits in its partition. Arithmetic here is in u128, so it
//! cannot itself wrap.
#![no_main]

use forge::layout::{IdPolicy, LayoutFile};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

/// Bytes of a 128-entry GPT entry array.
const ENTRIES_BYTES: u128 = 128 * 128;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(file) = LayoutFile::parse(text, Path::new("fuzz/disk_layout.json")) else { return };
    for name in file.names() {
        let Ok(plan) = file.plan(&name, &IdPolicy::default()) else { continue };
        let bs = plan.block_size as u128;
        assert!([512, 4096].contains(&bs), "{name}: sector size {bs}");
        let total = plan.total_blocks as u128;
        assert!(total * bs <= i64::MAX as u128, "{name}: disk of {total} sectors of {bs} B");
        let entries = ENTRIES_BYTES.div_ceil(bs);
        let first_usable = 2 + entries;
        assert!(total >= first_usable + 1 + entries, "{name}: disk of {total} sectors");
        let last_usable = total - 1 - entries - 1;
        assert_eq!(plan.total_bytes() as u128, total * bs);
        for p in &plan.partitions {
            let (first, n) = (p.first_block as u128, p.blocks as u128);
            assert!(n > 0, "{name}: partition {} is empty", p.number);
            assert!(first >= first_usable, "{name}: partition {} in the primary GPT", p.number);
            assert!(
                first + n - 1 <= last_usable,
                "{name}: partition {} ({first}+{n}) past the last usable sector {last_usable} of {total}",
                p.number
            );
            assert!((1..=128).contains(&p.number), "{name}: partition number {}", p.number);
            assert!(!p.label.is_empty(), "{name}: partition {} has no label", p.number);
            assert_eq!(plan.offset(p) as u128, first * bs);
            assert_eq!(plan.size(p) as u128, n * bs);
            if let Some(fs) = &p.fs {
                let fs_bytes = fs.blocks as u128 * fs.block_size as u128;
                assert!(fs.blocks > 0 && fs.block_size > 0, "{name}: empty filesystem");
                assert!(
                    fs_bytes <= n * bs,
                    "{name}: filesystem of partition {} ({fs_bytes} B) larger than it ({} B)",
                    p.number,
                    n * bs
                );
                assert_eq!(fs.bytes() as u128, fs_bytes);
            }
            for q in &plan.partitions {
                if q.number == p.number {
                    continue;
                }
                let (qf, qn) = (q.first_block as u128, q.blocks as u128);
                assert!(
                    first + n <= qf || qf + qn <= first,
                    "{name}: partitions {} and {} overlap",
                    p.number,
                    q.number
                );
                assert!(q.label != p.label, "{name}: label {} twice", p.label);
            }
        }
    }
});
