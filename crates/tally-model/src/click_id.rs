//! Click IDs: the 128-bit identifier minted for every tracked click and carried
//! through the advertiser's site until it comes back on a conversion postback.
//!
//! Layout, all big-endian: 48-bit Unix timestamp in milliseconds, 16-bit node ID of
//! the edge that minted it, 64 random bits. Because the timestamp leads, byte order
//! is time order, which keeps storage keys for recent clicks together.
//!
//! The text form is 26 characters of Crockford base32, laid out like a ULID: the
//! 128 bits are read big-endian in 5-bit groups, with the first character holding
//! only the top 3 bits (so it is `0`–`7`). Printed uppercase, the strings sort the
//! same way as the bytes. Stored forms (serde) use the 16 raw bytes instead.

use std::fmt;
use std::str::FromStr;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

const INVALID: u8 = 0xFF;

/// ASCII byte to 5-bit value, or [`INVALID`].
const DECODE: [u8; 128] = {
    let mut table = [INVALID; 128];
    let mut i = 0;
    while i < ALPHABET.len() {
        let upper = ALPHABET[i];
        table[upper as usize] = i as u8;
        table[upper.to_ascii_lowercase() as usize] = i as u8;
        i += 1;
    }
    // Crockford's aliases for characters people misread or mistype.
    table[b'I' as usize] = 1;
    table[b'i' as usize] = 1;
    table[b'L' as usize] = 1;
    table[b'l' as usize] = 1;
    table[b'O' as usize] = 0;
    table[b'o' as usize] = 0;
    table
};

const TIMESTAMP_MASK: u64 = (1 << 48) - 1;

/// Why a string is not a click ID.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum ClickIdError {
    /// Wrong number of characters (Unicode scalar values, not bytes).
    #[error("click id must be 26 characters, got {0}")]
    Length(usize),
    /// A character outside Crockford base32, counted in characters from 0.
    #[error("invalid character in click id at position {position}")]
    InvalidChar { position: usize },
    /// The first character is above `7`, so the value needs more than 128 bits.
    #[error("click id is out of range (first character must be 0-7)")]
    Overflow,
}

/// A 16-byte click identifier; see the module docs for the layout.
///
/// The derived `Ord` compares bytes lexicographically, which is the same as
/// comparing by timestamp first.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClickId([u8; 16]);

impl ClickId {
    /// Length of the text form.
    pub const ENCODED_LEN: usize = 26;

    /// Builds an ID from its parts; bits of `ts_ms` above 48 are dropped (48 bits
    /// of milliseconds last until the year 10889).
    pub fn new(ts_ms: u64, node: u16, random: u64) -> ClickId {
        let value = (u128::from(ts_ms & TIMESTAMP_MASK) << 80) | (u128::from(node) << 64) | u128::from(random);
        ClickId(value.to_be_bytes())
    }

    /// Mints a fresh ID with 64 bits from the thread-local CSPRNG, so IDs cannot be
    /// guessed from one another and forged onto a conversion.
    pub fn mint(ts_ms: u64, node: u16) -> ClickId {
        ClickId::new(ts_ms, node, rand::random::<u64>())
    }

    /// Wraps stored bytes; every 16-byte value is a valid ID.
    pub fn from_bytes(bytes: [u8; 16]) -> ClickId {
        ClickId(bytes)
    }

    /// The raw big-endian form used as a storage key.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Milliseconds since the Unix epoch when the click was minted.
    pub fn timestamp_ms(&self) -> u64 {
        (self.as_u128() >> 80) as u64
    }

    /// The edge node that minted the ID.
    pub fn node(&self) -> u16 {
        (self.as_u128() >> 64) as u16
    }

    /// The 64 random bits.
    pub fn random(&self) -> u64 {
        self.as_u128() as u64
    }

    fn as_u128(&self) -> u128 {
        u128::from_be_bytes(self.0)
    }

    /// The 26-character uppercase text form as ASCII bytes, without allocating.
    pub fn encode(&self) -> [u8; 26] {
        let value = self.as_u128();
        let mut out = [0u8; Self::ENCODED_LEN];
        for (i, slot) in out.iter_mut().enumerate() {
            // 26 * 5 = 130 bits, so the first group is the top 3 bits alone.
            let shift = 125 - 5 * i;
            *slot = ALPHABET[((value >> shift) & 0x1F) as usize];
        }
        out
    }

