//! dm-verity, computed in Rust: the hash tree for a partition's filesystem,
//! stored inside the same partition right after the filesystem (upstream's
//! arrangement), in the on-disk format `veritysetup` and the kernel read:
//! format version 1, sha256, 4096-byte data and hash blocks, a superblock at
//! the hash offset and the tree levels after it, top level first.
//!
//! Zero data blocks (holes in the sparse image) are not read: their digest is
//! computed once. Level 0 is hashed on every core.

use crate::io::sparse;
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::os::unix::fs::FileExt;
use uuid::Uuid;

pub const BLOCK: u64 = 4096;
const DIGEST: usize = 32;
const PER_BLOCK: u64 = BLOCK / DIGEST as u64;

/// Everything the boot stage and `veritysetup` need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerityInfo {
    pub root_hash: [u8; 32],
    pub salt: [u8; 32],
    pub data_blocks: u64,
    pub data_block_size: u64,
    pub hash_block_size: u64,
    /// Offset of the verity superblock from the start of the partition.
    pub hash_offset: u64,
    /// Superblock plus tree, in bytes.
    pub hash_bytes: u64,
    pub uuid: Uuid,
}

impl VerityInfo {
    pub fn root_hex(&self) -> String {
        hex::encode(self.root_hash)
    }
    pub fn salt_hex(&self) -> String {
        hex::encode(self.salt)
    }
    /// The side file: first line the root hash, then `key=value` lines.
    pub fn side_file(&self) -> String {
        format!(
            "{}\nroot_hash={}\nsalt={}\nalgorithm=sha256\ndata_block_size={}\nhash_block_size={}\ndata_blocks={}\nhash_offset={}\nhash_bytes={}\nuuid={}\n",
            self.root_hex(),
            self.root_hex(),
            self.salt_hex(),
            self.data_block_size,
            self.hash_block_size,
            self.data_blocks,
            self.hash_offset,
            self.hash_bytes,
            self.uuid
        )
    }
}

/// A verity-protected partition of a built image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtectedPartition {
    /// The partition's number in the layout.
    pub number: u32,
    /// Its A/B slot letter (`USR-A` → `a`).
    pub slot: String,
    pub info: VerityInfo,
}

/// Level sizes, level 0 (hashes of data blocks) first.
fn level_sizes(data_blocks: u64) -> Vec<u64> {
    let mut v = Vec::new();
    let mut n = data_blocks;
    loop {
        n = n.div_ceil(PER_BLOCK);
        v.push(n);
        if n <= 1 {
            break;
        }
    }
    v
}

fn hash_block(salt: &[u8], block: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(block);
    h.finalize().into()
}

/// Digests of data blocks `[first, last)` of the region at `base`.
fn hash_data(
    file: &File,
    base: u64,
    first: u64,
    last: u64,
    extents: &[(u64, u64)],
    salt: &[u8],
    zero: &[u8; 32],
) -> Result<Vec<[u8; 32]>> {
    let mut out = Vec::with_capacity((last - first) as usize);
    let mut buf = vec![0u8; 256 * BLOCK as usize];
    let mut b = first;
    while b < last {
        let pos = base + b * BLOCK;
        // Inside a hole: every block up to the next extent is zero.
        let ext = extents.iter().find(|(_, e)| *e > pos);
        match ext {
            Some((s, _)) if *s <= pos => {
                let end_block = ((ext.unwrap().1 - base) / BLOCK).min(last).max(b + 1);
                let n = (end_block - b).min(256);
                let bytes = (n * BLOCK) as usize;
                file.read_exact_at(&mut buf[..bytes], pos)
                    .context("reading filesystem blocks for dm-verity")?;
                for blk in buf[..bytes].chunks(BLOCK as usize) {
                    out.push(if sparse::is_zero(blk) { *zero } else { hash_block(salt, blk) });
                }
                b += n;
            }
            Some((s, _)) => {
                let next = ((s - base) / BLOCK).min(last).max(b + 1);
                for _ in b..next {
                    out.push(*zero);
                }
                b = next;
            }
            None => {
                for _ in b..last {
                    out.push(*zero);
                }
                b = last;
            }
        }
    }
    Ok(out)
}

