//! Exactly once without windows: which part of each message, read in stream order, is new.
//!
//! JetStream drops a repeated `Nats-Msg-Id` only inside its duplicate window. An edge that
//! ships again after a restart, or after an acknowledgement it never got, may send records
//! the stream already holds, however long afterwards, and with other message boundaries. The
//! merger keeps each node's high-water mark (the last of its sequence numbers merged; stored
//! with the merged log's checkpoint) and admits only what lies above it. Shippers send one
//! message at a time and only move on after its acknowledgement, so a node's messages arrive
//! in sequence order: a message that starts above the mark + 1 means records went missing
//! from the stream (a retention limit, a purge). It is not merged — the node's records stay
//! dense and its chain provable — and is reported until a message that fills the gap arrives.

use std::collections::BTreeMap;
use std::ops::Range;

use crate::envelope::Message;

/// What to do with one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admit {
    /// Merge `records[range]` (sequence numbers `first + range.start ..`) and `chain`, the
    /// indices of the message's chain entries that end inside that range.
    New { range: Range<usize>, chain: Vec<usize> },
    /// Everything in it was merged before.
    Duplicate,
    /// The node's next record should be `expected`; this message starts at `got`.
    Gap { expected: u64, got: u64 },
}

#[derive(Debug, Clone, Default)]
pub struct Merger {
    high_water: BTreeMap<u16, u64>,
}

impl Merger {
    /// Resumes from the high-water marks stored with the merged log's checkpoint.
    pub fn new(high_water: BTreeMap<u16, u64>) -> Merger {
        Merger { high_water }
    }

    pub fn high_water(&self, node: u16) -> u64 {
        self.high_water.get(&node).copied().unwrap_or(0)
    }

    /// Decides what of `msg` is new and, if anything is, counts it as merged: call
    /// [`tally_log::Log::merge`] with it before deciding the next message, or start again
    /// from the stored checkpoint.
    pub fn admit(&mut self, msg: &Message) -> Admit {
        let hw = self.high_water(msg.node);
        if msg.last() <= hw {
            return Admit::Duplicate;
        }
        if msg.first > hw + 1 {
            return Admit::Gap { expected: hw + 1, got: msg.first };
        }
        let skip = (hw + 1 - msg.first) as usize;
        let chain = msg
            .chain
            .iter()
            .enumerate()
            .filter(|(_, entry)| chain_last(entry).is_some_and(|last| last > hw && last <= msg.last()))
            .map(|(i, _)| i)
            .collect();
        self.high_water.insert(msg.node, msg.last());
        Admit::New { range: skip..msg.records.len(), chain }
    }
}

/// The last sequence number of the batch a chain entry covers (see `tally_log::chain`).
fn chain_last(entry: &[u8]) -> Option<u64> {
    tally_log::chain::ChainEntry::decode(entry).map(|e| e.last())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn msg(node: u16, first: u64, last: u64) -> Message {
        Message { node, first, records: (first..=last).map(|s| s.to_be_bytes().to_vec()).collect(), chain: vec![] }
    }

    #[test]
    fn repeats_are_dropped_overlaps_trimmed_and_gaps_held() {
        let mut m = Merger::default();
        assert_eq!(m.admit(&msg(1, 1, 3)), Admit::New { range: 0..3, chain: vec![] });
        assert_eq!(m.admit(&msg(1, 1, 3)), Admit::Duplicate);
        assert_eq!(m.admit(&msg(1, 2, 5)), Admit::New { range: 2..4, chain: vec![] });
        assert_eq!(m.admit(&msg(1, 8, 9)), Admit::Gap { expected: 6, got: 8 });
        assert_eq!(m.high_water(1), 5);
        assert_eq!(m.admit(&msg(2, 1, 1)), Admit::New { range: 0..1, chain: vec![] });
        assert_eq!(m.admit(&msg(1, 6, 9)), Admit::New { range: 0..4, chain: vec![] });
    }

    #[test]
    fn only_chain_entries_of_new_batches_are_kept() {
        let entry = |first: u64, count: u32| {
            let mut e = vec![2];
            e.extend_from_slice(&first.to_be_bytes());
            e.extend_from_slice(&count.to_be_bytes());
            e.extend_from_slice(&[0; 32]);
            e.extend(std::iter::repeat_n(0, 8 * count as usize));
            e
        };
        let mut m = Merger::new(BTreeMap::from([(1, 2)]));
        let mut message = msg(1, 1, 4);
        message.chain = vec![entry(1, 2), entry(3, 2), b"junk".to_vec()];
        assert_eq!(m.admit(&message), Admit::New { range: 2..4, chain: vec![1] });
    }

    proptest! {
        /// Two edges ship records 1..=n each in messages of arbitrary sizes; a shipper may
        /// send its last message again (an acknowledgement lost), or restart from any earlier
        /// point with new boundaries. Whatever the interleaving, each node's records are
        /// merged exactly once, in order.
        #[test]
        fn every_record_is_merged_once_in_order(
            n in 1u64..60,
            plan in proptest::collection::vec((0u16..2, 1u64..8, 0u8..4), 1..200),
        ) {
            let mut shipped = [0u64; 2];
            let mut stream = Vec::new();
            for (node, size, fault) in plan {
                let i = usize::from(node);
                if shipped[i] >= n {
                    continue;
                }
                let first = match fault {
                    // Restart from a shipped position that was never stored.
                    0 => shipped[i].saturating_sub(size) + 1,
                    _ => shipped[i] + 1,
                };
                let last = (first + size - 1).min(n);
                stream.push(msg(node, first, last));
                if fault == 1 {
                    stream.push(msg(node, first, last));
                }
                shipped[i] = shipped[i].max(last);
            }
            let mut merger = Merger::default();
            let mut merged: [Vec<u64>; 2] = [vec![], vec![]];
            for m in &stream {
                match merger.admit(m) {
                    Admit::New { range, .. } => {
                        for j in range {
                            merged[usize::from(m.node)].push(m.first + j as u64);
                        }
                    }
                    Admit::Duplicate => {}
                    Admit::Gap { .. } => prop_assert!(false, "a shipper that waits for acks leaves no gap"),
                }
            }
            for (i, seqs) in merged.iter().enumerate() {
                let want: Vec<u64> = (1..=shipped[i]).collect();
                prop_assert_eq!(seqs, &want);
            }
        }
    }
}
