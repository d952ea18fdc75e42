//! Upstream's own `build_library/disk_layout.json` (flatcar/scripts), read
//! unchanged from `../shared/upstream/`, drops in: every layout builds, and
//! what the installed tools cannot build as asked (btrfs with zstd/zlib
//! compression on mkfs.btrfs 6.2) falls back to uncompressed btrfs with a
//! warning naming the layout, the partition and the reason. Judged by
//! sfdisk and `btrfs check`.

#[path = "support/lib.rs"]
mod support;
use std::path::PathBuf;
use support::*;

fn upstream_layout() -> PathBuf {
    let p = repo().join("../shared/upstream/disk_layout.json");
    assert!(
        p.exists(),
        "{}: upstream's disk_layout.json is expected beside the checkout (shared/upstream/)",
        p.display()
    );
    p
}

fn can_compress() -> bool {
    sh("mkfs.btrfs --help 2>&1 || true").contains("--compress")
}

#[test]
fn upstream_layout_file_builds_with_warnings_for_what_falls_back() {
    let file = upstream_layout();
    let tmp = open_tempdir();
    let payload = tmp.path().join("payload");
    make_payload(&payload);
    for layout in ["base", "vm"] {
        let out = tmp.path().join(format!("out-{layout}"));
        let o = cli(&[
            "build-image",
            "--platform",
            "generic",
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
        assert!(o.status.success(), "{layout}: upstream's layout was refused:\n{err}");
        let image = out.join("flatcar_production_image.bin");
        let verify = sh(&format!("sfdisk --verify {} 2>&1", image.display()));
        assert!(verify.contains("No errors detected"), "{layout}: sfdisk --verify: {verify}");
        for (part, alg) in [("3 (USR-A)", "zstd"), ("6 (OEM)", "zlib")] {
            let named = format!("layout '{layout}', partition {part}");
            let fallback = err.lines().any(|l| {
                l.contains("warning:")
                    && l.contains(&named)
                    && l.contains(&format!("fs_compression '{alg}'"))
                    && l.contains("uncompressed btrfs")
            });
            assert_eq!(
                fallback,
                !can_compress(),
                "{layout}: a fallback warning for {part} is expected exactly when mkfs.btrfs cannot compress:\n{err}"
            );
        }
        // USR-A is the btrfs the layout asks for, and `btrfs check` accepts it.
        let j: serde_json::Value =
            serde_json::from_str(&sh(&format!("sfdisk --json {}", image.display()))).unwrap();
        let usr = j["partitiontable"]["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "USR-A")
            .unwrap()
            .clone();
        let (start, size) = (usr["start"].as_u64().unwrap(), usr["size"].as_u64().unwrap());
        let part = tmp.path().join(format!("usr-{layout}.img"));
        extract_partition(&image, start, size, &part);
        assert!(sh(&format!("blkid -p -o value -s TYPE {}", part.display())).contains("btrfs"));
        let (ok, log) = sh_status(&format!("btrfs check --readonly {} 2>&1", part.display()));
        assert!(ok, "{layout}: btrfs check: {log}");
    }
}
