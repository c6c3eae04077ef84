//! The tamper-evident hash chain.
//!
//! Each committed batch stores one chain entry under the key of its last sequence number:
//!
//! ```text
//! offset  size     field
//! 0       1        entry version (2; 1 in logs written before December 2026)
//! 1       8        first sequence of the batch, u64 big-endian
//! 9       4        record count n, u32 big-endian
//! 13      32       head = BLAKE3(previous head ‖ for each record: seq u64 BE ‖ len u32 BE ‖ bytes)
//! 45      8 × n    leaf digests, one per record:
//!                    version 2: XXH3-64(bytes, seed = seq), u64 big-endian
//!                    version 1: the first 8 bytes of BLAKE3(seq u64 BE ‖ bytes)
//! ```
//!
//! The head of the first batch chains from 32 zero bytes. The head alone proves the batch;
//! the leaves only let `verify` name the exact record that changed inside a bad batch. That is
//! why a leaf may be a fast non-cryptographic hash: a forger who fits a record to its leaf
//! still breaks the head, and `verify` then names the batch instead of the record. Version 1
//! leaves were BLAKE3, the largest per-record cost of the writer thread after RocksDB itself;
//! both versions verify, and a log may hold both.

pub const GENESIS: [u8; 32] = [0; 32];
/// The version the writer stores; [`ChainEntry::decode`] also reads [`LEAF_BLAKE3`].
const ENTRY_VERSION: u8 = LEAF_XXH3;
/// Entry versions, named by how their leaves are hashed.
pub const LEAF_BLAKE3: u8 = 1;
pub const LEAF_XXH3: u8 = 2;
const FIXED: usize = 45;

/// Accumulates one batch's head and leaves as records are added in sequence order.
///
/// The head's input is gathered into one buffer and hashed at the end: BLAKE3 hashes whole
/// 1 KiB chunks side by side in SIMD lanes, but only when it is given them at once. Fed a
/// record at a time it compressed one 64-byte block after another, and the chain was the
/// largest single cost of the log's writer thread.
#[derive(Debug)]
pub struct BatchHasher {
    prev_head: [u8; 32],
    preimage: Vec<u8>,
    first: u64,
    count: u32,
    leaves: Vec<u8>,
}

impl BatchHasher {
    pub fn new(prev_head: &[u8; 32], first: u64) -> BatchHasher {
        BatchHasher { prev_head: *prev_head, preimage: Vec::new(), first, count: 0, leaves: Vec::new() }
    }

    pub fn add(&mut self, seq: u64, record: &[u8]) {
        let len = u32::try_from(record.len()).unwrap_or(u32::MAX);
        self.preimage.extend_from_slice(&seq.to_be_bytes());
        self.preimage.extend_from_slice(&len.to_be_bytes());
        self.preimage.extend_from_slice(record);
        self.leaves.extend_from_slice(&leaf(ENTRY_VERSION, seq, record));
        self.count += 1;
    }

    /// The new head and the encoded chain entry.
    pub fn finish(self) -> ([u8; 32], Vec<u8>) {
        let mut hasher = blake3::Hasher::new();
        hasher.update(&self.prev_head);
        hasher.update(&self.preimage);
        let head: [u8; 32] = hasher.finalize().into();
        let mut entry = Vec::with_capacity(FIXED + self.leaves.len());
        entry.push(ENTRY_VERSION);
        entry.extend_from_slice(&self.first.to_be_bytes());
        entry.extend_from_slice(&self.count.to_be_bytes());
        entry.extend_from_slice(&head);
        entry.extend_from_slice(&self.leaves);
        (head, entry)
    }
}

/// A record's leaf digest as entries of `version` store it. Only called with a version
/// [`ChainEntry::decode`] accepted; any other is hashed as the current one.
pub fn leaf(version: u8, seq: u64, record: &[u8]) -> [u8; 8] {
    if version == LEAF_BLAKE3 {
        let mut h = blake3::Hasher::new();
        h.update(&seq.to_be_bytes());
        h.update(record);
        let mut out = [0; 8];
        out.copy_from_slice(&h.finalize().as_bytes()[..8]);
        return out;
    }
    xxhash_rust::xxh3::xxh3_64_with_seed(record, seq).to_be_bytes()
}

/// A decoded chain entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainEntry {
    /// [`LEAF_BLAKE3`] or [`LEAF_XXH3`]: how `leaves` were hashed (see [`leaf`]).
    pub version: u8,
    pub first: u64,
    pub count: u32,
    pub head: [u8; 32],
    pub leaves: Vec<[u8; 8]>,
}

