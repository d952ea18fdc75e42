//! GPT stage: protective MBR, primary and backup tables, written with the
//! `gpt` crate's header and entry primitives.
//!
//! `GptDisk::write` of gpt 4.1 packs used entries at the start of the array,
//! which would renumber partitions after a blank slot (Flatcar's ROOT must stay
//! partition 9 although 5 and 8 are blank). So entries are written at their
//! own index with `Partition::write_to_device`, and the crate's `Header`
//! computes both CRCs.

use crate::layout::DiskPlan;
use anyhow::{bail, Context, Result};
use gpt::disk::LogicalBlockSize;
use gpt::header::HeaderBuilder;
use gpt::mbr::ProtectiveMBR;
use gpt::partition::Partition;
use std::fs::File;
use uuid::Uuid;

/// GPT attribute bit 56: the slot booted successfully (ChromeOS/Flatcar A/B).
pub const ATTR_SUCCESSFUL: u64 = 1 << 56;
/// Bits 48–51: A/B boot priority.
pub fn attr_priority(p: u64) -> u64 {
    (p & 0xf) << 48
}
pub fn attr_priority_of(a: u64) -> u64 {
    (a >> 48) & 0xf
}
/// Bits 52–55: remaining boot tries.
pub fn attr_tries_of(a: u64) -> u64 {
    (a >> 52) & 0xf
}

/// Human-readable decoding of GPT attribute bits.
pub fn describe_attributes(a: u64) -> Vec<String> {
    let mut v = Vec::new();
    if a & 1 != 0 {
        v.push("required".to_string());
    }
    if a & 2 != 0 {
        v.push("no-block-io".to_string());
    }
    if a & 4 != 0 {
        v.push("legacy-bios-bootable".to_string());
    }
    if attr_priority_of(a) != 0 || attr_tries_of(a) != 0 || a & ATTR_SUCCESSFUL != 0 {
        v.push(format!("priority={}", attr_priority_of(a)));
        v.push(format!("tries={}", attr_tries_of(a)));
        v.push(format!("successful={}", (a & ATTR_SUCCESSFUL != 0) as u8));
    }
    let other = a & !(7 | (0xff << 48) | ATTR_SUCCESSFUL);
    if other != 0 {
        v.push(format!("other=0x{other:x}"));
    }
    v
}

fn lb(block_size: u64) -> Result<LogicalBlockSize> {
    Ok(match block_size {
        512 => LogicalBlockSize::Lb512,
        4096 => LogicalBlockSize::Lb4096,
        n => bail!("unsupported sector size {n}"),
    })
}

/// Writes the protective MBR and both GPT copies for `plan` into `image`
/// (which must already have the plan's full size).
pub fn write(image: &mut File, plan: &DiskPlan) -> Result<()> {
    let lbs = lb(plan.block_size)?;
    let last_lba = plan.total_blocks - 1;
    ProtectiveMBR::with_lb_size(u32::try_from(last_lba).unwrap_or(u32::MAX))
        .overwrite_lba0(image)
        .context("writing the protective MBR")?;
    let mut primary = HeaderBuilder::new()
        .disk_guid(plan.disk_guid)
        .backup_lba(last_lba)
        .num_parts(crate::layout::MAX_PARTITIONS)
        .primary(true)
        .build(lbs)
        .context("building the GPT header")?;
    let mut backup = HeaderBuilder::from_header(&primary).primary(false).build(lbs)?;
    for p in &plan.partitions {
        let entry = Partition {
            part_type_guid: gpt::partition_types::Type {
                guid: p.type_guid,
                os: gpt::partition_types::OperatingSystem::None,
            },
            part_guid: p.uuid,
            first_lba: p.first_block,
            last_lba: p.first_block + p.blocks - 1,
            flags: p.attributes,
            name: p.label.clone(),
        };
        for h in [&primary, &backup] {
            entry
                .write_to_device(image, u64::from(p.number - 1), h.part_start, lbs, h.part_size)
                .with_context(|| format!("writing GPT entry {}", p.number))?;
        }
    }
    backup.write_backup(image, lbs).context("writing the backup GPT header")?;
    primary.write_primary(image, lbs).context("writing the primary GPT header")?;
    Ok(())
}

/// A partition as read back from a disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableEntry {
    pub number: u32,
    pub name: String,
    pub type_guid: Uuid,
    pub uuid: Uuid,
    pub first_lba: u64,
    pub last_lba: u64,
    pub attributes: u64,
}

impl TableEntry {
    pub fn sectors(&self) -> u64 {
        self.last_lba - self.first_lba + 1
    }
}

#[derive(Clone, Debug)]
pub struct Table {
    pub disk_guid: Uuid,
    pub sector_size: u64,
    pub first_usable: u64,
    pub last_usable: u64,
    pub backup_lba: u64,
    pub entries: Vec<TableEntry>,
}

/// Reads and checks (signatures, both header CRCs, both entry-array CRCs) the
/// GPT of an image file, whatever tool wrote it.
pub fn read(image: &File) -> Result<Table> {
    read_with(image, true)
}

/// Like [`read`], but accepts a disk whose backup GPT is not at its end
/// (an image written to a larger disk, before the OS moves the backup).
pub fn read_primary(image: &File) -> Result<Table> {
    read_with(image, false)
}

fn read_with(image: &File, strict: bool) -> Result<Table> {
    let disk = gpt::GptConfig::new()
        .writable(false)
        .logical_block_size(LogicalBlockSize::Lb512)
        .only_valid_headers(strict)
        .open_from_device(image)
        .context(if strict {
            "no valid GPT (primary and backup headers and entry CRCs checked)"
        } else {
            "no valid primary GPT"
        })?;
    let h = disk.header();
    let entries: Vec<TableEntry> = disk
        .partitions()
        .iter()
        .map(|(n, p): (&u32, &Partition)| TableEntry {
            number: *n,
            name: p.name.clone(),
            type_guid: p.part_type_guid.guid,
            uuid: p.part_guid,
            first_lba: p.first_lba,
            last_lba: p.last_lba,
            attributes: p.flags,
        })
        .collect();
    Ok(Table {
        disk_guid: *disk.guid(),
        sector_size: 512,
        first_usable: h.first_usable,
        last_usable: h.last_usable,
        backup_lba: h.backup_lba,
        entries,
    })
}
