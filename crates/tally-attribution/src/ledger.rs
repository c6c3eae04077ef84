//! What attribution produces: ledger entries (commissions, bonuses, clawbacks, reversals) and
//! the per-day stats rows.
//!
//! Every conversion event in the log yields exactly one entry keyed by its sequence number, so
//! re-processing an event overwrites its entry instead of adding a second one; milestone
//! bonuses hang off the conversion that reached the milestone (`seq.1`, `seq.2`, ...). These
//! structs are stored with postcard in the attribution state, so field order is the stored
//! format: a field added later goes last and decodes as empty from older entries. The ledger
//! digest is over the canonical CSV rows (`tally_audit::digest`), not these bytes: a field no
//! column shows leaves it unchanged.

use std::fmt;

use serde::{Deserialize, Serialize};
use tally_model::{ClickId, ConversionSource, Currency};

/// Identifies a ledger entry: the sequence number of the event that created it, and 0 for the
/// event's own entry or n ≥ 1 for the n-th bonus it triggered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EntryId {
    pub seq: u64,
    pub sub: u8,
}

impl EntryId {
    pub fn of_event(seq: u64) -> EntryId {
        EntryId { seq, sub: 0 }
    }

    /// `"1234"` or `"1234.1"`.
    pub fn parse(s: &str) -> Option<EntryId> {
        let (seq, sub) = match s.split_once('.') {
            Some((a, b)) => (a, b.parse().ok()?),
            None => (s, 0),
        };
        Some(EntryId { seq: seq.parse().ok()?, sub })
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.sub == 0 {
            write!(f, "{}", self.seq)
        } else {
            write!(f, "{}.{}", self.seq, self.sub)
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Kind {
    /// The outcome of an approved conversion report.
    Commission,
    /// A milestone bonus.
    Bonus,
    /// Money taken back: a reversal of an already approved commission.
    Clawback,
    /// The outcome of a refund or chargeback report that took no money back itself (it
    /// rejected a pending commission, or had nothing to reverse).
    Reversal,
    /// The merchant's approval of a commission it had reported pending: pays nothing itself;
    /// the commission it refers to goes on to its hold, or is approved.
    Confirmation,
    /// An operator's decision on the entry it refers to (approve, reject a pending one,
    /// adjust): pays nothing itself; its rule says who decided what and why.
    Decision,
    /// A payout run (`txid` is its payout ID): pays nothing itself; the entries it paid carry
    /// it in `payments`. `reversed_by` is the decision that voided it.
    Payout,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Commission => "commission",
            Kind::Bonus => "bonus",
            Kind::Clawback => "clawback",
            Kind::Reversal => "reversal",
            Kind::Confirmation => "confirmation",
            Kind::Decision => "decision",
            Kind::Payout => "payout",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Status {
    /// Credited, waiting for its hold period to pass.
    Pending,
    /// Payable (or, for a clawback, deductible).
    Approved,
    /// Reversed before approval, or unpayable (see the reason).
    Rejected,
    /// Over a daily cap: recorded, paid zero.
    RejectedCap,
    /// A repeat of an earlier report: recorded, paid zero.
    Duplicate,
    /// No affiliate could be credited (see the reason).
    Unattributed,
}

impl Status {
    pub const ALL: [Status; 6] = [
        Status::Pending,
        Status::Approved,
        Status::Rejected,
        Status::RejectedCap,
        Status::Duplicate,
        Status::Unattributed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Approved => "approved",
            Status::Rejected => "rejected",
            Status::RejectedCap => "rejected_cap",
            Status::Duplicate => "duplicate",
            Status::Unattributed => "unattributed",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// True when the entry's amount counts towards what is owed.
    pub fn counts(self) -> bool {
        matches!(self, Status::Pending | Status::Approved)
    }
}

/// Why an entry has the status it has, when that is not obvious.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Reason {
    None,
    NoProgram,
    UnknownOffer,
    UnknownGoal,
    NoClick,
    UnknownClick,
    ExpiredClick,
    OutsideWindow,
    ClickOfferMismatch,
    UnknownCoupon,
    CouponOfferMismatch,
    MissingAmount,
    CurrencyMismatch,
    DailyCap,
    AffiliateDailyCap,
    RepeatedTransaction,
    Refunded,
    Chargeback,
    NoTransactionId,
    NoOriginal,
    NothingToReverse,
    AlreadyReversed,
    /// The merchant reported the conversion pending: it waits for the merchant's approval.
    MerchantPending,
    /// The merchant reported the conversion rejected (first report), or rejected a
    /// transaction reported before.
    MerchantRejected,
    /// A report that named no offer, on a click of an offer of another advertiser than the
    /// one whose credential sent it.
    ClickAdvertiserMismatch,
    /// A browser's report for a goal that takes postbacks only (`browser_reports`).
    BrowserReportRefused,
    /// A browser's report for a goal that reviews them: pending until the merchant's server
    /// confirms the transaction.
    BrowserReview,
    /// A browser's report claiming more than the goal's `max_browser_amount`.
    BrowserAmountOverLimit,
    /// The credited affiliate is disabled (program edit): nothing is paid.
    AffiliateDisabled,
    /// The coupon is disabled.
    CouponDisabled,
    /// An operator rejected it (an `OperatorDecision`), or took it back.
    OperatorRejected,
    /// An operator's decision that could not apply: no such entry, or one in a state the
    /// decision does not change (the rule says which).
    NotApplicable,
    /// A conversion of a customer whose recurring period with its referrer has ended, with
    /// no click or coupon of its own to credit.
    RecurringEnded,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::None => "",
            Reason::NoProgram => "no_program",
            Reason::UnknownOffer => "unknown_offer",
            Reason::UnknownGoal => "unknown_goal",
            Reason::NoClick => "no_click",
            Reason::UnknownClick => "unknown_click",
            Reason::ExpiredClick => "expired_click",
            Reason::OutsideWindow => "outside_window",
            Reason::ClickOfferMismatch => "click_offer_mismatch",
            Reason::UnknownCoupon => "unknown_coupon",
            Reason::CouponOfferMismatch => "coupon_offer_mismatch",
            Reason::MissingAmount => "missing_amount",
            Reason::CurrencyMismatch => "currency_mismatch",
            Reason::DailyCap => "daily_cap",
            Reason::AffiliateDailyCap => "affiliate_daily_cap",
            Reason::RepeatedTransaction => "repeated_transaction",
            Reason::Refunded => "refunded",
            Reason::Chargeback => "chargeback",
            Reason::NoTransactionId => "no_transaction_id",
            Reason::NoOriginal => "no_original",
            Reason::NothingToReverse => "nothing_to_reverse",
            Reason::AlreadyReversed => "already_reversed",
            Reason::MerchantPending => "merchant_pending",
            Reason::MerchantRejected => "merchant_rejected",
            Reason::ClickAdvertiserMismatch => "click_advertiser_mismatch",
            Reason::BrowserReportRefused => "browser_report_refused",
            Reason::BrowserReview => "browser_review",
            Reason::BrowserAmountOverLimit => "browser_amount_over_limit",
            Reason::AffiliateDisabled => "affiliate_disabled",
            Reason::CouponDisabled => "coupon_disabled",
            Reason::OperatorRejected => "operator_rejected",
            Reason::NotApplicable => "not_applicable",
            Reason::RecurringEnded => "recurring_ended",
        }
    }
}

/// One ledger record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub id: EntryId,
    pub kind: Kind,
    pub status: Status,
    pub reason: Reason,
    /// The time of the event that created the entry.
    pub ts_ms: u64,
    pub offer: String,
    pub goal: String,
    /// Empty when unattributed.
    pub affiliate: String,
    /// The click credited (after the first-click rule), if any.
    pub click_id: Option<ClickId>,
    /// The coupon that credited the affiliate, when no click did.
    pub coupon: String,
    /// The credited click's `sub1`, for reports by sub ID.
    pub sub1: String,
    pub txid: String,
    /// The sale amount the merchant reported, in minor units of `currency`.
    pub sale_amount: Option<i64>,
    /// What this entry pays, in minor units of `currency` (negative for a clawback).
    pub amount: i64,
    pub currency: Currency,
    /// How the amount was computed, for people: e.g. `goal sale: revshare 800 bps of 100.00`.
    pub rule: String,
    /// BLAKE3 digest (hex) of the program whose rules applied; empty without one.
    pub program: String,
    /// When a pending entry becomes approved (event time, ms).
    pub approve_at_ms: Option<u64>,
    /// The sequence number whose event time approved the entry.
    pub approved_seq: Option<u64>,
    /// For duplicates, reversals, clawbacks and bonuses: the entry they refer to.
    pub refers_to: Option<EntryId>,
    /// For a commission: the refund or chargeback event that reversed it.
    pub reversed_by: Option<u64>,
    /// For a commission the merchant reported pending: the event of its approval report.
    /// (Not a column of the canonical CSV: the approval's own entry refers to it.)
    pub confirmed_by: Option<u64>,
    /// Who reported the event that made the entry: a browser (`Pixel`, `Tag`), the
    /// merchant's server (`Postback`), or an operator (`Operator`: decisions and manual bonuses).
    pub source: Source,
    /// Operators' adjustments of `amount`, in order: the decision's sequence number and the
    /// amount before it (so [`Entry::as_of`] can undo them). Entries stored before this field
    /// existed decode with none ([`crate::store`]).
    pub adjustments: Vec<Adjustment>,
    /// Payout runs that paid this entry and voids of them, in order: paid now under the last
    /// one's payout ID, unless it is a void (an empty ID). Entries stored before this field
    /// existed decode with none ([`crate::store`]).
    pub payments: Vec<Payment>,
    /// The code of the credited click's link (as `click_id`, kept by the entries that refer
    /// to it), so each change of the commission notifies the link's own postback URL. Empty
    /// with no click, and for entries (and clicks) stored before this field existed. Not a
    /// column of the canonical CSV.
    #[serde(default, deserialize_with = "trailing_string")]
    pub link: String,
}

/// A string that is the last field of a stored struct: empty when the stored bytes end
/// before it (the struct was stored before the field existed), which also spares
/// `store::decode_entry` a third zero byte of padding for entries older than `adjustments`.
/// Only the input's end is taken for that (postcard cannot tell a string cut short from one
/// missing, as padding could not either); any other failure to read it is still an error.
fn trailing_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match String::deserialize(d) {
        Ok(s) => Ok(s),
        // The error type is the format's, known here only by its message: postcard's own
        // message for the end of input, so no other error can match it.
        Err(e) if e.to_string() == postcard::Error::DeserializeUnexpectedEnd.to_string() => Ok(String::new()),
        Err(e) => Err(e),
    }
}