impl ChainEntry {
    pub fn decode(bytes: &[u8]) -> Option<ChainEntry> {
        let version = *bytes.first()?;
        if bytes.len() < FIXED || !matches!(version, LEAF_BLAKE3 | LEAF_XXH3) {
            return None;
        }
        let first = u64::from_be_bytes(bytes[1..9].try_into().ok()?);
        let count = u32::from_be_bytes(bytes[9..13].try_into().ok()?);
        let head: [u8; 32] = bytes[13..45].try_into().ok()?;
        let rest = &bytes[FIXED..];
        if rest.len() != count as usize * 8 || count == 0 {
            return None;
        }
        let leaves = rest.chunks_exact(8).filter_map(|c| c.try_into().ok()).collect();
        Some(ChainEntry { version, first, count, head, leaves })
    }

    pub fn last(&self) -> u64 {
        self.first + u64::from(self.count) - 1
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_chain() {
        let mut b = BatchHasher::new(&GENESIS, 1);
        b.add(1, b"one");
        b.add(2, b"two");
        let (head, entry) = b.finish();
        let e = ChainEntry::decode(&entry).unwrap();
        assert_eq!((e.first, e.count, e.last(), e.head), (1, 2, 2, head));
        assert_eq!(e.version, LEAF_XXH3);
        assert_eq!(e.leaves[1], leaf(LEAF_XXH3, 2, b"two"));

        // Same records after a different head give a different head.
        let mut b2 = BatchHasher::new(&head, 1);
        b2.add(1, b"one");
        b2.add(2, b"two");
        assert_ne!(b2.finish().0, head);
    }

    /// The head is the documented hash, field by field, whatever the batch's size (a batch
    /// of 100 records of 150 bytes spans many BLAKE3 chunks). Logs written when the head was
    /// hashed a record at a time verify the same.
    #[test]
    fn the_head_is_blake3_of_the_previous_head_and_each_record_framed() {
        for n in [1u64, 2, 7, 100] {
            let prev = [7u8; 32];
            let records: Vec<Vec<u8>> = (0..n).map(|i| vec![i as u8; 150 + i as usize]).collect();
            let mut b = BatchHasher::new(&prev, 40);
            let mut expected = blake3::Hasher::new();
            expected.update(&prev);
            for (i, r) in records.iter().enumerate() {
                let seq = 40 + i as u64;
                b.add(seq, r);
                expected.update(&seq.to_be_bytes());
                expected.update(&(r.len() as u32).to_be_bytes());
                expected.update(r);
            }
            let (head, entry) = b.finish();
            assert_eq!(head, *expected.finalize().as_bytes(), "{n} records");
            assert_eq!(ChainEntry::decode(&entry).unwrap().head, head);
        }
        // Frozen: one record `one` at sequence 1 after the genesis head.
        let mut b = BatchHasher::new(&GENESIS, 1);
        b.add(1, b"one");
        let mut expected = blake3::Hasher::new();
        expected.update(&GENESIS);
        expected.update(&[0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 3]);
        expected.update(b"one");
        assert_eq!(b.finish().0, *expected.finalize().as_bytes());
    }

    /// Both leaf formats are frozen: logs of either version must keep verifying.
    #[test]
    fn leaf_digests_are_frozen_for_both_versions() {
        let mut v1 = blake3::Hasher::new();
        v1.update(&[0, 0, 0, 0, 0, 0, 0, 9]);
        v1.update(b"record");
        assert_eq!(leaf(LEAF_BLAKE3, 9, b"record"), v1.finalize().as_bytes()[..8]);
        assert_eq!(leaf(LEAF_XXH3, 9, b"record"), xxhash_rust::xxh3::xxh3_64_with_seed(b"record", 9).to_be_bytes());
        // The sequence number is part of the leaf: a record moved to another place differs.
        assert_ne!(leaf(LEAF_XXH3, 9, b"record"), leaf(LEAF_XXH3, 10, b"record"));
        assert_ne!(leaf(LEAF_BLAKE3, 9, b"record"), leaf(LEAF_BLAKE3, 10, b"record"));
    }

    /// An entry written by the version-1 writer (BLAKE3 leaves) still decodes, and says so.
    #[test]
    fn version_1_entries_decode() {
        let head = [5u8; 32];
        let mut entry = vec![LEAF_BLAKE3];
        entry.extend_from_slice(&3u64.to_be_bytes());
        entry.extend_from_slice(&1u32.to_be_bytes());
        entry.extend_from_slice(&head);
        entry.extend_from_slice(&leaf(LEAF_BLAKE3, 3, b"x"));
        let e = ChainEntry::decode(&entry).unwrap();
        assert_eq!((e.version, e.first, e.count, e.head), (LEAF_BLAKE3, 3, 1, head));
        assert_eq!(e.leaves, vec![leaf(LEAF_BLAKE3, 3, b"x")]);
        // An unknown version is refused, not read as either.
        entry[0] = 3;
        assert!(ChainEntry::decode(&entry).is_none());
    }

    #[test]
    fn malformed_entries_are_rejected() {
        assert!(ChainEntry::decode(b"").is_none());
        let mut b = BatchHasher::new(&GENESIS, 1);
        b.add(1, b"x");
        let (_, mut entry) = b.finish();
        entry.push(0);
        assert!(ChainEntry::decode(&entry).is_none());
    }
}
