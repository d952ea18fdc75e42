//! The generic image judged by independent tools: sfdisk, fsck.fat, mtools,
//! e2fsck, debugfs, fsck.erofs, veritysetup; plus rebuild and unprivileged
//! byte-identity, and `inspect` on images made by other tools.

#[path = "support/lib.rs"]
mod support;
use serde_json::Value;
use std::path::{Path, PathBuf};
use support::*;

const IMAGE: &str = "flatcar_production_image.bin";

struct Built {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    payload: PathBuf,
    image: PathBuf,
}

fn build(layout: &str, extra: &[&str]) -> Built {
    let tmp = open_tempdir();
    let payload = tmp.path().join("payload");
    make_payload(&payload);
    let out = tmp.path().join("out");
    let mut args = vec![
        "build-image",
        "--platform",
        "generic",
        "--base",
        payload.to_str().unwrap(),
        "--output-dir",
        out.to_str().unwrap(),
        "--layout",
        layout,
    ];
    args.extend_from_slice(extra);
    let o = cli(&args);
    assert!(o.status.success(), "build failed: {}", stderr(&o));
    let image = out.join(IMAGE);
    Built { dir: tmp.path().to_path_buf(), _tmp: tmp, payload, image }
}

fn sfdisk_json(image: &Path) -> Value {
    serde_json::from_str(&sh(&format!("sfdisk --json {}", image.display()))).unwrap()
}

/// The reference's numbers for the base layout: (number, name, type, start, size).
const BASE: &[(u32, &str, &str, u64, u64)] = &[
    (1, "EFI-SYSTEM", "C12A7328-F81F-11D2-BA4B-00A0C93EC93B", 4096, 2097152),
    (2, "BIOS-BOOT", "21686148-6449-6E6F-744E-656564454649", 2101248, 4096),
    (3, "USR-A", "5DFBF5F4-2848-4BAC-AA5E-0D9A20B745A6", 2105344, 4194304),
    (4, "USR-B", "5DFBF5F4-2848-4BAC-AA5E-0D9A20B745A6", 6299648, 4194304),
    (6, "OEM", "0FC63DAF-8483-4772-8E79-3D69D8477DE4", 10493952, 2097152),
    (7, "OEM-CONFIG", "C95DC21A-DF0E-4340-8D7B-26CBFA9A03E0", 12591104, 131072),
    (9, "ROOT", "3884DD41-8582-4404-B9A8-E9B84F2DF50E", 12722176, 3653632),
];

