//! The events Tally appends to its log.
//!
//! [`crate::record`] lays them out on disk (postcard inside its envelope; conversions and
//! program changes through these structs' serde derives, so **their field order is part of
//! the on-disk format**: never reorder, remove or retype a field). Add a new event kind or
//! bump the envelope version instead; the golden-byte tests in `record.rs` fail on any
//! accidental change.

use serde::{Deserialize, Serialize};

use crate::click_id::ClickId;
use crate::money::Currency;

/// Bit flags recorded on a click. Stored as a plain `u16` so new flags never change the format.
pub mod click_flags {
    /// The request was a `HEAD`.
    pub const HEAD: u16 = 1 << 0;
    /// The browser said it was prefetching (`Purpose`, `Sec-Purpose`, `X-Moz`, `X-Purpose`).
    pub const PREFETCH: u16 = 1 << 1;
    /// The user agent is a known link unfurler or crawler (social networks, chat apps, bots).
    pub const UNFURLER: u16 = 1 << 2;
    /// A deep link (`url=`) was given but its host is not allowed by the offer; the offer's
    /// default destination was used instead.
    pub const DEEP_LINK_REJECTED: u16 = 1 << 3;
    /// A deep link (`url=`) was allowed and followed.
    pub const DEEP_LINK_USED: u16 = 1 << 4;
    /// A sub ID or other free-text field was longer than the stored limit and was truncated.
    pub const TRUNCATED: u16 = 1 << 5;
    /// The client's address is in a datacenter or hosting network (the edge's datacenter
    /// list, by range or by ASN). Not [`NON_HUMAN`]: VPNs and corporate proxies live there
    /// too, so what it means for money is each offer's fraud rule, not the report's.
    pub const DATACENTER: u16 = 1 << 6;

    /// Flags that mean "no person clicked": reports exclude these clicks.
    pub const NON_HUMAN: u16 = HEAD | PREFETCH | UNFURLER;
}

/// A click on an affiliate link.
///
/// `user_agent`, `referrer` and `ip` are personal data: from format 3 on they are stored
/// outside the hash-chained bytes (see [`crate::record`]) so they can be erased, and are
/// empty in a click whose personal fields were erased.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Click {
    pub click_id: ClickId,
    /// Milliseconds since the Unix epoch, from the edge's clock when the click arrived.
    pub ts_ms: u64,
    pub link: String,
    pub offer: String,
    pub affiliate: String,
    /// `sub1`..`sub5`; an empty string means "not given".
    pub subs: [String; 5],
    /// The traffic source (`src=`), empty if not given.
    pub source: String,
    /// The deep link that was followed, empty if none.
    pub deep_link: String,
    pub user_agent: String,
    pub referrer: String,
    /// The client IP after the configured privacy policy (truncated, hashed or full).
    pub ip: String,
    /// See [`click_flags`].
    pub flags: u16,
    /// The `tally_cid` cookie the browser already carried when it clicked (the click before
    /// this one on this redirect host), if it parsed as a click ID. Lets attribution apply
    /// first-click rules without a user identity.
    pub prior_click: Option<ClickId>,
    /// Who clicked, as a pseudonym: a keyed hash of offer, affiliate, IP and user agent that
    /// is the same for one visitor during one day of the program's calendar. Unique clicks
    /// are counted by it, so they do not depend on personal fields that may be erased later.
    /// The edge computes it (see [`visitor_key`]); clicks of formats 1 and 2 get
    /// [`legacy_visitor_key`] when decoded.
    pub visitor: u64,
    /// What the edge made of the request: country, device, language, network (format 6 on;
    /// empty in older clicks).
    pub signals: Signals<String>,
}

/// What the edge observed of a click's request beyond its fields, when it arrived: where
/// from, on what, and which route it took. Recorded (chained, not personal: a country or a
/// browser family names nobody) so that fraud rules and reports judge every click by what
/// was known then, and a replay next year gives the same answers whatever databases the
/// edge has by then. Every text is empty when unknown.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Signals<S> {
    /// ISO 3166-1 alpha-2, upper case (`GB`), from the GeoIP database.
    pub country: S,
    /// The first ISO 3166-2 subdivision's code without the country (`ENG`).
    pub region: S,
    /// The autonomous system the address belongs to, from the ASN database; 0 unknown.
    pub asn: u32,
    /// Device class: `desktop`, `mobile`, `tablet`, `tv`, `console` or `bot`
    /// (the user-agent rules' names).
    pub device: S,
    /// Operating system family (`Android`, `iOS`, `Windows`, …).
    pub os: S,
    /// Browser family (`Chrome`, `Safari`, `Firefox`, …).
    pub browser: S,
    /// The primary subtag of the first `Accept-Language` entry, lower case (`en`).
    pub language: S,
    /// The routing rule that chose the destination; empty when the offer's own did.
    pub route: S,
}

