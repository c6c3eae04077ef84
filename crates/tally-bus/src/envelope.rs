//! One bus message: a run of consecutive records of one edge's log, with the chain entries
//! of the batches that end inside the run. Our own small format, so a message is read the same
//! way by every version that knows its version byte:
//!
//! ```text
//! offset  size   field
//! 0       1      version (1)
//! 1       2      node, u16 big-endian
//! 3       8      first sequence number, u64 big-endian
//! 11      4      record count r, u32 big-endian
//! 15      4      chain entry count c, u32 big-endian
//! 19      …      r records, then c chain entries, each as: length u32 BE ‖ bytes
//! ```
//!
//! Records carry consecutive sequence numbers from `first`; each is the value the edge's log
//! stores (chained bytes and personal trailer), unchanged.

use thiserror::Error;

const VERSION: u8 = 1;
const HEADER: usize = 19;

/// A decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub node: u16,
    pub first: u64,
    pub records: Vec<Vec<u8>>,
    pub chain: Vec<Vec<u8>>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("message version {0} is not one this build reads")]
    Version(u8),
    #[error("message truncated")]
    Truncated,
    #[error("message carries no records")]
    Empty,
    #[error("{0} bytes after the message's last field")]
    Trailing(usize),
    #[error("message's sequence numbers overflow")]
    Overflow,
}

impl Message {
    /// The last sequence number the message carries.
    pub fn last(&self) -> u64 {
        self.first + self.records.len().saturating_sub(1) as u64
    }

    /// The bytes of a message, `Nats-Msg-Id` aside (see [`Message::id`]).
    pub fn encode(&self) -> Vec<u8> {
        let body: usize = self.records.iter().chain(&self.chain).map(|r| 4 + r.len()).sum();
        let mut out = Vec::with_capacity(HEADER + body);
        out.push(VERSION);
        out.extend_from_slice(&self.node.to_be_bytes());
        out.extend_from_slice(&self.first.to_be_bytes());
        out.extend_from_slice(&(self.records.len() as u32).to_be_bytes());
        out.extend_from_slice(&(self.chain.len() as u32).to_be_bytes());
        for r in self.records.iter().chain(&self.chain) {
            out.extend_from_slice(&(r.len() as u32).to_be_bytes());
            out.extend_from_slice(r);
        }
        out
    }

    /// The size [`Message::encode`] gives a message with these parts.
    pub fn encoded_len(records: usize, record_bytes: usize) -> usize {
        HEADER + 4 * records + record_bytes
    }

    pub fn decode(bytes: &[u8]) -> Result<Message, EnvelopeError> {
        let mut r = Reader(bytes);
        let version = r.take(1)?[0];
        if version != VERSION {
            return Err(EnvelopeError::Version(version));
        }
        let node = u16::from_be_bytes(r.array()?);
        let first = u64::from_be_bytes(r.array()?);
        let records = u32::from_be_bytes(r.array()?) as usize;
        let chain = u32::from_be_bytes(r.array()?) as usize;
        if records == 0 {
            return Err(EnvelopeError::Empty);
        }
        if first == 0 || first.checked_add(records as u64).is_none() {
            return Err(EnvelopeError::Overflow);
        }
        // Each part takes at least its 4-byte length: a count larger than the bytes left is
        // refused before anything is allocated for it.
        if records.saturating_add(chain).saturating_mul(4) > r.0.len() {
            return Err(EnvelopeError::Truncated);
        }
        let mut parts = |n: usize| (0..n).map(|_| r.part()).collect::<Result<Vec<_>, _>>();
        let records = parts(records)?;
        let chain = parts(chain)?;
        if !r.0.is_empty() {
            return Err(EnvelopeError::Trailing(r.0.len()));
        }
        Ok(Message { node, first, records, chain })
    }

    /// The message's `Nats-Msg-Id`: `{node}:{first}-{last}`. JetStream drops a second
    /// message with an ID it saw inside its duplicate window; the consumer's high-water marks
    /// drop any other repeat.
    pub fn id(&self) -> String {
        format!("{}:{}-{}", self.node, self.first, self.last())
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], EnvelopeError> {
        if self.0.len() < n {
            return Err(EnvelopeError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], EnvelopeError> {
        self.take(N)?.try_into().map_err(|_| EnvelopeError::Truncated)
    }

    fn part(&mut self) -> Result<Vec<u8>, EnvelopeError> {
        let len = u32::from_be_bytes(self.array()?) as usize;
        Ok(self.take(len)?.to_vec())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_format_is_frozen() {
        let m = Message { node: 7, first: 3, records: vec![b"ab".to_vec(), vec![]], chain: vec![b"c".to_vec()] };
        let bytes = m.encode();
        let want: &[u8] = &[
            1, 0, 7, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2, b'a', b'b', 0, 0, 0, 0, 0, 0, 0, 1,
            b'c',
        ];
        assert_eq!(bytes, want);
        assert_eq!(bytes.len(), Message::encoded_len(2, 2) + 5);
        assert_eq!(m.id(), "7:3-4");
    }

    #[test]
    fn bad_messages_are_refused() {
        let m = Message { node: 1, first: 1, records: vec![b"x".to_vec()], chain: vec![] };
        let bytes = m.encode();
        assert_eq!(Message::decode(&bytes[..bytes.len() - 1]), Err(EnvelopeError::Truncated));
        let mut extra = bytes.clone();
        extra.push(0);
        assert_eq!(Message::decode(&extra), Err(EnvelopeError::Trailing(1)));
        let mut v2 = bytes.clone();
        v2[0] = 2;
        assert_eq!(Message::decode(&v2), Err(EnvelopeError::Version(2)));
        let empty = Message { records: vec![], ..m.clone() }.encode();
        assert_eq!(Message::decode(&empty), Err(EnvelopeError::Empty));
        let zero = Message { first: 0, ..m.clone() }.encode();
        assert_eq!(Message::decode(&zero), Err(EnvelopeError::Overflow));
        // A count of four billion records in a short message allocates nothing.
        let mut huge = bytes;
        huge[11..15].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(Message::decode(&huge), Err(EnvelopeError::Truncated));
    }

    proptest! {
        #[test]
        fn messages_round_trip(
            node in any::<u16>(),
            first in 1u64..u64::MAX / 2,
            records in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..20),
            chain in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..60), 0..4),
        ) {
            let m = Message { node, first, records, chain };
            prop_assert_eq!(Message::decode(&m.encode()), Ok(m));
        }

        #[test]
        fn any_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Message::decode(&bytes);
        }
    }
}