/// A payout run's mark on an entry it paid, or (`payout` empty) the void of that run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    /// The payout run's (or void's) sequence number.
    pub seq: u64,
    pub payout: String,
}

/// One adjustment of an entry's amount.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Adjustment {
    pub seq: u64,
    pub before: i64,
}

/// Who made the event behind an entry. The first three are the conversion's own source, in
/// the same order (stored entries keep their bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Source {
    Pixel,
    Postback,
    Tag,
    Operator,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Pixel => "pixel",
            Source::Postback => "postback",
            Source::Tag => "tag",
            Source::Operator => "operator",
        }
    }

    pub fn is_browser(self) -> bool {
        matches!(self, Source::Pixel | Source::Tag)
    }
}

impl From<ConversionSource> for Source {
    fn from(s: ConversionSource) -> Source {
        match s {
            ConversionSource::Pixel => Source::Pixel,
            ConversionSource::Postback => Source::Postback,
            ConversionSource::Tag => Source::Tag,
        }
    }
}

impl Entry {
    /// Whether this stored entry and `replayed`, the same entry made again by a replay,
    /// agree. An entry stored before entries kept their click's link has an empty `link`
    /// that a replay fills in: unknown, not different.
    pub fn agrees_with(&self, replayed: &Entry) -> bool {
        if self.link.is_empty() && !replayed.link.is_empty() {
            return *self == Entry { link: String::new(), ..replayed.clone() };
        }
        self == replayed
    }