    /// Parses the text form, ignoring case.
    ///
    /// Following Crockford, `I`, `i`, `L` and `l` read as `1` and `O`, `o` as `0`,
    /// since click IDs get retyped from screenshots and support tickets. `U` and
    /// hyphens are not accepted. Errors are reported for the leftmost problem.
    pub fn parse(s: &str) -> Result<ClickId, ClickIdError> {
        // Length in characters so a multibyte character gets a position, not a
        // confusing length error; counting stops early on absurdly long input.
        let count = s.chars().take(Self::ENCODED_LEN + 1).count();
        if count != Self::ENCODED_LEN {
            return Err(ClickIdError::Length(if count > Self::ENCODED_LEN { s.chars().count() } else { count }));
        }
        let mut value: u128 = 0;
        for (position, c) in s.chars().enumerate() {
            let digit = u8::try_from(c)
                .ok()
                .and_then(|b| DECODE.get(usize::from(b)).copied())
                .filter(|&d| d != INVALID)
                .ok_or(ClickIdError::InvalidChar { position })?;
            if position == 0 && digit > 7 {
                return Err(ClickIdError::Overflow);
            }
            value = (value << 5) | u128::from(digit);
        }
        Ok(ClickId(value.to_be_bytes()))
    }
}

impl fmt::Display for ClickId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let encoded = self.encode();
        // encode() only emits ALPHABET bytes, so this never fails.
        let text = std::str::from_utf8(&encoded).map_err(|_| fmt::Error)?;
        f.pad(text)
    }
}

impl fmt::Debug for ClickId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClickId({self})")
    }
}

impl FromStr for ClickId {
    type Err = ClickIdError;

    fn from_str(s: &str) -> Result<ClickId, ClickIdError> {
        ClickId::parse(s)
    }
}

impl Serialize for ClickId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for ClickId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_bytes(ClickIdVisitor)
    }
}

struct ClickIdVisitor;

impl<'de> de::Visitor<'de> for ClickIdVisitor {
    type Value = ClickId;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("16 bytes of click id")
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<ClickId, E> {
        <[u8; 16]>::try_from(v).map(ClickId).map_err(|_| E::invalid_length(v.len(), &self))
    }

    fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<ClickId, E> {
        self.visit_bytes(v)
    }

