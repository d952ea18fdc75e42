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
use forge_formats::gpt as fgpt;
use gpt::disk::LogicalBlockSize;
use gpt::header::HeaderBuilder;
use gpt::mbr::ProtectiveMBR;
use gpt::partition::Partition;
use std::fs::File;
use std::os::unix::fs::FileExt;
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
    /// Sectors covered (0 for a reversed entry).
    pub fn sectors(&self) -> u64 {
        if self.last_lba < self.first_lba {
            0
        } else {
            (self.last_lba - self.first_lba).saturating_add(1)
        }
    }

    /// Whether the entry covers sectors `first..=last` of a disk of
    /// `disk_sectors` (not reversed, not past the end): only then may its
    /// contents be read.
    pub fn on_disk(&self, disk_sectors: u64) -> bool {
        self.first_lba <= self.last_lba && self.last_lba < disk_sectors
    }
}

/// Which copy of the GPT a [`Table`] was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GptCopy {
    Primary,
    Backup,
}

#[derive(Clone, Debug)]
pub struct Table {
    pub disk_guid: Uuid,
    pub sector_size: u64,
    pub first_usable: u64,
    pub last_usable: u64,
    pub backup_lba: u64,
    pub entries: Vec<TableEntry>,
    /// The copy the entries come from (the backup when the primary is corrupt).
    pub source: GptCopy,
    /// Wrong but readable: a corrupt primary (the backup was used, as
    /// `sfdisk` does), a corrupt or misplaced backup.
    pub warnings: Vec<String>,
    /// Wrong in a way that makes partitions unusable: a truncated image,
    /// entries reversed, past the disk's end, outside the usable area or
    /// overlapping. Entries are listed anyway; readers skip the contents of
    /// those not [`TableEntry::on_disk`].
    pub errors: Vec<String>,
}

impl Table {
    /// Neither warnings nor errors.
    pub fn is_clean(&self) -> bool {
        self.warnings.is_empty() && self.errors.is_empty()
    }
}

const SECTOR: u64 = 512;

/// Reads and checks the GPT of an image file, whatever tool wrote it:
/// signatures, header and entry-array CRCs of both copies, the entries'
/// sectors. A corrupt primary falls back to the backup at the disk's last
/// sector (with a warning); both corrupt, or an image too short for its
/// primary's entry array, is an error. Entry sizes of 128 × 2^n are read.
pub fn read(image: &File) -> Result<Table> {
    read_with(image, true)
}

/// Like [`read`], but only the primary GPT: for a disk whose backup GPT is
/// not at its end (an image written to a larger disk, before the OS moves
/// the backup).
pub fn read_primary(image: &File) -> Result<Table> {
    read_with(image, false)
}

fn read_header(image: &File, lba: u64) -> Result<fgpt::Header> {
    let mut b = [0u8; SECTOR as usize];
    let at = lba.checked_mul(SECTOR).with_context(|| format!("sector {lba}"))?;
    image.read_exact_at(&mut b, at).with_context(|| format!("reading sector {lba}"))?;
    Ok(fgpt::Header::parse(&b, lba)?)
}

fn read_array(image: &File, h: &fgpt::Header, disk_sectors: u64) -> Result<Vec<u8>> {
    let sectors = h.array_sectors(SECTOR);
    if h.entries_lba.checked_add(sectors).is_none_or(|end| end > disk_sectors) {
        bail!(
            "the entry array (sectors {}, {sectors} of them) is past the end of the image ({disk_sectors} sectors): truncated",
            h.entries_lba
        );
    }
    // Bounded: Header::parse refuses arrays over fgpt::MAX_ARRAY_BYTES.
    let mut a = vec![0u8; h.array_bytes() as usize];
    image
        .read_exact_at(&mut a, h.entries_lba * SECTOR)
        .with_context(|| format!("reading the entry array at sector {}", h.entries_lba))?;
    h.check_array(&a)?;
    Ok(a)
}

/// One copy: header at `lba`, checked against the disk, and its array.
fn read_copy(image: &File, lba: u64, disk_sectors: u64) -> Result<(fgpt::Header, Vec<u8>)> {
    let h = read_header(image, lba)?;
    h.check_disk(disk_sectors, SECTOR)?;
    let a = read_array(image, &h, disk_sectors)?;
    Ok((h, a))
}

fn read_with(image: &File, check_backup: bool) -> Result<Table> {
    let size = image.metadata().context("stat")?.len();
    let sectors = size / SECTOR;
    if sectors < 3 {
        bail!("the image is truncated: {size} bytes cannot hold a GPT (header at byte 512, entries after it)");
    }
    let last = sectors - 1;
    let mut warnings = Vec::new();
    let mut errors = Vec::new();
    // A primary describing a larger disk means the image was cut short: its
    // entries are still read if they are in the file (those past the end
    // are flagged).
    let primary = read_header(image, 1).and_then(|h| {
        let truncated = h.check_disk(sectors, SECTOR).err().map(|e| e.to_string());
        let array = read_array(image, &h, sectors)?;
        Ok((h, array, truncated))
    });
    let (h, array, source) = match primary {
        Ok((h, array, truncated)) => {
            if let Some(t) = truncated {
                errors.push(format!(
                    "the image is truncated ({size} bytes, {sectors} sectors): the primary GPT: {t}"
                ));
            } else if check_backup {
                match read_copy(image, h.backup_lba, sectors) {
                    Err(e) => warnings.push(format!(
                        "the backup GPT (sector {}) is not valid: {e:#}",
                        h.backup_lba
                    )),
                    Ok((b, b_array)) => {
                        if b_array != array || b.disk_guid != h.disk_guid {
                            warnings.push(format!(
                                "the backup GPT (sector {}) differs from the primary",
                                h.backup_lba
                            ));
                        }
                    }
                }
                if h.backup_lba != last {
                    warnings.push(format!(
                        "the backup GPT is at sector {}, not at the disk's last sector {last}",
                        h.backup_lba
                    ));
                }
            }
            (h, array, GptCopy::Primary)
        }
        Err(p) if check_backup => match read_copy(image, last, sectors) {
            Ok((h, array)) => {
                warnings.push(format!(
                    "the primary GPT is not valid ({p:#}); read the backup GPT at sector {last}"
                ));
                (h, array, GptCopy::Backup)
            }
            Err(b) => {
                bail!("no valid GPT: primary (sector 1): {p:#}; backup (sector {last}): {b:#}")
            }
        },
        Err(p) => return Err(p.context("no valid primary GPT")),
    };
    let raw = h.entries(&array);
    errors.extend(fgpt::check_entries(&h, &raw, sectors));
    let entries = raw
        .into_iter()
        .map(|e| TableEntry {
            number: e.number,
            name: e.name,
            type_guid: Uuid::from_bytes_le(e.type_guid),
            uuid: Uuid::from_bytes_le(e.guid),
            first_lba: e.first_lba,
            last_lba: e.last_lba,
            attributes: e.attributes,
        })
        .collect();
    Ok(Table {
        disk_guid: Uuid::from_bytes_le(h.disk_guid),
        sector_size: SECTOR,
        first_usable: h.first_usable,
        last_usable: h.last_usable,
        backup_lba: h.backup_lba,
        entries,
        source,
        warnings,
        errors,
    })
}