    /// This entry as it stood once event `seq` had been applied, or `None` if it did not
    /// exist yet. After its creation an entry changes in these ways only, each recording
    /// the event that did it: a hold's (or an operator's early) approval (`approved_seq`), a
    /// reversal (a refund, the merchant's or an operator's rejection) that rejects a pending
    /// commission or marks an approved one clawed back (`reversed_by`), the merchant's (or an
    /// operator's) approval of a commission reported pending (`confirmed_by`), and an
    /// operator's adjustment of its amount (`adjustments`). Undoing those that came after
    /// `seq` gives the earlier entry exactly, which is how a replay that stops at `seq` is
    /// compared with a live ledger that went on.
    /// The payout ID this entry is paid under: the last payout run that paid it, unless
    /// that run was voided.
    pub fn paid_in(&self) -> Option<&str> {
        self.payments.last().map(|p| p.payout.as_str()).filter(|p| !p.is_empty())
    }

    /// Whether a payout run may pay it: approved, paying something, and not paid already.
    pub fn payable(&self) -> bool {
        self.status == Status::Approved && self.amount != 0 && self.paid_in().is_none()
    }

    pub fn as_of(&self, seq: u64) -> Option<Entry> {
        if self.id.seq > seq {
            return None;
        }
        let mut e = self.clone();
        while let Some(a) = e.adjustments.last().copied().filter(|a| a.seq > seq) {
            e.amount = a.before;
            e.adjustments.pop();
        }
        while e.payments.last().is_some_and(|p| p.seq > seq) {
            e.payments.pop();
        }
        if e.reversed_by.is_some_and(|r| r > seq) {
            e.reversed_by = None;
            if e.status == Status::Rejected
                && matches!(
                    e.reason,
                    Reason::Refunded | Reason::Chargeback | Reason::MerchantRejected | Reason::OperatorRejected
                )
            {
                e.status = Status::Pending;
                // Only a commission awaiting the merchant is pending without a due time.
                let awaiting = e.approve_at_ms.is_none() && e.confirmed_by.is_none();
                e.reason = if awaiting { awaiting_reason(&e) } else { Reason::None };
            }
        }
        if e.approved_seq.is_some_and(|a| a > seq) {
            e.approved_seq = None;
            e.status = Status::Pending;
        }
        if e.confirmed_by.is_some_and(|c| c > seq) {
            e.confirmed_by = None;
            e.status = Status::Pending;
            e.reason = awaiting_reason(&e);
            e.approve_at_ms = None;
            e.approved_seq = None;
        }
        Some(e)
    }
}

