//! FAT32 for the ESP, written by our own code.
//!
//! Why not the `fatfs` crate: fatfs 0.3.6 writes long-file-name entries in
//! front of the `.` and `..` entries of every new directory and leaves the
//! FSInfo free count unset; `fsck.fat -n` flags both (and would "repair" by
//! renaming the dot entries). The ESP must come out clean, and a build from a
//! known tree is simple enough to lay out in one pass: clusters are handed out
//! in order, directories first in a depth-first walk, each file contiguous.
//! Every timestamp is the build's epoch, so the result is reproducible.
//!
//! The module also has a small reader ([`FatReader`]) used by `inspect`.

use super::tree::{Dir, Node};
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;

const SECTOR: u64 = 512;
const RESERVED: u64 = 32;
const NUM_FATS: u64 = 2;
const MIN_CLUSTERS: u64 = 65525;
const MAX_CLUSTERS: u64 = 0x0FFF_FFF4;
const EOC: u32 = 0x0FFF_FFFF;
const ATTR_DIR: u8 = 0x10;
const ATTR_ARCHIVE: u8 = 0x20;
const ATTR_VOLUME: u8 = 0x08;
const ATTR_LFN: u8 = 0x0F;

#[derive(Clone, Debug)]
pub struct FatParams {
    /// Volume label (up to 11 bytes, upper case).
    pub label: Option<String>,
    pub volume_id: u32,
    pub size_bytes: u64,
    /// Partition start LBA (BPB "hidden sectors").
    pub hidden_sectors: u64,
    /// Unix time used for every timestamp.
    pub epoch: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub total_sectors: u64,
    pub sectors_per_cluster: u64,
    pub fat_sectors: u64,
    pub clusters: u64,
}

impl Geometry {
    pub fn for_size(size_bytes: u64) -> Result<Geometry> {
        let total = size_bytes / SECTOR;
        if total > u32::MAX as u64 {
            bail!("FAT32 volume of {size_bytes} B is too large");
        }
        for spc in [8u64, 4, 2, 1] {
            let mut fat = 1;
            loop {
                let data = total.saturating_sub(RESERVED + NUM_FATS * fat);
                let clusters = data / spc;
                let need = ((clusters + 2) * 4).div_ceil(SECTOR);
                if need <= fat {
                    if (MIN_CLUSTERS..=MAX_CLUSTERS).contains(&clusters) {
                        return Ok(Geometry {
                            total_sectors: total,
                            sectors_per_cluster: spc,
                            fat_sectors: fat,
                            clusters,
                        });
                    }
                    break;
                }
                fat = need;
            }
        }
        bail!(
            "a FAT32 volume needs at least {} clusters; {} B is too small (minimum about 33 MiB)",
            MIN_CLUSTERS,
            size_bytes
        )
    }
    fn cluster_bytes(&self) -> u64 {
        self.sectors_per_cluster * SECTOR
    }
    fn data_start(&self) -> u64 {
        (RESERVED + NUM_FATS * self.fat_sectors) * SECTOR
    }
    fn cluster_offset(&self, c: u32) -> u64 {
        self.data_start() + (c as u64 - 2) * self.cluster_bytes()
    }
}

/// What was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FatReport {
    pub geometry: Geometry,
    pub used_clusters: u64,
    pub files: u64,
    pub dirs: u64,
}

