//! Reading hostile disk images (issue 10, item 10): `inspect`, the GPT
//! reader, the FAT reader and the verity recomputation never panic, loop or
//! allocate without bound, and say what is wrong. Each image is crafted
//! here; where `sfdisk` has an opinion (256-byte entries, a corrupt primary
//! GPT) the test checks that it reads the same partitions.
//!
//! The last test checks the fuzz seed `fuzz/seeds/inspect_gpt_fixed/disk`
//! against the generator here (`FORGE_WRITE_SEEDS=1` rewrites it).

use forge::fs::fat::{self, FatParams, FatReader};
use forge::fs::tree::{Dir, Source};
use forge::inspect::{inspect, Report};
use forge::table::{self, GptCopy};
use forge_formats::gpt::crc32;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const SECTOR: u64 = 512;
const LINUX: [u8; 16] = guid_le("0fc63daf-8483-4772-8e79-3d69d8477de4");
const ESP: [u8; 16] = guid_le("c12a7328-f81f-11d2-ba4b-00a0c93ec93b");

/// A GPT GUID's on-disk bytes (first three fields little-endian).
const fn guid_le(s: &str) -> [u8; 16] {
    let b = s.as_bytes();
    let mut hex = [0u8; 16];
    let (mut i, mut j) = (0, 0);
    while i < b.len() {
        if b[i] != b'-' {
            let v = match b[i] {
                b'0'..=b'9' => b[i] - b'0',
                c => c - b'a' + 10,
            };
            hex[j / 2] = hex[j / 2] << 4 | v;
            j += 1;
        }
        i += 1;
    }
    let o = [3, 2, 1, 0, 5, 4, 7, 6, 8, 9, 10, 11, 12, 13, 14, 15];
    let mut out = [0u8; 16];
    let mut k = 0;
    while k < 16 {
        out[k] = hex[o[k]];
        k += 1;
    }
    out
}

struct Part {
    number: u32,
    first: u64,
    last: u64,
    name: &'static str,
    type_guid: [u8; 16],
}

fn part(number: u32, first: u64, last: u64, name: &'static str) -> Part {
    Part { number, first, last, name, type_guid: LINUX }
}

/// Writes a protective MBR and both GPTs (128 entries of `entry_size`) for
/// a disk of `sectors` at `path`; returns the file.
fn gpt_disk(path: &Path, sectors: u64, entry_size: u32, parts: &[Part]) -> File {
    let f =
        OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path).unwrap();
    f.set_len(sectors * SECTOR).unwrap();
    let mut mbr = [0u8; 512];
    mbr[446 + 4] = 0xEE;
    mbr[446 + 8..446 + 12].copy_from_slice(&1u32.to_le_bytes());
    mbr[446 + 12..446 + 16]
        .copy_from_slice(&((sectors - 1).min(u32::MAX as u64) as u32).to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xAA;
    f.write_all_at(&mbr, 0).unwrap();
    let n = 128u32;
    let mut array = vec![0u8; (n * entry_size) as usize];
    for p in parts {
        let e = &mut array[((p.number - 1) * entry_size) as usize..][..128];
        e[0..16].copy_from_slice(&p.type_guid);
        e[16..32].copy_from_slice(&[p.number as u8; 16]);
        e[32..40].copy_from_slice(&p.first.to_le_bytes());
        e[40..48].copy_from_slice(&p.last.to_le_bytes());
        for (i, u) in p.name.encode_utf16().enumerate() {
            e[56 + 2 * i..58 + 2 * i].copy_from_slice(&u.to_le_bytes());
        }
    }
    let arr_sectors = array.len() as u64 / SECTOR;
    let header = |lba: u64, other: u64, entries: u64| {
        let mut h = [0u8; 512];
        h[0..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&lba.to_le_bytes());
        h[32..40].copy_from_slice(&other.to_le_bytes());
        h[40..48].copy_from_slice(&(2 + arr_sectors).to_le_bytes());
        h[48..56].copy_from_slice(&(sectors - 2 - arr_sectors).to_le_bytes());
        h[56..72].copy_from_slice(&[0x5a; 16]);
        h[72..80].copy_from_slice(&entries.to_le_bytes());
        h[80..84].copy_from_slice(&n.to_le_bytes());
        h[84..88].copy_from_slice(&entry_size.to_le_bytes());
        h[88..92].copy_from_slice(&crc32(&array).to_le_bytes());
        let c = crc32(&h[..92]);
        h[16..20].copy_from_slice(&c.to_le_bytes());
        h
    };
    let last = sectors - 1;
    f.write_all_at(&array, 2 * SECTOR).unwrap();
    f.write_all_at(&array, (last - arr_sectors) * SECTOR).unwrap();
    f.write_all_at(&header(1, last, 2), SECTOR).unwrap();
    f.write_all_at(&header(last, 1, last - arr_sectors), last * SECTOR).unwrap();
    f
}