/// Why a commission waits for the merchant's confirmation: a browser's report under review,
/// or the merchant's own `pending`.
fn awaiting_reason(e: &Entry) -> Reason {
    if e.source.is_browser() && e.rule.ends_with(BROWSER_REVIEW_NOTE) {
        Reason::BrowserReview
    } else {
        Reason::MerchantPending
    }
}

/// The end of the `rule` of a browser's report held for review (how `Entry::as_of` tells it
/// from the merchant's `pending` once confirmed).
pub const BROWSER_REVIEW_NOTE: &str = "; a browser's report: pending until the merchant confirms it";

/// The key of a stats row.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StatsKey {
    /// Days since the Unix epoch (UTC).
    pub day: u32,
    pub offer: String,
    pub affiliate: String,
    pub sub1: String,
}

/// A [`StatsKey`] borrowed from the event being applied: the stats map is looked up with it,
/// so the common case (the row exists) allocates nothing. It hashes exactly as the owned key
/// (the same fields, in the same order, as `str`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct StatsKeyRef<'a> {
    pub day: u32,
    pub offer: &'a str,
    pub affiliate: &'a str,
    pub sub1: &'a str,
}

impl StatsKeyRef<'_> {
    pub fn to_owned_key(&self) -> StatsKey {
        StatsKey {
            day: self.day,
            offer: self.offer.to_owned(),
            affiliate: self.affiliate.to_owned(),
            sub1: self.sub1.to_owned(),
        }
    }
}

