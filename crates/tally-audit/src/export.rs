//! The export schema: the columns of `tally export events|clicks|conversions`, and one event
//! as `(column, value)` pairs. The CLI's sinks (JSON lines, CSV, Parquet) write these rows;
//! tests read the log through the same rows, so what a test sees is what an auditor exports.
//!
//! A field that does not apply to an event's type is absent from its row. Changing a column's
//! name or meaning changes what auditors' scripts read: add columns at the end.

use serde_json::Value;
use tally_model::{format_minor, Event};

pub const COLUMNS: &[&str] = &[
    "seq",
    "type",
    "ts_ms",
    "click_id",
    "link",
    "offer",
    "affiliate",
    "sub1",
    "sub2",
    "sub3",
    "sub4",
    "sub5",
    "source",
    "deep_link",
    "user_agent",
    "referrer",
    "ip",
    "flags",
    "conversion_source",
    "coupon",
    "goal",
    "txid",
    "amount",
    "currency",
    "status",
    "program_digest",
    // Last, so adding it (record format 2) moved no existing CSV column.
    "prior_click",
];

/// One event as `(column, value)` pairs, in [`COLUMNS`] order, for the columns it has.
pub fn row(seq: u64, event: &Event) -> Vec<(&'static str, Value)> {
    let mut r: Vec<(&'static str, Value)> =
        vec![("seq", seq.into()), ("type", event.kind().as_str().into()), ("ts_ms", event.ts_ms().into())];
    let subs = |r: &mut Vec<(&'static str, Value)>, subs: &[String; 5]| {
        for (name, v) in ["sub1", "sub2", "sub3", "sub4", "sub5"].into_iter().zip(subs) {
            r.push((name, v.as_str().into()));
        }
    };
    match event {
        Event::Click(c) => {
            r.push(("click_id", c.click_id.to_string().into()));
            r.push(("link", c.link.as_str().into()));
            r.push(("offer", c.offer.as_str().into()));
            r.push(("affiliate", c.affiliate.as_str().into()));
            subs(&mut r, &c.subs);
            r.push(("source", c.source.as_str().into()));
            r.push(("deep_link", c.deep_link.as_str().into()));
            r.push(("user_agent", c.user_agent.as_str().into()));
            r.push(("referrer", c.referrer.as_str().into()));
            r.push(("ip", c.ip.as_str().into()));
            r.push(("flags", c.flags.into()));
            r.push(("prior_click", c.prior_click.map(|p| p.to_string()).unwrap_or_default().into()));
        }
        Event::Conversion(c) => {
            r.push(("click_id", c.click_id.map(|c| c.to_string()).unwrap_or_default().into()));
            r.push(("offer", c.offer.as_str().into()));
            subs(&mut r, &c.subs);
            r.push(("ip", c.ip.as_str().into()));
            r.push(("conversion_source", c.source.as_str().into()));
            r.push(("coupon", c.coupon.as_str().into()));
            r.push(("goal", c.goal.as_str().into()));
            r.push(("txid", c.txid.as_str().into()));
            // Exact decimal strings: money never passes through a float.
            r.push(("amount", c.amount.map(|a| format_minor(a, c.currency)).unwrap_or_default().into()));
            r.push(("currency", c.currency.code().into()));
            r.push(("status", c.status.as_str().into()));
        }
        Event::ProgramChange(p) => {
            r.push(("program_digest", p.digest.as_str().into()));
        }
    }
    r
}

/// Clicks only: every column a click can fill (`type` would always be `click`).
pub const CLICK_COLUMNS: &[&str] = &[
    "seq",
    "ts_ms",
    "click_id",
    "link",
    "offer",
    "affiliate",
    "sub1",
    "sub2",
    "sub3",
    "sub4",
    "sub5",
    "source",
    "deep_link",
    "user_agent",
    "referrer",
    "ip",
    "flags",
    "prior_click",
];

/// Conversion reports only (refunds and chargebacks included, by `status`).
pub const CONVERSION_COLUMNS: &[&str] = &[
    "seq",
    "ts_ms",
    "click_id",
    "offer",
    "sub1",
    "sub2",
    "sub3",
    "sub4",
    "sub5",
    "ip",
    "conversion_source",
    "coupon",
    "goal",
    "txid",
    "amount",
    "currency",
    "status",
];

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn typed_columns_are_exactly_what_rows_of_that_type_fill() {
        use tally_model::{Click, ClickId, Conversion, ConversionSource, ConversionStatus, Currency};
        let click = Event::Click(Click {
            click_id: ClickId::new(1, 1, 1),
            ts_ms: 1,
            link: "l".into(),
            offer: "o".into(),
            affiliate: "a".into(),
            subs: Default::default(),
            source: String::new(),
            deep_link: String::new(),
            user_agent: String::new(),
            referrer: String::new(),
            ip: String::new(),
            flags: 0,
            prior_click: None,
        });
        let conversion = Event::Conversion(Conversion {
            ts_ms: 1,
            source: ConversionSource::Postback,
            click_id: None,
            coupon: String::new(),
            offer: "o".into(),
            goal: "g".into(),
            txid: String::new(),
            amount: None,
            currency: Currency::from_code("USD").unwrap(),
            status: ConversionStatus::Approved,
            subs: Default::default(),
            ip: String::new(),
        });
        for (event, columns) in [(click, CLICK_COLUMNS), (conversion, CONVERSION_COLUMNS)] {
            let keys: Vec<&str> = row(7, &event).into_iter().map(|(k, _)| k).filter(|k| *k != "type").collect();
            assert_eq!(keys, columns);
            // In COLUMNS order, so the CSV writer's single forward walk finds every cell.
            let in_order: Vec<&str> = COLUMNS.iter().copied().filter(|c| columns.contains(c)).collect();
            assert_eq!(in_order, columns);
        }
    }
}