/// Re-seals the header at `lba` after an edit.
fn reseal(f: &File, lba: u64) {
    let mut h = [0u8; 512];
    f.read_exact_at(&mut h, lba * SECTOR).unwrap();
    h[16..20].fill(0);
    let c = crc32(&h[..92]);
    h[16..20].copy_from_slice(&c.to_le_bytes());
    f.write_all_at(&h, lba * SECTOR).unwrap();
}

/// (number, first sector, sectors, name) of each partition `sfdisk --json`
/// reads, or `None` (with a visible "skipped" line) when sfdisk is missing.
fn sfdisk(path: &Path) -> Option<Vec<(u32, u64, u64, String)>> {
    let out = match Command::new("sfdisk").arg("--json").arg(path).output() {
        Ok(o) => o,
        Err(_) => {
            println!("skipped: the sfdisk cross-check needs sfdisk (util-linux)");
            return None;
        }
    };
    assert!(out.status.success(), "sfdisk: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let parts = v["partitiontable"]["partitions"].as_array().unwrap();
    Some(
        parts
            .iter()
            .map(|p| {
                let node = p["node"].as_str().unwrap();
                let digits: String =
                    node.chars().rev().take_while(|c| c.is_ascii_digit()).collect();
                let number = digits.chars().rev().collect::<String>().parse().unwrap();
                (
                    number,
                    p["start"].as_u64().unwrap(),
                    p["size"].as_u64().unwrap(),
                    p["name"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect(),
    )
}

fn ours(r: &Report) -> Vec<(u32, u64, u64, String)> {
    r.partitions.iter().map(|p| (p.number, p.first_sector, p.sectors, p.label.clone())).collect()
}

fn two_parts() -> Vec<Part> {
    vec![part(1, 2048, 4095, "EFI-SYSTEM"), part(3, 4096, 8191, "ROOT")]
}

#[test]
fn reads_256_byte_entries_as_sfdisk_does() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("disk.img");
    gpt_disk(&path, 10_000, 256, &two_parts());
    let r = inspect(&path).unwrap();
    assert_eq!(
        ours(&r),
        vec![(1, 2048, 2048, "EFI-SYSTEM".into()), (3, 4096, 4096, "ROOT".into())]
    );
    assert!(r.warnings.is_empty() && r.errors.is_empty(), "{:?} {:?}", r.warnings, r.errors);
    assert_eq!(r.gpt, GptCopy::Primary);
    if let Some(s) = sfdisk(&path) {
        assert_eq!(s, ours(&r));
    }
    // 512-byte entries too.
    gpt_disk(&path, 10_000, 512, &two_parts());
    assert_eq!(ours(&inspect(&path).unwrap()).len(), 2);
}

#[test]
fn corrupt_primary_falls_back_to_the_backup() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("disk.img");
    let f = gpt_disk(&path, 10_000, 128, &two_parts());
    f.write_all_at(&[0xff; 4], SECTOR + 40).unwrap(); // first usable LBA: CRC now wrong
    let r = inspect(&path).unwrap();
    assert_eq!(r.gpt, GptCopy::Backup);
    assert_eq!(ours(&r).len(), 2);
    assert!(
        r.warnings.iter().any(|w| w.contains("primary GPT is not valid")
            && w.contains("header CRC")
            && w.contains("read the backup GPT at sector 9999")),
        "{:?}",
        r.warnings
    );
    assert!(forge::inspect::render(&r).contains("read from the backup GPT"));
    if let Some(s) = sfdisk(&path) {
        assert_eq!(s, ours(&r));
    }
    // A corrupt entry array in the primary: the same.
    let f = gpt_disk(&path, 10_000, 128, &two_parts());
    f.write_all_at(&[1], 2 * SECTOR + 200).unwrap();
    let r = inspect(&path).unwrap();
    assert_eq!(r.gpt, GptCopy::Backup);
    assert!(r.warnings[0].contains("CRC"), "{:?}", r.warnings);
    // A corrupt backup: read from the primary, with a warning.
    let f = gpt_disk(&path, 10_000, 128, &two_parts());
    f.write_all_at(b"X", 9999 * SECTOR).unwrap();
    let r = inspect(&path).unwrap();
    assert_eq!(r.gpt, GptCopy::Primary);
    assert!(r.warnings[0].contains("backup GPT (sector 9999) is not valid"), "{:?}", r.warnings);
    // Both corrupt: an error naming both.
    f.write_all_at(b"X", SECTOR).unwrap();
    let e = format!("{:#}", inspect(&path).unwrap_err());
    assert!(e.contains("no valid GPT: primary (sector 1)"), "{e}");
    assert!(e.contains("backup (sector 9999)"), "{e}");
    // The build's own check refuses anything but a clean table.
    let f = gpt_disk(&path, 10_000, 128, &two_parts());
    f.write_all_at(&[0xff; 4], SECTOR + 40).unwrap();
    assert!(!table::read(&f).unwrap().is_clean());
}

#[test]
fn truncated_images_say_so() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("disk.img");
    let f = gpt_disk(&path, 10_000, 128, &two_parts());
    // Cut after partition 1: partition 3 is past the end and not read.
    f.set_len(4096 * SECTOR).unwrap();
    let r = inspect(&path).unwrap();
    assert_eq!(r.gpt, GptCopy::Primary);
    assert!(r.errors.iter().any(|e| e.contains("the image is truncated")), "{:?}", r.errors);
    assert!(
        r.errors.iter().any(|e| e.contains("partition 3: sectors 4096–8191 go past the end")),
        "{:?}",
        r.errors
    );
    assert_eq!(ours(&r).len(), 2);
    assert!(r.partitions[1].fs.is_none());
    // Cut inside the entry array.
    f.set_len(10 * SECTOR).unwrap();
    let e = format!("{:#}", inspect(&path).unwrap_err());
    assert!(e.contains("truncated"), "{e}");
    // Cut before the header.
    f.set_len(700).unwrap();
    let e = format!("{:#}", inspect(&path).unwrap_err());
    assert!(e.contains("the image is truncated: 700 bytes"), "{e}");
    f.set_len(0).unwrap();
    assert!(format!("{:#}", inspect(&path).unwrap_err()).contains("truncated"));
}

#[test]
fn bad_entries_are_errors_in_the_report() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("disk.img");
    gpt_disk(
        &path,
        10_000,
        128,
        &[
            part(1, 2048, 4095, "A"),
            part(2, 3000, 5000, "OVERLAPS"),
            part(3, 7000, 6000, "REVERSED"),
            part(4, 9000, u64::MAX, "PAST-END"),
            part(5, 9000, 20_000, "PAST-END-2"),
        ],
    );
    let r = inspect(&path).unwrap();
    assert_eq!(r.partitions.len(), 5);
    let has = |s: &str| r.errors.iter().any(|e| e.contains(s));
    assert!(has("partitions 1 (2048–4095) and 2 (3000–5000) overlap"), "{:?}", r.errors);
    assert!(has("partition 3: last sector 6000 before its first sector 7000"), "{:?}", r.errors);
    assert!(has("partition 4: sectors 9000–18446744073709551615 go past the end"));
    assert!(has("partition 5: sectors 9000–20000 go past the end"));
    assert_eq!(r.partitions[2].sectors, 0);
    let text = forge::inspect::render(&r);
    assert!(text.contains("error: partition 3: last sector 6000"), "{text}");
}

#[test]
fn huge_entry_arrays_are_refused_before_allocating() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("disk.img");
    let f = gpt_disk(&path, 10_000, 128, &two_parts());
    // 2^32 - 1 entries of 2^31 bytes (the primary), 2^24 of 128 (the backup).
    f.write_all_at(&u32::MAX.to_le_bytes(), SECTOR + 80).unwrap();
    f.write_all_at(&(1u32 << 31).to_le_bytes(), SECTOR + 84).unwrap();
    reseal(&f, 1);
    f.write_all_at(&(1u32 << 24).to_le_bytes(), 9999 * SECTOR + 80).unwrap();
    reseal(&f, 9999);
    let e = format!("{:#}", inspect(&path).unwrap_err());
    assert!(e.contains("entry array of 4294967295 × 2147483648 bytes"), "{e}");
    assert!(e.contains("entry array of 16777216 × 128 bytes"), "{e}");
}

