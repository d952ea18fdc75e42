//! The arm64 Hetzner image from a synthetic arm64 payload, judged by real
//! tools (sfdisk, mtools, file, debugfs, fsck.erofs): the arm64 EFI loader
//! and no BIOS code, the extension's ARCHITECTURE, inspect's architecture;
//! and the builds that must be refused (another architecture's payload, a
//! platform without an arm64 build). The real arm64 image boots in
//! `cargo xtask boot-test` (qemu-system-aarch64), which `cargo xtask test` runs.

#[path = "support/lib.rs"]
mod support;
use std::path::Path;
use support::*;

const NAME: &str = "flatcar_production_hetzner_image.bin";

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

fn build(payload: &Path, out: &Path, arch: &str, platform: &str) -> std::process::Output {
    cli(&[
        "build-image",
        "--no-extensions",
        "--platform",
        platform,
        "--arch",
        arch,
        "--base",
        payload.to_str().unwrap(),
        "--keep-raw",
        "--output-dir",
        out.to_str().unwrap(),
    ])
}

#[test]
fn arm64_boot_chain_oem_extension_and_inspect() {
    let tmp = open_tempdir();
    let payload = tmp.path().join("payload");
    make_bootable_arm64_payload(&payload);
    let out = tmp.path().join("out");
    let o = build(&payload, &out, "arm64", "hetzner");
    assert!(o.status.success(), "build failed: {}", stderr(&o));
    let img = out.join(NAME);
    let i = img.display();
    let (ok, v) = sh_status(&format!("sfdisk --verify {i}"));
    assert!(ok && v.contains("No errors detected"), "{v}");

    // No BIOS code: the MBR's boot code area and BIOS-BOOT stay zero.
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(&img).unwrap();
    let mut mbr = vec![0u8; 512];
    f.read_exact_at(&mut mbr, 0).unwrap();
    assert!(mbr[..440].iter().all(|b| *b == 0), "boot code in the MBR");
    assert_eq!(mbr[450], 0xEE, "protective MBR entry");
    let (bios, bios_n) = part(&img, "BIOS-BOOT");
    let mut b = vec![0u8; (bios_n * 512) as usize];
    f.read_exact_at(&mut b, bios * 512).unwrap();
    assert!(b.iter().all(|x| *x == 0), "BIOS-BOOT holds data");

    // The ESP: GRUB for arm64-efi as the removable-media loader, no x86 one.
    let (s, n) = part(&img, "EFI-SYSTEM");
    let esp = tmp.path().join("esp.img");
    extract_partition(&img, s, n, &esp);
    let e = esp.display();
    let listing = sh(&format!("mdir -b -i {e} ::/EFI/boot"));
    assert!(listing.contains("bootaa64.efi") && !listing.contains("bootx64.efi"), "{listing}");
    let efi = tmp.path().join("bootaa64.efi");
    sh(&format!("mcopy -n -i {e} ::/EFI/boot/bootaa64.efi {}", efi.display()));
    let kind = sh(&format!("file -b {}", efi.display()));
    assert!(kind.contains("EFI application") && kind.contains("Aarch64"), "{kind}");
    let grub = sh(&format!("mtype -i {e} ::/flatcar/grub/grub.cfg"));
    assert!(grub.contains("console=ttyAMA0,115200n8 acpi=force"), "{grub}");

    // The OEM extension says arm64.
    let (s, _) = part(&img, "OEM");
    let t = format!("{i}?offset={}", s * 512);
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
    assert!(er.lines().any(|l| l == "ARCHITECTURE=arm64"), "{er}");

    // inspect reads the architecture from the loader and the kernel.
    let o = cli(&["inspect", i.to_string().as_str(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let a = &j["architecture"];
    assert_eq!(a["arch"], "arm64", "{a}");
    assert_eq!(a["efi_loaders"], serde_json::json!(["arm64"]), "{a}");
    assert_eq!(a["kernel"]["format"], "arm64 Image", "{a}");
    assert_eq!(a["kernel"]["release"], TEST_KERNEL_VERSION, "{a}");
    let text = cli(&["inspect", i.to_string().as_str()]);
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(
        text.contains("architecture: arm64 (EFI loader EFI/boot/bootaa64.efi; kernel arm64 Image"),
        "{text}"
    );
}

#[test]
fn a_payload_of_another_architecture_is_refused() {
    let tmp = open_tempdir();
    let amd = tmp.path().join("amd64");
    make_bootable_payload(&amd);
    let arm = tmp.path().join("arm64");
    make_bootable_arm64_payload(&arm);
    for (payload, arch, is) in [(&amd, "arm64", "amd64"), (&arm, "amd64", "arm64")] {
        let out = tmp.path().join(format!("out-{arch}"));
        let o = build(payload, &out, arch, "hetzner");
        let e = stderr(&o);
        assert!(!o.status.success(), "an {is} payload was built for {arch}");
        assert!(
            e.contains(&format!("payload {}: it is an {is} payload", payload.display()))
                && e.contains(&format!("but this build is for {arch}")),
            "{e}"
        );
        // Nothing under a final name.
        let left: Vec<String> = std::fs::read_dir(&out)
            .map(|d| {
                d.filter_map(|x| x.ok())
                    .map(|x| x.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        assert!(left.iter().all(|n| n.starts_with('.')), "{left:?}");
    }
}

#[test]
fn a_platform_without_an_arm64_build_says_so() {
    let tmp = open_tempdir();
    let arm = tmp.path().join("arm64");
    make_bootable_arm64_payload(&arm);
    let out = tmp.path().join("out");
    let o = build(&arm, &out, "arm64", "qemu");
    let e = stderr(&o);
    assert!(!o.status.success());
    assert!(
        e.contains("platform qemu has no arm64 build")
            && e.contains("oem/qemu/platform.json: architectures lists amd64"),
        "{e}"
    );
    assert!(!out.exists(), "the output directory was created before the check");
    let o = cli(&["build-image", "--platform", "hetzner", "--arch", "riscv64"]);
    assert!(stderr(&o).contains("unknown architecture 'riscv64'"), "{}", stderr(&o));
}

#[test]
fn debians_archive_has_the_arm64_standard_library_of_the_installed_rustc() {
    // What a cross toolchain without a dpkg database (the SDK container)
    // takes: the archive's libstd-rust-web-dev for arm64 is rustc-web's release.
    let rustc = sh("/usr/bin/rustc -vV");
    let release = rustc.lines().find_map(|l| l.strip_prefix("release: ")).unwrap().trim();
    let cache = forge::recipe::Cache { root: repo().join(".cache") };
    let v = forge::recipe::candidate_version(
        &cache,
        forge::arch::Arch::Arm64,
        "libstd-rust-web-dev",
        &|_| {},
    )
    .unwrap()
    .expect("libstd-rust-web-dev is in the arm64 archive");
    assert!(v.starts_with(&format!("{release}+")), "rustc {release}, libstd-rust-web-dev {v}");
    let none = forge::recipe::candidate_version(
        &cache,
        forge::arch::Arch::Arm64,
        "no-such-package-forge",
        &|_| {},
    )
    .unwrap();
    assert_eq!(none, None);
}
