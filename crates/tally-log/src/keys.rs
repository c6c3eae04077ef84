//! Typed keys. Every key is fixed-width big-endian so RocksDB's bytewise order is numeric
//! order: iterating the `events` column family walks the log in sequence order.

/// Column family holding `seq -> record`.
pub const CF_EVENTS: &str = "events";
/// Column family holding `last seq of batch -> chain entry`.
pub const CF_CHAIN: &str = "chain";
/// Column family holding `BLAKE3(uniqueness key) -> seq of the first event with that key`.
pub const CF_UNIQUE: &str = "unique";
/// Column family holding the day keys and the retention floor (see `privacy`). Only the
/// primary opens it: readers never need it.
pub const CF_PRIVACY: &str = "privacy";
/// Column family of a log that takes part in a cluster (see `origin`): an edge's shipped
/// position; a merged log's origins, per-node high-water marks and stream position. Opened by
/// the primary, and by readers when the log has it.
pub const CF_BUS: &str = "bus";
/// Column family indexing the log's program edits: `seq -> ()` for every `ProgramEdit`
/// record, written in the batch that appends it, so a starting edge rebuilds the program's
/// managed part without reading every click. Opened by the primary, and by readers when the
/// log has it (logs written before program edits existed do not, and hold none).
pub const CF_PROGRAM: &str = "program";
/// The families every reader opens.
pub const ALL_CFS: [&str; 3] = [CF_EVENTS, CF_CHAIN, CF_UNIQUE];

pub fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

/// Decodes a sequence key; `None` if it is not 8 bytes (a key we did not write).
pub fn parse_seq_key(key: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(key).ok().map(u64::from_be_bytes)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn seq_keys_sort_numerically_and_round_trip(a in any::<u64>(), b in any::<u64>()) {
            prop_assert_eq!(a.cmp(&b), seq_key(a).cmp(&seq_key(b)));
            prop_assert_eq!(parse_seq_key(&seq_key(a)), Some(a));
        }
    }

    #[test]
    fn foreign_keys_are_not_sequences() {
        assert_eq!(parse_seq_key(b"short"), None);
    }
}