/// Builds a FAT32 filesystem holding `tree` into `out` at `offset`. The region
/// must be zero (a fresh sparse image): zero blocks are not written.
pub fn build(tree: &Dir, params: &FatParams, out: &File, offset: u64) -> Result<FatReport> {
    let g = Geometry::for_size(params.size_bytes)?;
    let mut w = Writer {
        g,
        fat: vec![0x0FFF_FFF8, EOC],
        next: 2,
        stamp: DosTime::from_unix(params.epoch),
        files: 0,
        dirs: 0,
        dir_data: Vec::new(),
        file_data: Vec::new(),
    };
    // Root directory at cluster 2.
    let mut root_entries = Vec::new();
    if let Some(l) = &params.label {
        let mut e = [0u8; 32];
        e[..11].copy_from_slice(&pad11(l));
        e[11] = ATTR_VOLUME;
        w.stamp_entry(&mut e);
        root_entries.push(e);
    }
    w.layout_dir(tree, root_entries, None)?;
    if w.next as u64 - 2 > g.clusters {
        bail!(
            "ESP contents need {} clusters of {} B but the filesystem has {}",
            w.next - 2,
            g.cluster_bytes(),
            g.clusters
        );
    }
    // Boot sector, FSInfo and their backups.
    let used = w.next as u64 - 2;
    let boot = boot_sector(&g, params);
    let info = fsinfo(g.clusters - used, w.next);
    for base in [0u64, 6] {
        out.write_all_at(&boot, offset + base * SECTOR)?;
        out.write_all_at(&info, offset + (base + 1) * SECTOR)?;
        let mut third = [0u8; 512];
        third[510] = 0x55;
        third[511] = 0xAA;
        out.write_all_at(&third, offset + (base + 2) * SECTOR)?;
    }
    // Both FATs (only the used prefix; the rest is zero = free).
    let mut fat_bytes = Vec::with_capacity(w.fat.len() * 4);
    for e in &w.fat {
        fat_bytes.extend_from_slice(&e.to_le_bytes());
    }
    for i in 0..NUM_FATS {
        out.write_all_at(&fat_bytes, offset + (RESERVED + i * g.fat_sectors) * SECTOR)?;
    }
    for (cluster, bytes) in &w.dir_data {
        out.write_all_at(bytes, offset + g.cluster_offset(*cluster))?;
    }
    let mut buf = vec![0u8; 1 << 20];
    for (cluster, node) in &w.file_data {
        let Node::File { source, .. } = node else { unreachable!() };
        let mut r = source.open()?;
        let mut pos = offset + g.cluster_offset(*cluster);
        loop {
            let n = read_full(&mut r, &mut buf)?;
            if n == 0 {
                break;
            }
            crate::io::sparse::write_nonzero_at(out, pos, &buf[..n])?;
            pos += n as u64;
        }
    }
    Ok(FatReport { geometry: g, used_clusters: used, files: w.files, dirs: w.dirs })
}

fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let k = r.read(&mut buf[n..])?;
        if k == 0 {
            break;
        }
        n += k;
    }
    Ok(n)
}

struct Writer<'t> {
    g: Geometry,
    fat: Vec<u32>,
    next: u32,
    stamp: DosTime,
    files: u64,
    dirs: u64,
    dir_data: Vec<(u32, Vec<u8>)>,
    file_data: Vec<(u32, &'t Node)>,
}

impl<'t> Writer<'t> {
    /// Allocates a contiguous chain of `n` clusters (n ≥ 1), returns the first.
    fn alloc(&mut self, n: u64) -> u32 {
        let first = self.next;
        for i in 0..n as u32 {
            let c = first + i;
            let v = if i + 1 == n as u32 { EOC } else { c + 1 };
            if self.fat.len() <= c as usize {
                self.fat.resize(c as usize + 1, 0);
            }
            self.fat[c as usize] = v;
        }
        self.next += n as u32;
        first
    }

    fn stamp_entry(&self, e: &mut [u8; 32]) {
        e[13] = 0;
        e[14..16].copy_from_slice(&self.stamp.time.to_le_bytes());
        e[16..18].copy_from_slice(&self.stamp.date.to_le_bytes());
        e[18..20].copy_from_slice(&self.stamp.date.to_le_bytes());
        e[22..24].copy_from_slice(&self.stamp.time.to_le_bytes());
        e[24..26].copy_from_slice(&self.stamp.date.to_le_bytes());
    }

    fn entry(&self, short: [u8; 11], case: u8, attr: u8, cluster: u32, size: u32) -> [u8; 32] {
        let mut e = [0u8; 32];
        e[..11].copy_from_slice(&short);
        e[11] = attr;
        e[12] = case;
        self.stamp_entry(&mut e);
        e[20..22].copy_from_slice(&((cluster >> 16) as u16).to_le_bytes());
        e[26..28].copy_from_slice(&(cluster as u16).to_le_bytes());
        e[28..32].copy_from_slice(&size.to_le_bytes());
        e
    }

