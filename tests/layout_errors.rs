//! Malformed layouts: each gives a clear error naming the file, the layout and
//! the partition, a non-zero exit, and leaves nothing in the output directory.

#[path = "support/lib.rs"]
mod support;
use support::*;

/// (fixture, layout to build, substrings the error must contain)
const CASES: &[(&str, &str, &[&str])] = &[
    ("overlap", "base", &["layout 'base', partition 9 (ROOT)", "overlap partition 3 (USR-A)"]),
    (
        "misaligned",
        "base",
        &["layout 'base', partition 9 (ROOT)", "first_block 300001 is not aligned to 4096 sectors"],
    ),
    ("too-large-for-disk", "small", &["layout 'small'", "the disk has only 200000 sectors"]),
    ("unknown-fs-type", "base", &["partition 9 (ROOT)", "unknown fs_type 'zfs'"]),
    (
        "duplicate-label",
        "base",
        &["partition 9 (USR-A)", "label 'USR-A' is already used by partition 3"],
    ),
    ("unknown-type", "base", &["partition 3 (USR-A)", "unknown partition type 'flatcar-usr-x'"]),
    ("missing-blocks", "base", &["partition 9 (ROOT)", "missing \"blocks\""]),
    ("zero-size", "base", &["partition 9 (ROOT)", "size is 0 blocks"]),
    (
        "bad-number",
        "base",
        &["layout 'base', partition 9", "\"12abc\" is not a non-negative integer"],
    ),
    ("fs-larger-than-partition", "base", &["partition 3 (USR-A)", "is larger than the partition"]),
    ("unknown-key", "base", &["layout 'base', partition 9", "unknown field `colour`"]),
    ("bad-uuid", "base", &["partition 3 (USR-A)", "invalid uuid 'not-a-uuid'"]),
    (
        "unknown-feature",
        "base",
        &["partition 3 (USR-A)", "unknown or unsupported feature 'hybrid-mbr'"],
    ),
    ("verity-without-fs", "base", &["partition 3 (USR-A)", "feature 'verity' needs a filesystem"]),
    (
        "label-too-long",
        "base",
        &["partition 9 (ROOT)", "fs_label 'THIS-LABEL-IS-TOO-LONG' is longer than 16 bytes"],
    ),
    ("partition-zero", "base", &["layout 'base'", "\"0\" is not a partition number"]),
    ("inside-primary-gpt", "base", &["partition 1 (EFI-SYSTEM)", "inside the primary GPT"]),
    ("missing-base", "vm", &["missing the \"base\" layout"]),
    ("bad-alignment", "base", &["metadata: part_alignment 4097"]),
    (
        "compression-on-ext4",
        "base",
        &["partition 9 (ROOT)", "fs_compression 'zstd' is not supported for ext4"],
    ),
    (
        "broken-variant",
        "base",
        &["layout 'vm', partition 9", "\"-5\" is not a non-negative integer"],
    ),
    ("duplicate-partition", "base", &["layout 'base'", "key \"1\" appears twice"]),
    ("invalid-json", "base", &["invalid layout file", "line 1"]),
    // Numbers whose products or sums do not fit 64 bits (they wrapped around
    // in release builds and gave a broken partition table).
    (
        "overflow-blocks",
        "base",
        &["layout 'base', partition 9 (ROOT)", "\"blocks\" 67861891338878063 is too large"],
    ),
    (
        "overflow-first-block",
        "base",
        &["partition 9 (ROOT)", "\"first_block\" 18446744073709547520 is too large"],
    ),
    (
        "overflow-part-alignment",
        "base",
        &["partition 9 (ROOT)", "\"part_alignment\" 18446744073709551608 is too large"],
    ),
    (
        "overflow-fs-blocks",
        "base",
        &["partition 9 (ROOT)", "\"fs_blocks\" 4611686018427387904 is too large"],
    ),
    (
        "overflow-disk-blocks",
        "base",
        &["layout 'base'", "\"disk_blocks\" 18446744073709551615 is too large"],
    ),
    (
        "overflow-disk-alignment",
        "base",
        &["layout 'base'", "metadata \"disk_alignment\" 18446744073709547520 is too large"],
    ),
    ("empty-label", "base", &["layout 'base', partition 9", "\"label\" is empty"]),
    (
        "duplicate-key-in-partition",
        "base",
        &["layout 'base', partition 9", "key \"blocks\" appears twice"],
    ),
];

