//! The record envelope: how one [`Event`] is laid out as bytes in the log.
//!
//! ```text
//! offset  size  field
//! 0       1     format version (currently 6; versions 1 to 5 still decode, see below)
//! 1       1     event kind (1 click, 2 conversion, 3 program change, 4 program edit,
//!               5 operator decision; see EventKind)
//! 2       4     payload length n, u32 big-endian
//! 6       n     payload: the event's chained fields, postcard 1.x
//! 6+n     4     checksum: low 32 bits of xxh3-64 over bytes [0, 6+n), big-endian
//! ---- the chained part ends here: the log's hash chain covers bytes [0, 10+n) ----
//! 10+n    m     personal trailer (format 3+ clicks and conversions; absent when the event
//!               has no personal field, or after they were erased):
//!               postcard of (salt [u8; 8], ip, user_agent, referrer); a format-5
//!               conversion, which has no user agent or referrer, keeps its customer's ID
//!               in the second string (conversions before format 5 left it empty)
//! ```
//!
//! The checksum catches torn or bit-rotted records; it is not a MAC (tampering is caught by
//! the log's BLAKE3 chain). Postcard's wire format is specified and frozen for 1.x, and the
//! golden-byte tests below freeze ours: a change that alters them is a format change and
//! needs a new version byte with a decoder for the old one.
//!
//! **Personal fields** (a click's IP, user agent and referrer, a conversion's IP) live in
//! the trailer, outside the chained bytes, so erasing them (cutting the trailer off) leaves
//! every chain hash intact. The chained payload binds them with a *seal*: the first 12 bytes
//! of keyed BLAKE3 over the trailer, whose random salt keeps the seal from confirming a
//! guessed IP once the trailer is gone. A trailer that does not match its seal is refused
//! ([`RecordError::Seal`]), so personal fields can be erased but not altered unseen. A seal
//! of zeros means the event had no personal field. See decision 0041.
//!
//! Versions:
//!
//! - **6** (written by this build): `Click` gained `signals` (country, region, ASN,
//!   device, OS, browser, language, route), chained between `visitor` and the seal.
//!   Conversions, program changes, edits and decisions are laid out as in version 5.
//! - **5**: `Conversion` gained `customer`: the customer's key
//!   (`Option<[u8; 16]>`) chained before the seal, the merchant's customer ID in the
//!   trailer. Clicks, program changes, edits and decisions are laid out as in version 4.
//! - **4**: `Conversion` gained `advertiser` (the advertiser whose
//!   credential authenticated a postback), before the seal. Clicks and program changes are
//!   laid out as in version 3. Program edits (kind 4) and operator decisions (kind 5) were
//!   added in version 4 and exist in no other.
//! - **3**: personal fields moved to the trailer; clicks carry a
//!   `visitor` key (8 bytes) and both clicks and conversions a `seal` (12 bytes) at the end
//!   of their chained payload.
//! - **2**: `Click` gained `prior_click`. Personal fields inside the payload, chained.
//! - **1**: the first format: a click payload has no `prior_click` (it decodes as `None`).
//!
//! Decoding an older record and encoding the event again gives a version-6 record, not the
//! original bytes; stored records are never rewritten (only trailers are ever cut), so the
//! log keeps every version it was written in. Personal fields of version 1 and 2 records are
//! chained and cannot be erased without breaking `verify`.

use serde::{Deserialize, Serialize};
use thiserror::Error;
use xxhash_rust::xxh3::xxh3_64;

use crate::click_id::ClickId;
use crate::event::{
    legacy_visitor_key, Click, ClickView, Conversion, ConversionSource, ConversionStatus, Customer, CustomerKey, Event,
    EventKind, Signals,
};
use crate::money::Currency;

/// The version byte written by this build.
pub const FORMAT_VERSION: u8 = 6;
/// Before `Click::signals`; still decoded, never written.
const VERSION_5: u8 = 5;
/// Before `Conversion::customer`; still decoded, never written.
const VERSION_4: u8 = 4;
/// Before `Conversion::advertiser`; still decoded, never written.
const VERSION_3: u8 = 3;
/// Before personal fields moved to the trailer; still decoded, never written.
const VERSION_2: u8 = 2;
/// The first format, before `Click::prior_click`; still decoded, never written.
const VERSION_1: u8 = 1;
const HEADER_LEN: usize = 6;
const CHECKSUM_LEN: usize = 4;
/// Bytes of random salt in a personal trailer: with 64 unknown bits, testing one guess of
/// the fields against a seal takes 2^64 hashes.
pub const SALT_LEN: usize = 8;
/// Bytes of a seal: altering a trailer unseen needs a second preimage of 96 bits.
const SEAL_LEN: usize = 12;
/// The key of the seal's keyed BLAKE3: a fixed domain separator, not a secret.
const SEAL_KEY: &[u8; 32] = b"tally record personal seal v3 \0\0";

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
    #[error("personal fields do not match the record's seal")]
    Seal,
}

/// What a record holds of its event's personal fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Personal {
    /// Versions 1 and 2: inside the chained payload, not erasable. Program changes too
    /// (they have none).
    Chained,
    /// Version 3, and the event had none (no IP, user agent or referrer recorded).
    None,
    /// Version 3, in the trailer, matching the seal.
    Present,
    /// Version 3: the event had personal fields and they were erased.
    Erased,
}

impl Personal {
    pub fn as_str(self) -> &'static str {
        match self {
            Personal::Chained => "chained",
            Personal::None => "none",
            Personal::Present => "present",
            Personal::Erased => "erased",
        }
    }
}

/// Encodes `event` into a fresh buffer, with a fresh random salt for its personal fields.
pub fn encode(event: &Event) -> Result<Vec<u8>, RecordError> {
    let mut buf = Vec::with_capacity(256);
    encode_into(event, &mut buf)?;
    Ok(buf)
}

/// Appends the encoding of `event` to `buf`, with a fresh random salt.
pub fn encode_into(event: &Event, buf: &mut Vec<u8>) -> Result<(), RecordError> {
    encode_salted(event, rand::random(), buf)
}

/// [`encode_into`] with a given salt: the same event and salt give the same bytes.
pub fn encode_salted(event: &Event, salt: [u8; SALT_LEN], buf: &mut Vec<u8>) -> Result<(), RecordError> {
    match event {
        Event::Click(c) => encode_click_into(&ClickView::from(c), salt, buf),
        Event::Conversion(c) => encode_conversion(c, salt, buf),
        Event::ProgramChange(p) => encode_plain(EventKind::ProgramChange, p, buf),
        Event::ProgramEdit(p) => encode_plain(EventKind::ProgramEdit, p, buf),
        Event::Decision(d) => encode_plain(EventKind::Decision, d, buf),
    }
}

/// An event with no personal field: its postcard payload in the envelope.
fn encode_plain<T: Serialize>(kind: EventKind, event: &T, buf: &mut Vec<u8>) -> Result<(), RecordError> {
    let start = buf.len();
    buf.extend_from_slice(&[FORMAT_VERSION, kind as u8, 0, 0, 0, 0]);
    let payload_start = buf.len();
    let taken = std::mem::take(buf);
    *buf = postcard::to_extend(event, taken).map_err(|e| RecordError::Payload(e.to_string()))?;
    seal_envelope(buf, start, payload_start)
}