impl hashbrown::Equivalent<StatsKey> for StatsKeyRef<'_> {
    fn equivalent(&self, key: &StatsKey) -> bool {
        self.day == key.day && self.offer == key.offer && self.affiliate == key.affiliate && self.sub1 == key.sub1
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn entry_ids_round_trip_through_their_text() {
        for id in [EntryId::of_event(7), EntryId { seq: u64::MAX, sub: 3 }] {
            assert_eq!(EntryId::parse(&id.to_string()), Some(id));
        }
        assert_eq!(EntryId::parse("x"), None);
    }

    fn entry() -> Entry {
        Entry {
            id: EntryId::of_event(9),
            kind: Kind::Commission,
            status: Status::Approved,
            reason: Reason::None,
            ts_ms: 1,
            offer: "shoes".into(),
            goal: "sale".into(),
            affiliate: "aff1".into(),
            click_id: None,
            coupon: String::new(),
            sub1: String::new(),
            txid: "T".into(),
            sale_amount: Some(10_000),
            amount: 800,
            currency: tally_model::Currency::from_code("USD").unwrap(),
            rule: "r".into(),
            program: String::new(),
            approve_at_ms: None,
            approved_seq: Some(9),
            refers_to: None,
            reversed_by: None,
            confirmed_by: None,
            source: Source::Postback,
            adjustments: Vec::new(),
            payments: Vec::new(),
            link: String::new(),
        }
    }

    #[test]
    fn a_replay_filling_in_a_link_the_stored_entry_lacks_agrees() {
        let stored = entry();
        let replayed = Entry { link: "spring".into(), ..entry() };
        assert!(stored.agrees_with(&replayed));
        assert!(!replayed.agrees_with(&stored), "a stored link a replay lacks is a difference");
        assert!(!stored.agrees_with(&Entry { link: "spring".into(), amount: 1, ..entry() }));
        assert!(!Entry { link: "a".into(), ..entry() }.agrees_with(&replayed));
    }

    /// Entries stored before `link` (and before `payments`, and before `adjustments`) existed
    /// are today's bytes without the last one (two, three): postcard writes the fields in
    /// order, and an empty string or list is one zero byte, so what the older struct wrote
    /// is exactly that prefix. They decode with an empty link (and no payments or
    /// adjustments). Sources keep the conversion's variant numbers.
    #[test]
    fn entries_stored_before_adjustments_payments_and_link_still_decode() {
        let e = entry();
        let bytes = postcard::to_stdvec(&e).unwrap();
        assert_eq!(&bytes[bytes.len() - 3..], &[0, 0, 0]);
        let before_link = &bytes[..bytes.len() - 1];
        let before_payments = &bytes[..bytes.len() - 2];
        let before_adjustments = &bytes[..bytes.len() - 3];
        assert_eq!(crate::store::decode_entry(before_link).unwrap(), e);
        assert_eq!(crate::store::decode_entry(before_payments).unwrap(), e);
        assert_eq!(crate::store::decode_entry(before_adjustments).unwrap(), e);
        assert_eq!(crate::store::decode_entry(&bytes).unwrap(), e);
        let linked = Entry { link: "spring-blog".into(), ..e.clone() };
        let linked_bytes = postcard::to_stdvec(&linked).unwrap();
        assert_eq!(&linked_bytes[..before_link.len()], before_link, "the link is appended");
        assert_eq!(crate::store::decode_entry(&linked_bytes).unwrap(), linked);
        // Only the input's end reads as no link: a link that is there but is not text is corrupt.
        let mut bad_utf8 = before_link.to_vec();
        bad_utf8.extend_from_slice(&[1, 0xff]);
        assert!(crate::store::decode_entry(&bad_utf8).is_err());
        let cut = &before_adjustments[..before_adjustments.len() - 3];
        assert!(crate::store::decode_entry(cut).is_err(), "a cut entry is still corrupt");
        let mut paid = e.clone();
        paid.payments.push(Payment { seq: 12, payout: "2026-11".into() });
        assert_eq!(crate::store::decode_entry(&postcard::to_stdvec(&paid).unwrap()).unwrap(), paid);
        assert_eq!(paid.paid_in(), Some("2026-11"));
        assert_eq!(paid.as_of(11).unwrap().paid_in(), None);
        paid.payments.push(Payment { seq: 13, payout: String::new() });
        assert_eq!(paid.paid_in(), None, "voided");
        for (s, c) in [
            (Source::Pixel, ConversionSource::Pixel),
            (Source::Postback, ConversionSource::Postback),
            (Source::Tag, ConversionSource::Tag),
        ] {
            assert_eq!(postcard::to_stdvec(&s).unwrap(), postcard::to_stdvec(&c).unwrap());
            assert_eq!(Source::from(c), s);
        }
    }
}
