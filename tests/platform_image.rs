//! The Hetzner platform image from a synthetic payload, judged by real tools:
//! bzip2, md5sum/sha1sum/sha512sum, sfdisk, mtools, debugfs, fsck.erofs, cpio.
//! (The demo payload and the boots themselves are exercised by
//! `cargo xtask boot-test`, which `cargo xtask test` runs.)

#[path = "support/lib.rs"]
mod support;
use std::path::{Path, PathBuf};
use support::*;

const NAME: &str = "flatcar_production_hetzner_image.bin";

fn build(tmp: &Path, extra: &[&str]) -> (PathBuf, PathBuf) {
    let payload = tmp.join("payload");
    if !payload.exists() {
        make_bootable_payload(&payload);
    }
    let out = tmp.join("out");
    let mut args = vec![
        "build-image",
        "--no-extensions",
        "--platform",
        "hetzner",
        "--base",
        payload.to_str().unwrap(),
        "--output-dir",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let o = cli(&args);
    assert!(o.status.success(), "build failed: {}", stderr(&o));
    (payload, out)
}

fn part(image: &Path, label: &str) -> (u64, u64) {
    let j: serde_json::Value =
        serde_json::from_str(&sh(&format!("sfdisk --json {}", image.display()))).unwrap();
    let p = j["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == label)
        .unwrap()
        .clone();
    (p["start"].as_u64().unwrap(), p["size"].as_u64().unwrap())
}

#[test]
fn hetzner_artifacts_decompress_and_verify() {
    let tmp = open_tempdir();
    let (_, out) = build(tmp.path(), &["--keep-raw"]);
    let bz = out.join(format!("{NAME}.bz2"));
    let raw = out.join(NAME);
    // Stock bzip2 accepts it (the pipeline fails on bzip2's exit status:
    // `sh` runs with pipefail), and Hetzner's uploader pipeline restores the
    // exact image.
    let restored = tmp.path().join("restored.bin");
    sh(&format!(
        "bzip2 -cd {} | dd of={} bs=4M conv=sparse status=none",
        bz.display(),
        restored.display()
    ));
    sh(&format!("truncate -s $(stat -c %s {}) {}", raw.display(), restored.display()));
    assert_same_bytes(&restored, &raw);
    assert_eq!(std::fs::metadata(&raw).unwrap().len(), 25804800 * 512, "layout vm");
    // DIGESTS: upstream's layout, checked by coreutils.
    let digests = std::fs::read_to_string(out.join(format!("{NAME}.bz2.DIGESTS"))).unwrap();
    let lines: Vec<&str> = digests.lines().collect();
    assert_eq!(lines[0], "# MD5 HASH");
    assert_eq!(lines[2], "# SHA1 HASH");
    assert_eq!(lines[4], "# SHA512 HASH");
    for (i, tool) in [(1, "md5sum"), (3, "sha1sum"), (5, "sha512sum")] {
        assert!(lines[i].ends_with(&format!("  {NAME}.bz2")));
        sh(&format!("cd {} && echo '{}' | {tool} -c --quiet", out.display(), lines[i]));
    }
    let version = std::fs::read_to_string(out.join("version.txt")).unwrap();
    for k in [
        "FLATCAR_BUILD=1",
        "FLATCAR_BRANCH=2",
        "FLATCAR_PATCH=3",
        "FLATCAR_VERSION=1.2.3",
        "FLATCAR_VERSION_ID=1.2.3",
        "FLATCAR_BUILD_ID=",
        "FLATCAR_SDK_VERSION=",
    ] {
        assert!(version.lines().any(|l| l.starts_with(k)), "version.txt lacks {k}: {version}");
    }
}

#[test]
fn hetzner_boot_chain_and_oem_partition() {
    let tmp = open_tempdir();
    let (_, out) = build(tmp.path(), &["--keep-raw"]);
    let img = out.join(NAME);
    let i = img.display();
    let (verify_ok, v) = sh_status(&format!("sfdisk --verify {i}"));
    assert!(verify_ok && v.contains("No errors detected"), "{v}");

    // BIOS: boot.img in the MBR, pointing at core.img in BIOS-BOOT; table kept.
    let mut head = vec![0u8; 512];
    use std::io::Read;
    std::fs::File::open(&img).unwrap().read_exact(&mut head).unwrap();
    let boot = std::fs::read("/usr/lib/grub/i386-pc/boot.img").unwrap();
    assert_eq!(head[..3], boot[..3], "boot.img jump");
    assert_eq!(head[0x5a..0x5c], boot[0x5a..0x5c]);
    assert_eq!(head[0x68..440], boot[0x68..440], "boot.img code");
    let (bios_start, _) = part(&img, "BIOS-BOOT");
    assert_eq!(bios_start, 2101248);
    assert_eq!(
        u64::from_le_bytes(head[0x5c..0x64].try_into().unwrap()),
        bios_start,
        "kernel sector"
    );
    assert_eq!(&head[0x66..0x68], &[0x90, 0x90]);
    assert_eq!(head[450], 0xEE, "protective MBR entry kept");
    assert_eq!(&head[510..512], &[0x55, 0xAA]);
    let mut core = vec![0u8; 512];
    use std::os::unix::fs::FileExt;
    std::fs::File::open(&img).unwrap().read_exact_at(&mut core, bios_start * 512).unwrap();
    let diskboot = std::fs::read("/usr/lib/grub/i386-pc/diskboot.img").unwrap();
    assert_eq!(core[..0x100], diskboot[..0x100], "core.img starts with diskboot.img");
    assert_eq!(
        u64::from_le_bytes(core[0x1f4..0x1fc].try_into().unwrap()),
        bios_start + 1,
        "block list start"
    );
    assert!(u16::from_le_bytes(core[0x1fc..0x1fe].try_into().unwrap()) > 10, "block list length");

    // ESP, read with mtools.
    let (s, n) = part(&img, "EFI-SYSTEM");
    let esp = tmp.path().join("esp.img");
    extract_partition(&img, s, n, &esp);
    let (ok, o) = sh_status(&format!("fsck.fat -n {}", esp.display()));
    assert!(ok, "{o}");
    let e = esp.display();
    let efi = tmp.path().join("bootx64.efi");
    sh(&format!("mcopy -n -i {e} ::/EFI/boot/bootx64.efi {}", efi.display()));
    assert_eq!(&std::fs::read(&efi).unwrap()[..2], b"MZ", "a PE image");
    let grub = sh(&format!("mtype -i {e} ::/flatcar/grub/grub.cfg"));
    assert!(
        grub.contains("7130c94a-213a-4e5a-8e26-6cce9662f132")
            && grub.contains("e03dd35c-7c2d-4a47-b3fe-27f15780a57c"),
        "{grub}"
    );
    assert!(
        grub.contains("flatcar.oem.id=$oem_id")
            && grub.contains("flatcar.first_boot=detected")
            && grub.contains("search --no-floppy --set oem --label OEM")
    );
    assert!(sh(&format!("mdir -b -i {e} ::/flatcar")).contains("first_boot"));
    let initrd = tmp.path().join("initrd");
    sh(&format!("mcopy -n -i {e} ::/flatcar/initrd-a {}", initrd.display()));
    let cpio = sh(&format!("cpio -it --quiet < {}", initrd.display()));
    for f in [
        "init",
        "dev/console",
        "etc/forge-init/modules",
        "etc/forge-init/udhcpc.script",
        &format!("usr/lib/modules/{TEST_KERNEL_VERSION}/kernel/drivers/dm-verity.ko"),
        &format!("usr/lib/modules/{TEST_KERNEL_VERSION}/kernel/drivers/dm-mod.ko"),
    ] {
        assert!(cpio.lines().any(|l| l == f), "initramfs lacks {f}: {cpio}");
    }
    // Merged /usr: on the first boot the image's /usr is bound over usr/.
    let listing = sh(&format!("cpio -itv --quiet < {}", initrd.display()));
    for l in ["bin", "sbin", "lib", "lib64"] {
        assert!(
            listing.lines().any(|x| x.starts_with('l') && x.ends_with(&format!(" {l} -> usr/{l}"))),
            "initramfs: {l} is not a link to usr/{l}: {listing}"
        );
    }

    // OEM partition, read with debugfs; the sysext image with fsck.erofs.
    let (s, _) = part(&img, "OEM");
    let t = format!("{i}?offset={}", s * 512);
    let dbg = |cmd: &str| sh(&format!("debugfs -R '{cmd}' '{t}' 2>/dev/null"));
    assert_eq!(
        dbg("cat /grub.cfg").lines().find(|l| !l.starts_with('#')).unwrap(),
        "set oem_id=\"hetzner\""
    );
    let rel = dbg("cat /oem-release");
    assert!(
        rel.contains("ID=hetzner\n")
            && rel.contains("NAME=\"Hetzner Cloud\"")
            && rel.contains("VERSION_ID=1.2.3"),
        "{rel}"
    );
    let ls = dbg("ls -p /sysext");
    assert!(ls.contains("/oem-hetzner-1.2.3.raw/") && ls.contains("/active-oem-hetzner/"), "{ls}");
    let raw = tmp.path().join("oem.raw");
    sh(&format!(
        "debugfs -R 'dump /sysext/oem-hetzner-1.2.3.raw {}' '{t}' 2>/dev/null",
        raw.display()
    ));
    let x = tmp.path().join("sysext");
    sh(&format!("fsck.erofs --extract={} {}", x.display(), raw.display()));
    let er = std::fs::read_to_string(
        x.join("usr/lib/extension-release.d/extension-release.oem-hetzner"),
    )
    .unwrap();
    for l in [
        "ID=testos",
        "VERSION_ID=1.2.3",
        "ARCHITECTURE=x86-64",
        "SYSEXT_ID=oem-hetzner",
        "SYSEXT_VERSION_ID=1.2.3",
        "EXTENSION_RELOAD_MANAGER=1",
    ] {
        assert!(er.lines().any(|x| x == l), "extension-release lacks {l}: {er}");
    }
    assert!(er.contains("SYSEXT_NAME="));
    // Built with --no-extensions (the payload has no package list): the
    // recipe's overlay (sysext/oem-hetzner/overlay) without its packages.
    assert!(x.join("usr/libexec/oem-hetzner/network-config").is_file());
    assert!(x.join("usr/lib/udev/rules.d/80-hetzner-volume.rules").is_file());
    assert_eq!(
        std::fs::read_link(x.join(
            "usr/lib/systemd/system/network-online.target.wants/oem-hetzner-network.service"
        ))
        .unwrap(),
        std::path::Path::new("../oem-hetzner-network.service")
    );
    assert!(!x.join("usr/sbin/qemu-ga").exists());

    // inspect sees the OEM ID and the sysext.
    let o = cli(&["inspect", i.to_string().as_str(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["oem"]["id"], "hetzner");
    assert_eq!(j["architecture"]["arch"], "amd64");
    assert_eq!(j["architecture"]["efi_loaders"], serde_json::json!(["amd64"]));
    assert_eq!(j["architecture"]["kernel"]["format"], "x86 bzImage");
    assert!(j["oem"]["sysexts"].as_array().unwrap().iter().any(|s| s == "oem-hetzner-1.2.3.raw"));
}

#[test]
fn platform_builds_are_reproducible_and_leave_no_raw() {
    let tmp = open_tempdir();
    let (payload, out) = build(tmp.path(), &[]);
    assert!(!out.join(NAME).exists(), "the raw image is removed unless --keep-raw");
    let out2 = tmp.path().join("out2");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let o = cli(&[
        "build-image",
        "--no-extensions",
        "--platform",
        "hetzner",
        "--base",
        payload.to_str().unwrap(),
        "--output-dir",
        out2.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    for f in [format!("{NAME}.bz2"), format!("{NAME}.bz2.DIGESTS"), "version.txt".into()] {
        assert_eq!(
            sha256_file(&out.join(&f)),
            sha256_file(&out2.join(&f)),
            "{f} differs between builds"
        );
    }
}

#[test]
fn qemu_platform_writes_a_qcow2_that_qemu_img_accepts() {
    let tmp = open_tempdir();
    let payload = tmp.path().join("payload");
    make_bootable_payload(&payload);
    let out = tmp.path().join("out");
    let o = cli(&[
        "build-image",
        "--no-extensions",
        "--platform",
        "qemu",
        "--base",
        payload.to_str().unwrap(),
        "--output-dir",
        out.to_str().unwrap(),
        "--keep-raw",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let q = out.join("flatcar_production_qemu_image.img");
    let info = sh(&format!("qemu-img info --output=json {}", q.display()));
    let j: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(j["format"], "qcow2");
    assert_eq!(j["virtual-size"], 25804800u64 * 512);
    let (ok, o) = sh_status(&format!("qemu-img check {}", q.display()));
    assert!(ok && o.contains("No errors were found"), "{o}");
    // Only allocated clusters are stored: the file is far smaller than the disk.
    assert!(std::fs::metadata(&q).unwrap().len() < 200 << 20);
    // The OEM grub.cfg carries the platform's settings.
    let conv = tmp.path().join("back.raw");
    sh(&format!("qemu-img convert -f qcow2 -O raw {} {}", q.display(), conv.display()));
    let (s, _) = part(&conv, "OEM");
    let g = sh(&format!(
        "debugfs -R 'cat /grub.cfg' '{}?offset={}' 2>/dev/null",
        conv.display(),
        s * 512
    ));
    assert!(
        g.contains("set oem_id=\"qemu\"")
            && g.contains(
                "set linux_append=\"flatcar.autologin forge.userdata=fw_cfg:opt/org.flatcar-linux/config\""
            ),
        "{g}"
    );
    let digests =
        std::fs::read_to_string(out.join("flatcar_production_qemu_image.img.DIGESTS")).unwrap();
    sh(&format!(
        "cd {} && echo '{}' | sha512sum -c --quiet",
        out.display(),
        digests.lines().nth(5).unwrap()
    ));
}