/// A partition holding a fake erofs superblock for `blocks` 4 KiB blocks,
/// then a dm-verity superblock and tree made by forge's writer.
fn verity_disk(path: &Path) -> (File, u64) {
    let f = gpt_disk(path, 10_000, 128, &[part(3, 2048, 4095, "USR-A")]);
    let off = 2048 * SECTOR;
    let mut sb = [0u8; 128];
    sb[0..4].copy_from_slice(&0xE0F5_E1E2u32.to_le_bytes());
    sb[12] = 12;
    sb[36..40].copy_from_slice(&64u32.to_le_bytes());
    f.write_all_at(&sb, off + 1024).unwrap();
    f.write_all_at(&[7u8; 9000], off + 8192).unwrap();
    let info =
        forge::verity::format(&f, off, 2048 * SECTOR, 64, 64 * 4096, [3u8; 32], uuid::Uuid::nil())
            .unwrap();
    (f, off + info.hash_offset)
}

#[test]
fn verity_data_blocks_are_checked_against_the_partition() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("disk.img");
    let (f, sb_at) = verity_disk(&path);
    let r = inspect(&path).unwrap();
    let v = r.partitions[0].verity.as_ref().expect("verity found");
    assert_eq!((v.data_blocks, v.hash_offset), (64, 64 * 4096));
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    // 0 panicked, 2^58 overflowed, 2^28 allocated 8 GiB.
    for (n, want) in [
        (0u64, "0 data blocks"),
        (1 << 58, "do not fit before it"),
        (1 << 28, "do not fit before it"),
        (65, "do not fit before it"),
    ] {
        f.write_all_at(&n.to_le_bytes(), sb_at + 72).unwrap();
        let r = inspect(&path).unwrap();
        assert!(r.partitions[0].verity.is_none());
        assert!(
            r.errors.iter().any(|e| e.contains("partition 3: dm-verity") && e.contains(want)),
            "{n}: {:?}",
            r.errors
        );
    }
}

