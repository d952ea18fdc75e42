//! Disk layouts in upstream Flatcar's `disk_layout.json` schema.
//!
//! A file holds `metadata` (sector size, filesystem block size, partition and
//! disk alignment) and named `layouts`; every layout other than `base`
//! inherits `base` partition by partition and key by key, as upstream does.
//! Numbers may be JSON strings (upstream style) or integers.
//!
//! Extensions over upstream, all optional: `fs_type` may be `erofs`;
//! a partition may pin `first_block` (checked for alignment and overlap) and
//! `fs_uuid`; a layout may pin its whole-disk size with `"disk_blocks"`.
//!
//! [`LayoutFile::plan`] turns one layout into a [`DiskPlan`]: every partition
//! placed, sized, typed and identified. Every error names the file, the layout
//! and the partition.

use crate::seed::Seed;
use anyhow::{anyhow, bail, Context, Result};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use uuid::Uuid;

/// Sectors reserved for each copy of the GPT (header + 128 entries).
pub const GPT_RESERVED_SECTORS: u64 = 34;
/// Upstream's placeholder disk GUID, randomized by the OS on first boot.
pub const PLACEHOLDER_DISK_GUID: Uuid = Uuid::from_u128(1);
/// Maximum partition number in a 128-entry GPT.
pub const MAX_PARTITIONS: u32 = 128;
/// The largest disk a layout may describe, in bytes: every byte offset in
/// an image must be a file offset (`off_t`, signed 64 bits). A plan keeps
/// all its sizes and offsets at or below this, so products of sectors and
/// sector sizes, and sums of two offsets, cannot overflow `u64`.
pub const MAX_DISK_BYTES: u64 = i64::MAX as u64;
/// Sector sizes a GPT is written with (`table::write`).
pub const SECTOR_SIZES: [u64; 2] = [512, 4096];

/// Partition type names accepted in `type`, with their GPT type GUIDs
/// (the names upstream's `cgpt` understands).
pub const PARTITION_TYPES: &[(&str, &str, &str)] = &[
    ("efi", "c12a7328-f81f-11d2-ba4b-00a0c93ec93b", "EFI System"),
    ("bios", "21686148-6449-6e6f-744e-656564454649", "BIOS boot"),
    ("flatcar-rootfs", "5dfbf5f4-2848-4bac-aa5e-0d9a20b745a6", "Flatcar /usr (CoreOS usr)"),
    ("flatcar-usr", "5dfbf5f4-2848-4bac-aa5e-0d9a20b745a6", "Flatcar /usr (CoreOS usr)"),
    ("data", "0fc63daf-8483-4772-8e79-3d69d8477de4", "Linux filesystem data"),
    (
        "flatcar-reserved",
        "c95dc21a-df0e-4340-8d7b-26cbfa9a03e0",
        "Flatcar reserved (CoreOS reserved)",
    ),
    ("flatcar-resize", "3884dd41-8582-4404-b9a8-e9b84f2df50e", "Flatcar root (CoreOS resize)"),
];

/// Human name of a GPT type GUID, if known.
pub fn type_name(guid: &Uuid) -> Option<&'static str> {
    PARTITION_TYPES
        .iter()
        .find(|(_, g, _)| Uuid::parse_str(g).ok().as_ref() == Some(guid))
        .map(|(_, _, n)| *n)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FsKind {
    Vfat,
    Ext2,
    Ext4,
    Btrfs,
    Erofs,
}

