//! Build seed: every identifier that upstream would draw at random (partition
//! GUIDs, filesystem UUIDs, the verity salt, FAT volume IDs) is derived from
//! one seed string instead, so two builds with the same seed are identical.

use sha2::{Digest, Sha256};
use uuid::Uuid;

/// The seed used when the caller gives none.
pub const DEFAULT_SEED: &str = "forge-default-seed";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seed(String);

impl Seed {
    pub fn new(s: impl Into<String>) -> Self {
        Seed(s.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// 32 bytes derived from the seed for one purpose (e.g. `"fs-uuid:ROOT"`).
    pub fn bytes(&self, purpose: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"forge-seed-v1\0");
        h.update(self.0.as_bytes());
        h.update(b"\0");
        h.update(purpose.as_bytes());
        h.finalize().into()
    }

    /// A random-looking (version 4, RFC 4122 variant) UUID derived from the seed.
    pub fn uuid(&self, purpose: &str) -> Uuid {
        let b = self.bytes(purpose);
        let mut u = [0u8; 16];
        u.copy_from_slice(&b[..16]);
        uuid::Builder::from_random_bytes(u).into_uuid()
    }

    /// A 32-bit value (FAT volume serial numbers).
    pub fn u32(&self, purpose: &str) -> u32 {
        let b = self.bytes(purpose);
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
}

impl Default for Seed {
    fn default() -> Self {
        Seed::new(DEFAULT_SEED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_stable_and_distinct() {
        let a = Seed::new("x");
        assert_eq!(a.uuid("p"), Seed::new("x").uuid("p"));
        assert_ne!(a.uuid("p"), a.uuid("q"));
        assert_ne!(a.uuid("p"), Seed::new("y").uuid("p"));
        assert_eq!(a.uuid("p").get_version_num(), 4);
    }
}