impl<S: AsRef<str>> Signals<S> {
    /// The same signals, borrowed.
    pub fn as_view(&self) -> Signals<&str> {
        Signals {
            country: self.country.as_ref(),
            region: self.region.as_ref(),
            asn: self.asn,
            device: self.device.as_ref(),
            os: self.os.as_ref(),
            browser: self.browser.as_ref(),
            language: self.language.as_ref(),
            route: self.route.as_ref(),
        }
    }

    /// The same signals, owned.
    pub fn owned(&self) -> Signals<String> {
        let v = self.as_view();
        Signals {
            country: v.country.to_owned(),
            region: v.region.to_owned(),
            asn: v.asn,
            device: v.device.to_owned(),
            os: v.os.to_owned(),
            browser: v.browser.to_owned(),
            language: v.language.to_owned(),
            route: v.route.to_owned(),
        }
    }

    /// The texts in their stored order (the ASN is between region and device).
    pub fn texts(&self) -> [&str; 7] {
        let v = self.as_view();
        [v.country, v.region, v.device, v.os, v.browser, v.language, v.route]
    }
}

impl Click {
    /// True when reports should count this click as a person's.
    pub fn is_human(&self) -> bool {
        self.flags & click_flags::NON_HUMAN == 0
    }
}

/// A click read in place from its record: the same fields in the same order as [`Click`]
/// (so the same bytes), every text field borrowing the record. Readers that need a few
/// fields of millions of clicks (attribution) decode this instead of allocating a dozen
/// strings per click; see [`crate::record::decode_view`].
///
/// Every field has exactly one encoding of its length (varints, raw strings, a fixed-size
/// ID, an option tag), which is what lets [`crate::record::decode_view`] check canonical
/// form by length alone. A field type that normalises on decode (as [`Currency`] accepts
/// `usd`) would break that: keep such types out of clicks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClickView<'a> {
    pub click_id: ClickId,
    pub ts_ms: u64,
    pub link: &'a str,
    pub offer: &'a str,
    pub affiliate: &'a str,
    pub subs: [&'a str; 5],
    pub source: &'a str,
    pub deep_link: &'a str,
    pub user_agent: &'a str,
    pub referrer: &'a str,
    pub ip: &'a str,
    pub flags: u16,
    pub prior_click: Option<ClickId>,
    pub visitor: u64,
    pub signals: Signals<&'a str>,
}

impl ClickView<'_> {
    /// True when reports should count this click as a person's.
    pub fn is_human(&self) -> bool {
        self.flags & click_flags::NON_HUMAN == 0
    }
}

impl<'a> From<&'a Click> for ClickView<'a> {
    fn from(c: &'a Click) -> ClickView<'a> {
        ClickView {
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
            visitor: c.visitor,
            signals: c.signals.as_view(),
        }
    }
}

/// The visitor key the edge stores on a click (format 3 on): keyed BLAKE3 of the
/// length-prefixed offer, affiliate, IP (as stored under the privacy policy) and user agent,
/// under `day_key`, a random key per day of the program's calendar that the log keeps only
/// as long as it keeps personal fields. Without that key the stored value reveals nothing
/// and cannot be checked against a guessed IP and user agent.
pub fn visitor_key(day_key: &[u8; 32], offer: &str, affiliate: &str, ip: &str, user_agent: &str) -> u64 {
    let mut h = blake3::Hasher::new_keyed(day_key);
    for part in [offer, affiliate, ip, user_agent] {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    let mut out = [0u8; 8];
    out.copy_from_slice(&h.finalize().as_bytes()[..8]);
    u64::from_le_bytes(out)
}

/// The visitor key of a click stored before format 3, which kept its personal fields in the
/// chained bytes: the low 64 bits of XXH3-128 of the same length-prefixed parts, the key
/// attribution computed for such clicks before the edge stored one. Personal fields of those
/// records cannot be erased, so the key stays computable.
pub fn legacy_visitor_key(offer: &str, affiliate: &str, ip: &str, user_agent: &str) -> u64 {
    let mut buf = Vec::with_capacity(32 + offer.len() + affiliate.len() + ip.len() + user_agent.len());
    for part in [offer, affiliate, ip, user_agent] {
        buf.extend_from_slice(&(part.len() as u64).to_le_bytes());
        buf.extend_from_slice(part.as_bytes());
    }
    xxhash_rust::xxh3::xxh3_128(&buf) as u64
}

/// Where a conversion was reported from. The numeric order is part of the on-disk format:
/// new sources go at the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ConversionSource {
    /// `GET /px.gif`: an image on the merchant's page.
    Pixel,
    /// `/postback`: the merchant's server, authenticated.
    Postback,
    /// `POST /t/convert`: the JavaScript tag (`/t.js`) on the merchant's page.
    Tag,
}