impl FsKind {
    pub fn parse(s: &str) -> Option<FsKind> {
        Some(match s {
            "vfat" => FsKind::Vfat,
            "ext2" => FsKind::Ext2,
            "ext4" => FsKind::Ext4,
            "btrfs" => FsKind::Btrfs,
            "erofs" => FsKind::Erofs,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            FsKind::Vfat => "vfat",
            FsKind::Ext2 => "ext2",
            FsKind::Ext4 => "ext4",
            FsKind::Btrfs => "btrfs",
            FsKind::Erofs => "erofs",
        }
    }
    fn max_label(self) -> Option<usize> {
        match self {
            FsKind::Vfat => Some(11),
            FsKind::Ext2 | FsKind::Ext4 => Some(16),
            FsKind::Btrfs => Some(255),
            // erofs-utils 1.5 (Debian bookworm) has no option to set a label.
            FsKind::Erofs => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feature {
    /// Give the partition an A/B boot priority (GPT attribute bits 48–51) and
    /// mark it successful (bit 56).
    Prioritize,
    /// Append a dm-verity hash tree right after the filesystem.
    Verity,
}

/// A filesystem to build inside a partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsPlan {
    pub kind: FsKind,
    pub label: Option<String>,
    pub uuid: Uuid,
    pub block_size: u64,
    /// Filesystem size in `block_size` units (the verity tree goes after it).
    pub blocks: u64,
    pub compression: Option<String>,
    pub bytes_per_inode: Option<u64>,
    pub inode_size: Option<u64>,
}

impl FsPlan {
    pub fn bytes(&self) -> u64 {
        bytes(self.blocks, self.block_size)
    }
}

/// `n` units of `unit` bytes. [`LayoutFile::plan`] refuses every layout
/// whose byte counts exceed [`MAX_DISK_BYTES`], so for a plan it made this
/// cannot overflow; a hand-made plan that does stops here rather than wrap
/// around into a wrong offset.
fn bytes(n: u64, unit: u64) -> u64 {
    n.checked_mul(unit)
        .unwrap_or_else(|| panic!("{n} × {unit} B overflows: not a plan from LayoutFile::plan"))
}

/// One partition placed on the disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionPlan {
    pub number: u32,
    pub label: String,
    pub type_guid: Uuid,
    pub uuid: Uuid,
    pub first_block: u64,
    pub blocks: u64,
    /// GPT attribute bits.
    pub attributes: u64,
    pub features: Vec<Feature>,
    pub mount: Option<String>,
    pub fs: Option<FsPlan>,
}

impl PartitionPlan {
    /// Slot letter of an A/B partition from its label (`USR-A` → `a`).
    pub fn slot(&self) -> Option<String> {
        let (head, tail) = self.label.rsplit_once('-')?;
        (!head.is_empty() && tail.len() == 1 && tail.chars().all(|c| c.is_ascii_alphabetic()))
            .then(|| tail.to_ascii_lowercase())
    }
    pub fn has(&self, f: Feature) -> bool {
        self.features.contains(&f)
    }
}

/// A layout resolved into absolute positions: everything the GPT and
/// filesystem stages need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskPlan {
    pub source: PathBuf,
    pub layout: String,
    pub block_size: u64,
    pub total_blocks: u64,
    pub disk_guid: Uuid,
    pub partitions: Vec<PartitionPlan>,
}

impl DiskPlan {
    pub fn total_bytes(&self) -> u64 {
        bytes(self.total_blocks, self.block_size)
    }
    pub fn by_label(&self, label: &str) -> Option<&PartitionPlan> {
        self.partitions.iter().find(|p| p.label == label)
    }
    pub fn by_mount(&self, mount: &str) -> Option<&PartitionPlan> {
        self.partitions.iter().find(|p| p.mount.as_deref() == Some(mount))
    }
    /// The filesystem label of the partition mounted at `mount` (e.g. the
    /// ESP's, which GRUB searches for); an error names the layout.
    pub fn fs_label(&self, mount: &str) -> Result<&str> {
        let p = self.by_mount(mount).ok_or_else(|| {
            anyhow!(
                "layout '{}' ({}): no partition is mounted at {mount}",
                self.layout,
                self.source.display()
            )
        })?;
        p.fs.as_ref().and_then(|f| f.label.as_deref()).ok_or_else(|| {
            anyhow!(
                "layout '{}' ({}): partition {} ({}, mounted at {mount}) needs a filesystem label (fs_label)",
                self.layout,
                self.source.display(),
                p.number,
                p.label
            )
        })
    }
    pub fn offset(&self, p: &PartitionPlan) -> u64 {
        bytes(p.first_block, self.block_size)
    }
    pub fn size(&self, p: &PartitionPlan) -> u64 {
        bytes(p.blocks, self.block_size)
    }
}

/// Where identifiers come from: the seed, unless overridden.
#[derive(Clone, Debug, Default)]
pub struct IdPolicy {
    pub seed: Seed,
    /// Partition GUID overrides, by partition label.
    pub partition_uuids: BTreeMap<String, Uuid>,
    /// Filesystem UUID overrides, by partition label.
    pub fs_uuids: BTreeMap<String, Uuid>,
    /// Disk GUID override (default: upstream's placeholder).
    pub disk_guid: Option<Uuid>,
}

// ---------------------------------------------------------------------------
// Raw schema

/// A JSON object kept as ordered pairs, so duplicate keys can be reported
/// (serde_json would silently keep the last one).
#[derive(Debug)]
struct Pairs<V>(Vec<(String, V)>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Pairs<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V2<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for V2<V> {
            type Value = Pairs<V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut v = Vec::new();
                while let Some((k, val)) = m.next_entry::<String, V>()? {
                    v.push((k, val));
                }
                Ok(Pairs(v))
            }
        }
        d.deserialize_map(V2(PhantomData))
    }
}