    // Self-describing formats without a bytes type (JSON, TOML) send a sequence.
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<ClickId, A::Error> {
        let mut bytes = [0u8; 16];
        for (i, slot) in bytes.iter_mut().enumerate() {
            *slot = seq.next_element()?.ok_or_else(|| de::Error::invalid_length(i, &self))?;
        }
        if seq.next_element::<de::IgnoredAny>()?.is_some() {
            return Err(de::Error::invalid_length(bytes.len() + 1, &self));
        }
        Ok(ClickId(bytes))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_vectors() {
        assert_eq!(ClickId::from_bytes([0; 16]).to_string(), "00000000000000000000000000");
        assert_eq!(ClickId::from_bytes([0xFF; 16]).to_string(), "7ZZZZZZZZZZZZZZZZZZZZZZZZZ");
        // Timestamp from the ULID spec's example.
        let id = ClickId::new(1_469_918_176_385, 0xBEEF, 42);
        assert!(id.to_string().starts_with("01ARYZ6S41"), "{id}");
        assert_eq!(&id.encode(), id.to_string().as_bytes());
    }

    #[test]
    fn parts_round_trip() {
        let id = ClickId::new(1_700_000_000_123, 0x1234, 0xDEAD_BEEF_0BAD_F00D);
        assert_eq!(id.timestamp_ms(), 1_700_000_000_123);
        assert_eq!(id.node(), 0x1234);
        assert_eq!(id.random(), 0xDEAD_BEEF_0BAD_F00D);
        assert_eq!(&id.as_bytes()[..6], &1_700_000_000_123u64.to_be_bytes()[2..]);

        let masked = ClickId::new(u64::MAX, 0, 0);
        assert_eq!(masked.timestamp_ms(), TIMESTAMP_MASK);
        assert_eq!(masked.node(), 0);
    }

    #[test]
    fn mint_uses_fresh_randomness() {
        let a = ClickId::mint(5, 9);
        let b = ClickId::mint(5, 9);
        assert_eq!((a.timestamp_ms(), a.node()), (5, 9));
        assert_ne!(a, b);
    }

    #[test]
    fn debug_and_from_str() {
        let id = ClickId::from_bytes([0; 16]);
        assert_eq!(format!("{id:?}"), "ClickId(00000000000000000000000000)");
        assert_eq!("00000000000000000000000000".parse::<ClickId>(), Ok(id));
    }

    #[test]
    fn parse_is_case_insensitive_with_crockford_aliases() {
        let id = ClickId::new(1_469_918_176_385, 7, 0x0123_4567_89AB_CDEF);
        let upper = id.to_string();
        assert_eq!(ClickId::parse(&upper.to_lowercase()), Ok(id));

        let ones = "01111111111111111111111111";
        let expected = ClickId::parse(ones).unwrap();
        for alias in ["0IiLlIiLlIiLlIiLlIiLlIiLlI", "0lLiI11111111111111111111l"] {
            assert_eq!(ClickId::parse(alias), Ok(expected), "{alias}");
        }
        assert_eq!(ClickId::parse("oOOOOOOOOOOOOOOOOOOOOOOOOo"), Ok(ClickId::from_bytes([0; 16])));
    }

    #[test]
    fn parse_errors() {
        let cases: &[(&str, ClickIdError)] = &[
            ("", ClickIdError::Length(0)),
            ("0000000000000000000000000", ClickIdError::Length(25)),
            ("000000000000000000000000000", ClickIdError::Length(27)),
            ("00000U00000000000000000000", ClickIdError::InvalidChar { position: 5 }),
            ("0000000000000000000000000-", ClickIdError::InvalidChar { position: 25 }),
            ("000000000000000000000000 0", ClickIdError::InvalidChar { position: 24 }),
            ("00é00000000000000000000000", ClickIdError::InvalidChar { position: 2 }),
            ("0000000000000000000000000😀", ClickIdError::InvalidChar { position: 25 }),
            ("80000000000000000000000000", ClickIdError::Overflow),
            ("Z0000000000000000000000000", ClickIdError::Overflow),
            ("U0000000000000000000000000", ClickIdError::InvalidChar { position: 0 }),
        ];
        for (input, expected) in cases {
            assert_eq!(ClickId::parse(input).as_ref(), Err(expected), "{input:?}");
        }
        assert_eq!(ClickId::parse(&"0".repeat(1000)), Err(ClickIdError::Length(1000)));
        assert_eq!(ClickIdError::Length(3).to_string(), "click id must be 26 characters, got 3");
    }

    #[test]
    fn postcard_round_trip_is_17_bytes() {
        let id = ClickId::new(1_469_918_176_385, 3, 99);
        let bytes = postcard::to_stdvec(&id).unwrap();
        assert_eq!(bytes.len(), 17);
        assert_eq!(bytes[0], 16);
        assert_eq!(&bytes[1..], id.as_bytes());
        assert_eq!(postcard::from_bytes::<ClickId>(&bytes).unwrap(), id);
    }

    #[test]
    fn deserialize_rejects_wrong_length() {
        let short = postcard::to_stdvec(&serde_bytes_like(&[1u8; 15])).unwrap();
        assert!(postcard::from_bytes::<ClickId>(&short).is_err());
        let long = postcard::to_stdvec(&serde_bytes_like(&[1u8; 17])).unwrap();
        assert!(postcard::from_bytes::<ClickId>(&long).is_err());
    }

    #[test]
    fn deserialize_from_sequence() {
        #[derive(Deserialize)]
        struct Row {
            id: ClickId,
        }
        let numbers: Vec<String> = (1..=16).map(|n| n.to_string()).collect();
        let text = format!("id = [{}]", numbers.join(", "));
        let row: Row = toml::from_str(&text).unwrap();
        let expected: Vec<u8> = (1..=16).collect();
        assert_eq!(row.id.as_bytes().as_slice(), expected.as_slice());

        assert!(toml::from_str::<Row>("id = [1, 2, 3]").is_err());
        let seventeen: Vec<String> = (1..=17).map(|n| n.to_string()).collect();
        assert!(toml::from_str::<Row>(&format!("id = [{}]", seventeen.join(", "))).is_err());
    }

    /// Serializes a slice through `serialize_bytes`, as ClickId does.
    fn serde_bytes_like(bytes: &[u8]) -> impl Serialize + '_ {
        struct Raw<'a>(&'a [u8]);
        impl Serialize for Raw<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_bytes(self.0)
            }
        }
        Raw(bytes)
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(bytes in any::<[u8; 16]>()) {
            let id = ClickId::from_bytes(bytes);
            let text = id.to_string();
            prop_assert_eq!(text.len(), 26);
            prop_assert!(matches!(text.as_bytes()[0], b'0'..=b'7'));
            prop_assert_eq!(ClickId::parse(&text), Ok(id));
            prop_assert_eq!(ClickId::parse(&text.to_lowercase()), Ok(id));
        }

        #[test]
        fn text_order_matches_byte_order(a in any::<[u8; 16]>(), b in any::<[u8; 16]>()) {
            let (x, y) = (ClickId::from_bytes(a), ClickId::from_bytes(b));
            prop_assert_eq!(x.encode().cmp(&y.encode()), a.cmp(&b));
            prop_assert_eq!(x.cmp(&y), a.cmp(&b));
        }

        #[test]
        fn parse_never_panics(s in any::<String>()) {
            let _ = ClickId::parse(&s);
        }

        #[test]
        fn parse_never_panics_on_26_chars(chars in proptest::collection::vec(any::<char>(), 26)) {
            let s: String = chars.into_iter().collect();
            let _ = ClickId::parse(&s);
        }

        #[test]
        fn parse_never_panics_on_near_ids(s in "[0-9A-Za-z]{26}") {
            let _ = ClickId::parse(&s);
        }
    }
}