    /// Lays out a directory (and, depth first, its children). `parent` is the
    /// parent's first cluster (None for the root).
    fn layout_dir(
        &mut self,
        dir: &'t Dir,
        mut entries: Vec<[u8; 32]>,
        parent: Option<u32>,
    ) -> Result<u32> {
        // Count slots to size the directory before allocating it.
        let names: Vec<(&String, &Node)> = dir.entries.iter().collect();
        let mut shorts: Vec<[u8; 11]> = Vec::new();
        let mut plans = Vec::new();
        for (name, _) in &names {
            let p = plan_name(name, &shorts)?;
            shorts.push(p.short);
            plans.push(p);
        }
        let dots = if parent.is_some() { 2 } else { 0 };
        let slots = entries.len() + dots + plans.iter().map(|p| p.lfn.len() + 1).sum::<usize>();
        let per_cluster = (self.g.cluster_bytes() / 32) as usize;
        let nclusters = slots.div_ceil(per_cluster).max(1) as u64;
        let me = self.alloc(nclusters);
        self.dirs += 1;
        if let Some(parent) = parent {
            let mut dot = [b' '; 11];
            dot[0] = b'.';
            entries.insert(0, self.entry(dot, 0, ATTR_DIR, me, 0));
            let mut dotdot = [b' '; 11];
            dotdot[..2].copy_from_slice(b"..");
            // ".." of a top-level directory points at cluster 0, per the spec.
            let pc = if parent == 2 { 0 } else { parent };
            entries.insert(1, self.entry(dotdot, 0, ATTR_DIR, pc, 0));
        }
        for ((_, node), plan) in names.iter().zip(&plans) {
            let (attr, cluster, size) = match node {
                Node::Dir(d) => {
                    let c = self.layout_dir(d, Vec::new(), Some(me))?;
                    (ATTR_DIR, c, 0u32)
                }
                Node::File { source, .. } => {
                    let len = source.len()?;
                    let size = u32::try_from(len)
                        .map_err(|_| anyhow::anyhow!("file of {len} B is too large for FAT32"))?;
                    self.files += 1;
                    if len == 0 {
                        (ATTR_ARCHIVE, 0, 0)
                    } else {
                        let c = self.alloc(len.div_ceil(self.g.cluster_bytes()));
                        self.file_data.push((c, node));
                        (ATTR_ARCHIVE, c, size)
                    }
                }
                Node::Symlink(_) => bail!("FAT cannot hold symlinks"),
            };
            let cks = lfn_checksum(&plan.short);
            let n = plan.lfn.len();
            for (i, chunk) in plan.lfn.iter().enumerate().rev() {
                let mut e = [0u8; 32];
                let seq = (i + 1) as u8 | if i + 1 == n { 0x40 } else { 0 };
                e[0] = seq;
                e[11] = ATTR_LFN;
                e[13] = cks;
                let pos = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];
                for (k, &off) in pos.iter().enumerate() {
                    e[off..off + 2].copy_from_slice(&chunk[k].to_le_bytes());
                }
                entries.push(e);
            }
            entries.push(self.entry(plan.short, plan.case, attr, cluster, size));
        }
        let mut bytes = Vec::with_capacity(entries.len() * 32);
        for e in &entries {
            bytes.extend_from_slice(e);
        }
        self.dir_data.push((me, bytes));
        Ok(me)
    }
}

struct NamePlan {
    short: [u8; 11],
    case: u8,
    lfn: Vec<[u16; 13]>,
}

fn short_ok(c: u8) -> bool {
    c.is_ascii_uppercase() || c.is_ascii_digit() || b"!#$%&'()-@^_`{}~".contains(&c)
}

fn pad11(s: &str) -> [u8; 11] {
    let mut out = [b' '; 11];
    for (i, b) in s.bytes().take(11).enumerate() {
        out[i] = b;
    }
    out
}