/// Appends the record of a click given as borrowed fields (the edge's hot path), its
/// personal fields in a trailer salted with `salt` (draw it at random: it is what keeps the
/// seal from confirming a guessed IP after erasure).
///
/// The payload is written out by hand in postcard's format (its 1.x wire format is frozen:
/// varint lengths and integers, raw string bytes, a tag byte for an option, fixed arrays as
/// raw bytes). Through serde the click took 1,230 instructions, a fourteenth of what the
/// edge's HTTP thread spends on a click. A proptest holds this to the serde encoding.
pub fn encode_click_into(click: &ClickView<'_>, salt: [u8; SALT_LEN], buf: &mut Vec<u8>) -> Result<(), RecordError> {
    let start = buf.len();
    let [s1, s2, s3, s4, s5] = click.subs;
    let strs = [click.link, click.offer, click.affiliate, s1, s2, s3, s4, s5, click.source, click.deep_link];
    let personal = [click.ip, click.user_agent, click.referrer];
    let signals = &click.signals;
    let signal_texts = signals.texts();
    // Every string's bytes plus a varint of its length (at most 10 bytes), the IDs, the
    // integers, the option tag, visitor, seal and salt: reserved once, so no push below
    // reallocates.
    let text: usize = strs.iter().chain(personal.iter()).chain(signal_texts.iter()).map(|s| s.len() + 10).sum();
    buf.reserve(HEADER_LEN + text + 2 * 17 + 10 + 3 + 5 + 1 + 8 + SEAL_LEN + CHECKSUM_LEN + SALT_LEN);
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
    buf.extend_from_slice(&click.visitor.to_le_bytes());
    // `Signals`' serde order: country, region, asn, then the other texts.
    put_bytes(buf, signals.country.as_bytes());
    put_bytes(buf, signals.region.as_bytes());
    put_varint(buf, u64::from(signals.asn));
    for s in [signals.device, signals.os, signals.browser, signals.language, signals.route] {
        put_bytes(buf, s.as_bytes());
    }
    finish_personal(buf, start, payload_start, personal, salt)
}

/// Ends a version-3 payload: the seal, the envelope, then the trailer (if any personal field
/// is set). The seal is computed over the trailer, which is written after the checksum: the
/// trailer goes first at its place, then the seal and checksum are filled in before it.
fn finish_personal(
    buf: &mut Vec<u8>,
    start: usize,
    payload_start: usize,
    [ip, user_agent, referrer]: [&str; 3],
    salt: [u8; SALT_LEN],
) -> Result<(), RecordError> {
    let seal_at = buf.len();
    buf.extend_from_slice(&[0; SEAL_LEN]);
    if ip.is_empty() && user_agent.is_empty() && referrer.is_empty() {
        return seal_envelope(buf, start, payload_start);
    }
    let payload_end = buf.len();
    buf.extend_from_slice(&[0; CHECKSUM_LEN]);
    let trailer_start = buf.len();
    buf.extend_from_slice(&salt);
    for s in [ip, user_agent, referrer] {
        put_bytes(buf, s.as_bytes());
    }
    let seal = seal_of(&buf[trailer_start..]);
    buf[seal_at..seal_at + SEAL_LEN].copy_from_slice(&seal);
    let n = payload_end - payload_start;
    let n32 = u32::try_from(n).map_err(|_| RecordError::TooLarge(n))?;
    buf[start + 2..start + 6].copy_from_slice(&n32.to_be_bytes());
    let sum = checksum(&buf[start..payload_end]);
    buf[payload_end..trailer_start].copy_from_slice(&sum.to_be_bytes());
    Ok(())
}

fn seal_of(trailer: &[u8]) -> [u8; SEAL_LEN] {
    let mut out = [0; SEAL_LEN];
    out.copy_from_slice(&blake3::keyed_hash(SEAL_KEY, trailer).as_bytes()[..SEAL_LEN]);
    out
}

fn encode_conversion(c: &Conversion, salt: [u8; SALT_LEN], buf: &mut Vec<u8>) -> Result<(), RecordError> {
    let start = buf.len();
    buf.extend_from_slice(&[FORMAT_VERSION, EventKind::Conversion as u8, 0, 0, 0, 0]);
    let payload_start = buf.len();
    let chained = ConversionV5Fields::from(c);
    let taken = std::mem::take(buf);
    *buf = postcard::to_extend(&chained, taken).map_err(|e| RecordError::Payload(e.to_string()))?;
    // The seal, serialised last as raw bytes, is written by `finish_personal`.
    buf.truncate(buf.len() - SEAL_LEN);
    let customer = c.customer.as_ref().map(|k| k.id.as_str()).unwrap_or("");
    finish_personal(buf, start, payload_start, [&c.ip, customer, ""], salt)
}

/// Fills in the envelope of the record begun at `start` and ending at the buffer's end: the
/// payload's length, then the checksum after it.
fn seal_envelope(buf: &mut Vec<u8>, start: usize, payload_start: usize) -> Result<(), RecordError> {
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

/// How many leading bytes of a stored value the hash chain covers: the envelope up to and
/// including its checksum. The rest, if any, is the personal trailer. For a value too short
/// to hold an envelope, all of it (decoding then reports the damage).
pub fn chained_len(bytes: &[u8]) -> usize {
    if bytes.len() < HEADER_LEN {
        return bytes.len();
    }
    let declared = u32::from_be_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]) as usize;
    bytes.len().min(HEADER_LEN.saturating_add(declared).saturating_add(CHECKSUM_LEN))
}

/// The record with its personal fields erased, if it has a trailer to cut: its chained bytes,
/// unchanged. `None` for a record with nothing erasable.
pub fn without_personal(bytes: &[u8]) -> Option<&[u8]> {
    let n = chained_len(bytes);
    (n < bytes.len() && bytes.first().is_some_and(|&v| v >= VERSION_3)).then(|| &bytes[..n])
}

/// Checks the envelope and returns the event kind without decoding the payload.
pub fn peek_kind(bytes: &[u8]) -> Result<EventKind, RecordError> {
    check(bytes).map(|p| p.kind)
}

/// Decodes one record, checking version, kind, length, checksum and seal. Accepts every
/// version listed in the module docs. Erased personal fields decode as empty strings.
pub fn decode(bytes: &[u8]) -> Result<Event, RecordError> {
    decode_personal(bytes).map(|(event, _)| event)
}

