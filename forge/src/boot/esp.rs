//! What goes on the EFI system partition (the partition mounted at `/boot`):
//! slot A's kernel and initramfs, the main `grub.cfg` rendered from the
//! template, GRUB's EFI loader (`bootx64.efi`, `bootaa64.efi`), the `first_boot` flag, and one GRUB
//! fragment per verity-protected slot carrying its dm-verity parameters.

use super::grub::{self, ConfigContext, Slot};
use super::BootConfig;
use crate::fs::tree::{Dir, Source};
use crate::layout::{self, DiskPlan};
use crate::payload::Payload;
use crate::verity::{ProtectedPartition, VerityInfo};
use anyhow::Result;

/// Everything the ESP's contents derive from: plain data in.
pub struct EspInput<'a> {
    pub plan: &'a DiskPlan,
    pub payload: &'a Payload,
    /// The boot chain; None for a disk without one (the payload's own
    /// initrd, if any, goes on the ESP instead).
    pub boot: Option<&'a BootConfig>,
    /// The verity-protected partitions, already built.
    pub verity: &'a [ProtectedPartition],
    /// Extra files (`/`-separated paths).
    pub extra: &'a [(String, Source)],
}

/// The GRUB fragment on the ESP that carries one slot's verity parameters.
pub fn verity_cfg_path(slot: &str) -> String {
    format!("flatcar/verity-{slot}.cfg")
}

pub fn verity_cfg(info: &VerityInfo) -> String {
    format!(
        "# dm-verity parameters of this slot's /usr, written by the image build\nset verity_usrhash=\"{}\"\nset verity_usrsalt=\"{}\"\nset verity_usrdatablocks=\"{}\"\nset verity_usrhashoffset=\"{}\"\n",
        info.root_hex(),
        info.salt_hex(),
        info.data_blocks,
        info.hash_offset
    )
}

/// The A/B slots of `/usr` as the main config sees them: the partitions
/// mounted at `/usr` and those of the `flatcar-rootfs` type, with a slot letter.
pub fn slots(plan: &DiskPlan) -> Vec<Slot> {
    plan.partitions
        .iter()
        .filter(|q| {
            q.mount.as_deref() == Some("/usr")
                || Some(q.type_guid) == layout::type_guid("flatcar-rootfs")
        })
        .filter_map(|q| q.slot().map(|letter| Slot { letter, partuuid: q.uuid.to_string() }))
        .collect()
}