/// A FAT32 filesystem made by forge's writer, in partition 1 ("OEM") of
/// a 40 MiB disk: `/a/b/file`, `/a/x`, `/oem-release`.
fn fat_disk(path: &Path) -> (File, u64) {
    let sectors = 40 << 11;
    let f = gpt_disk(path, sectors, 128, &[part(1, 2048, sectors - 64, "OEM")]);
    let mut t = Dir::new();
    t.add_file("a/b/file", Source::Bytes(b"hello".to_vec())).unwrap();
    t.add_file("a/x", Source::Bytes(vec![9u8; 10_000])).unwrap();
    t.add_file("oem-release", Source::Bytes(b"ID=test\n".to_vec())).unwrap();
    let len = (sectors - 64 - 2048 + 1) * SECTOR;
    let p = FatParams {
        label: Some("OEM".into()),
        volume_id: 0x1234_5678,
        size_bytes: len,
        hidden_sectors: 2048,
        epoch: 0,
    };
    fat::build(&t, &p, &f, 2048 * SECTOR).unwrap();
    (f, len)
}

struct FatGeo {
    fat: u64,
    data: u64,
    cluster: u64,
}

fn geo(f: &File, off: u64) -> FatGeo {
    let mut b = [0u8; 512];
    f.read_exact_at(&mut b, off).unwrap();
    let bs = forge_formats::fat::BootSector::parse(&b).unwrap();
    FatGeo { fat: off + bs.fat_offset(), data: off + bs.data_offset(), cluster: bs.cluster_bytes() }
}

