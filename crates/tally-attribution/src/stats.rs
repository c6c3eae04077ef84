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

use serde::{Deserialize, Serialize};
use tally_model::Currency;

/// The merge operator's name, stored by RocksDB in the table files: opening the stats with
/// another operator (or none) is refused.
pub(crate) const MERGE_OPERATOR: &str = "tally-stats-day-v1";

/// What a delta does to a row's currency. Clicks name the offer's currency only when the
/// row has none yet; conversions set it. Composition: a later `Set` wins; a later
/// `SetIfNone` changes nothing once an earlier operation named a currency. `C` is the
/// currency: [`Currency`], or in the merge operator the stored code, unchecked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CurrencyOpOf<C> {
    #[default]
    Keep,
    SetIfNone(C),
    Set(C),
}

pub type CurrencyOp = CurrencyOpOf<Currency>;

impl<C: Copy> CurrencyOpOf<C> {
    fn then(self, later: CurrencyOpOf<C>) -> CurrencyOpOf<C> {
        match (self, later) {
            (_, CurrencyOpOf::Set(c)) => CurrencyOpOf::Set(c),
            (CurrencyOpOf::Keep, later) => later,
            (earlier, _) => earlier,
        }
    }
}

impl CurrencyOp {
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

impl<C: Copy> Row<CurrencyOpOf<C>> {
    /// This delta followed by `later`.
    pub fn then(&mut self, later: &Row<CurrencyOpOf<C>>) {
        self.add_counts(later);
        self.currency = self.currency.then(later.currency);
    }
}

impl RowDelta {
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

/// A stored string, neither checked as UTF-8 nor parsed: the merge operator only compares
/// and copies the row keys and currency codes (checking them was a fifth of its time), and
/// postcard writes a `&str` as it writes bytes (a length, then the bytes), so what it writes
/// back reads as [`DayRow`]s. Reads of the stats check them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Raw<'a>(&'a [u8]);

impl Serialize for Raw<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Raw<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Raw<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("borrowed bytes")
            }
            fn visit_borrowed_bytes<E: serde::de::Error>(self, v: &'de [u8]) -> Result<Raw<'de>, E> {
                Ok(Raw(v))
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Raw<'de>, E> {
                Ok(Raw(v.as_bytes()))
            }
        }
        d.deserialize_bytes(V)
    }
}

type RawKey<'a> = (Raw<'a>, Raw<'a>, Raw<'a>);
type RawRow<'a> = (Raw<'a>, Raw<'a>, Raw<'a>, Row<CurrencyOpOf<Raw<'a>>>);

fn raw_key<'a>(r: &RawRow<'a>) -> RawKey<'a> {
    (r.0, r.1, r.2)
}

/// One input's rows in key order, each key once. A table or operand this crate wrote is so
/// already (`encode_day` takes sorted rows); any other is sorted stably and its repeats
/// folded in order, which is what folding it row by row would give.
fn sorted(mut rows: Vec<RawRow<'_>>) -> Vec<RawRow<'_>> {
    if rows.windows(2).all(|w| raw_key(&w[0]) < raw_key(&w[1])) {
        return rows;
    }
    rows.sort_by_key(raw_key);
    let mut out: Vec<RawRow<'_>> = Vec::with_capacity(rows.len());
    for r in rows {
        match out.last_mut() {
            Some(last) if raw_key(last) == raw_key(&r) => last.3.then(&r.3),
            _ => out.push(r),
        }
    }
    out
}

/// One stored row located in its table's bytes, not decoded: its key's three strings and
/// the bytes of the whole row and of its counters. The merge operator copies a row only one
/// input has as it stands, and decodes only rows it must fold.
#[derive(Clone, Copy)]
struct Span<'a> {
    key: (&'a [u8], &'a [u8], &'a [u8]),
    row: &'a [u8],
    counters: &'a [u8],
    prefix: Prefix,
}

impl Span<'_> {
    /// Orders as the keys do (offer, then affiliate, then sub1), comparing integers when
    /// the prefixes tell: comparing the three byte strings was most of the merge's time.
    fn cmp_key(&self, other: &Span<'_>) -> std::cmp::Ordering {
        match self.prefix.cmp(&other.prefix) {
            Some(o) => o,
            None => self.key.cmp(&other.key),
        }
    }
}

