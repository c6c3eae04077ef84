//! `GET /admin/stats`: attribution stats for the admin API, read through a secondary
//! instance of the attribution state (the worker, in this process or another, keeps writing).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{json, Value};
use tally_attribution::report::{report, GroupBy, ReportRow};
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
        report(&state, by, from, to)
            .map(|rows| rows.iter().map(row_json).collect::<Vec<_>>())
            .map_err(|e| HookError::new(500, format!("cannot read stats: {e}")))
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

fn row_json(r: &ReportRow) -> Value {
    // Money as exact decimal strings, as everywhere else.
    let money = |v: i64| match r.row.currency {
        Some(c) => tally_model::format_minor(v, c),
        None => v.to_string(),
    };
    json!({
        "key": r.key,
        "currency": r.row.currency.map(|c| c.code().to_owned()),
        "clicks": r.row.clicks,
        "unique_clicks": r.row.unique_clicks,
        "non_human_clicks": r.row.non_human_clicks,
        "conversions": r.row.conversions,
        "revenue": money(r.row.revenue),
        "payout": money(r.row.payout),
        "epc": r.row.epc().map(money),
    })
}