/// Offset of the directory entry named `short` (8.3, padded) in the
/// directory at `cluster`, and the entry's first cluster.
fn dir_entry(f: &File, g: &FatGeo, cluster: u32, short: &[u8; 11]) -> (u64, u32) {
    let at = g.data + (cluster as u64 - 2) * g.cluster;
    let mut d = vec![0u8; g.cluster as usize];
    f.read_exact_at(&mut d, at).unwrap();
    let i = d.chunks(32).position(|e| &e[0..11] == short).expect("entry");
    let e = &d[i * 32..i * 32 + 32];
    let c = (u16::from_le_bytes([e[20], e[21]]) as u32) << 16
        | u16::from_le_bytes([e[26], e[27]]) as u32;
    (at + i as u64 * 32, c)
}

fn set_cluster(f: &File, entry_at: u64, c: u32) {
    f.write_all_at(&((c >> 16) as u16).to_le_bytes(), entry_at + 20).unwrap();
    f.write_all_at(&(c as u16).to_le_bytes(), entry_at + 26).unwrap();
}

#[test]
fn fat_directory_cycles_and_chain_loops_are_detected() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("disk.img");
    let (f, len) = fat_disk(&path);
    let off = 2048 * SECTOR;
    let r = inspect(&path).unwrap();
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.oem.as_ref().unwrap().id.as_deref(), Some("test"));
    let g = geo(&f, off);
    let (_, a) = dir_entry(&f, &g, 2, b"A          ");
    let (b_at, b) = dir_entry(&f, &g, a, b"B          ");

    // /a/b points back to /a: walking loops.
    set_cluster(&f, b_at, a);
    let rd = FatReader::open(&f, off, len).unwrap();
    let e = rd.walk().unwrap_err().to_string();
    assert!(e.contains("FAT directory cycle: /a/b is cluster"), "{e}");
    let r = inspect(&path).unwrap();
    assert!(r.errors.iter().any(|e| e.contains("OEM") && e.contains("cycle")), "{:?}", r.errors);
    // ... and to the root.
    set_cluster(&f, b_at, 2);
    assert!(rd.walk().unwrap_err().to_string().contains("cycle"));
    // Out of range.
    set_cluster(&f, b_at, 0x0FFF_FFF0);
    let e = rd.walk().unwrap_err().to_string();
    assert!(e.contains("cluster 268435440 is out of range"), "{e}");
    set_cluster(&f, b_at, b);
    rd.walk().unwrap();

    // /a/x's chain loops back to its own first cluster.
    let (x_at, x) = dir_entry(&f, &g, a, b"X          ");
    f.write_all_at(&x.to_le_bytes(), g.fat + x as u64 * 4).unwrap();
    f.write_all_at(&[0xff; 4], x_at + 28).unwrap(); // size 4 GiB - 1
    let e = rd.read("a/x").unwrap_err().to_string();
    assert!(e.contains(&format!("FAT chain from cluster {x} loops")), "{e}");
    // A directory whose chain loops.
    f.write_all_at(&a.to_le_bytes(), g.fat + a as u64 * 4).unwrap();
    assert!(rd.walk().unwrap_err().to_string().contains("loops"));
    // A file shorter than its size.
    f.write_all_at(&0x0FFF_FFFFu32.to_le_bytes(), g.fat + a as u64 * 4).unwrap();
    f.write_all_at(&0x0FFF_FFFFu32.to_le_bytes(), g.fat + x as u64 * 4).unwrap();
    assert!(rd.read("a/x").unwrap_err().to_string().contains("shorter than its size"));

    // Geometry larger than the partition, FAT too small for the clusters.
    assert!(FatReader::open(&f, off, len - 4096).is_err());
    let mut bs = [0u8; 512];
    f.read_exact_at(&mut bs, off).unwrap();
    bs[36..40].copy_from_slice(&8u32.to_le_bytes());
    f.write_all_at(&bs, off).unwrap();
    let e = FatReader::open(&f, off, len).err().unwrap().to_string();
    assert!(e.contains("cannot map"), "{e}");
}

