//! Stats rows as deltas: what a group of applied events changed in each day × offer ×
//! affiliate × sub1 row, and the RocksDB merge operator that sums them.
//!
//! A commit stores one merge operand per UTC day (the day's changed rows, sorted), not one
//! put per changed row: per-row puts were a third of attribution's time, and rewriting a row
//! needs its old value in memory or a read. RocksDB folds the operands into the day's table
//! when it flushes and compacts, and on read.
//!
//! Folding must not depend on how events were grouped into commits (live and replay group
//! them differently), so a delta composes associatively: counts add with wrapping arithmetic
//! (never near overflow in practice, and exact whatever the grouping), and the currency is
//! an operation ([`CurrencyOp`]) rather than a value.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tally_model::Currency;

/// The merge operator's name, stored by RocksDB in the table files: opening the stats with
/// another operator (or none) is refused.
pub(crate) const MERGE_OPERATOR: &str = "tally-stats-day-v1";

/// What a delta does to a row's currency. Clicks name the offer's currency only when the
/// row has none yet; conversions set it. Composition: a later `Set` wins; a later
/// `SetIfNone` changes nothing once an earlier operation named a currency.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CurrencyOp {
    #[default]
    Keep,
    SetIfNone(Currency),
    Set(Currency),
}

impl CurrencyOp {
    fn then(self, later: CurrencyOp) -> CurrencyOp {
        match (self, later) {
            (_, CurrencyOp::Set(c)) => CurrencyOp::Set(c),
            (CurrencyOp::Keep, later) => later,
            (earlier, _) => earlier,
        }
    }

    fn apply(self, current: Option<Currency>) -> Option<Currency> {
        match self {
            CurrencyOp::Keep => current,
            CurrencyOp::SetIfNone(c) => current.or(Some(c)),
            CurrencyOp::Set(c) => Some(c),
        }
    }
}

/// One stats row: one UTC day × offer × affiliate × sub1. The one row type of the crate:
/// `C` is what the row holds of its currency, so a stored delta ([`RowDelta`]) and the row
/// it sums to ([`Counters`]) are the same shape, and a report sums rows of it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row<C> {
    /// Clicks by people (HEAD requests, prefetches and unfurlers excluded).
    pub clicks: u64,
    /// Clicks by people, counted once per visitor (IP and user agent) per day.
    pub unique_clicks: u64,
    /// Clicks flagged as not made by a person.
    pub non_human_clicks: u64,
    /// Credited conversions (pending or approved), net of reversals.
    pub conversions: i64,
    /// Sale amounts of credited conversions, net of reversals, in minor units.
    pub revenue: i64,
    /// Commissions and bonuses owed, net of reversals and clawbacks, in minor units.
    pub payout: i64,
    pub currency: C,
}

/// A stats row as read: its currency is the offer's, `None` until a conversion or a program
/// names it.
pub type Counters = Row<Option<Currency>>;

/// Changes to one stats row, as a commit stores them; applied to an empty row, the row
/// itself. Its encoding (postcard: the fields in order) is the stored format.
pub type RowDelta = Row<CurrencyOp>;

impl<C> Row<C> {
    /// Adds `other`'s counts to these. Wrapping: rows are summed from per-commit deltas, and
    /// only wrapping sums come out the same however events were grouped into commits.
    pub fn add_counts<D>(&mut self, other: &Row<D>) {
        self.clicks = self.clicks.wrapping_add(other.clicks);
        self.unique_clicks = self.unique_clicks.wrapping_add(other.unique_clicks);
        self.non_human_clicks = self.non_human_clicks.wrapping_add(other.non_human_clicks);
        self.conversions = self.conversions.wrapping_add(other.conversions);
        self.revenue = self.revenue.wrapping_add(other.revenue);
        self.payout = self.payout.wrapping_add(other.payout);
    }

    /// The same counts with another currency.
    pub fn with_currency<D>(&self, currency: D) -> Row<D> {
        Row {
            clicks: self.clicks,
            unique_clicks: self.unique_clicks,
            non_human_clicks: self.non_human_clicks,
            conversions: self.conversions,
            revenue: self.revenue,
            payout: self.payout,
            currency,
        }
    }
}

impl RowDelta {
    /// This delta followed by `later`.
    pub fn then(&mut self, later: &RowDelta) {
        self.add_counts(later);
        self.currency = self.currency.then(later.currency);
    }

    /// Names the row's currency unless it has one.
    pub fn set_currency_if_none(&mut self, c: Option<Currency>) {
        if let Some(c) = c {
            self.currency = self.currency.then(CurrencyOp::SetIfNone(c));
        }
    }

    pub fn set_currency(&mut self, c: Currency) {
        self.currency = CurrencyOp::Set(c);
    }

    /// The row this delta makes of an empty one.
    pub fn counters(&self) -> Counters {
        self.with_currency(self.currency.apply(None))
    }
}

/// One row of a day table, borrowing its strings from the stored bytes.
pub(crate) type DayRow<'a> = (&'a str, &'a str, &'a str, RowDelta);

