//! The tamper-evident hash chain.
//!
//! Each committed batch stores one chain entry under the key of its last sequence number:
//!
//! ```text
//! offset  size     field
//! 0       1        entry version (1)
//! 1       8        first sequence of the batch, u64 big-endian
//! 9       4        record count n, u32 big-endian
//! 13      32       head = BLAKE3(previous head ‖ for each record: seq u64 BE ‖ len u32 BE ‖ bytes)
//! 45      8 × n    leaf digests: the first 8 bytes of BLAKE3(seq u64 BE ‖ bytes), per record
//! ```
//!
//! The head of the first batch chains from 32 zero bytes. The head alone proves the batch;
//! the leaves only let `verify` name the exact record that changed inside a bad batch.

pub const GENESIS: [u8; 32] = [0; 32];
const ENTRY_VERSION: u8 = 1;
const FIXED: usize = 45;

/// Accumulates one batch's head and leaves as records are added in sequence order.
#[derive(Debug)]
pub struct BatchHasher {
    head: blake3::Hasher,
    first: u64,
    count: u32,
    leaves: Vec<u8>,
}

impl BatchHasher {
    pub fn new(prev_head: &[u8; 32], first: u64) -> BatchHasher {
        let mut head = blake3::Hasher::new();
        head.update(prev_head);
        BatchHasher { head, first, count: 0, leaves: Vec::new() }
    }

    pub fn add(&mut self, seq: u64, record: &[u8]) {
        let len = u32::try_from(record.len()).unwrap_or(u32::MAX);
        self.head.update(&seq.to_be_bytes());
        self.head.update(&len.to_be_bytes());
        self.head.update(record);
        self.leaves.extend_from_slice(&leaf(seq, record));
        self.count += 1;
    }

    /// The new head and the encoded chain entry.
    pub fn finish(self) -> ([u8; 32], Vec<u8>) {
        let head: [u8; 32] = self.head.finalize().into();
        let mut entry = Vec::with_capacity(FIXED + self.leaves.len());
        entry.push(ENTRY_VERSION);
        entry.extend_from_slice(&self.first.to_be_bytes());
        entry.extend_from_slice(&self.count.to_be_bytes());
        entry.extend_from_slice(&head);
        entry.extend_from_slice(&self.leaves);
        (head, entry)
    }
}

pub fn leaf(seq: u64, record: &[u8]) -> [u8; 8] {
    let mut h = blake3::Hasher::new();
    h.update(&seq.to_be_bytes());
    h.update(record);
    let mut out = [0; 8];
    out.copy_from_slice(&h.finalize().as_bytes()[..8]);
    out
}

/// A decoded chain entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainEntry {
    pub first: u64,
    pub count: u32,
    pub head: [u8; 32],
    pub leaves: Vec<[u8; 8]>,
}

impl ChainEntry {
    pub fn decode(bytes: &[u8]) -> Option<ChainEntry> {
        if bytes.len() < FIXED || bytes[0] != ENTRY_VERSION {
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
        Some(ChainEntry { first, count, head, leaves })
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
        assert_eq!(e.leaves[1], leaf(2, b"two"));

        // Same records after a different head give a different head.
        let mut b2 = BatchHasher::new(&head, 1);
        b2.add(1, b"one");
        b2.add(2, b"two");
        assert_ne!(b2.finish().0, head);
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
