//! The record envelope: how one [`Event`] is laid out as bytes in the log.
//!
//! ```text
//! offset  size  field
//! 0       1     format version (currently 2; version 1 still decodes, see below)
//! 1       1     event kind (1 click, 2 conversion, 3 program change; see EventKind)
//! 2       4     payload length n, u32 big-endian
//! 6       n     payload: the event struct, postcard 1.x
//! 6+n     4     checksum: low 32 bits of xxh3-64 over bytes [0, 6+n), big-endian
//! ```
//!
//! The checksum catches torn or bit-rotted records; it is not a MAC (tampering is caught by
//! the log's BLAKE3 chain). Postcard's wire format is specified and frozen for 1.x, and the
//! golden-byte tests below freeze ours: a change that alters them is a format change and
//! needs a new version byte with a decoder for the old one.
//!
//! Versions:
//!
//! - **2** (written by this build): `Click` gained its last field, `prior_click`.
//! - **1**: the first format. Still decoded: a version-1 click payload has no `prior_click`
//!   (it decodes as `None`); conversion and program-change payloads are the same in both.
//!
//! Decoding a version-1 record and encoding the event again gives a version-2 record, not the
//! original bytes; stored records are never rewritten, so the log keeps both versions.

use serde::{Deserialize, Serialize};
use thiserror::Error;
use xxhash_rust::xxh3::xxh3_64;

use crate::click_id::ClickId;
use crate::event::{Click, ClickView, Event, EventKind};

/// The version byte written by this build.
pub const FORMAT_VERSION: u8 = 2;
/// The first format, before `Click::prior_click`; still decoded, never written.
const VERSION_1: u8 = 1;
const HEADER_LEN: usize = 6;
const CHECKSUM_LEN: usize = 4;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RecordError {
    #[error("record truncated: {0} bytes")]
    Truncated(usize),
    #[error("unknown record format version {0}")]
    UnknownVersion(u8),
    #[error("unknown event kind {0}")]
    UnknownKind(u8),
    #[error("record length field says {declared} payload bytes, record has {actual}")]
    LengthMismatch { declared: usize, actual: usize },
    #[error("record checksum mismatch")]
    Checksum,
    #[error("record payload does not decode: {0}")]
    Payload(String),
    #[error("record payload is not in canonical form")]
    NonCanonical,
    #[error("record payload too large to encode: {0} bytes")]
    TooLarge(usize),
}

/// Encodes `event` into a fresh buffer.
pub fn encode(event: &Event) -> Result<Vec<u8>, RecordError> {
    let mut buf = Vec::with_capacity(256);
    encode_into(event, &mut buf)?;
    Ok(buf)
}

/// Appends the encoding of `event` to `buf`.
pub fn encode_into(event: &Event, buf: &mut Vec<u8>) -> Result<(), RecordError> {
    match event {
        Event::Click(c) => encode_payload(EventKind::Click, c, buf),
        Event::Conversion(c) => encode_payload(EventKind::Conversion, c, buf),
        Event::ProgramChange(p) => encode_payload(EventKind::ProgramChange, p, buf),
    }
}