/// A value inside a layout: an object kept as pairs (a partition, so its
/// duplicate keys can be reported), or anything else.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Entry {
    Object(Pairs<Value>),
    Other(Value),
}

impl Entry {
    fn into_value(self) -> Value {
        match self {
            Entry::Object(p) => Value::Object(p.0.into_iter().collect()),
            Entry::Other(v) => v,
        }
    }
}

/// A non-negative integer given as a JSON number or a decimal string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Num(u64);

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::Number(n) => n
                .as_u64()
                .map(Num)
                .ok_or_else(|| de::Error::custom(format!("{n} is not a non-negative integer"))),
            Value::String(s) => {
                s.trim().parse::<u64>().map(Num).map_err(|_| {
                    de::Error::custom(format!("\"{s}\" is not a non-negative integer"))
                })
            }
            other => Err(de::Error::custom(format!("{other} is not a number"))),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(rename = "_comment")]
    _comment: Option<Value>,
    metadata: Option<RawMetadata>,
    layouts: Option<Pairs<Pairs<Entry>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetadata {
    #[serde(rename = "_comment")]
    _comment: Option<Value>,
    part_alignment: Num,
    disk_alignment: Num,
    block_size: Num,
    fs_block_size: Num,
}

#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPart {
    #[serde(rename = "_comment")]
    _comment: Option<Value>,
    label: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    blocks: Option<Num>,
    block_size: Option<Num>,
    first_block: Option<Num>,
    part_alignment: Option<Num>,
    uuid: Option<String>,
    features: Option<Vec<String>>,
    mount: Option<String>,
    binds: Option<Value>,
    extract_blocks: Option<Num>,
    fs_type: Option<String>,
    fs_label: Option<String>,
    fs_uuid: Option<String>,
    fs_blocks: Option<Num>,
    fs_block_size: Option<Num>,
    fs_compression: Option<String>,
    fs_subvolume: Option<String>,
    fs_bytes_per_inode: Option<Num>,
    fs_inode_size: Option<Num>,
}

impl RawPart {
    /// Fill every key this partition lacks from the base layout's partition.
    fn inherit(&mut self, b: &RawPart) {
        macro_rules! inh { ($($f:ident),*) => { $( if self.$f.is_none() { self.$f = b.$f.clone(); } )* } }
        inh!(
            label,
            kind,
            blocks,
            block_size,
            first_block,
            part_alignment,
            uuid,
            features,
            mount,
            binds,
            extract_blocks,
            fs_type,
            fs_label,
            fs_uuid,
            fs_blocks,
            fs_block_size,
            fs_compression,
            fs_subvolume,
            fs_bytes_per_inode,
            fs_inode_size
        );
    }
}

struct RawLayout {
    disk_blocks: Option<u64>,
    parts: BTreeMap<u32, RawPart>,
}

#[derive(Clone, Copy, Debug)]
struct Metadata {
    part_alignment: u64,
    disk_alignment: u64,
    block_size: u64,
    fs_block_size: u64,
}

/// A loaded and checked `disk_layout.json`.
pub struct LayoutFile {
    path: PathBuf,
    meta: Metadata,
    layouts: BTreeMap<String, RawLayout>,
}