/// A key's first 16 bytes with a zero byte after each part, zero-padded, as a big-endian
/// integer. Where no part holds a zero byte within those 16, prefixes order as the keys do
/// (a zero ends a part, and sorts before any byte that would continue it); equal prefixes
/// tell nothing. A key with a zero byte of its own there (`exact` false) compares in full.
#[derive(Clone, Copy)]
struct Prefix {
    value: u128,
    exact: bool,
}

impl Prefix {
    fn of(parts: [&[u8]; 3]) -> Prefix {
        let mut b = [0u8; 16];
        let mut at = 0;
        let mut exact = true;
        for part in parts {
            let n = part.len().min(16 - at);
            b[at..at + n].copy_from_slice(&part[..n]);
            exact &= !part[..n].contains(&0);
            at = (at + n + 1).min(16); // the separator is the zero already there
            if at == 16 {
                break;
            }
        }
        Prefix { value: u128::from_be_bytes(b), exact }
    }

    fn cmp(&self, other: &Prefix) -> Option<std::cmp::Ordering> {
        (self.exact && other.exact && self.value != other.value).then(|| self.value.cmp(&other.value))
    }
}

/// An input's next row in the merge's heap: smallest key first, then the input's index (so
/// rows with one key come off in input order).
struct Head<'a> {
    row: Span<'a>,
    input: usize,
}

impl Ord for Head<'_> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Reversed: `BinaryHeap` pops the greatest.
        other.row.cmp_key(&self.row).then(other.input.cmp(&self.input))
    }
}

impl PartialOrd for Head<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Head<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Head<'_> {}

/// Reads postcard's encodings without building values: varints and length-prefixed bytes.
struct Scan<'a>(&'a [u8]);

impl<'a> Scan<'a> {
    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for (i, b) in self.0.iter().enumerate().take(10) {
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                self.0 = &self.0[i + 1..];
                return Some(v);
            }
        }
        None
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.varint()?).ok()?;
        let (b, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(b)
    }

    /// One row: three strings, six counts, then the currency operation (0 keep, 1 set if
    /// none, 2 set; the last two with a code).
    fn row(&mut self) -> Option<Span<'a>> {
        let start = self.0;
        let key = (self.bytes()?, self.bytes()?, self.bytes()?);
        let counters = self.0;
        for _ in 0..6 {
            self.varint()?;
        }
        match self.varint()? {
            0 => {}
            1 | 2 => {
                self.bytes()?;
            }
            _ => return None,
        }
        let len = start.len() - self.0.len();
        let prefix = Prefix::of([key.0, key.1, key.2]);
        Some(Span { key, row: &start[..len], counters: &counters[..counters.len() - self.0.len()], prefix })
    }
}

/// A table's rows, or `None` if the bytes are not one (trailing bytes included).
fn scan(bytes: &[u8]) -> Option<Vec<Span<'_>>> {
    let mut s = Scan(bytes);
    let n = usize::try_from(s.varint()?).ok()?;
    // Each row takes at least 10 bytes: a corrupt count must not reserve gigabytes.
    let mut rows = Vec::with_capacity(n.min(bytes.len() / 10));
    for _ in 0..n {
        rows.push(s.row()?);
    }
    s.0.is_empty().then_some(rows)
}

fn push_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The output's current row: as one input has it, or the sum of several inputs' counters,
/// in input order.
struct Folding<'a> {
    key: (&'a [u8], &'a [u8], &'a [u8]),
    whole: &'a [u8],
    first: &'a [u8],
    sum: Option<Row<CurrencyOpOf<Raw<'a>>>>,
}

impl<'a> Folding<'a> {
    fn emit(self, body: &mut Vec<u8>) -> Option<()> {
        match self.sum {
            None => body.extend_from_slice(self.whole),
            Some(sum) => {
                let row = (Raw(self.key.0), Raw(self.key.1), Raw(self.key.2), sum);
                *body = postcard::to_extend(&row, std::mem::take(body)).ok()?;
            }
        }
        Some(())
    }