impl ConversionSource {
    pub const ALL: [ConversionSource; 3] = [ConversionSource::Pixel, ConversionSource::Postback, ConversionSource::Tag];

    pub fn as_str(self) -> &'static str {
        match self {
            ConversionSource::Pixel => "pixel",
            ConversionSource::Postback => "postback",
            ConversionSource::Tag => "tag",
        }
    }

    /// True for reports a browser sent (pixel, tag): anyone who knows a click ID can send
    /// one, so the offer's browser policy applies to them.
    pub fn is_browser(self) -> bool {
        !matches!(self, ConversionSource::Postback)
    }
}

/// The merchant's view of a conversion. Refunds and chargebacks are conversions with the same
/// transaction ID and a reversing status; so is a `Rejected` report of a transaction reported
/// before. The numeric order is part of the on-disk format: new statuses go at the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ConversionStatus {
    Approved,
    Refunded,
    Chargeback,
    /// The merchant has not confirmed the sale yet: the commission waits, pending, for a
    /// later `Approved` (or `Rejected`) report of the same transaction.
    Pending,
    /// The merchant refuses the conversion (cancelled order, fraud): as a first report it is
    /// booked unpaid; after a report of the same transaction it reverses that one.
    Rejected,
}

/// Status words merchants' systems send, as other trackers and affiliate platforms name
/// them (Everflow, TUNE/HasOffers, Voluum, Binom, Keitaro, Tapfiliate, Post Affiliate Pro,
/// Impact), lowercased, and the status each means. Keitaro and Binom send `lead` for a
/// conversion still to be confirmed (their `sale` is the confirmed one), so `lead` means
/// pending here; an advertiser whose system means otherwise sends `approved`.
pub const STATUS_WORDS: &[(&str, ConversionStatus)] = &[
    ("approved", ConversionStatus::Approved),
    ("approve", ConversionStatus::Approved),
    ("a", ConversionStatus::Approved),
    ("accepted", ConversionStatus::Approved),
    ("confirmed", ConversionStatus::Approved),
    ("sale", ConversionStatus::Approved),
    ("success", ConversionStatus::Approved),
    ("complete", ConversionStatus::Approved),
    ("completed", ConversionStatus::Approved),
    ("paid", ConversionStatus::Approved),
    ("pending", ConversionStatus::Pending),
    ("p", ConversionStatus::Pending),
    ("lead", ConversionStatus::Pending),
    ("hold", ConversionStatus::Pending),
    ("on_hold", ConversionStatus::Pending),
    ("waiting", ConversionStatus::Pending),
    ("rejected", ConversionStatus::Rejected),
    ("reject", ConversionStatus::Rejected),
    ("d", ConversionStatus::Rejected),
    ("declined", ConversionStatus::Rejected),
    ("denied", ConversionStatus::Rejected),
    ("disapproved", ConversionStatus::Rejected),
    ("cancelled", ConversionStatus::Rejected),
    ("canceled", ConversionStatus::Rejected),
    ("invalid", ConversionStatus::Rejected),
    ("fraud", ConversionStatus::Rejected),
    ("trash", ConversionStatus::Rejected),
    ("refunded", ConversionStatus::Refunded),
    ("refund", ConversionStatus::Refunded),
    ("reversed", ConversionStatus::Refunded),
    ("returned", ConversionStatus::Refunded),
    ("chargeback", ConversionStatus::Chargeback),
    ("charged_back", ConversionStatus::Chargeback),
    ("dispute", ConversionStatus::Chargeback),
];

