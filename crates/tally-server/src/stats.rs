//! `GET /admin/stats`: attribution stats for the admin API, read through a secondary
//! instance of the attribution state (the worker, in this process or another, keeps writing).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{json, Value};
use tally_attribution::report::{report, GroupBy};
use tally_attribution::LedgerReader;
use tally_edge::admin::{HookError, StatsFn};

/// The stats hook for the data directory `data_dir`.
pub fn stats_hook(data_dir: PathBuf) -> Arc<StatsFn> {
    Arc::new(move |from: Option<&str>, to: Option<&str>| stats(&data_dir, from, to))
}

fn stats(data_dir: &Path, from: Option<&str>, to: Option<&str>) -> Result<Value, HookError> {
    let day = |name: &str, v: Option<&str>, default: u32| match v {
        None => Ok(default),
        Some(s) => tally_model::time::parse_day(s)
            .ok_or_else(|| HookError::new(400, format!("{name}: \"{s}\" is not a date like 2026-11-23"))),
    };
    let (from, to) = (day("from", from, 0)?, day("to", to, u32::MAX)?);
    if from > to {
        return Err(HookError::new(400, "from is after to"));
    }
    let state = LedgerReader::open(&tally_attribution::state_dir(data_dir))
        .map_err(|e| HookError::new(503, format!("attribution state unavailable: {e}")))?;
    let rows = |by| {
        let rows = report(&state, by, from, to).map_err(|e| HookError::new(500, format!("cannot read stats: {e}")))?;
        rows.iter()
            .map(|r| serde_json::to_value(r.render()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| HookError::new(500, format!("cannot render stats: {e}")))
    };
    let day_or_null = |d: u32, edge: u32| if d == edge { Value::Null } else { tally_model::time::format_day(d).into() };
    Ok(json!({
        "from": day_or_null(from, 0),
        "to": day_or_null(to, u32::MAX),
        "attributed_through_seq": state.checkpoint().position,
        "by_offer": rows(GroupBy::Offer)?,
        "by_affiliate": rows(GroupBy::Affiliate)?,
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use tally_attribution::report::ReportRow;
    use tally_attribution::Counters;
    use tally_model::Currency;

    /// API clients read these rows: their keys, and `null` where a value does not exist.
    #[test]
    fn stats_rows_keep_their_json_shape() {
        let row = Counters {
            clicks: 3,
            unique_clicks: 2,
            conversions: 2,
            revenue: 10005,
            payout: 1050,
            ..Counters::default()
        };
        let usd = ReportRow {
            key: "aff1".into(),
            row: Counters { currency: Currency::from_code("USD").ok(), ..row.clone() },
        };
        let json = serde_json::to_value(usd.render()).unwrap().to_string();
        assert_eq!(
            json,
            r#"{"clicks":3,"conversions":2,"currency":"USD","epc":"3.50","key":"aff1","non_human_clicks":0,"payout":"10.50","revenue":"100.05","unique_clicks":2}"#
        );
        let none = ReportRow { key: "k".into(), row: Counters { clicks: 0, ..row } };
        let json = serde_json::to_value(none.render()).unwrap().to_string();
        assert_eq!(
            json,
            r#"{"clicks":0,"conversions":2,"currency":null,"epc":null,"key":"k","non_human_clicks":0,"payout":"1050","revenue":"10005","unique_clicks":2}"#
        );
    }
}
