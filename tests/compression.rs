//! Every output format a platform may ask for, judged by the stock tools:
//! `bzip2 -t`, `gzip -t`, `zstd -t`, `xz -t`, and each tool's decoder
//! (through `dd conv=sparse`, as Hetzner's uploader does) giving back the
//! exact image; a platform folder asking for zstd gets a verified `.zst`.

#[path = "support/lib.rs"]
mod support;
use std::os::unix::fs::FileExt;
use std::path::Path;
use support::*;

/// A sparse 300 MiB image: real bytes (this test binary) in a few places,
/// a short zero gap inside data, long holes and allocated zeros.
fn image(p: &Path) {
    let f = std::fs::File::create(p).unwrap();
    f.set_len(300 << 20).unwrap();
    let real = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    let real = &real[..real.len().min(12 << 20)];
    f.write_all_at(real, 1 << 20).unwrap();
    f.write_all_at(&bytes(7, 3 << 20), (1 << 20) + real.len() as u64 + 200_000).unwrap();
    f.write_all_at(&vec![0u8; 8 << 20], 100 << 20).unwrap();
    f.write_all_at(&bytes(9, 5000), (300 << 20) - 5000).unwrap();
}

#[test]
fn every_format_decodes_with_the_stock_tool_to_the_exact_image() {
    let tmp = open_tempdir();
    let raw = tmp.path().join("disk.bin");
    image(&raw);
    let want = sha256_file(&raw);
    for (fmt, tool) in [("bz2", "bzip2"), ("gz", "gzip"), ("zst", "zstd -q"), ("xz", "xz")] {
        let out = tmp.path().join(format!("disk.bin.{fmt}"));
        let o = cli(&["compress", "--format", fmt, raw.to_str().unwrap(), out.to_str().unwrap()]);
        assert!(o.status.success(), "{fmt}: {}", stderr(&o));
        assert!(stderr(&o).contains("verified by a full decode"), "{}", stderr(&o));
        sh(&format!("{tool} -t {}", out.display()));
        let back = tmp.path().join(format!("back-{fmt}"));
        sh(&format!(
            "{tool} -cd {} | dd of={} bs=4M conv=sparse status=none && truncate -s {} {}",
            out.display(),
            back.display(),
            300 << 20,
            back.display()
        ));
        assert_eq!(sha256_file(&back), want, "{fmt}");
        assert_same_bytes(&back, &raw);
        // The zero runs did not go through the compressor: the output is small.
        assert!(std::fs::metadata(&out).unwrap().len() < 20 << 20, "{fmt}");
        // DIGESTS in upstream's layout, checked by coreutils.
        let d =
            std::fs::read_to_string(tmp.path().join(format!("disk.bin.{fmt}.DIGESTS"))).unwrap();
        sh(&format!(
            "cd {} && echo '{}' | sha512sum -c --quiet",
            tmp.path().display(),
            d.lines().nth(5).unwrap()
        ));
    }
    // Levels are checked against the format.
    let o = cli(&[
        "compress",
        "--format",
        "gz",
        "--level",
        "12",
        raw.to_str().unwrap(),
        tmp.path().join("x.gz").to_str().unwrap(),
    ]);
    assert!(
        !o.status.success() && stderr(&o).contains("gzip level 12 is out of range"),
        "{}",
        stderr(&o)
    );
    assert!(!tmp.path().join("x.gz").exists());
    let o = cli(&[
        "compress",
        "--format",
        "lz4",
        raw.to_str().unwrap(),
        tmp.path().join("x.lz4").to_str().unwrap(),
    ]);
    // An unknown format is refused by the argument parser, which lists the formats.
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("invalid value 'lz4' for '--format <FORMAT>'")
            && stderr(&o).contains("[possible values: none, bz2, gz, zst, xz]"),
        "{}",
        stderr(&o)
    );
    assert!(!tmp.path().join("x.lz4").exists());
}