impl ConversionStatus {
    pub const ALL: [ConversionStatus; 5] = [
        ConversionStatus::Approved,
        ConversionStatus::Refunded,
        ConversionStatus::Chargeback,
        ConversionStatus::Pending,
        ConversionStatus::Rejected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ConversionStatus::Approved => "approved",
            ConversionStatus::Refunded => "refunded",
            ConversionStatus::Chargeback => "chargeback",
            ConversionStatus::Pending => "pending",
            ConversionStatus::Rejected => "rejected",
        }
    }

    /// A status word as merchants send it ([`STATUS_WORDS`]), case-insensitive, with `-` and
    /// spaces read as `_` (`Charged-Back`, `on hold`).
    pub fn parse(s: &str) -> Option<ConversionStatus> {
        let word: String =
            s.trim().chars().map(|c| if c == '-' || c == ' ' { '_' } else { c.to_ascii_lowercase() }).collect();
        STATUS_WORDS.iter().find(|(w, _)| *w == word).map(|&(_, status)| status)
    }

    /// True for statuses that take money back from a transaction reported before (a
    /// `Rejected` first report is booked as a rejected conversion instead; attribution
    /// tells the two apart).
    pub fn is_reversal(self) -> bool {
        matches!(self, ConversionStatus::Refunded | ConversionStatus::Chargeback | ConversionStatus::Rejected)
    }
}

/// A conversion reported by a pixel or a server-to-server postback. `ip` is personal data,
/// stored outside the chained bytes from format 3 on, as a click's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conversion {
    /// Milliseconds since the Unix epoch, from the edge's clock when the report arrived.
    pub ts_ms: u64,
    pub source: ConversionSource,
    /// The click this conversion claims; `None` for coupon-only conversions.
    pub click_id: Option<ClickId>,
    /// Coupon code used at checkout, empty if none.
    pub coupon: String,
    pub offer: String,
    pub goal: String,
    /// The merchant's transaction / order ID, the dedup key with offer and goal. Empty if none.
    /// (`offer` and `goal` are empty when the report named only the click: attribution
    /// resolves them from the click, the goal as the offer's default.)
    pub txid: String,
    /// Sale amount in minor units of `currency`; `None` when the merchant sent no amount.
    pub amount: Option<i64>,
    pub currency: Currency,
    pub status: ConversionStatus,
    /// `sub1`..`sub5` as the merchant echoed them back (advertiser-side sub IDs).
    pub subs: [String; 5],
    /// The reporting client's IP after the privacy policy (the browser for a pixel, the
    /// merchant's server for a postback).
    pub ip: String,
    /// The advertiser whose credential authenticated the report: set on postbacks, empty on
    /// browser reports (pixel, tag), which prove nothing but knowing the click ID. When
    /// `offer` is empty attribution takes the offer from the click, and credits it only if
    /// that offer is this advertiser's. From record format 4 on (older records: empty).
    pub advertiser: String,
    /// Who bought, as the merchant identifies its customer (`customer=`): what lets a goal
    /// with recurring or lifetime terms pay the affiliate who referred the customer's first
    /// purchase on the customer's later ones. From record format 5 on (older: `None`).
    pub customer: Option<Customer>,
}

/// A merchant's customer on a conversion: the keyed hash attribution joins on, chained
/// (replay needs it), and the merchant's own ID, personal data, kept in the record's
/// erasable trailer (empty once erased, or when the record was rebuilt without it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Customer {
    pub key: CustomerKey,
    pub id: String,
}

impl Customer {
    /// The customer `id` under `secret` (see [`CustomerKey::of`]).
    pub fn new(secret: &[u8; 32], id: &str) -> Customer {
        Customer { key: CustomerKey::of(secret, id), id: id.to_owned() }
    }
}

/// A pseudonym of a merchant's customer ID: the first 16 bytes of keyed BLAKE3 of the ID
/// under the log's customer secret. 128 bits, so two customers of even a very large program
/// do not collide (a collision would credit one customer's purchases to the other's
/// referrer); keyed, so the stored value confirms no guessed e-mail address without the
/// secret. The same ID under the same secret is the same key for the life of the program:
/// lifetime commissions depend on it, so the secret is never rotated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CustomerKey(pub [u8; 16]);

impl CustomerKey {
    pub fn of(secret: &[u8; 32], id: &str) -> CustomerKey {
        let mut out = [0u8; 16];
        out.copy_from_slice(&blake3::keyed_hash(secret, id.as_bytes()).as_bytes()[..16]);
        CustomerKey(out)
    }