/// Appends the record of a click given as borrowed fields: the same bytes as
/// [`encode_into`] of the owned [`Click`], without building one (the edge's hot path).
///
/// The payload is written out by hand in postcard's format (its 1.x wire format is frozen:
/// varint lengths and integers, raw string bytes, a tag byte for an option). Through serde
/// the click took 1,230 instructions, a fourteenth of what the edge's HTTP thread spends on
/// a click, most of it per-byte pushes and a copy call per string, empty ones included.
/// A proptest holds this to the serde encoding of the owned click, long strings included.
pub fn encode_click_into(click: &ClickView<'_>, buf: &mut Vec<u8>) -> Result<(), RecordError> {
    let start = buf.len();
    let [s1, s2, s3, s4, s5] = click.subs;
    let strs = [
        click.link,
        click.offer,
        click.affiliate,
        s1,
        s2,
        s3,
        s4,
        s5,
        click.source,
        click.deep_link,
        click.user_agent,
        click.referrer,
        click.ip,
    ];
    // Every string's bytes plus a varint of its length (at most 10 bytes), the IDs, the
    // integers and the option tag: reserved once, so no push below reallocates.
    let text: usize = strs.iter().map(|s| s.len() + 10).sum();
    buf.reserve(HEADER_LEN + text + 2 * 17 + 10 + 3 + 1 + CHECKSUM_LEN);
    buf.extend_from_slice(&[FORMAT_VERSION, EventKind::Click as u8, 0, 0, 0, 0]);
    let payload_start = buf.len();
    put_bytes(buf, click.click_id.as_bytes());
    put_varint(buf, click.ts_ms);
    for s in strs {
        put_bytes(buf, s.as_bytes());
    }
    put_varint(buf, u64::from(click.flags));
    match &click.prior_click {
        None => buf.push(0),
        Some(id) => {
            buf.push(1);
            put_bytes(buf, id.as_bytes());
        }
    }
    seal(buf, start, payload_start)
}

/// Fills in the envelope of the record begun at `start`: the payload's length, then the
/// checksum after it.
fn seal(buf: &mut Vec<u8>, start: usize, payload_start: usize) -> Result<(), RecordError> {
    let n = buf.len() - payload_start;
    let n32 = u32::try_from(n).map_err(|_| RecordError::TooLarge(n))?;
    buf[start + 2..start + 6].copy_from_slice(&n32.to_be_bytes());
    let sum = checksum(&buf[start..]);
    buf.extend_from_slice(&sum.to_be_bytes());
    Ok(())
}

/// Postcard's varint: seven bits a byte, least significant first, high bit set on all but
/// the last.
fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// Postcard's `str` and byte string: the length as a varint, then the bytes.
fn put_bytes(buf: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(buf, bytes.len() as u64);
    // Most of a click's strings are empty sub IDs: skip the copy call for them.
    if !bytes.is_empty() {
        buf.extend_from_slice(bytes);
    }
}

fn encode_payload<T: Serialize>(kind: EventKind, payload: &T, buf: &mut Vec<u8>) -> Result<(), RecordError> {
    let start = buf.len();
    buf.extend_from_slice(&[FORMAT_VERSION, kind as u8, 0, 0, 0, 0]);
    let payload_start = buf.len();
    let taken = std::mem::take(buf);
    *buf = postcard::to_extend(payload, taken).map_err(|e| RecordError::Payload(e.to_string()))?;
    seal(buf, start, payload_start)
}

/// Checks the envelope and returns the event kind without decoding the payload.
pub fn peek_kind(bytes: &[u8]) -> Result<EventKind, RecordError> {
    check(bytes).map(|(_, kind, _)| kind)
}

/// Decodes one record, checking version, kind, length and checksum. Accepts every version
/// listed in the module docs.
pub fn decode(bytes: &[u8]) -> Result<Event, RecordError> {
    let (version, kind, payload) = check(bytes)?;
    Ok(match kind {
        EventKind::Click if version == VERSION_1 => Event::Click(canonical_by_size::<ClickV1>(payload)?.into()),
        EventKind::Click => Event::Click(canonical_by_size(payload)?),
        EventKind::Conversion => Event::Conversion(canonical(payload)?),
        EventKind::ProgramChange => Event::ProgramChange(canonical(payload)?),
    })
}

/// A record decoded for a reader that wants clicks in place: see [`decode_view`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventView<'a> {
    /// A click, its text borrowed from the record.
    Click(ClickView<'a>),
    /// Any other event, and version-1 clicks (rare: only logs written before
    /// `prior_click`), decoded as [`decode`] does.
    Owned(Event),
}