fn platform(oem: &Path, id: &str, edit: &dyn Fn(&mut serde_json::Value)) {
    let dir = oem.join(id);
    sh(&format!(
        "mkdir -p {} && cp -r {}/oem/hetzner/. {}",
        dir.display(),
        repo().display(),
        dir.display()
    ));
    let p = dir.join("platform.json");
    let mut j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    j["id"] = id.into();
    j["image_name"] = format!("flatcar_production_{id}_image.bin").into();
    // Hetzner's OEM recipe is Hetzner's own (named oem-hetzner).
    j["sysext"].as_object_mut().unwrap().remove("recipe");
    edit(&mut j);
    std::fs::write(&p, serde_json::to_string_pretty(&j).unwrap()).unwrap();
}

#[test]
fn a_platform_asking_for_zstd_gets_a_verified_zst() {
    let tmp = open_tempdir();
    let oem = tmp.path().join("oem");
    platform(&oem, "zsttest", &|j| {
        j["compression"] = "zst".into();
        j["compression_level"] = 9.into();
    });
    platform(&oem, "badlevel", &|j| {
        j["compression"] = "xz".into();
        j["compression_level"] = 42.into();
    });
    let payload = tmp.path().join("payload");
    make_bootable_payload(&payload);
    let out = tmp.path().join("out");
    let args = |id: &'static str| -> Vec<String> {
        [
            "build-image",
            "--no-extensions",
            "--platform",
            id,
            "--oem-dir",
            oem.to_str().unwrap(),
            "--base",
            payload.to_str().unwrap(),
            "--output-dir",
            out.to_str().unwrap(),
            "--keep-raw",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let a = args("zsttest");
    let o = cli(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));
    let zst = out.join("flatcar_production_zsttest_image.bin.zst");
    let raw = out.join("flatcar_production_zsttest_image.bin");
    sh(&format!("zstd -q -t {}", zst.display()));
    let back = tmp.path().join("back.bin");
    // zstd writes holes for zero runs when its output is a file (--sparse).
    sh(&format!("zstd -q -d --sparse {} -o {}", zst.display(), back.display()));
    assert_same_bytes(&back, &raw);
    assert!(out.join("flatcar_production_zsttest_image.bin.zst.DIGESTS").exists());
    // A level the format does not have is an error naming the file.
    let a = args("badlevel");
    let o = cli(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let e = stderr(&o);
    assert!(
        !o.status.success()
            && e.contains("badlevel/platform.json")
            && e.contains("xz level 42 is out of range"),
        "{e}"
    );
    assert!(!out.join("flatcar_production_badlevel_image.bin.xz").exists());
}

/// The test helpers that judge decoded images skip holes: they must still
/// see every byte. Checked against coreutils' sha256sum and against a
/// dense copy of the same bytes.
#[test]
fn sparse_aware_hash_and_compare_see_every_byte() {
    let tmp = open_tempdir();
    let sparse = tmp.path().join("sparse.bin");
    image(&sparse);
    let dense = tmp.path().join("dense.bin");
    std::fs::write(&dense, std::fs::read(&sparse).unwrap()).unwrap();
    let coreutils = sh(&format!("sha256sum {}", sparse.display()));
    assert_eq!(coreutils.split_whitespace().next().unwrap(), sha256_file(&sparse));
    assert_eq!(sha256_file(&dense), sha256_file(&sparse));
    assert_same_bytes(&sparse, &dense);
    // One byte in a hole of one file, and one in the other's data.
    let f = std::fs::OpenOptions::new().write(true).open(&sparse).unwrap();
    f.write_all_at(&[1], 200 << 20).unwrap();
    let e = compare_files(&sparse, &dense).unwrap_err();
    assert!(e.contains(&format!("at byte {}", 200 << 20)), "{e}");
    assert_ne!(sha256_file(&sparse), sha256_file(&dense));
    f.write_all_at(&[0], 200 << 20).unwrap();
    assert_same_bytes(&sparse, &dense);
    let g = std::fs::OpenOptions::new().write(true).open(&dense).unwrap();
    g.write_all_at(&[0xee], (1 << 20) + 4321).unwrap();
    let e = compare_files(&dense, &sparse).unwrap_err();
    assert!(e.contains(&format!("at byte {}", (1 << 20) + 4321)), "{e}");
    // Lengths.
    g.set_len((300 << 20) + 1).unwrap();
    assert!(compare_files(&dense, &sparse).unwrap_err().contains("B,"));
}