    /// Lower-case hex, as reports and the API show it.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl Conversion {
    /// The key under which the log recognises a *repeated report*: offer, goal, transaction
    /// ID and status (a refund of an order is not a repeat of its sale). The edge appends
    /// with it (`tally_log`'s keyed append, its `unique` index) to answer a repeat as
    /// `duplicate`; the repeat is logged all the same. It is not what keeps a transaction
    /// from being paid twice: attribution claims each transaction (offer, goal, txid, without
    /// status) by its first report, with its own key. `None` without a transaction ID: such
    /// reports cannot be told apart from new ones. A report that named no offer (only the
    /// click) is keyed by its advertiser and click instead, since the edge cannot tell its
    /// offer: the same transaction of two advertisers must not look repeated. NUL separates
    /// the parts; none of them can contain NUL (IDs are restricted, txids reject control
    /// characters).
    pub fn repeat_key(&self) -> Option<Vec<u8>> {
        if self.txid.is_empty() {
            return None;
        }
        let mut k = Vec::with_capacity(64 + self.offer.len() + self.goal.len() + self.txid.len());
        let click = self.click_id.map(|c| c.to_string()).unwrap_or_default();
        let by_click: [&[u8]; 5] = [
            b"conversion-by-click",
            self.advertiser.as_bytes(),
            click.as_bytes(),
            self.goal.as_bytes(),
            self.txid.as_bytes(),
        ];
        let by_offer: [&[u8]; 4] = [b"conversion", self.offer.as_bytes(), self.goal.as_bytes(), self.txid.as_bytes()];
        let parts: &[&[u8]] = if self.offer.is_empty() { &by_click } else { &by_offer };
        for part in parts {
            k.extend_from_slice(part);
            k.push(0);
        }
        k.extend_from_slice(self.status.as_str().as_bytes());
        Some(k)
    }
}

/// The program (offers, links, rules) in force from this point of the log on. Appended at
/// every start of the server and on every reload or admin edit that changes the program,
/// before it takes effect, so replaying the log always applies the rules that were in force
/// at the time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgramChange {
    pub ts_ms: u64,
    /// BLAKE3 of `source`, hex; lets readers skip re-parsing an unchanged program.
    pub digest: String,
    /// The program file's TOML text, verbatim.
    pub source: String,
}

/// Everything the log holds.
/// Entities put on the program by the admin API (created, updated or disabled), in one
/// change: one call, or one bulk import, all of it or none. Applied on the program in force;
/// a later `ProgramChange` (a new program file) keeps them on top ([`crate::managed`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgramEdit {
    pub ts_ms: u64,
    /// Who made the change, as the admin API's caller named itself (`X-Tally-Actor`), else
    /// `admin`.
    pub actor: String,
    /// The digest of the program it results in.
    pub digest: String,
    /// The [`crate::managed::Edit`] as JSON: a self-describing payload, so entities can gain
    /// keys without a new record format.
    pub edit: String,
}

/// An operator's decision on the ledger ([`crate::decision::Decision`]): approve, reject,
/// adjust, bonus.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorDecision {
    pub ts_ms: u64,
    /// Who decided, as the admin API's caller named itself (`X-Tally-Actor`), else `admin`.
    pub actor: String,
    /// The decision as JSON, self-describing like a program edit's payload.
    pub decision: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Click(Click),
    Conversion(Conversion),
    ProgramChange(ProgramChange),
    ProgramEdit(ProgramEdit),
    Decision(OperatorDecision),
}

impl Event {
    pub fn ts_ms(&self) -> u64 {
        match self {
            Event::Click(c) => c.ts_ms,
            Event::Conversion(c) => c.ts_ms,
            Event::ProgramChange(p) => p.ts_ms,
            Event::ProgramEdit(p) => p.ts_ms,
            Event::Decision(d) => d.ts_ms,
        }
    }

    pub fn kind(&self) -> EventKind {
        match self {
            Event::Click(_) => EventKind::Click,
            Event::Conversion(_) => EventKind::Conversion,
            Event::ProgramChange(_) => EventKind::ProgramChange,
            Event::ProgramEdit(_) => EventKind::ProgramEdit,
            Event::Decision(_) => EventKind::Decision,
        }
    }
}