/// Computes the hash tree over the first `data_blocks` blocks of the
/// partition at `part_offset` and writes superblock and tree at `hash_offset`
/// (relative to the partition). `part_len` bounds the partition.
pub fn format(
    image: &File,
    part_offset: u64,
    part_len: u64,
    data_blocks: u64,
    hash_offset: u64,
    salt: [u8; 32],
    uuid: Uuid,
) -> Result<VerityInfo> {
    if data_blocks < 2 {
        bail!("dm-verity needs at least 2 data blocks");
    }
    // Checked: the sizes come from a layout (bounded by the planner, but
    // this is a public function).
    let overflow = || {
        anyhow::anyhow!("dm-verity: {data_blocks} data blocks at partition offset {part_offset}, hash offset {hash_offset}: sizes overflow 64 bits")
    };
    let data_bytes = data_blocks.checked_mul(BLOCK).ok_or_else(overflow)?;
    if !hash_offset.is_multiple_of(BLOCK) || hash_offset < data_bytes {
        bail!("verity hash offset {hash_offset} must be block-aligned and after the data");
    }
    let sizes = level_sizes(data_blocks);
    // Fewer tree blocks than data blocks: no overflow once data_bytes fits.
    let tree_blocks: u64 = sizes.iter().sum();
    let hash_bytes = BLOCK + tree_blocks * BLOCK;
    let base = part_offset.checked_add(hash_offset).ok_or_else(overflow)?;
    if hash_offset.checked_add(hash_bytes).ok_or_else(overflow)? > part_len
        || base.checked_add(hash_bytes).is_none()
    {
        bail!(
            "the partition ({part_len} B) has no room for the dm-verity tree ({hash_bytes} B at offset {hash_offset}): enlarge the partition or shrink fs_blocks"
        );
    }
    let zero = hash_block(&salt, &[0u8; BLOCK as usize]);
    let extents = sparse::data_extents(image, part_offset, part_offset + data_bytes)?;
    let threads =
        std::thread::available_parallelism().map(|n| n.get() as u64).unwrap_or(1).clamp(1, 16);
    let per = data_blocks.div_ceil(threads);
    let mut level0: Vec<[u8; 32]> = Vec::with_capacity(data_blocks as usize);
    std::thread::scope(|s| -> Result<()> {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (first, last) = ((t * per).min(data_blocks), ((t + 1) * per).min(data_blocks));
                let extents = &extents;
                let salt = &salt;
                let zero = &zero;
                s.spawn(move || hash_data(image, part_offset, first, last, extents, salt, zero))
            })
            .collect();
        for h in handles {
            level0.extend(h.join().map_err(|_| anyhow::anyhow!("hashing thread panicked"))??);
        }
        Ok(())
    })?;

    let (levels, root_hash) = build_levels(level0, &salt);
    debug_assert_eq!(levels.iter().map(|l| l.len() as u64 / BLOCK).collect::<Vec<_>>(), sizes);

    // Superblock, then the top level first, level 0 last.
    let sb = Superblock {
        hash_type: 1,
        uuid: *uuid.as_bytes(),
        algorithm: "sha256".into(),
        data_block_size: BLOCK as u32,
        hash_block_size: BLOCK as u32,
        data_blocks,
        salt: salt.to_vec(),
    }
    .to_bytes()?;
    image.write_all_at(&sb, base)?;
    let mut pos = base + BLOCK;
    for lvl in levels.iter().rev() {
        sparse::write_nonzero_at(image, pos, lvl)?;
        pos += lvl.len() as u64;
    }
    Ok(VerityInfo {
        root_hash,
        salt,
        data_blocks,
        data_block_size: BLOCK,
        hash_block_size: BLOCK,
        hash_offset,
        hash_bytes,
        uuid,
    })
}

/// The hash tree above `level0` (digests of the data blocks), level 0 first:
/// each level's blocks hold the digests of the level below, zero-padded; the
/// root hash is the digest of the single top block.
fn build_levels(level0: Vec<[u8; 32]>, salt: &[u8]) -> (Vec<Vec<u8>>, [u8; 32]) {
    let mut levels = Vec::new();
    let mut digests = level0;
    loop {
        let n = (digests.len() as u64).div_ceil(PER_BLOCK);
        let mut blocks = vec![0u8; (n * BLOCK) as usize];
        for (i, d) in digests.iter().enumerate() {
            blocks[i * DIGEST..(i + 1) * DIGEST].copy_from_slice(d);
        }
        digests = blocks.chunks(BLOCK as usize).map(|b| hash_block(salt, b)).collect();
        levels.push(blocks);
        if n <= 1 {
            return (levels, digests[0]);
        }
    }
}

pub use forge_formats::verity::Superblock;

/// The verity superblock at byte `at` of `image`: `None` when there is no
/// verity signature there, an error when there is one but the rest is wrong.
pub fn read_superblock(image: &File, at: u64) -> Result<Option<Superblock>> {
    let mut b = [0u8; forge_formats::verity::SUPERBLOCK_BYTES];
    image
        .read_exact_at(&mut b, at)
        .with_context(|| format!("reading {} B at offset {at}", b.len()))?;
    if !forge_formats::verity::has_magic(&b) {
        return Ok(None);
    }
    Ok(Some(Superblock::parse(&b).with_context(|| format!("at offset {at}"))?))
}

