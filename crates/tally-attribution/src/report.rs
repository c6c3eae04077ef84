//! `tally report`: stats rows summed by affiliate, offer, day or sub1 over a date range.
//!
//! Money is summed per currency: an affiliate promoting a USD and a EUR offer gets two rows.
//! Conversion rate is a ratio for display; EPC (payout per click) is money, computed exactly
//! in minor units and rounded half to even.

use std::collections::BTreeMap;

use tally_model::Currency;

use crate::ledger::StatsKey;
use crate::state::State;
use crate::stats::Counters;
use crate::AttributionError;
use tally_model::time::format_day;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupBy {
    Affiliate,
    Offer,
    Day,
    Sub1,
}

impl GroupBy {
    pub fn parse(s: &str) -> Option<GroupBy> {
        Some(match s {
            "affiliate" => GroupBy::Affiliate,
            "offer" => GroupBy::Offer,
            "day" => GroupBy::Day,
            "sub1" => GroupBy::Sub1,
            _ => return None,
        })
    }

    fn key(self, k: &StatsKey) -> String {
        match self {
            GroupBy::Affiliate => k.affiliate.clone(),
            GroupBy::Offer => k.offer.clone(),
            GroupBy::Day => format_day(k.day),
            GroupBy::Sub1 => k.sub1.clone(),
        }
    }
}

/// One line of a report: the stats rows of a group (an affiliate, an offer, a day or a
/// sub1 value) summed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReportRow {
    pub key: String,
    pub row: Counters,
}

impl Counters {
    /// Conversions per click, as a percentage; `None` without clicks.
    pub fn conversion_rate_percent(&self) -> Option<f64> {
        (self.clicks > 0).then(|| self.conversions as f64 * 100.0 / self.clicks as f64)
    }

    /// Payout per click in minor units, rounded half to even; `None` without clicks.
    pub fn epc(&self) -> Option<i64> {
        if self.clicks == 0 {
            return None;
        }
        let (n, d) = (i128::from(self.payout), i128::from(self.clicks));
        let (q, r) = (n.div_euclid(d), n.rem_euclid(d));
        let q = match (2 * r).cmp(&d) {
            std::cmp::Ordering::Greater => q + 1,
            std::cmp::Ordering::Equal => q + (q & 1),
            std::cmp::Ordering::Less => q,
        };
        i64::try_from(q).ok()
    }
}

/// Sums the stats rows of days `from..=to` by `by`.
pub fn report(state: &State, by: GroupBy, from: u32, to: u32) -> Result<Vec<ReportRow>, AttributionError> {
    let mut groups: BTreeMap<(String, Option<Currency>), ReportRow> = BTreeMap::new();
    for row in state.stats(from, to) {
        let (k, c) = row?;
        let key = by.key(&k);
        groups
            .entry((key.clone(), c.currency))
            .or_insert_with(|| ReportRow { key, row: Counters { currency: c.currency, ..Counters::default() } })
            .row
            .add_counts(&c);
    }
    // Rows that never learned a currency (clicks before any program named the offer's) join
    // their group's only currency when it has exactly one.
    let mut out: Vec<ReportRow> = Vec::new();
    for ((key, currency), row) in groups {
        match out.last_mut() {
            Some(last) if last.key == key && last.row.currency.is_none() && currency.is_some() => {
                // Such rows hold clicks only: without a currency nothing converted.
                let mut merged = row;
                merged.row.add_counts(&last.row);
                *last = merged;
            }
            _ => out.push(row),
        }
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn epc_rounds_half_to_even() {
        let row = |payout, clicks| Counters { payout, clicks, ..Counters::default() };
        assert_eq!(row(100, 0).epc(), None);
        assert_eq!(row(100, 3).epc(), Some(33));
        assert_eq!(row(5, 2).epc(), Some(2));
        assert_eq!(row(7, 2).epc(), Some(4));
        assert_eq!(row(-5, 2).epc(), Some(-2));
        assert_eq!(row(1, 4).conversion_rate_percent(), Some(0.0));
        let r = Counters { conversions: 1, clicks: 4, ..Counters::default() };
        assert_eq!(r.conversion_rate_percent(), Some(25.0));
    }
}