// ---------------------------------------------------------------------------
// The fuzz seed for `inspect_gpt_fixed` (see fuzz/README.md).

/// The seed disk: a GPT (256-byte entries), a FAT32 ESP with a
/// `flatcar/verity-a.cfg`, a verity-protected USR-A (fake erofs
/// superblock), an ext4 ROOT superblock and a FAT32 OEM partition.
fn seed_disk(path: &Path) -> File {
    let mib = 2048u64;
    let sectors = 80 * mib;
    let f = gpt_disk(
        path,
        sectors,
        256,
        &[
            Part { number: 1, first: mib, last: 35 * mib - 1, name: "EFI-SYSTEM", type_guid: ESP },
            part(3, 35 * mib, 36 * mib - 1, "USR-A"),
            part(6, 36 * mib, 71 * mib - 1, "OEM"),
            part(9, 71 * mib, sectors - 100, "ROOT"),
        ],
    );
    // USR-A: 16 data blocks, verity after them.
    let usr = 35 * mib * SECTOR;
    let mut sb = [0u8; 128];
    sb[0..4].copy_from_slice(&0xE0F5_E1E2u32.to_le_bytes());
    sb[12] = 12;
    sb[36..40].copy_from_slice(&16u32.to_le_bytes());
    sb[64..69].copy_from_slice(b"USR-A");
    f.write_all_at(&sb, usr + 1024).unwrap();
    f.write_all_at(&[0x11; 100], usr + 5 * 4096).unwrap();
    let info =
        forge::verity::format(&f, usr, mib * SECTOR, 16, 16 * 4096, [5u8; 32], uuid::Uuid::nil())
            .unwrap();
    let fat_fs = |first: u64, label: &str, t: &Dir| {
        let p = FatParams {
            label: Some(label.into()),
            volume_id: 0xabcd_0123,
            size_bytes: 34 * mib * SECTOR,
            hidden_sectors: first,
            epoch: 0,
        };
        fat::build(t, &p, &f, first * SECTOR).unwrap();
    };
    let mut esp = Dir::new();
    let cfg = format!("set verity_usrhash=\"{}\"\n", info.root_hex());
    esp.add_file("flatcar/verity-a.cfg", Source::Bytes(cfg.into_bytes())).unwrap();
    esp.add_file("EFI/boot/bootx64.efi", Source::Bytes(b"MZ".to_vec())).unwrap();
    fat_fs(mib, "EFI-SYSTEM", &esp);
    let mut oem = Dir::new();
    oem.add_file("oem-release", Source::Bytes(b"ID=seed\n".to_vec())).unwrap();
    oem.add_file("sysext/oem-seed.raw", Source::Bytes(vec![1u8; 600])).unwrap();
    oem.add_file("grub.cfg", Source::Bytes(b"set x=1\n".to_vec())).unwrap();
    fat_fs(36 * mib, "OEM", &oem);
    // ROOT: an ext4 superblock (incompat extents|64bit), 1000 4 KiB blocks.
    let mut e = [0u8; 1024];
    e[4..8].copy_from_slice(&1000u32.to_le_bytes());
    e[24..28].copy_from_slice(&2u32.to_le_bytes());
    e[56..58].copy_from_slice(&0xEF53u16.to_le_bytes());
    e[96..100].copy_from_slice(&0xc0u32.to_le_bytes());
    e[120..124].copy_from_slice(b"ROOT");
    f.write_all_at(&e, 71 * mib * SECTOR + 1024).unwrap();
    f
}