/// [`decode`], and what the record holds of the event's personal fields.
pub fn decode_personal(bytes: &[u8]) -> Result<(Event, Personal), RecordError> {
    let parts = check(bytes)?;
    let payload = parts.payload;
    match (parts.version, parts.kind) {
        (VERSION_1, EventKind::Click) => {
            // Version 1 is version 2 without `prior_click`: decoded as version 2 with `None`
            // (a `00` tag) appended. Bytes past a version-1 payload stay trailing bytes.
            let mut v2 = Vec::with_capacity(payload.len() + 1);
            v2.extend_from_slice(payload);
            v2.push(0);
            let click = Click::from(&ClickView::from(canonical_by_size::<ClickV2>(&v2)?));
            Ok((Event::Click(click), Personal::Chained))
        }
        (VERSION_2, EventKind::Click) => {
            Ok((Event::Click(Click::from(&ClickView::from(canonical_by_size::<ClickV2>(payload)?))), Personal::Chained))
        }
        (VERSION_3 | VERSION_4 | VERSION_5, EventKind::Click) => {
            let chained: ClickV3 = canonical_by_size(payload)?;
            let (trailer, personal) = open_trailer(parts.trailer, &chained.seal)?;
            let [ip, user_agent, referrer] = trailer.map(|t| [t.ip, t.user_agent, t.referrer]).unwrap_or_default();
            Ok((Event::Click(Click::from(&chained.view(ip, user_agent, referrer))), personal))
        }
        (_, EventKind::Click) => {
            let chained: ClickV6 = canonical_by_size(payload)?;
            let (trailer, personal) = open_trailer(parts.trailer, &chained.seal)?;
            let [ip, user_agent, referrer] = trailer.map(|t| [t.ip, t.user_agent, t.referrer]).unwrap_or_default();
            Ok((Event::Click(Click::from(&chained.view(ip, user_agent, referrer))), personal))
        }
        (VERSION_1 | VERSION_2, EventKind::Conversion) => {
            Ok((Event::Conversion(canonical::<ConversionV2>(payload)?.into_conversion()), Personal::Chained))
        }
        (VERSION_3, EventKind::Conversion) => {
            let chained: ConversionV3Fields = canonical(payload)?;
            let (trailer, personal) = open_trailer(parts.trailer, &chained.seal)?;
            let ip = trailer.map(|t| t.ip.to_owned()).unwrap_or_default();
            Ok((Event::Conversion(chained.into_conversion(ip)), personal))
        }
        (VERSION_4, EventKind::Conversion) => {
            let chained: ConversionV4Fields = canonical(payload)?;
            let (trailer, personal) = open_trailer(parts.trailer, &chained.seal)?;
            let ip = trailer.map(|t| t.ip.to_owned()).unwrap_or_default();
            Ok((Event::Conversion(chained.into_conversion(ip)), personal))
        }
        (_, EventKind::Conversion) => {
            let chained: ConversionV5Fields = canonical(payload)?;
            let (trailer, personal) = open_trailer(parts.trailer, &chained.seal)?;
            let [ip, customer] = trailer.map(|t| [t.ip, t.user_agent]).unwrap_or_default();
            Ok((Event::Conversion(chained.into_conversion(ip.to_owned(), customer.to_owned())), personal))
        }
        (_, EventKind::ProgramChange) => Ok((Event::ProgramChange(canonical(payload)?), Personal::Chained)),
        // Program edits exist from format 4 on: an older version byte is not their encoding.
        (VERSION_4 | VERSION_5 | FORMAT_VERSION, EventKind::ProgramEdit) => {
            Ok((Event::ProgramEdit(canonical(payload)?), Personal::Chained))
        }
        (VERSION_4 | VERSION_5 | FORMAT_VERSION, EventKind::Decision) => {
            Ok((Event::Decision(canonical(payload)?), Personal::Chained))
        }
        (_, EventKind::ProgramEdit | EventKind::Decision) => Err(RecordError::UnknownVersion(parts.version)),
    }
}

/// The personal trailer, checked against the chained seal.
fn open_trailer<'a>(trailer: &'a [u8], seal: &[u8; SEAL_LEN]) -> Result<(Option<Trailer<'a>>, Personal), RecordError> {
    if trailer.is_empty() {
        let personal = if *seal == [0; SEAL_LEN] { Personal::None } else { Personal::Erased };
        return Ok((None, personal));
    }
    if seal_of(trailer) != *seal {
        return Err(RecordError::Seal);
    }
    let t: Trailer<'a> = canonical_by_size(trailer)?;
    Ok((Some(t), Personal::Present))
}

/// What a record holds of its event's personal fields, from the envelope and the seal alone
/// (the seal is not checked against the trailer: [`decode_personal`] does that).
pub fn personal(bytes: &[u8]) -> Result<Personal, RecordError> {
    let parts = check(bytes)?;
    if parts.version < VERSION_3 || !parts.kind.has_personal() {
        return Ok(Personal::Chained);
    }
    if !parts.trailer.is_empty() {
        return Ok(Personal::Present);
    }
    // The seal is the payload's last bytes in both event kinds that have one.
    let seal = parts.payload.len().checked_sub(SEAL_LEN).map(|at| &parts.payload[at..]);
    Ok(match seal {
        Some(s) if s.iter().any(|&b| b != 0) => Personal::Erased,
        _ => Personal::None,
    })
}

/// A record decoded for a reader that wants clicks in place: see [`decode_view`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventView<'a> {
    /// A click, its text borrowed from the record. The personal fields are empty for a
    /// version-3 click: readers in place (attribution) have no use for them.
    Click(ClickView<'a>),
    /// Any other event, and version-1 clicks (rare: only logs written before
    /// `prior_click`), decoded as [`decode`] does.
    Owned(Event),
}

/// Decodes one record with the envelope checks of [`decode`], borrowing a click's text from
/// `bytes` instead of copying it: no allocation for a click. A click's personal trailer is
/// neither read nor checked (verify checks it).
pub fn decode_view(bytes: &[u8]) -> Result<EventView<'_>, RecordError> {
    let parts = check(bytes)?;
    match (parts.version, parts.kind) {
        (FORMAT_VERSION, EventKind::Click) => {
            canonical_by_size::<ClickV6>(parts.payload).map(|c| EventView::Click(c.view("", "", "")))
        }
        (VERSION_3 | VERSION_4 | VERSION_5, EventKind::Click) => {
            canonical_by_size::<ClickV3>(parts.payload).map(|c| EventView::Click(c.view("", "", "")))
        }
        (VERSION_2, EventKind::Click) => {
            canonical_by_size::<ClickV2>(parts.payload).map(|c| EventView::Click(ClickView::from(c)))
        }
        _ => decode(bytes).map(EventView::Owned),
    }
}

/// A version-6 click's chained payload, borrowed. The on-disk format: never change it.
#[derive(Serialize, Deserialize)]
struct ClickV6<'a> {
    click_id: ClickId,
    ts_ms: u64,
    link: &'a str,
    offer: &'a str,
    affiliate: &'a str,
    #[serde(borrow)]
    subs: [&'a str; 5],
    source: &'a str,
    deep_link: &'a str,
    flags: u16,
    prior_click: Option<ClickId>,
    visitor: [u8; 8],
    #[serde(borrow)]
    signals: Signals<&'a str>,
    seal: [u8; SEAL_LEN],
}