/// Decodes one record with the checks of [`decode`], borrowing a click's text from `bytes`
/// instead of copying it: no allocation for a click.
pub fn decode_view(bytes: &[u8]) -> Result<EventView<'_>, RecordError> {
    let (version, kind, payload) = check(bytes)?;
    match kind {
        EventKind::Click if version == FORMAT_VERSION => canonical_by_size(payload).map(EventView::Click),
        _ => decode(bytes).map(EventView::Owned),
    }
}

/// A click as version 1 laid it out: [`Click`] without `prior_click`. Frozen: this is the
/// version-1 format, so it never changes, whatever happens to `Click`.
#[derive(Serialize, Deserialize)]
struct ClickV1 {
    click_id: ClickId,
    ts_ms: u64,
    link: String,
    offer: String,
    affiliate: String,
    subs: [String; 5],
    source: String,
    deep_link: String,
    user_agent: String,
    referrer: String,
    ip: String,
    flags: u16,
}

impl From<ClickV1> for Click {
    fn from(c: ClickV1) -> Click {
        Click {
            click_id: c.click_id,
            ts_ms: c.ts_ms,
            link: c.link,
            offer: c.offer,
            affiliate: c.affiliate,
            subs: c.subs,
            source: c.source,
            deep_link: c.deep_link,
            user_agent: c.user_agent,
            referrer: c.referrer,
            ip: c.ip,
            flags: c.flags,
            // Version 1 did not record the browser's cookie.
            prior_click: None,
        }
    }
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Decodes a payload and insists it is the one encoding of its value. Postcard accepts
/// overlong varints (`85 00` for 5); accepting them would let two byte strings mean the same
/// event, so "same bytes" and "same event" would part ways for audits and dedup.
fn canonical<'a, T: serde::Deserialize<'a> + serde::Serialize>(payload: &'a [u8]) -> Result<T, RecordError> {
    let value: T = strict(payload).map_err(|e| RecordError::Payload(e.to_string()))?;
    let same = SCRATCH.with(|cell| {
        let mut buf = cell.take();
        buf.clear();
        let same = match postcard::to_extend(&value, buf) {
            Ok(b) => {
                let same = b == payload;
                buf = b;
                same
            }
            Err(_) => {
                buf = Vec::new();
                false
            }
        };
        cell.replace(buf);
        same
    });
    if same {
        Ok(value)
    } else {
        Err(RecordError::NonCanonical)
    }
}

/// [`canonical`] for a type whose every field has one encoding of each length (see
/// [`ClickView`]): the only other encodings postcard accepts are overlong varints, which
/// make the payload longer than the value's encoding. Comparing lengths costs no copy.
fn canonical_by_size<'a, T: serde::Deserialize<'a> + serde::Serialize>(payload: &'a [u8]) -> Result<T, RecordError> {
    let value: T = strict(payload).map_err(|e| RecordError::Payload(e.to_string()))?;
    match postcard::experimental::serialized_size(&value) {
        Ok(n) if n == payload.len() => Ok(value),
        _ => Err(RecordError::NonCanonical),
    }
}

/// Postcard ignores trailing bytes; we do not, so every byte of a record is accounted for.
fn strict<'a, T: serde::Deserialize<'a>>(payload: &'a [u8]) -> Result<T, postcard::Error> {
    let (value, rest) = postcard::take_from_bytes(payload)?;
    if rest.is_empty() {
        Ok(value)
    } else {
        Err(postcard::Error::DeserializeBadEncoding)
    }
}

/// Checks the envelope; returns the version byte, the event kind and the payload.
fn check(bytes: &[u8]) -> Result<(u8, EventKind, &[u8]), RecordError> {
    if bytes.len() < HEADER_LEN + CHECKSUM_LEN {
        return Err(RecordError::Truncated(bytes.len()));
    }
    let version = bytes[0];
    if version != FORMAT_VERSION && version != VERSION_1 {
        return Err(RecordError::UnknownVersion(version));
    }
    let kind = EventKind::from_byte(bytes[1]).ok_or(RecordError::UnknownKind(bytes[1]))?;
    let declared = u32::from_be_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]) as usize;
    let actual = bytes.len() - HEADER_LEN - CHECKSUM_LEN;
    if declared != actual {
        return Err(RecordError::LengthMismatch { declared, actual });
    }
    let body_end = HEADER_LEN + actual;
    let stored = u32::from_be_bytes([bytes[body_end], bytes[body_end + 1], bytes[body_end + 2], bytes[body_end + 3]]);
    if stored != checksum(&bytes[..body_end]) {
        return Err(RecordError::Checksum);
    }
    Ok((version, kind, &bytes[HEADER_LEN..body_end]))
}