/// The ESP's file tree.
pub fn contents(input: &EspInput) -> Result<Dir> {
    let mut t = Dir::new();
    t.add_file("flatcar/vmlinuz-a", Source::Bytes(input.payload.kernel.clone()))?;
    match (input.boot, &input.payload.initrd) {
        (Some(b), _) => t.add_file("flatcar/initrd-a", Source::Bytes(b.initramfs.clone()))?,
        (None, Some(i)) => t.add_file("flatcar/initrd-a", Source::Bytes(i.clone()))?,
        (None, None) => {}
    }
    if let Some(b) = input.boot {
        let ctx = ConfigContext::flatcar(&b.os_name, input.plan.fs_label("/")?, slots(input.plan));
        t.add_file(
            "flatcar/grub/grub.cfg",
            Source::Bytes(grub::render_config(&b.template, &ctx)?.into_bytes()),
        )?;
        if let Some(efi) = &b.grub.efi {
            t.add_file(efi.path, Source::Bytes(efi.bytes.clone()))?;
        }
        t.add_file("flatcar/first_boot", Source::Bytes(Vec::new()))?;
    }
    for v in input.verity {
        t.add_file(&verity_cfg_path(&v.slot), Source::Bytes(verity_cfg(&v.info).into_bytes()))?;
    }
    for (path, src) in input.extra {
        t.add_file(path, src.clone())?;
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::grub::Images;
    use crate::fs::tree::Node;
    use crate::layout::{IdPolicy, LayoutFile};
    use std::path::Path;

    fn get<'a>(d: &'a Dir, path: &str) -> Option<&'a Source> {
        let (dirs, name) = path.rsplit_once('/').unwrap_or(("", path));
        let mut d = d;
        for c in dirs.split('/').filter(|c| !c.is_empty()) {
            match d.entries.get(c)? {
                Node::Dir(sub) => d = sub,
                _ => return None,
            }
        }
        match d.entries.get(name)? {
            Node::File { source, .. } => Some(source),
            _ => None,
        }
    }

    fn bytes(d: &Dir, path: &str) -> Vec<u8> {
        match get(d, path).unwrap_or_else(|| panic!("{path} missing")) {
            Source::Bytes(b) => b.clone(),
            Source::File(p) => std::fs::read(p).unwrap(),
        }
    }

    fn payload(dir: &Path, initrd: bool) -> Payload {
        std::fs::create_dir_all(dir.join("usr/lib")).unwrap();
        std::fs::create_dir_all(dir.join("usr/boot")).unwrap();
        std::fs::write(dir.join("usr/lib/os-release"), "ID=test\n").unwrap();
        std::fs::write(dir.join("usr/boot/vmlinuz"), b"kernel").unwrap();
        if initrd {
            std::fs::write(dir.join("usr/boot/initrd.img"), b"payload-initrd").unwrap();
        }
        Payload::open(dir).unwrap()
    }

    fn plan() -> DiskPlan {
        let f = Path::new(env!("CARGO_MANIFEST_DIR")).join("../layouts/disk_layout.json");
        LayoutFile::load(&f).unwrap().plan("vm", &IdPolicy::default()).unwrap()
    }

    fn info(root: u8) -> VerityInfo {
        VerityInfo {
            root_hash: [root; 32],
            salt: [7; 32],
            data_blocks: 1000,
            data_block_size: 4096,
            hash_block_size: 4096,
            hash_offset: 4096000,
            hash_bytes: 40960,
            uuid: uuid::Uuid::nil(),
        }
    }

    #[test]
    fn boot_chain_files_and_verity_fragments() {
        let d = tempfile::tempdir().unwrap();
        let payload = payload(d.path(), true);
        let plan = plan();
        let boot = BootConfig {
            grub: std::sync::Arc::new(Images {
                bios: Some(crate::boot::grub::BiosImages {
                    boot_img: vec![0; 512],
                    core_img: vec![1; 1024],
                }),
                efi: Some(crate::boot::grub::EfiImage {
                    path: "EFI/boot/bootx64.efi",
                    bytes: b"efi-binary".to_vec(),
                }),
            }),
            template: "{{ os_name }}|{{ base_args }}|{% for s in slots %}{{ s.letter }}={{ s.partuuid }};{% endfor %}".into(),
            os_name: "Test OS".into(),
            initramfs: b"forge-initramfs".to_vec(),
        };
        let verity = [ProtectedPartition { number: 3, slot: "a".into(), info: info(0xab) }];
        let extra = [("extra/file".to_string(), Source::Bytes(b"x".to_vec()))];
        let t = contents(&EspInput {
            plan: &plan,
            payload: &payload,
            boot: Some(&boot),
            verity: &verity,
            extra: &extra,
        })
        .unwrap();
        assert_eq!(bytes(&t, "flatcar/vmlinuz-a"), b"kernel");
        // The boot chain's initramfs wins over the payload's.
        assert_eq!(bytes(&t, "flatcar/initrd-a"), b"forge-initramfs");
        assert_eq!(bytes(&t, "EFI/boot/bootx64.efi"), b"efi-binary");
        assert_eq!(bytes(&t, "flatcar/first_boot"), b"");
        assert_eq!(bytes(&t, "extra/file"), b"x");
        let cfg = String::from_utf8(bytes(&t, "flatcar/grub/grub.cfg")).unwrap();
        let usr_a = plan.by_mount("/usr").unwrap();
        let usr_b = plan.by_label("USR-B").unwrap();
        let root = plan.fs_label("/").unwrap();
        assert!(cfg.starts_with("Test OS|"), "{cfg}");
        assert!(cfg.contains(&format!("root=LABEL={root}|")), "{cfg}");
        assert!(cfg.ends_with(&format!("a={};b={};", usr_a.uuid, usr_b.uuid)), "{cfg}");
        let v = String::from_utf8(bytes(&t, "flatcar/verity-a.cfg")).unwrap();
        assert!(v.contains(&format!("set verity_usrhash=\"{}\"", "ab".repeat(32))), "{v}");
        assert!(v.contains("set verity_usrhashoffset=\"4096000\""), "{v}");
        assert!(get(&t, "flatcar/verity-b.cfg").is_none());
    }

    #[test]
    fn without_a_boot_chain_only_the_payloads_kernel_and_initrd() {
        let d = tempfile::tempdir().unwrap();
        let payload = payload(d.path(), true);
        let plan = plan();
        let t = contents(&EspInput {
            plan: &plan,
            payload: &payload,
            boot: None,
            verity: &[],
            extra: &[],
        })
        .unwrap();
        assert_eq!(bytes(&t, "flatcar/initrd-a"), b"payload-initrd");
        assert_eq!(t.entries.len(), 1, "only flatcar/: {:?}", t.entries.keys());
        assert!(get(&t, "flatcar/grub/grub.cfg").is_none());
        assert!(get(&t, "flatcar/first_boot").is_none());
    }

    #[test]
    fn slots_come_from_the_plan() {
        let plan = plan();
        let s = slots(&plan);
        let letters: Vec<&str> = s.iter().map(|s| s.letter.as_str()).collect();
        assert_eq!(letters, ["a", "b"]);
        assert_eq!(s[0].partuuid, plan.by_mount("/usr").unwrap().uuid.to_string());
    }
}