/// Recomputes the root hash of a partition of `part_len` bytes whose
/// superblock sits at `hash_offset` (relative to the partition), from the
/// data alone. The superblock is checked against the partition first: at
/// least one data block, the data before the superblock, the tree after it
/// inside the partition (so the work and memory are bounded by its size).
pub fn compute_root(
    image: &File,
    part_offset: u64,
    part_len: u64,
    hash_offset: u64,
) -> Result<Option<[u8; 32]>> {
    let Some(sb) = read_superblock(image, part_offset + hash_offset)? else { return Ok(None) };
    if sb.algorithm != "sha256"
        || sb.data_block_size as u64 != BLOCK
        || sb.hash_block_size as u64 != BLOCK
    {
        bail!(
            "verity superblock: only sha256 with 4096-byte blocks is supported (found {} {}/{})",
            sb.algorithm,
            sb.data_block_size,
            sb.hash_block_size
        );
    }
    check_extent(&sb, part_len, hash_offset)?;
    let zero = hash_block(&sb.salt, &[0u8; BLOCK as usize]);
    let extents = sparse::data_extents(image, part_offset, part_offset + sb.data_blocks * BLOCK)?;
    let level0 = hash_data(image, part_offset, 0, sb.data_blocks, &extents, &sb.salt, &zero)?;
    Ok(Some(build_levels(level0, &sb.salt).1))
}

/// Checks that the data and the tree `sb` describes fit a partition of
/// `part_len` bytes with the superblock at `hash_offset` (4096-byte blocks).
fn check_extent(sb: &Superblock, part_len: u64, hash_offset: u64) -> Result<()> {
    let n = sb.data_blocks;
    if n == 0 {
        bail!("verity superblock at offset {hash_offset}: 0 data blocks");
    }
    let data = n.checked_mul(BLOCK).filter(|d| *d <= hash_offset);
    if data.is_none() {
        bail!(
            "verity superblock at offset {hash_offset}: {n} data blocks of {BLOCK} B do not fit before it"
        );
    }
    let tree: u64 = level_sizes(n).iter().sum();
    let end = hash_offset.checked_add(BLOCK + tree * BLOCK);
    if end.is_none_or(|e| e > part_len) {
        bail!(
            "verity superblock at offset {hash_offset}: its tree for {n} data blocks ({tree} blocks) does not fit the partition ({part_len} B)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels() {
        assert_eq!(level_sizes(260_094), vec![2032, 16, 1]);
        assert_eq!(level_sizes(128), vec![1]);
        assert_eq!(level_sizes(129), vec![2, 1]);
    }

    #[test]
    fn sizes_that_overflow_are_errors() {
        let f = tempfile::tempfile().unwrap();
        f.set_len(1 << 20).unwrap();
        // Each wrapped around (or panicked in debug builds) before.
        for (part_offset, data_blocks, hash_offset) in
            [(0, u64::MAX / 2, 0), (0, 1 << 62, 1 << 20), (u64::MAX - 4095, 16, 1 << 16)]
        {
            let r =
                format(&f, part_offset, u64::MAX, data_blocks, hash_offset, [0; 32], Uuid::nil());
            let e = format!("{:#}", r.unwrap_err());
            assert!(e.contains("overflow") || e.contains("after the data"), "{e}");
        }
    }

    #[test]
    fn recompute_matches() {
        let d = tempfile::tempdir().unwrap();
        let f = sparse::create(&d.path().join("v"), 8 << 20).unwrap();
        f.write_all_at(&[9u8; 10_000], 4096 * 3).unwrap();
        let info = format(&f, 0, 8 << 20, 1000, 1000 * BLOCK, [7u8; 32], Uuid::nil()).unwrap();
        assert_eq!(compute_root(&f, 0, 8 << 20, info.hash_offset).unwrap(), Some(info.root_hash));
        f.write_all_at(&[1u8], 4096 * 500).unwrap();
        assert_ne!(compute_root(&f, 0, 8 << 20, info.hash_offset).unwrap(), Some(info.root_hash));
    }

    /// Superblocks whose `data_blocks` do not fit the partition: 0 used to
    /// panic, 2^58 to overflow, 2^28 to allocate 8 GiB.
    #[test]
    fn hostile_data_blocks() {
        let d = tempfile::tempdir().unwrap();
        let f = sparse::create(&d.path().join("v"), 8 << 20).unwrap();
        let info = format(&f, 0, 8 << 20, 1000, 1000 * BLOCK, [7u8; 32], Uuid::nil()).unwrap();
        let at = info.hash_offset;
        for (n, want) in [
            (0u64, "0 data blocks"),
            (1 << 58, "do not fit before it"),
            (1 << 28, "do not fit before it"),
            (u64::MAX, "do not fit before it"),
        ] {
            f.write_all_at(&n.to_le_bytes(), at + 72).unwrap();
            let e = compute_root(&f, 0, 8 << 20, at).unwrap_err().to_string();
            assert!(e.contains(want), "{n}: {e}");
        }
        // Data that fits, a tree that does not (the partition ends early).
        f.write_all_at(&1000u64.to_le_bytes(), at + 72).unwrap();
        let e = compute_root(&f, 0, at + 2 * BLOCK, at).unwrap_err().to_string();
        assert!(e.contains("does not fit the partition"), "{e}");
        // One data block is a valid (one-level) tree.
        f.write_all_at(&1u64.to_le_bytes(), at + 72).unwrap();
        assert!(compute_root(&f, 0, 8 << 20, at).unwrap().is_some());
    }
}