fn check_table(image: &Path, layout: &str, root_size: u64, disk_sectors: u64) {
    assert_eq!(std::fs::metadata(image).unwrap().len(), disk_sectors * 512);
    let verify = sh(&format!("sfdisk --verify {} 2>&1", image.display()));
    assert!(verify.contains("No errors detected"), "{verify}");
    let j = sfdisk_json(image);
    let t = &j["partitiontable"];
    assert_eq!(t["label"], "gpt");
    assert_eq!(t["id"].as_str().unwrap().to_lowercase(), "00000000-0000-0000-0000-000000000001");
    assert_eq!(t["firstlba"], 34);
    assert_eq!(t["lastlba"], disk_sectors - 34);
    // Our own plan (with the default seed) gives the derived partition GUIDs.
    let plan = forge::layout::LayoutFile::load(&repo().join("layouts/disk_layout.json"))
        .unwrap()
        .plan(layout, &forge::layout::IdPolicy::default())
        .unwrap();
    let parts = t["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), BASE.len());
    for ((num, name, ty, start, size), p) in BASE.iter().zip(parts) {
        let size = if *num == 9 { root_size } else { *size };
        assert_eq!(p["node"].as_str().unwrap(), format!("{}{num}", image.display()));
        assert_eq!(p["name"], *name);
        assert_eq!(p["type"], *ty);
        assert_eq!(p["start"], *start, "{name}");
        assert_eq!(p["size"], size, "{name}");
        let uuid = p["uuid"].as_str().unwrap().to_lowercase();
        match *name {
            "USR-A" => assert_eq!(uuid, "7130c94a-213a-4e5a-8e26-6cce9662f132"),
            "USR-B" => assert_eq!(uuid, "e03dd35c-7c2d-4a47-b3fe-27f15780a57c"),
            _ => assert_eq!(uuid, plan.by_label(name).unwrap().uuid.to_string()),
        }
        let attrs = p.get("attrs").and_then(|a| a.as_str()).unwrap_or("");
        if *name == "USR-A" {
            assert_eq!(attrs, "GUID:48,56", "priority 1 (bit 48) and successful (bit 56)");
        } else {
            assert_eq!(attrs, "", "{name}");
        }
    }
}

#[test]
fn base_image_matches_the_layout_per_sfdisk() {
    let b = build("base", &[]);
    check_table(&b.image, "base", 3653632, 16515072);
}

#[test]
fn vm_image_matches_the_layout_per_sfdisk() {
    let b = build("vm", &[]);
    check_table(&b.image, "vm", 12943360, 25804800);
    assert_eq!(std::fs::metadata(&b.image).unwrap().len(), 13_212_057_600);
}

fn part(image: &Path, n: u32) -> (u64, u64) {
    let j = sfdisk_json(image);
    let p = j["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["node"].as_str().unwrap().ends_with(&format!("bin{n}")))
        .unwrap()
        .clone();
    (p["start"].as_u64().unwrap(), p["size"].as_u64().unwrap())
}

#[test]
fn filesystems_are_clean_and_read_back_byte_identical() {
    let b = build("base", &[]);
    let img = &b.image;

    // ESP: fsck.fat clean; mtools reads the kernel, initrd and verity record back.
    let (s, n) = part(img, 1);
    let esp = b.dir.join("esp.img");
    extract_partition(img, s, n, &esp);
    let (ok, out) = sh_status(&format!("fsck.fat -n {}", esp.display()));
    assert!(ok, "fsck.fat -n: {out}");
    assert_eq!(out.lines().count(), 2, "fsck.fat printed findings: {out}");
    assert!(sh(&format!("blkid -p -o export {}", esp.display())).contains("LABEL=EFI-SYSTEM"));
    sh(&format!("mcopy -n -i {} ::/flatcar/vmlinuz-a {}/k", esp.display(), b.dir.display()));
    assert_eq!(
        std::fs::read(b.dir.join("k")).unwrap(),
        std::fs::read(b.payload.join("usr/boot/vmlinuz")).unwrap()
    );
    sh(&format!("mcopy -n -i {} ::/flatcar/initrd-a {}/i", esp.display(), b.dir.display()));
    assert_eq!(
        std::fs::read(b.dir.join("i")).unwrap(),
        std::fs::read(b.payload.join("usr/boot/initrd.img")).unwrap()
    );
    let cfg = sh(&format!("mtype -i {} ::/flatcar/verity-a.cfg", esp.display()));
    let side =
        std::fs::read_to_string(b.image.with_file_name("flatcar_production_image_verity.txt"))
            .unwrap();
    let root_hash = side.lines().next().unwrap().to_string();
    assert_eq!(root_hash.len(), 64);
    assert!(cfg.contains(&format!("set verity_usrhash=\"{root_hash}\"")), "{cfg}");

    // ROOT and OEM: e2fsck clean at their offsets; debugfs reads etc/motd back, owned by root.
    for (num, label) in [(9, "ROOT"), (6, "OEM")] {
        let (s, _) = part(img, num);
        let target = format!("{}?offset={}", img.display(), s * 512);
        let (ok, out) = sh_status(&format!("e2fsck -fn '{target}'"));
        assert!(ok, "e2fsck {label}: {out}");
        assert!(sh(&format!("dumpe2fs -h '{target}' 2>/dev/null"))
            .contains(&format!("Filesystem volume name:   {label}")));
    }
    let (s, _) = part(img, 9);
    let target = format!("{}?offset={}", img.display(), s * 512);
    assert_eq!(
        sh(&format!("debugfs -R 'cat /etc/motd' '{target}' 2>/dev/null")),
        "welcome to the test OS\n"
    );
    let stat = sh(&format!("debugfs -R 'stat /etc/motd' '{target}' 2>/dev/null"));
    assert!(stat.contains("User:     0   Group:     0"), "{stat}");

    // USR-A: fsck.erofs clean; every file, link and mode extracted equals the payload's.
    let (s, n) = part(img, 3);
    let usr = b.dir.join("usr.img");
    extract_partition(img, s, n, &usr);
    let (ok, out) = sh_status(&format!("fsck.erofs {}", usr.display()));
    assert!(ok, "fsck.erofs: {out}");
    let x = b.dir.join("usr-extracted");
    sh(&format!("fsck.erofs --extract={} {}", x.display(), usr.display()));
    let diff = sh_status(&format!(
        "diff -r --no-dereference {} {}",
        b.payload.join("usr").display(),
        x.display()
    ));
    assert!(diff.0, "extracted /usr differs: {}", diff.1);
    let modes =
        |d: &Path| sh(&format!("cd {} && find . -printf '%p %y %m %s %l\\n' | sort", d.display()));
    assert_eq!(modes(&b.payload.join("usr")), modes(&x));
}

#[test]
fn veritysetup_accepts_usr_and_rejects_a_flipped_byte() {
    let b = build("base", &[]);
    let side =
        std::fs::read_to_string(b.image.with_file_name("flatcar_production_image_verity.txt"))
            .unwrap();
    let root = side.lines().next().unwrap();
    let field =
        |k: &str| side.lines().find_map(|l| l.strip_prefix(&format!("{k}="))).unwrap().to_string();
    let (s, n) = part(&b.image, 3);
    let usr = b.dir.join("usr.img");
    extract_partition(&b.image, s, n, &usr);
    let u = usr.display();
    let off = field("hash_offset");
    assert_eq!(off, "1065345024", "upstream's hash offset (260094 blocks of 4 KiB)");
    let dump = sh(&format!("veritysetup dump --hash-offset={off} {u}"));
    assert!(dump.contains(&field("salt")), "{dump}");
    let squashed = dump.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(squashed.contains("Data blocks: 260094"), "{dump}");
    assert!(squashed.contains("Hash algorithm: sha256"), "{dump}");
    let (ok, out) = sh_status(&format!("veritysetup verify --hash-offset={off} {u} {u} {root}"));
    assert!(ok, "veritysetup verify: {out}");
    // A wrong root hash is refused.
    let wrong = format!("{}{}", &root[..63], if root.ends_with('0') { "1" } else { "0" });
    assert!(!sh_status(&format!("veritysetup verify --hash-offset={off} {u} {u} {wrong}")).0);
    // Flip one byte of the filesystem (in its first data block with content).
    sh(&format!("printf '\\x5a' | dd of={u} bs=1 seek=1100 conv=notrunc status=none"));
    let (ok, out) = sh_status(&format!("veritysetup verify --hash-offset={off} {u} {u} {root}"));
    assert!(!ok, "veritysetup accepted a flipped byte: {out}");
}

#[test]
fn rebuilds_with_the_same_seed_are_byte_identical() {
    let a = build("base", &[]);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let b = build("base", &[]);
    assert_same_bytes(&a.image, &b.image);
    let v = |x: &Built| {
        std::fs::read(x.image.with_file_name("flatcar_production_image_verity.txt")).unwrap()
    };
    assert_eq!(v(&a), v(&b));
    // A different seed changes the derived IDs (and so the bytes).
    let c = build("base", &["--seed", "other"]);
    assert!(compare_files(&a.image, &c.image).is_err(), "another seed gave the same bytes");
}

#[test]
fn overrides_replace_derived_ids() {
    let b = build(
        "base",
        &[
            "--part-uuid",
            "ROOT=11111111-2222-4333-8444-555555555555",
            "--fs-uuid",
            "ROOT=66666666-7777-4888-9999-aaaaaaaaaaaa",
            "--disk-guid",
            "12345678-1234-4234-8234-123456789abc",
        ],
    );
    let j = sfdisk_json(&b.image);
    assert_eq!(j["partitiontable"]["id"], "12345678-1234-4234-8234-123456789ABC");
    let root = j["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "ROOT")
        .unwrap()
        .clone();
    assert_eq!(root["uuid"], "11111111-2222-4333-8444-555555555555");
    let (s, _) = part(&b.image, 9);
    let blk = sh(&format!("dumpe2fs -h '{}?offset={}' 2>/dev/null", b.image.display(), s * 512));
    assert!(blk.contains("66666666-7777-4888-9999-aaaaaaaaaaaa"), "{blk}");
}

#[test]
#[ignore = "needs root (switches to uid 65534 with setpriv); `cargo xtask test` runs it as root"]
fn unprivileged_build_gives_the_same_bytes() {
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test switches users and needs root");
    let root_build = build("base", &[]);
    let tmp = open_tempdir();
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    sh(&format!("chown 65534:65534 {}", out.display()));
    let cmd = format!(
        "setpriv --reuid 65534 --regid 65534 --clear-groups env SOURCE_DATE_EPOCH=1700000000 HOME=/nonexistent {} build-image --platform generic --base {} --output-dir {}",
        cli_path().display(),
        root_build.payload.display(),
        out.display()
    );
    let (ok, log) = sh_status(&cmd);
    assert!(ok, "unprivileged build failed: {log}");
    let img = out.join(IMAGE);
    assert_eq!(sh(&format!("stat -c %u {}", img.display())).trim(), "65534");
    assert_same_bytes(&img, &root_build.image);
}

#[test]
fn too_small_a_partition_is_a_clear_error() {
    let tmp = open_tempdir();
    let payload = tmp.path().join("payload");
    make_payload(&payload);
    // A layout whose USR filesystem (16 blocks = 64 KiB) cannot hold the payload.
    let text = std::fs::read_to_string(repo().join("layouts/disk_layout.json"))
        .unwrap()
        .replace("\"fs_blocks\": \"260094\"", "\"fs_blocks\": \"16\"");
    let lf = tmp.path().join("small.json");
    std::fs::write(&lf, text).unwrap();
    let out = tmp.path().join("out");
    let o = cli(&[
        "build-image",
        "--base",
        payload.to_str().unwrap(),
        "--output-dir",
        out.to_str().unwrap(),
        "--layout-file",
        lf.to_str().unwrap(),
    ]);
    let err = stderr(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("partition 3 (USR-A, erofs)")
            && err.contains("gives the filesystem only 65536 B"),
        "{err}"
    );
    let left: Vec<_> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn inspect_reports_our_image_and_catches_corruption() {
    let b = build("vm", &[]);
    let o = cli(&["inspect", b.image.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: Value = serde_json::from_slice(&o.stdout).unwrap();
    let parts = j["partitions"].as_array().unwrap();
    let by = |l: &str| parts.iter().find(|p| p["label"] == l).unwrap().clone();
    assert_eq!(by("EFI-SYSTEM")["fs"]["type"], "vfat");
    assert_eq!(by("EFI-SYSTEM")["fs"]["label"], "EFI-SYSTEM");
    assert_eq!(by("ROOT")["fs"]["type"], "ext4");
    assert_eq!(by("ROOT")["sectors"], 12943360);
    assert_eq!(by("OEM")["fs"]["label"], "OEM");
    let usr = by("USR-A");
    assert_eq!(usr["fs"]["type"], "erofs");
    assert_eq!(
        usr["attributes_decoded"],
        serde_json::json!(["priority=1", "tries=0", "successful=1"])
    );
    assert_eq!(usr["type_name"], "Flatcar /usr (CoreOS usr)");
    assert_eq!(usr["verity"]["matches"], true);
    let side =
        std::fs::read_to_string(b.image.with_file_name("flatcar_production_image_verity.txt"))
            .unwrap();
    assert_eq!(usr["verity"]["computed_root_hash"], side.lines().next().unwrap());
    // blkid agrees on the filesystem UUIDs inspect reports.
    let (s, _) = part(&b.image, 9);
    let blk = sh(&format!("blkid -p -o value -s UUID -O {} {}", s * 512, b.image.display()));
    assert_eq!(blk.trim(), by("ROOT")["fs"]["uuid"].as_str().unwrap());
    // One flipped byte in USR-A: inspect reports the mismatch and fails.
    let (s, _) = part(&b.image, 3);
    sh(&format!(
        "printf '\\x5a' | dd of={} bs=1 seek={} conv=notrunc status=none",
        b.image.display(),
        s * 512 + 1100
    ));
    let o = cli(&["inspect", b.image.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("DOES NOT MATCH"));
    assert!(stderr(&o).contains("dm-verity root hash mismatch on USR-A"), "{}", stderr(&o));
}

#[test]
fn inspect_reads_an_image_made_by_other_tools() {
    let tmp = open_tempdir();
    let img = tmp.path().join("foreign.img");
    let i = img.display();
    sh(&format!(
        "truncate -s 300M {i}
         sfdisk -q {i} <<'END'
label: gpt
label-id: 0B8E2A1C-0000-4000-8000-000000000042
start=2048, size=131072, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=\"ESP\", uuid=AAAAAAAA-0000-4000-8000-000000000001
start=133120, size=204800, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=\"OEM\", uuid=AAAAAAAA-0000-4000-8000-000000000002, attrs=\"GUID:48,49,56\"
END
         mkfs.fat -F 32 -n FOREIGN -i 1234ABCD --offset 2048 {i} 65536 >/dev/null
         mkdir -p {d}/oem/sysext && printf 'ID=acme\\nNAME=Acme\\n' > {d}/oem/oem-release && echo x > {d}/oem/sysext/oem-acme-1.raw && echo 'set oem_id=\"acme\"' > {d}/oem/grub.cfg
         mkfs.ext4 -q -F -E offset={off} -L OEM -U 0b8e2a1c-1111-4000-8000-000000000003 -d {d}/oem {i} 25600",
        d = tmp.path().display(),
        off = 133120 * 512
    ));
    let o = cli(&["inspect", img.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["disk_guid"], "0b8e2a1c-0000-4000-8000-000000000042");
    let p = j["partitions"].as_array().unwrap();
    assert_eq!(p.len(), 2);
    assert_eq!(p[0]["number"], 1);
    assert_eq!(p[0]["first_sector"], 2048);
    assert_eq!(p[0]["fs"]["type"], "vfat");
    assert_eq!(p[0]["fs"]["label"], "FOREIGN");
    assert_eq!(p[0]["fs"]["uuid"], "1234-ABCD");
    assert_eq!(p[1]["uuid"], "aaaaaaaa-0000-4000-8000-000000000002");
    assert_eq!(
        p[1]["attributes_decoded"],
        serde_json::json!(["priority=3", "tries=0", "successful=1"])
    );
    assert_eq!(p[1]["fs"]["type"], "ext4");
    assert_eq!(p[1]["fs"]["uuid"], "0b8e2a1c-1111-4000-8000-000000000003");
    assert_eq!(j["oem"]["id"], "acme");
    assert_eq!(j["oem"]["sysexts"], serde_json::json!(["oem-acme-1.raw"]));
}