/// The kind byte of a record. The numeric values are part of the on-disk format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum EventKind {
    Click = 1,
    Conversion = 2,
    ProgramChange = 3,
    ProgramEdit = 4,
    Decision = 5,
}

impl EventKind {
    pub const ALL: [EventKind; 5] = [
        EventKind::Click,
        EventKind::Conversion,
        EventKind::ProgramChange,
        EventKind::ProgramEdit,
        EventKind::Decision,
    ];

    pub fn from_byte(b: u8) -> Option<EventKind> {
        match b {
            1 => Some(EventKind::Click),
            2 => Some(EventKind::Conversion),
            3 => Some(EventKind::ProgramChange),
            4 => Some(EventKind::ProgramEdit),
            5 => Some(EventKind::Decision),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Click => "click",
            EventKind::Conversion => "conversion",
            EventKind::ProgramChange => "program_change",
            EventKind::ProgramEdit => "program_edit",
            EventKind::Decision => "decision",
        }
    }

    /// Events a record may carry personal fields for (in a trailer, from format 3).
    pub fn has_personal(self) -> bool {
        matches!(self, EventKind::Click | EventKind::Conversion)
    }

    /// Changes to the program: the log indexes them, so a starting edge finds them without
    /// reading every click.
    pub fn is_program(self) -> bool {
        matches!(self, EventKind::ProgramChange | EventKind::ProgramEdit)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn status_words_of_other_trackers_map_to_ours() {
        for (word, status) in [
            ("approved", ConversionStatus::Approved),
            ("SALE", ConversionStatus::Approved),
            ("A", ConversionStatus::Approved),
            ("lead", ConversionStatus::Pending),
            ("Pending", ConversionStatus::Pending),
            ("on hold", ConversionStatus::Pending),
            ("rejected", ConversionStatus::Rejected),
            ("Declined", ConversionStatus::Rejected),
            ("trash", ConversionStatus::Rejected),
            ("refund", ConversionStatus::Refunded),
            ("Charged-Back", ConversionStatus::Chargeback),
            (" chargeback ", ConversionStatus::Chargeback),
        ] {
            assert_eq!(ConversionStatus::parse(word), Some(status), "{word}");
        }
        for word in ["", "ok", "1", "approvedx", "sale!"] {
            assert_eq!(ConversionStatus::parse(word), None, "{word}");
        }
        // Every status has its own name among the words, and every word maps once.
        for s in ConversionStatus::ALL {
            assert_eq!(ConversionStatus::parse(s.as_str()), Some(s));
        }
        let mut words: Vec<_> = STATUS_WORDS.iter().map(|(w, _)| *w).collect();
        words.sort_unstable();
        words.dedup();
        assert_eq!(words.len(), STATUS_WORDS.len());
    }

    fn report(offer: &str, advertiser: &str, click: u64) -> Conversion {
        Conversion {
            ts_ms: 1,
            source: ConversionSource::Postback,
            click_id: Some(ClickId::new(1_700_000_000_000, 1, click)),
            coupon: String::new(),
            offer: offer.into(),
            goal: if offer.is_empty() { String::new() } else { "sale".into() },
            txid: "T1".into(),
            amount: None,
            currency: Currency::from_code("USD").unwrap(),
            status: ConversionStatus::Approved,
            subs: Default::default(),
            ip: String::new(),
            advertiser: advertiser.into(),
            customer: None,
        }
    }

    #[test]
    fn repeat_keys_keep_their_layout_and_tell_click_only_reports_apart() {
        // The layout the log's unique index has always held for reports naming the offer.
        assert_eq!(report("shoes", "acme", 1).repeat_key().unwrap(), b"conversion\0shoes\0sale\0T1\0approved");
        // Click-only reports: the same txid from two advertisers, or on two clicks, is not a repeat.
        let a = report("", "acme", 1).repeat_key().unwrap();
        assert_ne!(a, report("", "globex", 1).repeat_key().unwrap());
        assert_ne!(a, report("", "acme", 2).repeat_key().unwrap());
        assert_ne!(a, report("shoes", "acme", 1).repeat_key().unwrap());
        assert_eq!(a, report("", "acme", 1).repeat_key().unwrap());
        let mut pending = report("", "acme", 1);
        pending.status = ConversionStatus::Pending;
        assert_ne!(a, pending.repeat_key().unwrap());
        let mut none = report("", "acme", 1);
        none.txid.clear();
        assert_eq!(none.repeat_key(), None);
    }
}