impl<'a> ClickV6<'a> {
    fn view(&self, ip: &'a str, user_agent: &'a str, referrer: &'a str) -> ClickView<'a> {
        ClickView {
            click_id: self.click_id,
            ts_ms: self.ts_ms,
            link: self.link,
            offer: self.offer,
            affiliate: self.affiliate,
            subs: self.subs,
            source: self.source,
            deep_link: self.deep_link,
            user_agent,
            referrer,
            ip,
            flags: self.flags,
            prior_click: self.prior_click,
            visitor: u64::from_le_bytes(self.visitor),
            signals: self.signals,
        }
    }
}

/// A version-3 (to 5) click's chained payload, borrowed. The on-disk format: never change it.
#[derive(Serialize, Deserialize)]
struct ClickV3<'a> {
    click_id: ClickId,
    ts_ms: u64,
    link: &'a str,
    offer: &'a str,
    affiliate: &'a str,
    #[serde(borrow)]
    subs: [&'a str; 5],
    source: &'a str,
    deep_link: &'a str,
    flags: u16,
    prior_click: Option<ClickId>,
    visitor: [u8; 8],
    seal: [u8; SEAL_LEN],
}

impl<'a> ClickV3<'a> {
    fn view(&self, ip: &'a str, user_agent: &'a str, referrer: &'a str) -> ClickView<'a> {
        ClickView {
            click_id: self.click_id,
            ts_ms: self.ts_ms,
            link: self.link,
            offer: self.offer,
            affiliate: self.affiliate,
            subs: self.subs,
            source: self.source,
            deep_link: self.deep_link,
            user_agent,
            referrer,
            ip,
            flags: self.flags,
            prior_click: self.prior_click,
            visitor: u64::from_le_bytes(self.visitor),
            signals: Signals::default(),
        }
    }
}

/// The personal trailer of a version-3 record. The on-disk format: never change it.
#[derive(Serialize, Deserialize)]
struct Trailer<'a> {
    salt: [u8; SALT_LEN],
    ip: &'a str,
    user_agent: &'a str,
    referrer: &'a str,
}

/// A version-3 conversion's chained payload: [`Conversion`] without `ip` and `advertiser`,
/// with the seal. Frozen; decoded, never written.
#[derive(Serialize, Deserialize)]
struct ConversionV3Fields {
    ts_ms: u64,
    source: ConversionSource,
    click_id: Option<ClickId>,
    coupon: String,
    offer: String,
    goal: String,
    txid: String,
    amount: Option<i64>,
    currency: Currency,
    status: ConversionStatus,
    subs: [String; 5],
    seal: [u8; SEAL_LEN],
}

impl ConversionV3Fields {
    fn into_conversion(self, ip: String) -> Conversion {
        Conversion {
            ts_ms: self.ts_ms,
            source: self.source,
            click_id: self.click_id,
            coupon: self.coupon,
            offer: self.offer,
            goal: self.goal,
            txid: self.txid,
            amount: self.amount,
            currency: self.currency,
            status: self.status,
            subs: self.subs,
            ip,
            advertiser: String::new(),
            customer: None,
        }
    }
}

/// A conversion as versions 1 and 2 laid it out, `ip` chained. Frozen; decoded, never written.
#[derive(Serialize, Deserialize)]
struct ConversionV2 {
    ts_ms: u64,
    source: ConversionSource,
    click_id: Option<ClickId>,
    coupon: String,
    offer: String,
    goal: String,
    txid: String,
    amount: Option<i64>,
    currency: Currency,
    status: ConversionStatus,
    subs: [String; 5],
    ip: String,
}

impl ConversionV2 {
    fn into_conversion(self) -> Conversion {
        Conversion {
            ts_ms: self.ts_ms,
            source: self.source,
            click_id: self.click_id,
            coupon: self.coupon,
            offer: self.offer,
            goal: self.goal,
            txid: self.txid,
            amount: self.amount,
            currency: self.currency,
            status: self.status,
            subs: self.subs,
            ip: self.ip,
            advertiser: String::new(),
            customer: None,
        }
    }
}

/// A version-4 conversion's chained payload: version 3's with `advertiser` before the seal.
/// Frozen; decoded, never written.
#[derive(Serialize, Deserialize)]
struct ConversionV4Fields {
    ts_ms: u64,
    source: ConversionSource,
    click_id: Option<ClickId>,
    coupon: String,
    offer: String,
    goal: String,
    txid: String,
    amount: Option<i64>,
    currency: Currency,
    status: ConversionStatus,
    subs: [String; 5],
    advertiser: String,
    seal: [u8; SEAL_LEN],
}

impl ConversionV4Fields {
    fn into_conversion(self, ip: String) -> Conversion {
        Conversion {
            ts_ms: self.ts_ms,
            source: self.source,
            click_id: self.click_id,
            coupon: self.coupon,
            offer: self.offer,
            goal: self.goal,
            txid: self.txid,
            amount: self.amount,
            currency: self.currency,
            status: self.status,
            subs: self.subs,
            ip,
            advertiser: self.advertiser,
            customer: None,
        }
    }
}

/// A version-5 conversion's chained payload: version 4's with the customer's key before the
/// seal (the customer's ID is in the trailer). The on-disk format: never change it.
#[derive(Serialize, Deserialize)]
struct ConversionV5Fields {
    ts_ms: u64,
    source: ConversionSource,
    click_id: Option<ClickId>,
    coupon: String,
    offer: String,
    goal: String,
    txid: String,
    amount: Option<i64>,
    currency: Currency,
    status: ConversionStatus,
    subs: [String; 5],
    advertiser: String,
    customer: Option<[u8; 16]>,
    seal: [u8; SEAL_LEN],
}

impl From<&Conversion> for ConversionV5Fields {
    fn from(c: &Conversion) -> Self {
        ConversionV5Fields {
            ts_ms: c.ts_ms,
            source: c.source,
            click_id: c.click_id,
            coupon: c.coupon.clone(),
            offer: c.offer.clone(),
            goal: c.goal.clone(),
            txid: c.txid.clone(),
            amount: c.amount,
            currency: c.currency,
            status: c.status,
            subs: c.subs.clone(),
            advertiser: c.advertiser.clone(),
            customer: c.customer.as_ref().map(|k| k.key.0),
            seal: [0; SEAL_LEN],
        }
    }
}

impl ConversionV5Fields {
    fn into_conversion(self, ip: String, customer_id: String) -> Conversion {
        Conversion {
            ts_ms: self.ts_ms,
            source: self.source,
            click_id: self.click_id,
            coupon: self.coupon,
            offer: self.offer,
            goal: self.goal,
            txid: self.txid,
            amount: self.amount,
            currency: self.currency,
            status: self.status,
            subs: self.subs,
            ip,
            advertiser: self.advertiser,
            customer: self.customer.map(|k| Customer { key: CustomerKey(k), id: customer_id }),
        }
    }
}

/// A click as version 2 laid it out, borrowed. Frozen: this is the version-2 format (and,
/// without its last field, version 1's).
#[derive(Serialize, Deserialize)]
struct ClickV2<'a> {
    click_id: ClickId,
    ts_ms: u64,
    link: &'a str,
    offer: &'a str,
    affiliate: &'a str,
    #[serde(borrow)]
    subs: [&'a str; 5],
    source: &'a str,
    deep_link: &'a str,
    user_agent: &'a str,
    referrer: &'a str,
    ip: &'a str,
    flags: u16,
    prior_click: Option<ClickId>,
}

impl<'a> From<ClickV2<'a>> for ClickView<'a> {
    fn from(c: ClickV2<'a>) -> ClickView<'a> {
        ClickView {
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
            prior_click: c.prior_click,
            visitor: legacy_visitor_key(c.offer, c.affiliate, c.ip, c.user_agent),
            signals: Signals::default(),
        }
    }
}

impl From<&ClickView<'_>> for Click {
    fn from(c: &ClickView<'_>) -> Click {
        Click {
            click_id: c.click_id,
            ts_ms: c.ts_ms,
            link: c.link.to_owned(),
            offer: c.offer.to_owned(),
            affiliate: c.affiliate.to_owned(),
            subs: c.subs.map(str::to_owned),
            source: c.source.to_owned(),
            deep_link: c.deep_link.to_owned(),
            user_agent: c.user_agent.to_owned(),
            referrer: c.referrer.to_owned(),
            ip: c.ip.to_owned(),
            flags: c.flags,
            prior_click: c.prior_click,
            visitor: c.visitor,
            signals: c.signals.owned(),
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

/// A record's parts, once its envelope is checked.
struct Parts<'a> {
    version: u8,
    kind: EventKind,
    payload: &'a [u8],
    /// The personal trailer: empty but for version-3 clicks and conversions that have one.
    trailer: &'a [u8],
}

/// Checks the envelope; returns the version byte, the event kind, the payload and trailer.
fn check(bytes: &[u8]) -> Result<Parts<'_>, RecordError> {
    if bytes.len() < HEADER_LEN + CHECKSUM_LEN {
        return Err(RecordError::Truncated(bytes.len()));
    }
    let version = bytes[0];
    if !matches!(version, VERSION_1 | VERSION_2 | VERSION_3 | VERSION_4 | VERSION_5 | FORMAT_VERSION) {
        return Err(RecordError::UnknownVersion(version));
    }
    let kind = EventKind::from_byte(bytes[1]).ok_or(RecordError::UnknownKind(bytes[1]))?;
    let declared = u32::from_be_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]) as usize;
    let actual = bytes.len() - HEADER_LEN - CHECKSUM_LEN;
    // Only clicks and conversions from version 3 on may carry bytes past the checksum.
    let trailer_allowed = version >= VERSION_3 && kind.has_personal();
    if declared > actual || (declared != actual && !trailer_allowed) {
        return Err(RecordError::LengthMismatch { declared, actual });
    }
    let body_end = HEADER_LEN + declared;
    let stored = u32::from_be_bytes([bytes[body_end], bytes[body_end + 1], bytes[body_end + 2], bytes[body_end + 3]]);
    if stored != checksum(&bytes[..body_end]) {
        return Err(RecordError::Checksum);
    }
    Ok(Parts { version, kind, payload: &bytes[HEADER_LEN..body_end], trailer: &bytes[body_end + CHECKSUM_LEN..] })
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

    const SALT: [u8; SALT_LEN] = [0x5a; SALT_LEN];

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
            // What older versions decode to; a version-3 click stores the edge's key.
            visitor: legacy_visitor_key("shoes", "aff1", "203.0.113.0", "UA"),
            signals: Signals::default(),
        })
    }

    /// A version-6 click: the golden click with every signal set.
    fn golden_click_v6() -> Event {
        let Event::Click(mut c) = golden_click(Some(golden_prior_click())) else { unreachable!() };
        c.signals = Signals {
            country: "GB".into(),
            region: "ENG".into(),
            asn: 64_500,
            device: "mobile".into(),
            os: "iOS".into(),
            browser: "Safari".into(),
            language: "en".into(),
            route: "uk-mobile".into(),
        };
        Event::Click(c)
    }

    fn golden_prior_click() -> ClickId {
        ClickId::new(1_699_999_000_000, 3, 0xfedc_ba98_7654_3210)
    }

    fn golden_conversion() -> Event {
        golden_conversion_of("")
    }

    /// Versions before 4 decode with no advertiser.
    fn golden_conversion_of(advertiser: &str) -> Event {
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
            advertiser: advertiser.into(),
            customer: None,
        })
    }

    /// Versions before 5 decode with no customer.
    fn golden_conversion_v5() -> Event {
        let Event::Conversion(mut c) = golden_conversion_of("acme") else { unreachable!() };
        c.customer = Some(Customer::new(&[7; 32], "cust-42"));
        Event::Conversion(c)
    }

    fn golden_program() -> Event {
        Event::ProgramChange(ProgramChange { ts_ms: 5, digest: "ab".into(), source: "x".into() })
    }

    fn golden_decision() -> Event {
        Event::Decision(OperatorDecision { ts_ms: 7, actor: "ops".into(), decision: "{}".into() })
    }

    fn golden_program_edit() -> Event {
        Event::ProgramEdit(ProgramEdit { ts_ms: 6, actor: "ops".into(), digest: "cd".into(), edit: "{}".into() })
    }

    fn salted(event: &Event) -> Vec<u8> {
        let mut buf = Vec::new();
        encode_salted(event, SALT, &mut buf).unwrap();
        buf
    }

    // These bytes ARE the on-disk format (version 6, salt 0x5a…). If this test fails, you
    // changed the format: restore it, or bump FORMAT_VERSION, keep decoders for versions 1 to
    // 6, and keep these strings as decode-only tests like the older ones below.
    const GOLDEN_CLICK: &str = "06010000008210018bcfe5680000070123456789abcdef80d095ffbc310464656d6f0573686f657304616666310161000000016502666200010110018bcfd625c00003fedcba9876543210634b53f9fac5bcf002474203454e47f4f703066d6f62696c6503694f530653616661726902656e09756b2d6d6f62696c6537fb0feb3195c2fd09794d40964547a55a5a5a5a5a5a5a5a0b3230332e302e3131332e3002554100";
    const GOLDEN_CONVERSION: &str = "060200000059a0dd9bffbc31010110018bcfe5680000070000000000000001000573686f65730473616c6503542d3101f2c001035553440100000000000461636d650163a1e7b64899af16d370c3dc44f1e7faccab65a7f7b85a635bdd16fef232e0465a5a5a5a5a5a5a5a0c3139382e35312e3130302e3007637573742d343200";
    const GOLDEN_PROGRAM: &str = "060300000006050261620178a3ca2f34";
    const GOLDEN_PROGRAM_EDIT: &str = "06040000000b06036f7073026364027b7dabcd4da8";
    const GOLDEN_DECISION: &str = "06050000000807036f7073027b7dd6b35a46";

    // Version 5: clicks without signals. Decode-only.
    const GOLDEN_CLICK_V5: &str = "05010000005910018bcfe5680000070123456789abcdef80d095ffbc310464656d6f0573686f657304616666310161000000016502666200010110018bcfd625c00003fedcba9876543210634b53f9fac5bcf037fb0feb3195c2fd09794d4037131c305a5a5a5a5a5a5a5a0b3230332e302e3131332e3002554100";
    const GOLDEN_CONVERSION_V5: &str = "050200000059a0dd9bffbc31010110018bcfe5680000070000000000000001000573686f65730473616c6503542d3101f2c001035553440100000000000461636d650163a1e7b64899af16d370c3dc44f1e7faccab65a7f7b85a635bdd16fee959bcab5a5a5a5a5a5a5a5a0c3139382e35312e3130302e3007637573742d343200";
    const GOLDEN_PROGRAM_V5: &str = "050300000006050261620178b3101140";
    const GOLDEN_PROGRAM_EDIT_V5: &str = "05040000000b06036f7073026364027b7d2da2096a";
    const GOLDEN_DECISION_V5: &str = "05050000000807036f7073027b7ddc8a6b5c";

    // Version 4: conversions without a customer. Decode-only.
    const GOLDEN_CLICK_V4: &str = "04010000005910018bcfe5680000070123456789abcdef80d095ffbc310464656d6f0573686f657304616666310161000000016502666200010110018bcfd625c00003fedcba9876543210634b53f9fac5bcf037fb0feb3195c2fd09794d40fe9a09ab5a5a5a5a5a5a5a5a0b3230332e302e3131332e3002554100";
    const GOLDEN_CONVERSION_V4: &str = "040200000048a0dd9bffbc31010110018bcfe5680000070000000000000001000573686f65730473616c6503542d3101f2c001035553440100000000000461636d6509c5cd1a493c5f1b427abbd95c1c9e285a5a5a5a5a5a5a5a0c3139382e35312e3130302e300000";
    const GOLDEN_PROGRAM_V4: &str = "040300000006050261620178867b783f";
    const GOLDEN_PROGRAM_EDIT_V4: &str = "04040000000b06036f7073026364027b7dd94770ae";
    const GOLDEN_DECISION_V4: &str = "04050000000807036f7073027b7d472cd956";

    // Version 3: personal fields in the trailer, no advertiser. Decode-only.
    const GOLDEN_CLICK_V3: &str = "03010000005910018bcfe5680000070123456789abcdef80d095ffbc310464656d6f0573686f657304616666310161000000016502666200010110018bcfd625c00003fedcba9876543210634b53f9fac5bcf037fb0feb3195c2fd09794d409b7302945a5a5a5a5a5a5a5a0b3230332e302e3131332e3002554100";
    const GOLDEN_CONVERSION_V3: &str = "030200000043a0dd9bffbc31010110018bcfe5680000070000000000000001000573686f65730473616c6503542d3101f2c0010355534401000000000009c5cd1a493c5f1b427abbd92b93de175a5a5a5a5a5a5a5a0c3139382e35312e3130302e300000";
    const GOLDEN_PROGRAM_V3: &str = "03030000000605026162017845e82bca";

    // Version 2, personal fields chained. Decode-only: never change these strings.
    const GOLDEN_CLICK_V2: &str = "02010000005510018bcfe5680000070123456789abcdef80d095ffbc310464656d6f0573686f657304616666310161000000016502666200025541000b3230332e302e3131332e30010110018bcfd625c00003fedcba98765432106ba45d5a";
    const GOLDEN_CONVERSION_V2: &str = "020200000044a0dd9bffbc31010110018bcfe5680000070000000000000001000573686f65730473616c6503542d3101f2c001035553440100000000000c3139382e35312e3130302e30b00b4865";
    const GOLDEN_PROGRAM_V2: &str = "0203000000060502616201780158204b";

    // Version 1, as written before `Click::prior_click` existed. Decode-only.
    const GOLDEN_CLICK_V1: &str = "01010000004310018bcfe5680000070123456789abcdef80d095ffbc310464656d6f0573686f657304616666310161000000016502666200025541000b3230332e302e3131332e3001c418db97";
    const GOLDEN_CONVERSION_V1: &str = "010200000044a0dd9bffbc31010110018bcfe5680000070000000000000001000573686f65730473616c6503542d3101f2c001035553440100000000000c3139382e35312e3130302e30b84ac4c4";
    const GOLDEN_PROGRAM_V1: &str = "010300000006050261620178f9fe9b04";

    #[test]
    fn golden_bytes_are_frozen() {
        for (event, golden) in [
            (golden_click_v6(), GOLDEN_CLICK),
            (golden_conversion_v5(), GOLDEN_CONVERSION),
            (golden_program(), GOLDEN_PROGRAM),
            (golden_program_edit(), GOLDEN_PROGRAM_EDIT),
            (golden_decision(), GOLDEN_DECISION),
        ] {
            let bytes = salted(&event);
            assert_eq!(hex(&bytes), golden, "format of {:?} changed", event.kind());
            assert_eq!(decode(&from_hex(golden)).unwrap(), event);
        }
    }

    #[test]
    fn older_golden_bytes_still_decode() {
        for (golden, event, personal) in [
            (GOLDEN_CLICK_V5, golden_click(Some(golden_prior_click())), Personal::Present),
            (GOLDEN_CONVERSION_V5, golden_conversion_v5(), Personal::Present),
            (GOLDEN_PROGRAM_V5, golden_program(), Personal::Chained),
            (GOLDEN_PROGRAM_EDIT_V5, golden_program_edit(), Personal::Chained),
            (GOLDEN_DECISION_V5, golden_decision(), Personal::Chained),
            (GOLDEN_CLICK_V4, golden_click(Some(golden_prior_click())), Personal::Present),
            (GOLDEN_CONVERSION_V4, golden_conversion_of("acme"), Personal::Present),
            (GOLDEN_PROGRAM_V4, golden_program(), Personal::Chained),
            (GOLDEN_PROGRAM_EDIT_V4, golden_program_edit(), Personal::Chained),
            (GOLDEN_DECISION_V4, golden_decision(), Personal::Chained),
            (GOLDEN_CLICK_V3, golden_click(Some(golden_prior_click())), Personal::Present),
            (GOLDEN_CONVERSION_V3, golden_conversion(), Personal::Present),
            (GOLDEN_PROGRAM_V3, golden_program(), Personal::Chained),
            (GOLDEN_CLICK_V2, golden_click(Some(golden_prior_click())), Personal::Chained),
            (GOLDEN_CONVERSION_V2, golden_conversion(), Personal::Chained),
            (GOLDEN_PROGRAM_V2, golden_program(), Personal::Chained),
            (GOLDEN_CLICK_V1, golden_click(None), Personal::Chained),
            (GOLDEN_CONVERSION_V1, golden_conversion(), Personal::Chained),
            (GOLDEN_PROGRAM_V1, golden_program(), Personal::Chained),
        ] {
            let bytes = from_hex(golden);
            assert_eq!(decode_personal(&bytes).unwrap(), (event.clone(), personal), "{golden}");
            assert_eq!(peek_kind(&bytes).unwrap(), event.kind());
            assert_eq!(self::personal(&bytes).unwrap(), personal);
            // Nothing chained can be cut off; a version-3 trailer can.
            if personal == Personal::Chained {
                assert_eq!(without_personal(&bytes), None);
                assert_eq!(chained_len(&bytes), bytes.len());
            } else {
                let cut = without_personal(&bytes).unwrap();
                assert_eq!(self::personal(cut).unwrap(), Personal::Erased);
                assert!(decode(cut).is_ok());
            }
            // Re-encoded, an old record is a version-6 record of the same event.
            let again = salted(&event);
            assert_eq!(again[0], FORMAT_VERSION);
            assert_eq!(decode(&again).unwrap(), event);
        }
    }

    /// The point of version 3: cutting the trailer leaves the chained bytes as they were, and
    /// the record still decodes, with its personal fields gone and everything else intact.
    #[test]
    fn erasing_cuts_the_trailer_and_keeps_the_chained_bytes() {
        for event in
            [golden_click_v6(), golden_click(Some(golden_prior_click())), golden_conversion(), golden_conversion_v5()]
        {
            let full = salted(&event);
            assert_eq!(self::personal(&full).unwrap(), Personal::Present);
            let cut = without_personal(&full).unwrap();
            assert_eq!(cut.len(), chained_len(&full));
            assert_eq!(&full[..cut.len()], cut);
            assert_eq!(without_personal(cut), None, "nothing left to erase");
            let (erased, personal) = decode_personal(cut).unwrap();
            assert_eq!(personal, Personal::Erased);
            assert_eq!(self::personal(cut).unwrap(), Personal::Erased);
            let mut expected = event.clone();
            match &mut expected {
                Event::Click(c) => {
                    c.ip.clear();
                    c.user_agent.clear();
                    c.referrer.clear();
                }
                Event::Conversion(c) => {
                    // The customer's key is chained, to keep paying its referrer; its ID goes.
                    c.ip.clear();
                    if let Some(k) = &mut c.customer {
                        k.id.clear();
                    }
                }
                Event::ProgramChange(_) | Event::ProgramEdit(_) | Event::Decision(_) => unreachable!(),
            }
            assert_eq!(erased, expected);
            // Readers in place see the same click either way.
            if event.kind() == EventKind::Click {
                assert_eq!(decode_view(cut).unwrap(), decode_view(&full).unwrap());
            }
        }
    }

    #[test]
    fn events_without_personal_fields_have_no_trailer() {
        let Event::Click(mut c) = golden_click(None) else { unreachable!() };
        c.ip.clear();
        c.user_agent.clear();
        let bytes = salted(&Event::Click(c.clone()));
        assert_eq!(chained_len(&bytes), bytes.len());
        assert_eq!(decode_personal(&bytes).unwrap(), (Event::Click(c), Personal::None));
        assert_eq!(self::personal(&bytes).unwrap(), Personal::None);
        let program = salted(&golden_program());
        assert_eq!(self::personal(&program).unwrap(), Personal::Chained);
    }

    /// Personal fields can be erased but not changed: a trailer that is not the one sealed
    /// is refused, even a well-formed one, and a trailer under a record that had none.
    #[test]
    fn a_trailer_that_does_not_match_its_seal_is_refused() {
        let full = salted(&golden_click(None));
        let chained = without_personal(&full).unwrap();
        let mut other_ip = chained.to_vec();
        let mut t = vec![0x5a; SALT_LEN];
        for s in ["198.51.100.7", "UA", ""] {
            put_bytes(&mut t, s.as_bytes());
        }
        other_ip.extend_from_slice(&t);
        assert_eq!(decode(&other_ip), Err(RecordError::Seal));
        // Another salt for the same fields: also not what was sealed.
        let mut other_salt = full.clone();
        other_salt[chained.len()] ^= 1;
        assert_eq!(decode(&other_salt), Err(RecordError::Seal));

        let Event::Click(mut c) = golden_click(None) else { unreachable!() };
        c.ip.clear();
        c.user_agent.clear();
        let mut none = salted(&Event::Click(c));
        none.extend_from_slice(&t);
        assert_eq!(decode(&none), Err(RecordError::Seal));
        // Program changes never have a trailer.
        let mut program = salted(&golden_program());
        program.push(0);
        assert!(matches!(decode(&program), Err(RecordError::LengthMismatch { .. })));
    }

    /// A payload under another version's header is not silently accepted: the version byte
    /// decides the layout, and every byte must be accounted for.
    #[test]
    fn a_click_payload_under_the_wrong_version_is_rejected() {
        let v3 = salted(&golden_click(None));
        for version in [VERSION_1, VERSION_2] {
            let other = envelope(version, EventKind::Click, payload(&v3));
            assert!(matches!(decode(&other), Err(RecordError::Payload(_))), "{version}");
        }
        let v2 = from_hex(GOLDEN_CLICK_V2);
        let as_v3 = envelope(FORMAT_VERSION, EventKind::Click, payload(&v2));
        assert!(matches!(decode(&as_v3), Err(RecordError::Payload(_))));
        let v1 = from_hex(GOLDEN_CLICK_V1);
        let as_v2 = envelope(VERSION_2, EventKind::Click, payload(&v1));
        assert!(matches!(decode(&as_v2), Err(RecordError::Payload(_))));
        // A prior click's 16 bytes under a version-1 header are trailing bytes too.
        let as_v1 = envelope(VERSION_1, EventKind::Click, payload(&v2));
        assert!(matches!(decode(&as_v1), Err(RecordError::Payload(_))));
        // A conversion's advertiser under a version-3 header, and a version-3 payload read as
        // version 4, are not the event they were written as; nor a customer under version 4.
        let v4 = from_hex(GOLDEN_CONVERSION_V4);
        let as_v3 = envelope(VERSION_3, EventKind::Conversion, payload(&v4));
        assert!(decode(&as_v3).is_err_and(|e| matches!(e, RecordError::Payload(_) | RecordError::NonCanonical)));
        let v3 = from_hex(GOLDEN_CONVERSION_V3);
        let as_v4 = envelope(VERSION_4, EventKind::Conversion, payload(&v3));
        assert!(decode(&as_v4).is_err());
        let v5 = salted(&golden_conversion_v5());
        let as_v4 = envelope(VERSION_4, EventKind::Conversion, payload(&v5));
        assert!(decode(&as_v4).is_err());
        let as_v5 = envelope(FORMAT_VERSION, EventKind::Conversion, payload(&v4));
        assert!(decode(&as_v5).is_err());
    }

    #[test]
    fn every_envelope_error_is_reported() {
        let good = salted(&golden_program());
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
        // A declared length beyond the record, for a kind that may have a trailer.
        let click = salted(&golden_click(None));
        let mut v = click[..chained_len(&click) - 1].to_vec();
        v.truncate(v.len());
        assert!(decode(&v).is_err());

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
        let good = salted(&golden_program());
        let payload = payload(&good);
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
            for version in [VERSION_2, VERSION_4, FORMAT_VERSION] {
                let v = envelope(version, EventKind::ProgramChange, payload(&v1));
                assert_eq!(decode(&v), Err(RecordError::NonCanonical), "{forged} as version {version}");
            }
        }
        assert!(decode(&from_hex(GOLDEN_PROGRAM)).is_ok());
        assert!(decode(&from_hex(GOLDEN_PROGRAM_V1)).is_ok());
    }

    /// An overlong varint in a click is refused by both decoders; `decode_view` finds it by
    /// length alone.
    #[test]
    fn overlong_varints_in_clicks_are_rejected() {
        for good in [salted(&golden_click(None)), from_hex(GOLDEN_CLICK_V2)] {
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
            let record = envelope(good[0], EventKind::Click, &forged);
            assert_eq!(decode(&record), Err(RecordError::NonCanonical));
            assert_eq!(decode_view(&record), Err(RecordError::NonCanonical));
        }
    }

    /// A currency decodes case-insensitively, so `usd` is as long as `USD` but not its
    /// encoding: why conversions keep the byte-for-byte canonical check.
    #[test]
    fn a_lowercase_currency_is_not_canonical() {
        for good in [salted(&golden_conversion()), from_hex(GOLDEN_CONVERSION_V2)] {
            let p = payload(&good);
            let at = p.windows(3).position(|w| w == b"USD").unwrap();
            let mut forged = p.to_vec();
            forged[at..at + 3].copy_from_slice(b"usd");
            let record = envelope(good[0], EventKind::Conversion, &forged);
            assert_eq!(decode(&record), Err(RecordError::NonCanonical));
            assert_eq!(decode_view(&record), Err(RecordError::NonCanonical));
        }
    }

    #[test]
    fn decode_view_borrows_clicks_and_decodes_the_rest() {
        let click = golden_click(Some(golden_prior_click()));
        let bytes = salted(&click);
        let Event::Click(c) = &click else { unreachable!() };
        assert_eq!(
            decode_view(&bytes).unwrap(),
            EventView::Click(ClickView { ip: "", user_agent: "", referrer: "", ..ClickView::from(c) })
        );
        let conversion = golden_conversion();
        assert_eq!(decode_view(&salted(&conversion)).unwrap(), EventView::Owned(conversion));
        // Version 2 clicks are borrowed too, personal fields and all, with the legacy key.
        let v2 = from_hex(GOLDEN_CLICK_V2);
        assert_eq!(decode_view(&v2).unwrap(), EventView::Click(ClickView::from(c)));
        // Version 1 clicks come back owned, with no prior click.
        let v1 = from_hex(GOLDEN_CLICK_V1);
        assert_eq!(decode_view(&v1).unwrap(), EventView::Owned(decode(&v1).unwrap()));
        let mut bad = bytes.clone();
        bad[chained_len(&bytes) - 1] ^= 1;
        assert_eq!(decode_view(&bad), Err(RecordError::Checksum));
    }

    /// The payload of a well-formed record.
    fn payload(record: &[u8]) -> &[u8] {
        &record[HEADER_LEN..chained_len(record) - CHECKSUM_LEN]
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

    /// The version-6 record of `c` built through serde, the reference for the hand-written
    /// encoder.
    fn serde_click(c: &Click, salt: [u8; SALT_LEN]) -> Vec<u8> {
        let mut trailer = Vec::new();
        if !(c.ip.is_empty() && c.user_agent.is_empty() && c.referrer.is_empty()) {
            let t = Trailer { salt, ip: &c.ip, user_agent: &c.user_agent, referrer: &c.referrer };
            trailer = postcard::to_stdvec(&t).unwrap();
        }
        let chained = ClickV6 {
            click_id: c.click_id,
            ts_ms: c.ts_ms,
            link: &c.link,
            offer: &c.offer,
            affiliate: &c.affiliate,
            subs: [&c.subs[0], &c.subs[1], &c.subs[2], &c.subs[3], &c.subs[4]],
            source: &c.source,
            deep_link: &c.deep_link,
            flags: c.flags,
            prior_click: c.prior_click,
            visitor: c.visitor.to_le_bytes(),
            signals: c.signals.as_view(),
            seal: if trailer.is_empty() { [0; SEAL_LEN] } else { seal_of(&trailer) },
        };
        let mut v = envelope(FORMAT_VERSION, EventKind::Click, &postcard::to_stdvec(&chained).unwrap());
        v.extend_from_slice(&trailer);
        v
    }

    /// The version-2 record of `c`, as the version-2 writer laid it out.
    fn v2_click(c: &Click) -> Vec<u8> {
        let old = ClickV2 {
            click_id: c.click_id,
            ts_ms: c.ts_ms,
            link: &c.link,
            offer: &c.offer,
            affiliate: &c.affiliate,
            subs: [&c.subs[0], &c.subs[1], &c.subs[2], &c.subs[3], &c.subs[4]],
            source: &c.source,
            deep_link: &c.deep_link,
            user_agent: &c.user_agent,
            referrer: &c.referrer,
            ip: &c.ip,
            flags: c.flags,
            prior_click: c.prior_click,
        };
        envelope(VERSION_2, EventKind::Click, &postcard::to_stdvec(&old).unwrap())
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
            proptest::array::uniform4(prop_oneof![Just(String::new()), ".{0,40}"]),
            any::<u16>(),
            proptest::option::of(any_click_id()),
            any::<u64>(),
            (proptest::array::uniform7(prop_oneof![Just(String::new()), ".{0,12}"]), any::<u32>()),
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
                    visitor,
                    ([country, region, device, os, browser, language, route], asn),
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
                        visitor,
                        signals: Signals { country, region, asn, device, os, browser, language, route },
                    })
                },
            )
    }

    fn any_conversion() -> impl Strategy<Value = Event> {
        (
            any::<u64>(),
            prop::sample::select(ConversionSource::ALL.to_vec()),
            proptest::option::of(any_click_id()),
            proptest::array::uniform5(".{0,16}"),
            proptest::option::of(any::<i64>()),
            any_currency(),
            prop::sample::select(ConversionStatus::ALL.to_vec()),
            subs(),
            "[a-z0-9_-]{0,16}",
            proptest::option::of((any::<[u8; 16]>(), ".{0,16}")),
        )
            .prop_map(
                |(
                    ts_ms,
                    source,
                    click_id,
                    [coupon, offer, goal, txid, ip],
                    amount,
                    currency,
                    status,
                    subs,
                    advertiser,
                    customer,
                )| {
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
                        advertiser,
                        customer: customer.map(|(key, id)| Customer { key: CustomerKey(key), id }),
                    })
                },
            )
    }

    fn any_program() -> impl Strategy<Value = Event> {
        prop_oneof![
            (any::<u64>(), "[0-9a-f]{0,64}", ".{0,200}")
                .prop_map(|(ts_ms, digest, source)| Event::ProgramChange(ProgramChange { ts_ms, digest, source })),
            (any::<u64>(), ".{0,20}", "[0-9a-f]{0,64}", ".{0,200}").prop_map(|(ts_ms, actor, digest, edit)| {
                Event::ProgramEdit(ProgramEdit { ts_ms, actor, digest, edit })
            }),
            (any::<u64>(), ".{0,20}", ".{0,200}")
                .prop_map(|(ts_ms, actor, decision)| Event::Decision(OperatorDecision { ts_ms, actor, decision })),
        ]
    }

    proptest! {
        #[test]
        fn every_record_type_round_trips(event in prop_oneof![any_click(), any_conversion(), any_program()]) {
            let bytes = encode(&event).unwrap();
            prop_assert_eq!(peek_kind(&bytes).unwrap(), event.kind());
            let (decoded, personal) = decode_personal(&bytes).unwrap();
            prop_assert_eq!(&decoded, &event);
            prop_assert_eq!(self::personal(&bytes).unwrap(), personal);
        }

        /// A click encoded from borrowed fields is the record serde gives for the owned click.
        #[test]
        fn encode_click_into_writes_the_click_record(event in any_click(), salt in any::<[u8; SALT_LEN]>()) {
            let Event::Click(c) = &event else { unreachable!() };
            let mut buf = b"kept".to_vec();
            encode_click_into(&ClickView::from(c), salt, &mut buf).unwrap();
            prop_assert_eq!(&buf[..4], b"kept");
            let expected = serde_click(c, salt);
            prop_assert_eq!(&buf[4..], expected.as_slice());
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
            encode_click_into(&ClickView::from(&c), SALT, &mut buf).unwrap();
            prop_assert_eq!(&buf, &serde_click(&c, SALT));
            prop_assert_eq!(decode(&buf).unwrap(), Event::Click(c));
        }

        /// In place or owned, a record decodes to the same event (in place without the
        /// personal fields of a version-3 click).
        #[test]
        fn decode_view_agrees_with_decode(event in prop_oneof![any_click(), any_conversion(), any_program()]) {
            let bytes = encode(&event).unwrap();
            match (decode_view(&bytes).unwrap(), &event) {
                (EventView::Click(view), Event::Click(c)) => {
                    prop_assert_eq!(view, ClickView { ip: "", user_agent: "", referrer: "", ..ClickView::from(c) })
                }
                (EventView::Owned(e), _) => prop_assert_eq!(&e, &event),
                (view, _) => prop_assert!(false, "{view:?} for {event:?}"),
            }
        }

        /// Any click as versions 1 and 2 wrote it decodes to that click, with the legacy
        /// visitor key, in place too.
        #[test]
        fn older_clicks_decode_with_the_legacy_visitor_key(event in any_click()) {
            let Event::Click(mut click) = event else { unreachable!() };
            click.visitor = legacy_visitor_key(&click.offer, &click.affiliate, &click.ip, &click.user_agent);
            // Older formats had no signals.
            click.signals = Signals::default();
            let v2 = v2_click(&click);
            prop_assert_eq!(decode(&v2).unwrap(), Event::Click(click.clone()));
            prop_assert_eq!(decode_view(&v2).unwrap(), EventView::Click(ClickView::from(&click)));
            click.prior_click = None;
            let v2 = v2_click(&click);
            let p = payload(&v2);
            prop_assert_eq!(p.last(), Some(&0u8));
            let v1 = envelope(VERSION_1, EventKind::Click, &p[..p.len() - 1]);
            prop_assert_eq!(decode(&v1).unwrap(), Event::Click(click));
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(&bytes);
            let _ = decode_view(&bytes);
            let _ = self::personal(&bytes);
            let _ = chained_len(&bytes);
            let _ = without_personal(&bytes);
        }

        /// Any flipped bit is caught by `decode`; in the chained bytes by `decode_view` too
        /// (it does not read the trailer, whose seal `decode` checks).
        #[test]
        fn any_single_bit_flip_is_detected(event in prop_oneof![any_click(), any_conversion()], bit in any::<usize>()) {
            let mut bytes = encode(&event).unwrap();
            let chained = chained_len(&bytes);
            let i = bit % (bytes.len() * 8);
            bytes[i / 8] ^= 1 << (i % 8);
            prop_assert!(decode(&bytes).is_err());
            if i / 8 < chained {
                prop_assert!(decode_view(&bytes).is_err());
            }
        }
    }
}