    fn add(&mut self, counters: &'a [u8]) -> Option<()> {
        let later: Row<CurrencyOpOf<Raw<'a>>> = postcard::from_bytes(counters).ok()?;
        match &mut self.sum {
            Some(sum) => sum.then(&later),
            None => {
                let mut sum: Row<CurrencyOpOf<Raw<'a>>> = postcard::from_bytes(self.first).ok()?;
                sum.then(&later);
                self.sum = Some(sum);
            }
        }
        Some(())
    }
}

/// The merge operator: the day's table (if any) followed by each operand, in order. `None`
/// (a corrupt value or operand) makes RocksDB fail the read or compaction loudly rather than
/// drop counts.
///
/// Every input is sorted, so this is a k-way merge, linear in the rows (a tree map of a day's
/// rows cost a third of attribution's time with 100,000 affiliates, whose day tables are
/// large). It works on the stored bytes: a row only one input has is copied as it is, and
/// only rows several inputs share are decoded and summed (decoding and re-encoding every
/// row was most of the operator's time). Rows with one key come off the heap in input
/// order, so deltas compose in order.
pub(crate) fn merge_days<'a>(
    existing: Option<&'a [u8]>,
    operands: impl IntoIterator<Item = &'a [u8]>,
) -> Option<Vec<u8>> {
    use std::collections::BinaryHeap;
    let all: Vec<&'a [u8]> = existing.into_iter().chain(operands).collect();
    // Inputs this crate did not write sorted are sorted first (see `sorted`), into `fixed`.
    let mut scanned: Vec<Option<Vec<Span<'a>>>> = Vec::with_capacity(all.len());
    let mut fixed: Vec<Vec<u8>> = Vec::new();
    for bytes in &all {
        let rows = scan(bytes)?;
        if rows.windows(2).all(|w| w[0].cmp_key(&w[1]).is_lt()) {
            scanned.push(Some(rows));
        } else {
            let raw: Vec<RawRow<'a>> = postcard::from_bytes(bytes).ok()?;
            fixed.push(postcard::to_stdvec(&sorted(raw)).ok()?);
            scanned.push(None);
        }
    }
    let mut fixed = fixed.iter();
    let mut inputs: Vec<std::vec::IntoIter<Span<'_>>> = Vec::with_capacity(all.len());
    for rows in scanned {
        let rows = match rows {
            Some(rows) => rows,
            None => scan(fixed.next()?)?,
        };
        inputs.push(rows.into_iter());
    }
    if let [only] = inputs.as_mut_slice() {
        let rows = only.as_slice();
        let mut out = Vec::with_capacity(rows.iter().map(|r| r.row.len()).sum::<usize>() + 10);
        push_varint(&mut out, rows.len() as u64);
        rows.iter().for_each(|r| out.extend_from_slice(r.row));
        return Some(out);
    }

    let mut heap = BinaryHeap::with_capacity(inputs.len());
    for (input, rows) in inputs.iter_mut().enumerate() {
        if let Some(row) = rows.next() {
            heap.push(Head { row, input });
        }
    }
    let size: usize = all.iter().map(|b| b.len()).sum();
    let mut body = Vec::with_capacity(size);
    let mut count = 0u64;
    let mut pending: Option<Folding<'_>> = None;
    while let Some(mut top) = heap.peek_mut() {
        let Head { row: Span { key, row: whole, counters, .. }, input } = *top;
        // The input's next row replaces its last in place: one sift instead of a pop and a
        // push (the heap was most of the operator's time).
        match inputs.get_mut(input)?.next() {
            Some(next) => top.row = next,
            None => drop(std::collections::binary_heap::PeekMut::pop(top)),
        }
        match &mut pending {
            Some(p) if p.key == key => p.add(counters)?,
            _ => {
                if let Some(p) = pending.take() {
                    p.emit(&mut body)?;
                    count += 1;
                }
                pending = Some(Folding { key, first: counters, sum: None, whole });
            }
        }
    }
    if let Some(p) = pending.take() {
        p.emit(&mut body)?;
        count += 1;
    }
    let mut out = Vec::with_capacity(body.len() + 10);
    push_varint(&mut out, count);
    out.extend_from_slice(&body);
    Some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

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

    #[test]
    fn an_unsorted_operand_with_repeats_folds_in_its_own_order() {
        let d = |clicks, currency| RowDelta { clicks, currency, ..RowDelta::default() };
        // Not sorted, and row (o, a, s) twice: its currency ops must apply in the order given.
        let messy = encode_day(&[
            ("o", "b", "s", &d(1, CurrencyOp::Keep)),
            ("o", "a", "s", &d(2, CurrencyOp::Set(usd()))),
            ("o", "a", "s", &d(3, CurrencyOp::Set(eur()))),
        ]);
        let first = encode_day(&[("o", "a", "s", &d(10, CurrencyOp::SetIfNone(usd())))]);
        let merged = merge_days(Some(&first), [&messy[..]]).unwrap();
        let want =
            encode_day(&[("o", "a", "s", &d(15, CurrencyOp::Set(eur()))), ("o", "b", "s", &d(1, CurrencyOp::Keep))]);
        assert_eq!(merged, want);
        let rows = decode_day(&merged).unwrap();
        assert_eq!(rows[0].3.counters().currency, Some(eur()));
    }

    fn delta() -> impl Strategy<Value = (u8, RowDelta)> {
        let cur = prop_oneof![
            Just(CurrencyOp::Keep),
            Just(CurrencyOp::SetIfNone(usd())),
            Just(CurrencyOp::SetIfNone(eur())),
            Just(CurrencyOp::Set(usd())),
            Just(CurrencyOp::Set(eur())),
        ];
        (0u8..48, any::<u64>(), any::<i64>(), -5i64..5, cur).prop_map(|(row, clicks, payout, conversions, currency)| {
            (row, RowDelta { clicks, payout, conversions, currency, ..RowDelta::default() })
        })
    }

    /// The reference: rows folded in a tree map, in order. Row `r`'s key varies in each of
    /// its three parts, so the merge's ordering is tested on all of them.
    fn table(ds: &[(u8, RowDelta)]) -> Vec<u8> {
        let mut rows: BTreeMap<(&str, &str, String), RowDelta> = BTreeMap::new();
        for (r, d) in ds {
            // Long parts that share their first 16 bytes, and parts holding zero bytes, so
            // the merge's integer prefixes both decide and defer to the bytes.
            let offer = ["o", "o2", "offer-with-a-long-name-1", "offer-with-a-long-name-2"][usize::from(r % 4)];
            let affiliate = ["a", "a2", "a\0b", ""][usize::from(r / 4 % 4)];
            rows.entry((offer, affiliate, format!("s{}", r % 3))).or_default().then(d);
        }
        let flat: Vec<_> = rows.iter().map(|((o, a, s), d)| (*o, *a, s.as_str(), d)).collect();
        encode_day(&flat)
    }

    fn part() -> impl Strategy<Value = Vec<u8>> {
        // A small alphabet with the zero byte, up to past the 16 bytes of a prefix.
        proptest::collection::vec(prop_oneof![Just(0u8), Just(1u8), Just(b'a'), Just(b'b')], 0..20)
    }

    proptest! {
        /// The merge's fast comparison orders rows exactly as their keys order.
        #[test]
        fn prefixes_order_rows_as_their_keys(a in [part(), part(), part()], b in [part(), part(), part()]) {
            fn span(k: &[Vec<u8>; 3]) -> Span<'_> {
                let key = (k[0].as_slice(), k[1].as_slice(), k[2].as_slice());
                Span { key, row: &[], counters: &[], prefix: Prefix::of([key.0, key.1, key.2]) }
            }
            let (x, y) = (span(&a), span(&b));
            prop_assert_eq!(x.cmp_key(&y), x.key.cmp(&y.key));
        }

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
