//! `tally report`: stats rows summed by affiliate, offer, day or sub1 over a date range.
//!
//! Money is summed per currency: an affiliate promoting a USD and a EUR offer gets two rows.
//! Conversion rate is a ratio for display; EPC (payout per click) is money, computed exactly
//! in minor units and rounded half to even. [`ReportRow::render`] is the one way a row is
//! shown: `tally report` prints it, and the admin API's stats serialize it.

use std::collections::BTreeMap;

use serde::Serialize;
use tally_model::{format_minor, Currency};

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

/// A report row as shown: counts as numbers, money as exact decimal strings in the row's
/// currency (in minor units while the row has none), `None` where a value does not exist
/// (no currency yet; no clicks, so no rate or EPC). `tally report` prints `None` as an empty
/// cell; serialized (the admin API's stats rows) it is `null`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RenderedRow {
    pub key: String,
    pub currency: Option<String>,
    pub clicks: u64,
    pub unique_clicks: u64,
    pub non_human_clicks: u64,
    pub conversions: i64,
    /// A percentage with two decimals, `66.67%`. Not serialized: the admin stats rows predate
    /// it, and API clients compute their own from the counts.
    #[serde(skip)]
    pub conversion_rate: Option<String>,
    pub revenue: String,
    pub payout: String,
    pub epc: Option<String>,
}

impl ReportRow {
    pub fn render(&self) -> RenderedRow {
        let r = &self.row;
        let money = |v: i64| match r.currency {
            Some(c) => format_minor(v, c),
            None => v.to_string(),
        };
        RenderedRow {
            key: self.key.clone(),
            currency: r.currency.map(|c| c.code().to_owned()),
            clicks: r.clicks,
            unique_clicks: r.unique_clicks,
            non_human_clicks: r.non_human_clicks,
            conversions: r.conversions,
            // A display ratio, not money.
            conversion_rate: r.conversion_rate_percent().map(|p| format!("{p:.2}%")),
            revenue: money(r.revenue),
            payout: money(r.payout),
            epc: r.epc().map(money),
        }
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

    #[test]
    fn rows_render_money_in_their_currency_and_leave_what_does_not_exist_empty() {
        let usd = Currency::from_code("USD").unwrap();
        let counts = Counters { clicks: 3, conversions: 2, revenue: 10005, payout: 1050, ..Counters::default() };
        let row = ReportRow { key: "aff1".into(), row: Counters { currency: Some(usd), ..counts.clone() } };
        let r = row.render();
        assert_eq!((r.key.as_str(), r.currency.as_deref()), ("aff1", Some("USD")));
        assert_eq!((r.revenue.as_str(), r.payout.as_str(), r.epc.as_deref()), ("100.05", "10.50", Some("3.50")));
        assert_eq!(r.conversion_rate.as_deref(), Some("66.67%"));
        // No currency yet: minor units, as stored.
        let r = ReportRow { key: "k".into(), row: counts }.render();
        assert_eq!((r.currency, r.revenue.as_str(), r.epc.as_deref()), (None, "10005", Some("350")));
        let r = ReportRow { key: "k".into(), row: Counters { currency: Some(usd), ..Counters::default() } }.render();
        assert_eq!((r.conversion_rate, r.epc, r.payout.as_str()), (None, None, "0.00"));
    }
}