impl LayoutFile {
    pub fn load(path: &Path) -> Result<LayoutFile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read layout file", path.display()))?;
        Self::parse(&text, path)
    }

    /// Parses layout JSON; `path` is used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<LayoutFile> {
        let f = path.display();
        let raw: RawFile =
            serde_json::from_str(text).map_err(|e| anyhow!("{f}: invalid layout file: {e}"))?;
        let m = raw.metadata.ok_or_else(|| anyhow!("{f}: missing \"metadata\""))?;
        let meta = Metadata {
            part_alignment: m.part_alignment.0,
            disk_alignment: m.disk_alignment.0,
            block_size: m.block_size.0,
            fs_block_size: m.fs_block_size.0,
        };
        if !SECTOR_SIZES.contains(&meta.block_size) {
            bail!(
                "{f}: metadata: block_size {} is not a sector size a GPT is written with (512 or 4096)",
                meta.block_size
            );
        }
        if meta.fs_block_size == 0 || !meta.fs_block_size.is_multiple_of(meta.block_size) {
            bail!(
                "{f}: metadata: fs_block_size {} is not a positive multiple of block_size {}",
                meta.fs_block_size,
                meta.block_size
            );
        }
        let fs_sectors = meta.fs_block_size / meta.block_size;
        for (name, v) in
            [("part_alignment", meta.part_alignment), ("disk_alignment", meta.disk_alignment)]
        {
            if v == 0 || v % fs_sectors != 0 {
                bail!(
                    "{f}: metadata: {name} {v} must be a positive multiple of {fs_sectors} sectors (one filesystem block)"
                );
            }
        }
        let pairs = raw.layouts.ok_or_else(|| anyhow!("{f}: missing \"layouts\""))?;
        let mut layouts = BTreeMap::new();
        for (name, entries) in pairs.0 {
            if layouts.contains_key(&name) {
                bail!("{f}: layout '{name}' is defined twice");
            }
            let l = parse_layout(&f.to_string(), &name, entries)?;
            layouts.insert(name, l);
        }
        if !layouts.contains_key("base") {
            bail!("{f}: missing the \"base\" layout that every other layout inherits");
        }
        let file = LayoutFile { path: path.to_path_buf(), meta, layouts };
        // Check every layout now, so a broken variant is reported whichever one is built.
        for name in file.names() {
            file.plan(&name, &IdPolicy::default())?;
        }
        Ok(file)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn names(&self) -> Vec<String> {
        self.layouts.keys().cloned().collect()
    }

    /// Resolves one layout into absolute positions and identifiers.
    pub fn plan(&self, name: &str, ids: &IdPolicy) -> Result<DiskPlan> {
        let f = self.path.display();
        let layout = self.layouts.get(name).ok_or_else(|| {
            anyhow!("{f}: no layout '{name}' (available: {})", self.names().join(", "))
        })?;
        let mut parts = layout.parts.clone();
        if name != "base" {
            for (num, bp) in &self.layouts["base"].parts {
                parts.entry(*num).or_default().inherit(bp);
            }
        }
        let meta = self.meta;
        // Sectors of the largest disk; every sector number below stays at or
        // under it, so sums of two of them cannot overflow.
        let max_sectors = MAX_DISK_BYTES / meta.block_size;
        let limit = format!(
            "the largest disk is {max_sectors} sectors of {} B ({MAX_DISK_BYTES} B)",
            meta.block_size
        );
        let mut cursor = GPT_RESERVED_SECTORS;
        let mut placed: Vec<PartitionPlan> = Vec::new();
        let mut labels: BTreeMap<String, u32> = BTreeMap::new();
        let mut prioritized = Vec::new();
        for (num, p) in &parts {
            let ctx = || {
                format!(
                    "{f}: layout '{name}', partition {num}{}",
                    p.label
                        .as_ref()
                        .filter(|l| !l.is_empty())
                        .map(|l| format!(" ({l})"))
                        .unwrap_or_default()
                )
            };
            let kind = p.kind.as_deref().ok_or_else(|| anyhow!("{}: missing \"type\"", ctx()))?;
            if kind == "blank" {
                continue;
            }
            let label = p.label.clone().ok_or_else(|| anyhow!("{}: missing \"label\"", ctx()))?;
            if label.is_empty() {
                bail!("{}: \"label\" is empty (a partition needs a name)", ctx());
            }
            if label.encode_utf16().count() > 36 {
                bail!("{}: label is longer than the 36 UTF-16 units a GPT name holds", ctx());
            }
            if let Some(other) = labels.insert(label.clone(), *num) {
                bail!("{}: label '{label}' is already used by partition {other}", ctx());
            }
            let type_guid = parse_type(kind).ok_or_else(|| {
                let names: Vec<&str> = PARTITION_TYPES.iter().map(|t| t.0).collect();
                anyhow!(
                    "{}: unknown partition type '{kind}' (known: blank, {}, or a GUID)",
                    ctx(),
                    names.join(", ")
                )
            })?;
            let blocks = p.blocks.ok_or_else(|| anyhow!("{}: missing \"blocks\"", ctx()))?.0;
            if let Some(bs) = p.block_size {
                if bs.0 != meta.block_size {
                    bail!(
                        "{}: block_size {} differs from the disk's {}",
                        ctx(),
                        bs.0,
                        meta.block_size
                    );
                }
            }
            if blocks == 0 {
                bail!("{}: size is 0 blocks (use \"type\": \"blank\" for an unused slot)", ctx());
            }
            let too_large =
                |field: &str, v: u64| anyhow!("{}: \"{field}\" {v} is too large: {limit}", ctx());
            if blocks > max_sectors {
                return Err(too_large("blocks", blocks));
            }
            let align = p.part_alignment.map(|a| a.0).unwrap_or(meta.part_alignment);
            if align == 0 {
                bail!("{}: part_alignment must be positive", ctx());
            }
            let first = match p.first_block {
                Some(Num(fb)) => {
                    if fb % align != 0 {
                        bail!("{}: first_block {fb} is not aligned to {align} sectors", ctx());
                    }
                    if fb > max_sectors {
                        return Err(too_large("first_block", fb));
                    }
                    fb
                }
                None => cursor
                    .div_ceil(align)
                    .checked_mul(align)
                    .filter(|&a| a <= max_sectors)
                    .ok_or_else(|| too_large("part_alignment", align))?,
            };
            // Both at most max_sectors (< 2^55): the sum fits.
            let end = first + blocks;
            if end > max_sectors - GPT_RESERVED_SECTORS {
                bail!(
                    "{}: \"blocks\" {blocks} is too large: starting at sector {first}, the partition would end past the largest disk's last usable sector ({limit})",
                    ctx()
                );
            }
            if first < GPT_RESERVED_SECTORS {
                bail!("{}: starts at sector {first}, inside the primary GPT (sectors 0–33)", ctx());
            }
            if let Some(prev) =
                placed.iter().find(|q| first < q.first_block + q.blocks && q.first_block < end)
            {
                bail!(
                    "{}: sectors {}..{} overlap partition {} ({}) at {}..{}",
                    ctx(),
                    first,
                    end,
                    prev.number,
                    prev.label,
                    prev.first_block,
                    prev.first_block + prev.blocks
                );
            }
            cursor = cursor.max(end);

            let uuid = match ids.partition_uuids.get(&label) {
                Some(u) => *u,
                None => match &p.uuid {
                    Some(s) => Uuid::parse_str(s)
                        .map_err(|e| anyhow!("{}: invalid uuid '{s}': {e}", ctx()))?,
                    None => ids.seed.uuid(&format!("partition:{num}:{label}")),
                },
            };

            let mut features = Vec::new();
            for feat in p.features.iter().flatten() {
                features.push(match feat.as_str() {
                    "prioritize" => Feature::Prioritize,
                    "verity" => Feature::Verity,
                    other => bail!("{}: unknown or unsupported feature '{other}' (supported: prioritize, verity)", ctx()),
                });
            }

            let fs = self.fs_plan(p, num, &label, blocks, ids, &ctx)?;
            if features.contains(&Feature::Verity) && fs.is_none() {
                bail!("{}: feature 'verity' needs a filesystem (fs_type)", ctx());
            }
            if features.contains(&Feature::Prioritize) {
                prioritized.push(*num);
            }
            placed.push(PartitionPlan {
                number: *num,
                label,
                type_guid,
                uuid,
                first_block: first,
                blocks,
                attributes: 0,
                features,
                mount: p.mount.clone(),
                fs,
            });
        }
        // Like upstream: the first prioritized partition gets the highest priority.
        if prioritized.len() > 15 {
            bail!(
                "{f}: layout '{name}': {} partitions have the feature 'prioritize'; GPT priorities go up to 15",
                prioritized.len()
            );
        }
        prioritized.reverse();
        for (i, num) in prioritized.iter().enumerate() {
            let p = placed.iter_mut().find(|p| p.number == *num).unwrap();
            p.attributes |=
                crate::table::attr_priority((i + 1) as u64) | crate::table::ATTR_SUCCESSFUL;
        }
        // cursor + GPT_RESERVED_SECTORS <= max_sectors (checked per partition).
        let total = match layout.disk_blocks {
            Some(d) => {
                if d > max_sectors {
                    bail!("{f}: layout '{name}': \"disk_blocks\" {d} is too large: {limit}");
                }
                if cursor + GPT_RESERVED_SECTORS > d {
                    bail!(
                        "{f}: layout '{name}': partitions end at sector {cursor} but the disk has only {d} sectors ({} needed with the backup GPT)",
                        cursor + GPT_RESERVED_SECTORS
                    );
                }
                d
            }
            None => (cursor + GPT_RESERVED_SECTORS)
                .div_ceil(meta.disk_alignment)
                .checked_mul(meta.disk_alignment)
                .filter(|&n| n <= max_sectors)
                .ok_or_else(|| {
                    anyhow!(
                        "{f}: layout '{name}': metadata \"disk_alignment\" {} is too large: {limit}",
                        meta.disk_alignment
                    )
                })?,
        };
        Ok(DiskPlan {
            source: self.path.clone(),
            layout: name.to_string(),
            block_size: meta.block_size,
            total_blocks: total,
            disk_guid: ids.disk_guid.unwrap_or(PLACEHOLDER_DISK_GUID),
            partitions: placed,
        })
    }

    fn fs_plan(
        &self,
        p: &RawPart,
        num: &u32,
        label: &str,
        blocks: u64,
        ids: &IdPolicy,
        ctx: &dyn Fn() -> String,
    ) -> Result<Option<FsPlan>> {
        let Some(t) = p.fs_type.as_deref() else {
            for (key, set) in [
                ("fs_label", p.fs_label.is_some()),
                ("fs_compression", p.fs_compression.is_some()),
                ("fs_subvolume", p.fs_subvolume.is_some()),
            ] {
                if set {
                    bail!("{}: \"{key}\" given without \"fs_type\"", ctx());
                }
            }
            return Ok(None);
        };
        let kind = FsKind::parse(t).ok_or_else(|| {
            anyhow!("{}: unknown fs_type '{t}' (known: vfat, ext2, ext4, btrfs, erofs)", ctx())
        })?;
        let block_size = p.fs_block_size.map(|b| b.0).unwrap_or(self.meta.fs_block_size);
        if block_size == 0 || !block_size.is_multiple_of(512) {
            bail!("{}: fs_block_size {block_size} is not a positive multiple of 512", ctx());
        }
        // The caller checked blocks against MAX_DISK_BYTES.
        let bytes = blocks * self.meta.block_size;
        let fs_blocks = p.fs_blocks.map(|b| b.0).unwrap_or(bytes / block_size);
        if fs_blocks == 0 {
            bail!("{}: fs_blocks is 0", ctx());
        }
        let Some(fs_bytes) = fs_blocks.checked_mul(block_size) else {
            bail!(
                "{}: \"fs_blocks\" {fs_blocks} is too large: {fs_blocks} blocks of {block_size} B do not fit 64 bits",
                ctx()
            );
        };
        if fs_bytes > bytes {
            bail!(
                "{}: filesystem ({fs_blocks} blocks of {block_size} B = {fs_bytes} B) is larger than the partition ({bytes} B)",
                ctx()
            );
        }
        if let Some(l) = &p.fs_label {
            if l.is_empty() {
                bail!("{}: \"fs_label\" is empty (leave it out for no label)", ctx());
            }
            match kind.max_label() {
                None => bail!(
                    "{}: fs_label is not supported for {} (mkfs.{} 1.5 cannot set one)",
                    ctx(),
                    kind.name(),
                    kind.name()
                ),
                Some(max) if l.len() > max => {
                    bail!(
                        "{}: fs_label '{l}' is longer than {max} bytes, the limit for {}",
                        ctx(),
                        kind.name()
                    )
                }
                _ => {}
            }
            if kind == FsKind::Vfat
                && !l
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b"-_ ".contains(&b))
            {
                bail!("{}: FAT label '{l}' may hold only A–Z, 0–9, '-', '_' and spaces", ctx());
            }
        }
        if p.fs_subvolume.is_some() && kind != FsKind::Btrfs {
            bail!("{}: fs_subvolume needs fs_type btrfs", ctx());
        }
        if p.fs_subvolume.is_some() {
            bail!("{}: fs_subvolume is not supported (it needs a mount)", ctx());
        }
        if (p.fs_bytes_per_inode.is_some() || p.fs_inode_size.is_some())
            && !matches!(kind, FsKind::Ext2 | FsKind::Ext4)
        {
            bail!("{}: fs_bytes_per_inode and fs_inode_size need fs_type ext2 or ext4", ctx());
        }
        if let Some(c) = &p.fs_compression {
            let ok = match kind {
                FsKind::Erofs => {
                    let (alg, level) =
                        c.split_once(',').map(|(a, l)| (a, Some(l))).unwrap_or((c, None));
                    matches!(alg, "lz4" | "lz4hc") && level.is_none_or(|l| l.parse::<u8>().is_ok())
                }
                // btrfs's own names (`mkfs.btrfs --compress ALG[:LEVEL]`, as upstream asks
                // for USR and OEM); whether the installed mkfs.btrfs can is decided when the
                // image is built (`fs::adapt`), with a warning if not.
                FsKind::Btrfs => {
                    let (alg, level) =
                        c.split_once(':').map(|(a, l)| (a, Some(l))).unwrap_or((c, None));
                    matches!(alg, "zstd" | "zlib" | "lzo")
                        && level.is_none_or(|l| l.parse::<u8>().is_ok())
                }
                _ => false,
            };
            if !ok {
                bail!(
                    "{}: fs_compression '{c}' is not supported for {} (erofs takes lz4 or lz4hc[,LEVEL]; btrfs zstd, zlib or lzo[:LEVEL])",
                    ctx(),
                    kind.name()
                );
            }
        }
        if kind == FsKind::Vfat && block_size != 512 && p.fs_block_size.is_some() {
            bail!("{}: vfat ignores fs_block_size; leave it out", ctx());
        }
        let uuid = match ids.fs_uuids.get(label) {
            Some(u) => *u,
            None => match &p.fs_uuid {
                Some(s) => Uuid::parse_str(s)
                    .map_err(|e| anyhow!("{}: invalid fs_uuid '{s}': {e}", ctx()))?,
                None => ids.seed.uuid(&format!("fs:{num}:{label}")),
            },
        };
        Ok(Some(FsPlan {
            kind,
            label: p.fs_label.clone(),
            uuid,
            block_size,
            blocks: fs_blocks,
            compression: p.fs_compression.clone(),
            bytes_per_inode: p.fs_bytes_per_inode.map(|n| n.0),
            inode_size: p.fs_inode_size.map(|n| n.0),
        }))
    }
}

