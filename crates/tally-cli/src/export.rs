//! `tally export events`: the raw log as JSON lines or CSV, streamed in constant memory from
//! a secondary instance, so it works on a running server's directory.
//!
//! Columns (CSV header, and the keys of each JSON object) are listed in [`COLUMNS`]; a field
//! that does not apply to an event's type is empty in CSV and absent in JSON.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use serde_json::{Map, Value};
use tally_log::LogReader;
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

pub fn events(data_dir: &Path, from: u64, csv: bool) -> anyhow::Result<ExitCode> {
    let reader = LogReader::open_secondary(data_dir)?;
    let stdout = std::io::stdout();
    let out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
    let mut bad = 0u64;
    if csv {
        let mut w = csv::Writer::from_writer(out);
        w.write_record(COLUMNS)?;
        for item in reader.iter_from(from) {
            let (seq, record) = item?;
            match tally_model::decode(&record) {
                Ok(event) => {
                    let r = row(seq, &event);
                    let cells = COLUMNS.iter().map(|c| {
                        r.iter()
                            .find(|(k, _)| k == c)
                            .map(|(_, v)| match v {
                                Value::String(s) => s.clone(),
                                other => other.to_string(),
                            })
                            .unwrap_or_default()
                    });
                    w.write_record(cells)?;
                }
                Err(e) => {
                    bad += 1;
                    eprintln!("tally: sequence {seq} does not decode: {e}");
                }
            }
        }
        w.flush()?;
    } else {
        let mut out = out;
        for item in reader.iter_from(from) {
            let (seq, record) = item?;
            match tally_model::decode(&record) {
                Ok(event) => {
                    let obj: Map<String, Value> =
                        row(seq, &event).into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
                    serde_json::to_writer(&mut out, &obj)?;
                    out.write_all(b"\n")?;
                }
                Err(e) => {
                    bad += 1;
                    eprintln!("tally: sequence {seq} does not decode: {e}");
                }
            }
        }
        out.flush()?;
    }
    if bad > 0 {
        eprintln!("tally: {bad} record(s) could not be decoded; run `tally verify`");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