/// Chooses the 8.3 entry (and long-name entries when needed) for `name`.
fn plan_name(name: &str, taken: &[[u8; 11]]) -> Result<NamePlan> {
    if name.is_empty() || name == "." || name == ".." || name.len() > 255 {
        bail!("'{name}' is not a valid FAT file name");
    }
    if name.chars().any(|c| "\"*/:<>?\\|".contains(c) || (c as u32) < 0x20) {
        bail!("'{name}' holds characters FAT does not allow");
    }
    // A plain 8.3 name, all upper or all lower case per part: no LFN needed.
    let (base, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i + 1..]),
        _ => (name, ""),
    };
    let part_case = |s: &str| -> Option<bool> {
        // Some(true) = lower, Some(false) = upper/neutral
        if !s.bytes().all(|c| short_ok(c.to_ascii_uppercase())) {
            return None;
        }
        let lower = s.bytes().any(|c| c.is_ascii_lowercase());
        let upper = s.bytes().any(|c| c.is_ascii_uppercase());
        if lower && upper {
            None
        } else {
            Some(lower)
        }
    };
    if !base.is_empty()
        && base.len() <= 8
        && ext.len() <= 3
        && !(ext.is_empty() && name.ends_with('.'))
    {
        if let (Some(bl), Some(el)) = (part_case(base), part_case(ext)) {
            let mut short = [b' '; 11];
            for (i, c) in base.bytes().enumerate() {
                short[i] = c.to_ascii_uppercase();
            }
            for (i, c) in ext.bytes().enumerate() {
                short[8 + i] = c.to_ascii_uppercase();
            }
            if !taken.contains(&short) {
                let case = if bl { 0x08 } else { 0 } | if el { 0x10 } else { 0 };
                return Ok(NamePlan { short, case, lfn: Vec::new() });
            }
        }
    }
    // Long name: generate BASIS~N.EXT.
    let clean = |s: &str| -> Vec<u8> {
        s.bytes()
            .filter(|c| *c != b' ' && *c != b'.')
            .map(|c| {
                let u = c.to_ascii_uppercase();
                if short_ok(u) {
                    u
                } else {
                    b'_'
                }
            })
            .collect()
    };
    let b = clean(base.trim_start_matches('.'));
    let e = clean(ext);
    let mut short = None;
    for n in 1..1_000_000u32 {
        let tail = format!("~{n}");
        let keep = (8 - tail.len()).min(b.len());
        let mut s = [b' '; 11];
        s[..keep].copy_from_slice(&b[..keep]);
        s[keep..keep + tail.len()].copy_from_slice(tail.as_bytes());
        for (i, c) in e.iter().take(3).enumerate() {
            s[8 + i] = *c;
        }
        if !taken.contains(&s) {
            short = Some(s);
            break;
        }
    }
    let short = short.context("no free short name")?;
    let units: Vec<u16> = name.encode_utf16().collect();
    let mut lfn = Vec::new();
    for chunk_start in (0..units.len()).step_by(13) {
        let mut c = [0xFFFFu16; 13];
        let part = &units[chunk_start..(chunk_start + 13).min(units.len())];
        c[..part.len()].copy_from_slice(part);
        if part.len() < 13 {
            c[part.len()] = 0;
        }
        lfn.push(c);
    }
    Ok(NamePlan { short, case: 0, lfn })
}

fn lfn_checksum(short: &[u8; 11]) -> u8 {
    short.iter().fold(0u8, |s, &c| (s.rotate_right(1)).wrapping_add(c))
}

fn boot_sector(g: &Geometry, p: &FatParams) -> [u8; 512] {
    let mut b = [0u8; 512];
    b[0..3].copy_from_slice(&[0xEB, 0x58, 0x90]);
    b[3..11].copy_from_slice(b"FORGE1.0");
    b[11..13].copy_from_slice(&(SECTOR as u16).to_le_bytes());
    b[13] = g.sectors_per_cluster as u8;
    b[14..16].copy_from_slice(&(RESERVED as u16).to_le_bytes());
    b[16] = NUM_FATS as u8;
    b[21] = 0xF8;
    b[24..26].copy_from_slice(&63u16.to_le_bytes());
    b[26..28].copy_from_slice(&255u16.to_le_bytes());
    b[28..32].copy_from_slice(&(p.hidden_sectors.min(u32::MAX as u64) as u32).to_le_bytes());
    b[32..36].copy_from_slice(&(g.total_sectors as u32).to_le_bytes());
    b[36..40].copy_from_slice(&(g.fat_sectors as u32).to_le_bytes());
    b[44..48].copy_from_slice(&2u32.to_le_bytes());
    b[48..50].copy_from_slice(&1u16.to_le_bytes());
    b[50..52].copy_from_slice(&6u16.to_le_bytes());
    b[64] = 0x80;
    b[66] = 0x29;
    b[67..71].copy_from_slice(&p.volume_id.to_le_bytes());
    b[71..82].copy_from_slice(&pad11(p.label.as_deref().unwrap_or("NO NAME")));
    b[82..90].copy_from_slice(b"FAT32   ");
    b[510] = 0x55;
    b[511] = 0xAA;
    b
}