/// The GPT type GUID of a named partition type (`efi`, `bios`, `flatcar-rootfs`, …).
pub fn type_guid(name: &str) -> Option<Uuid> {
    PARTITION_TYPES.iter().find(|(n, _, _)| *n == name).map(|(_, g, _)| Uuid::parse_str(g).unwrap())
}

fn parse_type(kind: &str) -> Option<Uuid> {
    type_guid(kind).or_else(|| Uuid::parse_str(kind).ok().filter(|u| !u.is_nil()))
}

fn parse_layout(f: &str, name: &str, entries: Pairs<Entry>) -> Result<RawLayout> {
    let mut parts = BTreeMap::new();
    let mut disk_blocks = None;
    let mut seen = BTreeSet::new();
    for (key, v) in entries.0 {
        if !seen.insert(key.clone()) {
            bail!("{f}: layout '{name}': key \"{key}\" appears twice");
        }
        match key.as_str() {
            "_comment" => continue,
            "disk_blocks" => {
                let n: Num = serde_json::from_value(v.into_value())
                    .map_err(|e| anyhow!("{f}: layout '{name}': disk_blocks: {e}"))?;
                disk_blocks = Some(n.0);
                continue;
            }
            _ => {}
        }
        let num: u32 = key
            .parse()
            .ok()
            .filter(|n| (1..=MAX_PARTITIONS).contains(n) && !key.starts_with('0'))
            .ok_or_else(|| {
                anyhow!("{f}: layout '{name}': \"{key}\" is not a partition number (1–{MAX_PARTITIONS}), \"disk_blocks\" or \"_comment\"")
            })?;
        if let Entry::Object(pairs) = &v {
            let mut keys = BTreeSet::new();
            if let Some((k, _)) = pairs.0.iter().find(|(k, _)| !keys.insert(k)) {
                bail!("{f}: layout '{name}', partition {num}: key \"{k}\" appears twice");
            }
        }
        let part: RawPart = serde_json::from_value(v.into_value())
            .map_err(|e| anyhow!("{f}: layout '{name}', partition {num}: {e}"))?;
        if parts.insert(num, part).is_some() {
            bail!("{f}: layout '{name}': partition {num} is defined twice");
        }
    }
    Ok(RawLayout { disk_blocks, parts })
}