#[test]
fn malformed_layouts_are_rejected_with_clear_errors() {
    let tmp = open_tempdir();
    let payload = tmp.path().join("payload");
    make_payload(&payload);
    let fixtures = repo().join("tests/fixtures/bad-layouts");
    // Every case is run and every failure reported, not only the first.
    let mut failures = Vec::new();
    for (name, layout, expected) in CASES {
        let file = fixtures.join(format!("{name}.json"));
        assert!(file.exists(), "{}", file.display());
        let out = tmp.path().join(format!("out-{name}"));
        let o = cli(&[
            "build-image",
            "--base",
            payload.to_str().unwrap(),
            "--output-dir",
            out.to_str().unwrap(),
            "--layout-file",
            file.to_str().unwrap(),
            "--layout",
            layout,
        ]);
        let err = stderr(&o);
        if o.status.success() {
            failures.push(format!("{name}: expected failure, got success"));
        }
        if !err.contains(&file.display().to_string()) {
            failures.push(format!("{name}: error does not name the file:\n{err}"));
        }
        for e in *expected {
            if !err.contains(e) {
                failures.push(format!("{name}: error lacks {e:?}:\n{err}"));
            }
        }
        let left: Vec<_> = std::fs::read_dir(&out)
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
            .unwrap_or_default();
        if !left.is_empty() {
            failures.push(format!("{name}: left files behind: {left:?}"));
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn unknown_layout_variant_is_named() {
    let tmp = open_tempdir();
    let payload = tmp.path().join("payload");
    make_payload(&payload);
    let out = tmp.path().join("out");
    let o = cli(&[
        "build-image",
        "--base",
        payload.to_str().unwrap(),
        "--output-dir",
        out.to_str().unwrap(),
        "--layout",
        "nosuch",
    ]);
    let err = stderr(&o);
    assert!(!o.status.success());
    assert!(err.contains("layouts/disk_layout.json: no layout 'nosuch' (available: azure, base, container, vagrant, vm)"), "{err}");
    assert!(!out.join("flatcar_production_image.bin").exists());
}

#[test]
fn unknown_platform_is_named() {
    let tmp = open_tempdir();
    let o = cli(&["build-image", "--platform", "nosuch", "--base", tmp.path().to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("unknown platform 'nosuch'"), "{}", stderr(&o));
}

#[test]
fn broken_payloads_are_rejected() {
    let tmp = open_tempdir();
    type MakePayload<'a> = &'a dyn Fn(&std::path::Path);
    let cases: &[(&str, MakePayload, &str)] = &[
        ("no-usr", &|d| std::fs::create_dir_all(d).unwrap(), "no usr/ directory"),
        (
            "no-os-release",
            &|d| std::fs::create_dir_all(d.join("usr/boot")).unwrap(),
            "no os-release: usr/lib/os-release",
        ),
        (
            "no-kernel",
            &|d| {
                std::fs::create_dir_all(d.join("usr/lib")).unwrap();
                std::fs::write(d.join("usr/lib/os-release"), "ID=x\n").unwrap();
            },
            "no kernel: usr/boot/vmlinuz",
        ),
        (
            "no-id",
            &|d| {
                std::fs::create_dir_all(d.join("usr/lib")).unwrap();
                std::fs::write(d.join("usr/lib/os-release"), "NAME=x\n").unwrap();
            },
            "has no ID= line",
        ),
    ];
    for (name, make, expected) in cases {
        let p = tmp.path().join(name);
        make(&p);
        let out = tmp.path().join(format!("out-{name}"));
        let o = cli(&[
            "build-image",
            "--base",
            p.to_str().unwrap(),
            "--output-dir",
            out.to_str().unwrap(),
            "--epoch",
            "0",
        ]);
        let err = stderr(&o);
        assert!(!o.status.success(), "{name}");
        assert!(err.contains(expected) && err.contains(&p.display().to_string()), "{name}: {err}");
        assert!(!out.join("flatcar_production_image.bin").exists());
    }
}

/// Every layout that plans (the repository's and the fuzzer's seeds with
/// 512 B sectors) gives a partition table `sfdisk --verify` finds clean: the
/// planner's checks match what a GPT reader demands.
#[test]
fn planned_tables_pass_sfdisk_verify() {
    use forge::layout::{IdPolicy, LayoutFile};
    let tmp = open_tempdir();
    let mut files = vec![repo().join("layouts/disk_layout.json")];
    let mut seeds: Vec<_> = std::fs::read_dir(repo().join("fuzz/corpus/layout"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    seeds.sort();
    files.extend(seeds);
    let mut checked = 0;
    for file in &files {
        let Ok(layouts) = LayoutFile::load(file) else { continue };
        for name in layouts.names() {
            let plan = layouts.plan(&name, &IdPolicy::default()).unwrap();
            if plan.block_size != 512 {
                continue;
            }
            let image = tmp.path().join("disk.img");
            let mut f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&image)
                .unwrap();
            f.set_len(plan.total_bytes()).unwrap();
            forge::table::write(&mut f, &plan).unwrap();
            drop(f);
            let (ok, out) = sh_status(&format!("sfdisk --verify {} 2>&1", image.display()));
            assert!(
                ok && out.contains("No errors detected"),
                "{} layout '{name}':\n{out}",
                file.display()
            );
            checked += 1;
        }
    }
    // The repository's five layouts and at least three seeds.
    assert!(checked >= 8, "only {checked} layouts checked");
}