fn fsinfo(free: u64, next_free: u32) -> [u8; 512] {
    let mut b = [0u8; 512];
    b[0..4].copy_from_slice(&0x4161_5252u32.to_le_bytes());
    b[484..488].copy_from_slice(&0x6141_7272u32.to_le_bytes());
    b[488..492].copy_from_slice(&(free as u32).to_le_bytes());
    b[492..496].copy_from_slice(&next_free.to_le_bytes());
    b[508..512].copy_from_slice(&0xAA55_0000u32.to_le_bytes());
    b
}

#[derive(Clone, Copy, Debug)]
struct DosTime {
    date: u16,
    time: u16,
}

impl DosTime {
    fn from_unix(t: i64) -> DosTime {
        // FAT dates run from 1980-01-01 to 2107-12-31.
        let t = t.clamp(315_532_800, 4_354_819_199);
        let days = t.div_euclid(86_400);
        let secs = t.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        DosTime {
            date: (((y - 1980) as u16) << 9) | ((m as u16) << 5) | d as u16,
            time: (((secs / 3600) as u16) << 11)
                | ((((secs % 3600) / 60) as u16) << 5)
                | ((secs % 60) / 2) as u16,
        }
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    (y, m, d)
}

// ---------------------------------------------------------------------------
// Reader

/// A minimal FAT32 reader: label, volume ID and whole files by path.
///
/// It reads hostile filesystems: the geometry must fit the partition,
/// cluster numbers must be in range, chains cannot be longer than the
/// filesystem has clusters (a loop), and a directory listed twice while
/// walking (a cycle) is an error, so every read is bounded by the
/// partition's size.
pub struct FatReader<'a> {
    file: &'a File,
    offset: u64,
    spc: u64,
    reserved: u64,
    fats: u64,
    fat_sectors: u64,
    /// Data clusters: valid cluster numbers are `2..clusters + 2`.
    clusters: u64,
    root: u32,
    pub label: String,
    pub volume_id: u32,
}

/// Directories nested deeper than this are refused by [`FatReader::walk`].
pub const MAX_DEPTH: usize = 64;
/// [`FatReader::walk`] refuses to return more than this many bytes of paths
/// (deep paths times many files could otherwise outgrow the filesystem).
pub const MAX_WALK_BYTES: usize = 16 << 20;