/// Encodes rows sorted by (offer, affiliate, sub1).
pub(crate) fn encode_day(rows: &[(&str, &str, &str, &RowDelta)]) -> Vec<u8> {
    // Serialising strings and integers into a Vec cannot fail.
    postcard::to_stdvec(rows).unwrap_or_default()
}

pub(crate) fn decode_day(bytes: &[u8]) -> Result<Vec<DayRow<'_>>, postcard::Error> {
    postcard::from_bytes(bytes)
}

/// The merge operator: the day's table (if any) followed by each operand, in order. `None`
/// (a corrupt value or operand) makes RocksDB fail the read or compaction loudly rather than
/// drop counts.
pub(crate) fn merge_days<'a>(
    existing: Option<&'a [u8]>,
    operands: impl IntoIterator<Item = &'a [u8]>,
) -> Option<Vec<u8>> {
    let mut rows: BTreeMap<(&str, &str, &str), RowDelta> = BTreeMap::new();
    for bytes in existing.into_iter().chain(operands) {
        for (offer, affiliate, sub1, delta) in decode_day(bytes).ok()? {
            rows.entry((offer, affiliate, sub1)).or_default().then(&delta);
        }
    }
    let flat: Vec<(&str, &str, &str, &RowDelta)> = rows.iter().map(|((o, a, s), d)| (*o, *a, *s, d)).collect();
    Some(encode_day(&flat))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn usd() -> Currency {
        Currency::from_code("USD").unwrap()
    }

    fn eur() -> Currency {
        Currency::from_code("EUR").unwrap()
    }

    #[test]
    fn a_click_names_the_currency_only_of_a_row_without_one() {
        let mut d = RowDelta::default();
        d.set_currency_if_none(Some(usd()));
        d.set_currency_if_none(Some(eur()));
        assert_eq!(d.counters().currency, Some(usd()));
        d.set_currency(eur());
        d.set_currency_if_none(Some(usd()));
        assert_eq!(d.counters().currency, Some(eur()));
        d.set_currency_if_none(None);
        assert_eq!(d.counters().currency, Some(eur()));
    }

    #[test]
    fn a_corrupt_operand_fails_the_merge_instead_of_dropping_counts() {
        let good = encode_day(&[("o", "a", "s", &RowDelta { clicks: 1, ..RowDelta::default() })]);
        assert!(merge_days(Some(&good), [&b"\xff\xff"[..]]).is_none());
        assert!(merge_days(Some(&b"\x05"[..]), [&good[..]]).is_none());
    }

    fn delta() -> impl Strategy<Value = (u8, RowDelta)> {
        let cur = prop_oneof![
            Just(CurrencyOp::Keep),
            Just(CurrencyOp::SetIfNone(usd())),
            Just(CurrencyOp::SetIfNone(eur())),
            Just(CurrencyOp::Set(usd())),
            Just(CurrencyOp::Set(eur())),
        ];
        (0u8..12, any::<u64>(), any::<i64>(), -5i64..5, cur).prop_map(|(row, clicks, payout, conversions, currency)| {
            (row, RowDelta { clicks, payout, conversions, currency, ..RowDelta::default() })
        })
    }

    /// The reference: rows folded in a tree map, in order. Row `r`'s key varies in each of
    /// its three parts, so the merge's ordering is tested on all of them.
    fn table(ds: &[(u8, RowDelta)]) -> Vec<u8> {
        let mut rows: BTreeMap<(&str, &str, String), RowDelta> = BTreeMap::new();
        for (r, d) in ds {
            let offer = ["o", "o2"][usize::from(r % 2)];
            let affiliate = ["a", "a2"][usize::from(r / 2 % 2)];
            rows.entry((offer, affiliate, format!("s{}", r % 3))).or_default().then(d);
        }
        let flat: Vec<_> = rows.iter().map(|((o, a, s), d)| (*o, *a, s.as_str(), d)).collect();
        encode_day(&flat)
    }

    proptest! {
        /// However the deltas are grouped into operands, and however RocksDB pre-merges
        /// neighbouring operands, the day's table comes out the same.
        #[test]
        fn merging_does_not_depend_on_grouping(ds in proptest::collection::vec(delta(), 0..40), cuts in proptest::collection::vec(0usize..40, 0..6)) {
            let one = table(&ds);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(ds.len())).collect();
            cuts.sort_unstable();
            cuts.dedup();
            let mut parts = Vec::new();
            let mut at = 0;
            for c in cuts.into_iter().chain([ds.len()]) {
                parts.push(table(&ds[at..c]));
                at = c;
            }
            let (head, tail) = parts.split_first().unwrap();
            let all = merge_days(Some(head), tail.iter().map(Vec::as_slice)).unwrap();
            prop_assert_eq!(&all, &one);
            // A partial merge of the operands first, then the full merge.
            if tail.len() >= 2 {
                let partial = merge_days(None, tail.iter().map(Vec::as_slice)).unwrap();
                prop_assert_eq!(merge_days(Some(head), [partial.as_slice()]).unwrap(), one);
            }
        }
    }
}