fn checksum(bytes: &[u8]) -> u32 {
    // Truncation is deliberate: 32 bits is plenty to catch corruption in a ~200-byte record.
    xxh3_64(bytes) as u32
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::click_id::ClickId;
    use crate::event::*;
    use crate::money::Currency;
    use proptest::prelude::*;

    fn golden_click(prior_click: Option<ClickId>) -> Event {
        Event::Click(Click {
            click_id: ClickId::new(1_700_000_000_000, 7, 0x0123_4567_89ab_cdef),
            ts_ms: 1_700_000_000_000,
            link: "demo".into(),
            offer: "shoes".into(),
            affiliate: "aff1".into(),
            subs: ["a".into(), String::new(), String::new(), String::new(), "e".into()],
            source: "fb".into(),
            deep_link: String::new(),
            user_agent: "UA".into(),
            referrer: String::new(),
            ip: "203.0.113.0".into(),
            flags: click_flags::HEAD,
            prior_click,
        })
    }

    fn golden_prior_click() -> ClickId {
        ClickId::new(1_699_999_000_000, 3, 0xfedc_ba98_7654_3210)
    }

    fn golden_conversion() -> Event {
        Event::Conversion(Conversion {
            ts_ms: 1_700_000_100_000,
            source: ConversionSource::Postback,
            click_id: Some(ClickId::new(1_700_000_000_000, 7, 1)),
            coupon: String::new(),
            offer: "shoes".into(),
            goal: "sale".into(),
            txid: "T-1".into(),
            amount: Some(12_345),
            currency: Currency::from_code("USD").unwrap(),
            status: ConversionStatus::Refunded,
            subs: Default::default(),
            ip: "198.51.100.0".into(),
        })
    }

    fn golden_program() -> Event {
        Event::ProgramChange(ProgramChange { ts_ms: 5, digest: "ab".into(), source: "x".into() })
    }

    // These bytes ARE the on-disk format (version 2). If this test fails, you changed the
    // format: restore it, or bump FORMAT_VERSION, keep decoders for versions 1 and 2, and keep
    // these strings as decode-only tests like the version-1 ones below.
    const GOLDEN_CLICK: &str = "02010000005510018bcfe5680000070123456789abcdef80d095ffbc310464656d6f0573686f657304616666310161000000016502666200025541000b3230332e302e3131332e30010110018bcfd625c00003fedcba98765432106ba45d5a";
    const GOLDEN_CONVERSION: &str = "020200000044a0dd9bffbc31010110018bcfe5680000070000000000000001000573686f65730473616c6503542d3101f2c001035553440100000000000c3139382e35312e3130302e30b00b4865";
    const GOLDEN_PROGRAM: &str = "0203000000060502616201780158204b";

    // Version 1, as written before `Click::prior_click` existed. Decode-only: this build never
    // writes version 1, but the logs it reads are full of it. Never change these strings.
    const GOLDEN_CLICK_V1: &str = "01010000004310018bcfe5680000070123456789abcdef80d095ffbc310464656d6f0573686f657304616666310161000000016502666200025541000b3230332e302e3131332e3001c418db97";
    const GOLDEN_CONVERSION_V1: &str = "010200000044a0dd9bffbc31010110018bcfe5680000070000000000000001000573686f65730473616c6503542d3101f2c001035553440100000000000c3139382e35312e3130302e30b84ac4c4";
    const GOLDEN_PROGRAM_V1: &str = "010300000006050261620178f9fe9b04";

    #[test]
    fn golden_bytes_are_frozen() {
        for (event, golden) in [
            (golden_click(Some(golden_prior_click())), GOLDEN_CLICK),
            (golden_conversion(), GOLDEN_CONVERSION),
            (golden_program(), GOLDEN_PROGRAM),
        ] {
            let bytes = encode(&event).unwrap();
            assert_eq!(hex(&bytes), golden, "format of {:?} changed", event.kind());
            assert_eq!(decode(&from_hex(golden)).unwrap(), event);
        }
    }

    #[test]
    fn version_1_golden_bytes_still_decode() {
        for (golden, event) in [
            (GOLDEN_CLICK_V1, golden_click(None)),
            (GOLDEN_CONVERSION_V1, golden_conversion()),
            (GOLDEN_PROGRAM_V1, golden_program()),
        ] {
            assert_eq!(decode(&from_hex(golden)).unwrap(), event, "{golden}");
            assert_eq!(peek_kind(&from_hex(golden)).unwrap(), event.kind());
        }
    }

    /// Version 2 only appended `prior_click` to clicks, so re-encoding a version-1 record
    /// changes the version byte, appends `00` (`None`) to a click's payload, and nothing else.
    #[test]
    fn version_1_records_re_encode_as_version_2() {
        for golden in [GOLDEN_CLICK_V1, GOLDEN_CONVERSION_V1, GOLDEN_PROGRAM_V1] {
            let v1 = from_hex(golden);
            let event = decode(&v1).unwrap();
            let v2 = encode(&event).unwrap();
            assert_eq!(v2[0], FORMAT_VERSION);
            let mut expected = payload(&v1).to_vec();
            if event.kind() == EventKind::Click {
                expected.push(0);
            }
            assert_eq!(payload(&v2), expected.as_slice(), "{golden}");
        }
    }

    /// A payload under the other version's header is not silently accepted: the version byte
    /// decides the layout, and every byte must be accounted for.
    #[test]
    fn a_click_payload_under_the_wrong_version_is_rejected() {
        let v2 = encode(&golden_click(None)).unwrap();
        let as_v1 = envelope(VERSION_1, EventKind::Click, payload(&v2));
        assert!(matches!(decode(&as_v1), Err(RecordError::Payload(_))));

        let v1 = from_hex(GOLDEN_CLICK_V1);
        let as_v2 = envelope(FORMAT_VERSION, EventKind::Click, payload(&v1));
        assert!(matches!(decode(&as_v2), Err(RecordError::Payload(_))));

        // A prior click's 16 bytes under a version-1 header are trailing bytes too.
        let v2 = encode(&golden_click(Some(golden_prior_click()))).unwrap();
        let as_v1 = envelope(VERSION_1, EventKind::Click, payload(&v2));
        assert!(matches!(decode(&as_v1), Err(RecordError::Payload(_))));
    }

    #[test]
    fn every_envelope_error_is_reported() {
        let good = encode(&golden_program()).unwrap();
        assert_eq!(decode(&good[..5]), Err(RecordError::Truncated(5)));

        for version in [0, 9, FORMAT_VERSION + 1, 0xff] {
            let mut v = good.clone();
            v[0] = version;
            assert_eq!(decode(&v), Err(RecordError::UnknownVersion(version)));
            // Even with a checksum that matches: the version is checked first.
            let v = envelope_byte(version, EventKind::ProgramChange as u8, payload(&good));
            assert_eq!(decode(&v), Err(RecordError::UnknownVersion(version)));
            assert_eq!(peek_kind(&v), Err(RecordError::UnknownVersion(version)));
        }

        let mut v = good.clone();
        v[1] = 42;
        assert_eq!(decode(&v), Err(RecordError::UnknownKind(42)));

        let mut v = good.clone();
        v.push(0);
        assert!(matches!(decode(&v), Err(RecordError::LengthMismatch { .. })));

        let mut v = good.clone();
        let mid = v.len() / 2;
        v[mid] ^= 0x40;
        assert_eq!(decode(&v), Err(RecordError::Checksum));

        // A well-formed envelope around a payload that is not a valid event.
        let mut bad = vec![FORMAT_VERSION, EventKind::Click as u8, 0, 0, 0, 1, 0xff];
        let sum = checksum(&bad);
        bad.extend_from_slice(&sum.to_be_bytes());
        assert!(matches!(decode(&bad), Err(RecordError::Payload(_))));
    }

    #[test]
    fn trailing_payload_bytes_are_rejected() {
        let good = encode(&golden_program()).unwrap();
        let payload = &good[HEADER_LEN..good.len() - CHECKSUM_LEN];
        let mut v = vec![FORMAT_VERSION, EventKind::ProgramChange as u8];
        v.extend_from_slice(&((payload.len() + 1) as u32).to_be_bytes());
        v.extend_from_slice(payload);
        v.push(0);
        let sum = checksum(&v);
        v.extend_from_slice(&sum.to_be_bytes());
        assert!(matches!(decode(&v), Err(RecordError::Payload(_))));
    }

    /// Found by the `record_decode` fuzz target's author: postcard accepts overlong varints.
    #[test]
    fn overlong_varints_are_rejected() {
        for forged in ["0103000000078500026162017821619e73", "01030000000705820061620178e7ca1d4b"] {
            let v1 = from_hex(forged);
            assert_eq!(decode(&v1), Err(RecordError::NonCanonical), "{forged}");
            let v2 = envelope(FORMAT_VERSION, EventKind::ProgramChange, payload(&v1));
            assert_eq!(decode(&v2), Err(RecordError::NonCanonical), "{forged} as version 2");
        }
        assert!(decode(&from_hex(GOLDEN_PROGRAM)).is_ok());
        assert!(decode(&from_hex(GOLDEN_PROGRAM_V1)).is_ok());
    }

    /// An overlong varint in a click is refused by both decoders; `decode_view` finds it by
    /// length alone.
    #[test]
    fn overlong_varints_in_clicks_are_rejected() {
        let good = encode(&golden_click(None)).unwrap();
        let p = payload(&good);
        // The payload opens with the click ID (length 16, then 16 bytes), then `ts_ms`.
        let (head, rest) = p.split_at(17);
        let ts = postcard::to_stdvec(&1_700_000_000_000u64).unwrap();
        assert!(rest.starts_with(&ts));
        let mut forged = head.to_vec();
        let mut long = ts.clone();
        *long.last_mut().unwrap() |= 0x80;
        long.push(0);
        forged.extend_from_slice(&long);
        forged.extend_from_slice(&rest[ts.len()..]);
        let record = envelope(FORMAT_VERSION, EventKind::Click, &forged);
        assert_eq!(decode(&record), Err(RecordError::NonCanonical));
        assert_eq!(decode_view(&record), Err(RecordError::NonCanonical));
    }

    /// A currency decodes case-insensitively, so `usd` is as long as `USD` but not its
    /// encoding: why conversions keep the byte-for-byte canonical check.
    #[test]
    fn a_lowercase_currency_is_not_canonical() {
        let good = encode(&golden_conversion()).unwrap();
        let p = payload(&good);
        let at = p.windows(3).position(|w| w == b"USD").unwrap();
        let mut forged = p.to_vec();
        forged[at..at + 3].copy_from_slice(b"usd");
        let record = envelope(FORMAT_VERSION, EventKind::Conversion, &forged);
        assert_eq!(decode(&record), Err(RecordError::NonCanonical));
        assert_eq!(decode_view(&record), Err(RecordError::NonCanonical));
    }

    #[test]
    fn decode_view_borrows_clicks_and_decodes_the_rest() {
        let click = golden_click(Some(golden_prior_click()));
        let bytes = encode(&click).unwrap();
        let Event::Click(c) = &click else { unreachable!() };
        assert_eq!(decode_view(&bytes).unwrap(), EventView::Click(ClickView::from(c)));
        let conversion = golden_conversion();
        assert_eq!(decode_view(&encode(&conversion).unwrap()).unwrap(), EventView::Owned(conversion));
        // Version 1 clicks come back owned, with no prior click.
        let v1 = from_hex(GOLDEN_CLICK_V1);
        assert_eq!(decode_view(&v1).unwrap(), EventView::Owned(decode(&v1).unwrap()));
        assert_eq!(decode_view(&good_with_bad_checksum(&bytes)), Err(RecordError::Checksum));
    }

    fn good_with_bad_checksum(record: &[u8]) -> Vec<u8> {
        let mut v = record.to_vec();
        let last = v.len() - 1;
        v[last] ^= 1;
        v
    }

    /// The payload of a well-formed record.
    fn payload(record: &[u8]) -> &[u8] {
        &record[HEADER_LEN..record.len() - CHECKSUM_LEN]
    }

    /// A well-formed envelope (length and checksum right) around any payload.
    fn envelope(version: u8, kind: EventKind, payload: &[u8]) -> Vec<u8> {
        envelope_byte(version, kind as u8, payload)
    }

    fn envelope_byte(version: u8, kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![version, kind];
        v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        v.extend_from_slice(payload);
        let sum = checksum(&v);
        v.extend_from_slice(&sum.to_be_bytes());
        v
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn from_hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    fn any_click_id() -> impl Strategy<Value = ClickId> {
        any::<[u8; 16]>().prop_map(ClickId::from_bytes)
    }

    fn subs() -> impl Strategy<Value = [String; 5]> {
        proptest::array::uniform5(".{0,12}")
    }

    fn any_currency() -> impl Strategy<Value = Currency> {
        prop::sample::select(vec!["USD", "EUR", "JPY", "BHD", "GBP"]).prop_map(|c| Currency::from_code(c).unwrap())
    }

    fn any_click() -> impl Strategy<Value = Event> {
        (
            any_click_id(),
            any::<u64>(),
            proptest::array::uniform4(".{0,16}"),
            subs(),
            proptest::array::uniform4(".{0,40}"),
            any::<u16>(),
            proptest::option::of(any_click_id()),
        )
            .prop_map(
                |(
                    click_id,
                    ts_ms,
                    [link, offer, affiliate, source],
                    subs,
                    [deep_link, user_agent, referrer, ip],
                    flags,
                    prior_click,
                )| {
                    Event::Click(Click {
                        click_id,
                        ts_ms,
                        link,
                        offer,
                        affiliate,
                        subs,
                        source,
                        deep_link,
                        user_agent,
                        referrer,
                        ip,
                        flags,
                        prior_click,
                    })
                },
            )
    }

    fn any_conversion() -> impl Strategy<Value = Event> {
        (
            any::<u64>(),
            prop::sample::select(vec![ConversionSource::Pixel, ConversionSource::Postback]),
            proptest::option::of(any_click_id()),
            proptest::array::uniform5(".{0,16}"),
            proptest::option::of(any::<i64>()),
            any_currency(),
            prop::sample::select(vec![
                ConversionStatus::Approved,
                ConversionStatus::Refunded,
                ConversionStatus::Chargeback,
            ]),
            subs(),
        )
            .prop_map(
                |(ts_ms, source, click_id, [coupon, offer, goal, txid, ip], amount, currency, status, subs)| {
                    Event::Conversion(Conversion {
                        ts_ms,
                        source,
                        click_id,
                        coupon,
                        offer,
                        goal,
                        txid,
                        amount,
                        currency,
                        status,
                        subs,
                        ip,
                    })
                },
            )
    }

    fn any_program() -> impl Strategy<Value = Event> {
        (any::<u64>(), "[0-9a-f]{0,64}", ".{0,200}")
            .prop_map(|(ts_ms, digest, source)| Event::ProgramChange(ProgramChange { ts_ms, digest, source }))
    }

    proptest! {
        #[test]
        fn every_record_type_round_trips(event in prop_oneof![any_click(), any_conversion(), any_program()]) {
            let bytes = encode(&event).unwrap();
            prop_assert_eq!(peek_kind(&bytes).unwrap(), event.kind());
            prop_assert_eq!(decode(&bytes).unwrap(), event);
        }

        /// A click encoded from borrowed fields is the record of the owned click.
        #[test]
        fn encode_click_into_writes_the_click_record(event in any_click()) {
            let Event::Click(c) = &event else { unreachable!() };
            let mut buf = b"kept".to_vec();
            encode_click_into(&ClickView::from(c), &mut buf).unwrap();
            prop_assert_eq!(&buf[..4], b"kept");
            let owned = encode(&event).unwrap();
            prop_assert_eq!(&buf[4..], owned.as_slice());
        }

        /// The same with strings long enough for two- and three-byte length varints, and
        /// every integer width.
        #[test]
        fn encode_click_into_matches_serde_for_long_fields(
            event in any_click(),
            ua in ".{100,300}",
            referrer_len in 0usize..20_000,
            ts_ms in prop_oneof![Just(0u64), Just(127), Just(128), Just(u64::MAX), any::<u64>()],
            flags in prop_oneof![Just(0u16), Just(127), Just(128), Just(16_384), Just(u16::MAX)],
        ) {
            let Event::Click(mut c) = event else { unreachable!() };
            c.user_agent = ua;
            c.referrer = "r".repeat(referrer_len);
            c.ts_ms = ts_ms;
            c.flags = flags;
            let mut buf = Vec::new();
            encode_click_into(&ClickView::from(&c), &mut buf).unwrap();
            let mut serde_buf = Vec::new();
            encode_payload(EventKind::Click, &c, &mut serde_buf).unwrap();
            prop_assert_eq!(&buf, &serde_buf);
            prop_assert_eq!(decode(&buf).unwrap(), Event::Click(c));
        }

        /// In place or owned, a record decodes to the same event.
        #[test]
        fn decode_view_agrees_with_decode(event in prop_oneof![any_click(), any_conversion(), any_program()]) {
            let bytes = encode(&event).unwrap();
            match (decode_view(&bytes).unwrap(), &event) {
                (EventView::Click(view), Event::Click(c)) => prop_assert_eq!(view, ClickView::from(c)),
                (EventView::Owned(e), _) => prop_assert_eq!(&e, &event),
                (view, _) => prop_assert!(false, "{view:?} for {event:?}"),
            }
        }

        /// Any click as version 1 wrote it (no `prior_click`) decodes to that click.
        #[test]
        fn version_1_clicks_decode_with_no_prior_click(event in any_click()) {
            let Event::Click(mut click) = event else { unreachable!() };
            click.prior_click = None;
            let v2 = encode(&Event::Click(click.clone())).unwrap();
            let p = payload(&v2);
            prop_assert_eq!(p.last(), Some(&0u8));
            let v1 = envelope(VERSION_1, EventKind::Click, &p[..p.len() - 1]);
            prop_assert_eq!(decode(&v1).unwrap(), Event::Click(click));
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(&bytes);
            let _ = decode_view(&bytes);
        }

        #[test]
        fn any_single_bit_flip_is_detected(event in any_click(), bit in any::<usize>()) {
            let mut bytes = encode(&event).unwrap();
            let i = bit % (bytes.len() * 8);
            bytes[i / 8] ^= 1 << (i % 8);
            prop_assert!(decode(&bytes).is_err());
            prop_assert!(decode_view(&bytes).is_err());
        }
    }
}