impl<'a> FatReader<'a> {
    /// Opens the FAT32 filesystem at byte `offset` of `file`, in a
    /// partition of `len` bytes.
    pub fn open(file: &'a File, offset: u64, len: u64) -> Result<FatReader<'a>> {
        let mut b = [0u8; 512];
        file.read_exact_at(&mut b, offset)
            .with_context(|| format!("reading the FAT boot sector at offset {offset}"))?;
        let bs = forge_formats::fat::BootSector::parse(&b)
            .with_context(|| format!("at offset {offset}"))?;
        if bs.bytes_per_sector as u64 != SECTOR {
            bail!("FAT sector size {} is not supported", bs.bytes_per_sector);
        }
        let total = bs.total_sectors as u64;
        if total * SECTOR > len {
            bail!(
                "FAT filesystem at offset {offset}: {} B, larger than its partition ({len} B)",
                total * SECTOR
            );
        }
        let (spc, reserved, fats) =
            (bs.sectors_per_cluster as u64, bs.reserved_sectors as u64, bs.fats as u64);
        let fat_sectors = bs.sectors_per_fat as u64;
        let data_start = reserved + fats * fat_sectors;
        if data_start >= total {
            bail!(
                "FAT filesystem at offset {offset}: reserved sectors and FATs ({data_start}) leave no data area in {total} sectors"
            );
        }
        let clusters = (total - data_start) / spc;
        if fat_sectors * SECTOR / 4 < clusters + 2 {
            bail!(
                "FAT filesystem at offset {offset}: a FAT of {fat_sectors} sectors cannot map {clusters} clusters"
            );
        }
        let r = FatReader {
            file,
            offset,
            spc,
            reserved,
            fats,
            fat_sectors,
            clusters,
            root: bs.root_cluster,
            volume_id: bs.volume_id,
            label: bs.label,
        };
        r.check_cluster(r.root, r.root).context("the root directory")?;
        Ok(r)
    }

    fn check_cluster(&self, first: u32, c: u32) -> Result<()> {
        if !(2..self.clusters + 2).contains(&(c as u64)) {
            bail!(
                "FAT chain from cluster {first}: cluster {c} is out of range (2 to {})",
                self.clusters + 1
            );
        }
        Ok(())
    }

    /// The clusters of the chain starting at `first`, at most `max` of them.
    fn chain(&self, first: u32, max: u64) -> Result<Vec<u32>> {
        let mut v = Vec::new();
        let mut c = first;
        while (v.len() as u64) < max {
            self.check_cluster(first, c)?;
            v.push(c);
            if v.len() as u64 > self.clusters {
                bail!("FAT chain from cluster {first} loops");
            }
            let mut e = [0u8; 4];
            let at = self.offset + self.reserved * SECTOR + c as u64 * 4;
            self.file
                .read_exact_at(&mut e, at)
                .with_context(|| format!("reading the FAT entry of cluster {c}"))?;
            c = u32::from_le_bytes(e) & 0x0FFF_FFFF;
            if c >= 0x0FFF_FFF8 {
                break;
            }
        }
        Ok(v)
    }

    fn read_chain(&self, first: u32, len: Option<u64>) -> Result<Vec<u8>> {
        let cb = self.spc * SECTOR;
        let data = self.offset + (self.reserved + self.fats * self.fat_sectors) * SECTOR;
        let max = len.map_or(u64::MAX, |l| l.div_ceil(cb));
        let chain = self.chain(first, max)?;
        // Bounded: a chain has at most `clusters` clusters, all inside the partition.
        let mut out = Vec::with_capacity(chain.len() * cb as usize);
        let mut buf = vec![0u8; cb as usize];
        for c in chain {
            let at = data + (c as u64 - 2) * cb;
            self.file
                .read_exact_at(&mut buf, at)
                .with_context(|| format!("reading FAT cluster {c} at offset {at}"))?;
            out.extend_from_slice(&buf);
        }
        if let Some(l) = len {
            if (out.len() as u64) < l {
                bail!("FAT file at cluster {first} is shorter than its size ({l} B)");
            }
            out.truncate(l as usize);
        }
        Ok(out)
    }

    /// Lists a directory: (name, is_dir, first cluster, size).
    fn list(&self, cluster: u32) -> Result<Vec<(String, bool, u32, u32)>> {
        let d = self.read_chain(cluster, None)?;
        let mut out = Vec::new();
        let mut lfn: Vec<(u8, Vec<u16>)> = Vec::new();
        for e in d.chunks(32) {
            if e[0] == 0 {
                break;
            }
            if e[0] == 0xE5 {
                lfn.clear();
                continue;
            }
            if e[11] == ATTR_LFN {
                let pos = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];
                let units: Vec<u16> =
                    pos.iter().map(|&o| u16::from_le_bytes([e[o], e[o + 1]])).collect();
                lfn.push((e[0] & 0x1F, units));
                continue;
            }
            if e[11] & ATTR_VOLUME != 0 {
                lfn.clear();
                continue;
            }
            let name = if !lfn.is_empty() {
                lfn.sort_by_key(|(s, _)| *s);
                let units: Vec<u16> = lfn
                    .iter()
                    .flat_map(|(_, u)| u.iter().copied())
                    .take_while(|u| *u != 0)
                    .collect();
                String::from_utf16_lossy(&units)
            } else {
                let base = String::from_utf8_lossy(&e[0..8]).trim_end().to_string();
                let ext = String::from_utf8_lossy(&e[8..11]).trim_end().to_string();
                let base = if e[12] & 0x08 != 0 { base.to_ascii_lowercase() } else { base };
                let ext = if e[12] & 0x10 != 0 { ext.to_ascii_lowercase() } else { ext };
                if ext.is_empty() {
                    base
                } else {
                    format!("{base}.{ext}")
                }
            };
            lfn.clear();
            if name == "." || name == ".." {
                continue;
            }
            let cl = ((u16::from_le_bytes([e[20], e[21]]) as u32) << 16)
                | u16::from_le_bytes([e[26], e[27]]) as u32;
            let size = u32::from_le_bytes([e[28], e[29], e[30], e[31]]);
            out.push((name, e[11] & ATTR_DIR != 0, cl, size));
        }
        Ok(out)
    }