/// The sparse encoding `inspect_gpt_fixed` reads: disk sectors, then
/// `(offset, length, bytes)` records of the non-zero 512-byte runs.
fn sparse_encode(f: &File) -> Vec<u8> {
    let len = f.metadata().unwrap().len();
    let mut out = ((len / SECTOR) as u32).to_le_bytes().to_vec();
    for (s, e) in forge::io::sparse::data_extents(f, 0, len).unwrap() {
        let mut buf = vec![0u8; (e - s) as usize];
        f.read_exact_at(&mut buf, s).unwrap();
        let mut run: Option<(u64, Vec<u8>)> = None;
        for (i, sec) in buf.chunks(SECTOR as usize).enumerate() {
            let at = s + i as u64 * SECTOR;
            let zero = sec.iter().all(|b| *b == 0);
            match (&mut run, zero) {
                (Some((_, bytes)), false) if bytes.len() + sec.len() <= 32768 => {
                    bytes.extend_from_slice(sec)
                }
                (_, false) => {
                    if let Some((o, b)) = run.take() {
                        record(&mut out, o, &b);
                    }
                    run = Some((at, sec.to_vec()));
                }
                (_, true) => {
                    if let Some((o, b)) = run.take() {
                        record(&mut out, o, &b);
                    }
                }
            }
        }
        if let Some((o, b)) = run {
            record(&mut out, o, &b);
        }
    }
    out
}

fn record(out: &mut Vec<u8>, off: u64, bytes: &[u8]) {
    out.extend_from_slice(&(off as u32).to_le_bytes());
    out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn seed_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds").join(name)
}

/// Compares (or with `FORGE_WRITE_SEEDS` set, writes) a committed seed.
fn check_seed(name: &str, bytes: &[u8]) {
    let seed = seed_path(name);
    if std::env::var_os("FORGE_WRITE_SEEDS").is_some() {
        std::fs::create_dir_all(seed.parent().unwrap()).unwrap();
        std::fs::write(&seed, bytes).unwrap();
    }
    let committed = std::fs::read(&seed).expect("fuzz seed (FORGE_WRITE_SEEDS=1 writes it)");
    assert!(committed == bytes, "{}: stale; rerun with FORGE_WRITE_SEEDS=1", seed.display());
}

/// Seeds for `inspect_bytes`: small raw disks, a GPT with 128- and with
/// 256-byte entries and an erofs superblock with a verity tree.
#[test]
fn inspect_bytes_seeds() {
    let d = tempfile::tempdir().unwrap();
    for (entry_size, sectors) in [(128u32, 160u64), (256, 224)] {
        let path = d.path().join("seed.img");
        let arr = 128 * entry_size as u64 / SECTOR;
        let first = 2 + arr;
        let f = gpt_disk(&path, sectors, entry_size, &[part(2, first, sectors - arr - 2, "USR-B")]);
        let off = first * SECTOR;
        let mut sb = [0u8; 128];
        sb[0..4].copy_from_slice(&0xE0F5_E1E2u32.to_le_bytes());
        sb[12] = 12;
        sb[36..40].copy_from_slice(&2u32.to_le_bytes());
        f.write_all_at(&sb, off + 1024).unwrap();
        forge::verity::format(
            &f,
            off,
            (sectors - arr - 2 - first) * SECTOR,
            2,
            8192,
            [1; 32],
            uuid::Uuid::nil(),
        )
        .unwrap();
        let r = inspect(&path).unwrap();
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert!(r.partitions[0].verity.is_some());
        check_seed(&format!("inspect_bytes/gpt{entry_size}"), &std::fs::read(&path).unwrap());
    }
}

#[test]
fn fuzz_seed_is_what_the_generator_makes() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("seed.img");
    let f = seed_disk(&path);
    // The seed disk reads cleanly, every part reached.
    let r = inspect(&path).unwrap();
    assert!(r.errors.is_empty() && r.warnings.is_empty(), "{:?} {:?}", r.errors, r.warnings);
    let fs: Vec<_> = r.partitions.iter().map(|p| p.fs.as_ref().map(|f| f.kind.as_str())).collect();
    assert_eq!(fs, [Some("vfat"), Some("erofs"), Some("vfat"), Some("ext4")]);
    assert_eq!(r.partitions[1].verity.as_ref().unwrap().matches, Some(true));
    let oem = r.oem.as_ref().unwrap();
    assert_eq!((oem.id.as_deref(), oem.sysexts.len()), (Some("seed"), 1));
    let enc = sparse_encode(&f);
    assert!(enc.len() < 256 << 10, "seed of {} bytes", enc.len());
    check_seed("inspect_gpt_fixed/disk", &enc);
}