    /// Reads a whole file by `/`-separated path (names compared case-insensitively).
    pub fn read(&self, path: &str) -> Result<Vec<u8>> {
        let mut cluster = self.root;
        let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        for (i, part) in parts.iter().enumerate() {
            let found = self
                .list(cluster)?
                .into_iter()
                .find(|(n, ..)| n.eq_ignore_ascii_case(part))
                .with_context(|| format!("{path}: not found on the FAT filesystem"))?;
            if i + 1 == parts.len() {
                if found.1 {
                    bail!("{path}: is a directory");
                }
                return if found.2 == 0 {
                    Ok(Vec::new())
                } else {
                    self.read_chain(found.2, Some(found.3 as u64))
                };
            }
            if !found.1 {
                bail!("{path}: {part} is not a directory");
            }
            cluster = found.2;
        }
        bail!("{path}: empty path")
    }

    /// Every file path under the root, depth first. A directory reached
    /// twice (a cycle, or two entries sharing a directory) is an error, as
    /// is nesting deeper than [`MAX_DEPTH`] or paths adding up to more than
    /// [`MAX_WALK_BYTES`].
    pub fn walk(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let mut seen = std::collections::HashMap::from([(self.root, "/".to_string())]);
        let mut stack = vec![(String::new(), self.root, 0usize)];
        let mut names = 0usize;
        while let Some((prefix, c, depth)) = stack.pop() {
            for (n, is_dir, cl, _) in self.list(c)? {
                let p = format!("{prefix}/{n}");
                if is_dir {
                    if let Some(other) = seen.insert(cl, p.clone()) {
                        bail!(
                            "FAT directory cycle: {p} is cluster {cl}, already listed as {other}"
                        );
                    }
                    if depth + 1 > MAX_DEPTH {
                        bail!("FAT directories nested deeper than {MAX_DEPTH} levels at {p}");
                    }
                    stack.push((p, cl, depth + 1));
                } else {
                    names += p.len();
                    if names > MAX_WALK_BYTES {
                        bail!("FAT file names add up to more than {MAX_WALK_BYTES} bytes");
                    }
                    out.push(p);
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::tree::Source;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        let t = DosTime::from_unix(1_700_000_000); // 2023-11-14 22:13:20
        assert_eq!(t.date, ((2023 - 1980) << 9) | (11 << 5) | 14);
        assert_eq!(t.time, (22 << 11) | (13 << 5) | 10);
    }

    #[test]
    fn short_names() {
        let p = plan_name("grub.cfg", &[]).unwrap();
        assert_eq!(&p.short, b"GRUB    CFG");
        assert_eq!(p.case, 0x18);
        assert!(p.lfn.is_empty());
        let p = plan_name("vmlinuz-a", &[]).unwrap();
        assert_eq!(&p.short, b"VMLINU~1   ");
        assert_eq!(p.lfn.len(), 1);
        let p2 = plan_name("vmlinuz-b", &[p.short]).unwrap();
        assert_eq!(&p2.short, b"VMLINU~2   ");
        assert!(plan_name("a:b", &[]).is_err());
    }

    #[test]
    fn roundtrip_with_reader() {
        let d = tempfile::tempdir().unwrap();
        let img = crate::io::sparse::create(&d.path().join("fat"), 64 << 20).unwrap();
        let mut t = Dir::new();
        t.add_file("flatcar/vmlinuz-a", Source::Bytes(vec![3u8; 100_000])).unwrap();
        t.add_file("EFI/boot/bootx64.efi", Source::Bytes(b"efi".to_vec())).unwrap();
        t.add_file("empty", Source::Bytes(vec![])).unwrap();
        let p = FatParams {
            label: Some("EFI-SYSTEM".into()),
            volume_id: 0x1234_5678,
            size_bytes: 64 << 20,
            hidden_sectors: 0,
            epoch: 0,
        };
        let r = build(&t, &p, &img, 0).unwrap();
        assert_eq!(r.files, 3);
        let rd = FatReader::open(&img, 0, 64 << 20).unwrap();
        assert_eq!(rd.label, "EFI-SYSTEM");
        assert_eq!(rd.volume_id, 0x1234_5678);
        assert_eq!(rd.read("/flatcar/vmlinuz-a").unwrap(), vec![3u8; 100_000]);
        assert_eq!(rd.read("EFI/boot/bootx64.efi").unwrap(), b"efi");
        assert_eq!(
            rd.walk().unwrap(),
            vec!["/EFI/boot/bootx64.efi", "/empty", "/flatcar/vmlinuz-a"]
        );
    }
}