/// A minimal PE program for `machine` (the header fields inspect reads).
fn pe(machine: u16) -> Vec<u8> {
    let mut b = vec![0u8; 0x80];
    b[..2].copy_from_slice(b"MZ");
    b[0x3c..0x40].copy_from_slice(&0x40u32.to_le_bytes());
    b[0x40..0x44].copy_from_slice(b"PE\0\0");
    b[0x44..0x46].copy_from_slice(&machine.to_le_bytes());
    b
}

/// An arm64 `Image` header and banner.
fn arm64_kernel() -> Vec<u8> {
    let mut b = vec![0u8; 0x200];
    b[0x38..0x3c].copy_from_slice(b"ARM\x64");
    b.extend_from_slice(b"\0Linux version 6.1.0-57-cloud-arm64 (gcc) #1 SMP\0");
    b
}

/// Inspects a disk whose only partition is an ESP holding `files`.
fn inspect_esp(files: &[(&str, Vec<u8>)]) -> Report {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("esp.img");
    let mib = 2048u64;
    let f = gpt_disk(
        &path,
        40 * mib,
        128,
        &[Part { number: 1, first: mib, last: 35 * mib - 1, name: "EFI-SYSTEM", type_guid: ESP }],
    );
    let mut esp = Dir::new();
    for (name, bytes) in files {
        esp.add_file(name, Source::Bytes(bytes.clone())).unwrap();
    }
    let p = FatParams {
        label: Some("EFI-SYSTEM".into()),
        volume_id: 1,
        size_bytes: 34 * mib * SECTOR,
        hidden_sectors: mib,
        epoch: 0,
    };
    fat::build(&esp, &p, &f, mib * SECTOR).unwrap();
    inspect(&path).unwrap()
}

/// The architecture is read from the ESP's loaders and kernel; where they
/// contradict each other inspect warns and names no architecture, and
/// files that are no program of a known machine say nothing.
#[test]
fn contradicting_boot_files_are_warnings_and_name_no_architecture() {
    use forge::arch::Arch;
    let r = inspect_esp(&[("EFI/boot/bootx64.efi", pe(0x8664))]);
    let a = r.architecture.unwrap();
    assert_eq!((a.efi_loaders.clone(), a.arch), (vec![Arch::Amd64], Some(Arch::Amd64)));
    assert!(r.warnings.is_empty() && r.errors.is_empty(), "{:?} {:?}", r.warnings, r.errors);
    // A loader named for arm64 that is an x86-64 program.
    let r =
        inspect_esp(&[("EFI/boot/bootx64.efi", pe(0x8664)), ("EFI/boot/bootaa64.efi", pe(0x8664))]);
    assert_eq!(r.architecture.unwrap().arch, Some(Arch::Amd64));
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("EFI/boot/bootaa64.efi is a program for amd64, not arm64")),
        "{:?}",
        r.warnings
    );
    // An amd64 loader with an arm64 kernel in slot A.
    let r =
        inspect_esp(&[("EFI/boot/bootx64.efi", pe(0x8664)), ("flatcar/vmlinuz-a", arm64_kernel())]);
    let a = r.architecture.unwrap();
    assert_eq!(a.arch, None);
    assert_eq!(a.kernel.unwrap().release, "6.1.0-57-cloud-arm64");
    assert!(
        r.warnings.iter().any(|w| w.contains("several architectures")
            && w.contains("EFI loaders amd64")
            && w.contains("kernel arm64")),
        "{:?}",
        r.warnings
    );
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    // Not programs of a known machine: nothing said, no warning.
    let r = inspect_esp(&[
        ("EFI/boot/bootx64.efi", b"MZ".to_vec()),
        ("flatcar/vmlinuz-a", vec![7; 64]),
    ]);
    let a = r.architecture.unwrap();
    assert_eq!((a.efi_loaders.len(), a.kernel.is_none(), a.arch), (0, true, None));
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
}
