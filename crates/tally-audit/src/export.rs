//! Exports: the raw log (`events`, or only `clicks` or `conversions`) or the commission ledger
//! (`commissions`) as CSV, JSON lines or Parquet, streamed in constant memory from secondary
//! instances, so they work on a running server's directory. `tally export` is flags around
//! this module.
//!
//! - the schema, here: [`COLUMNS`] and [`row`] (one event as `(column, value)` pairs), and the
//!   typed exports' columns ([`CLICK_COLUMNS`], [`CONVERSION_COLUMNS`],
//!   [`crate::digest::COLUMNS`] for commissions), so no column of a typed export is always
//!   empty. Tests read the log through the same rows, so what a test sees is what an auditor
//!   exports;
//! - [`Range`]: the half-open range `from <= x < to` selected;
//! - [`Sink`]: the writers: CSV, JSON lines, and behind the cargo feature `parquet`, Parquet
//!   (the `parquet` module);
//! - [`Source`]: the log or ledger opened, and [`Source::export`], which streams the rows of a
//!   range into a sink.
//!
//! A field that does not apply to an event's type is absent from its row: empty in CSV, absent
//! in JSON, null in Parquet. Changing a column's name or meaning changes what auditors' scripts
//! read: add columns at the end.

#[cfg(feature = "parquet")]
pub mod parquet;
mod range;
mod sink;

use std::io::Write;
use std::path::Path;

use serde_json::Value;
use tally_attribution::LedgerReader;
use tally_log::LogReader;
use tally_model::{format_minor, Event, EventKind, Personal, RecordError};

pub use range::Range;
pub use sink::Sink;

/// Whether [`Sink::parquet`] can write Parquet: the cargo feature `parquet` is on.
pub const PARQUET: bool = cfg!(feature = "parquet");

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
    // The event time as RFC 3339 UTC (`2026-11-23T14:05:00.123Z`) beside `ts_ms`, for people
    // and tools that read dates; last, for the same reason.
    "time",
    // A click's visitor key (16 hex digits), by which unique clicks are counted; record
    // format 3 added it, and `personal` beside it.
    "visitor",
    // What the record holds of the event's personal fields (`user_agent`, `referrer`, `ip`):
    // `present`, `erased` (by request or retention: the fields are empty), `none`
    // (nothing recorded), or `chained` (a record older than format 3, not erasable).
    "personal",
    // The advertiser whose credential sent a postback (empty for browser reports and for
    // records older than format 4).
    "advertiser",
    // A program edit's or an operator decision's author (`X-Tally-Actor`), and what it put
    // or decided, as JSON (decisions 0046, 0047).
    "actor",
    "edit",
    "decision",
    // A conversion's customer (record format 5): `customer`, the pseudonym recurring
    // commissions join on (32 hex digits), and `customer_id`, the merchant's own ID,
    // personal data like `ip` (empty once erased).
    "customer",
    "customer_id",
    // A click's signals (record format 6; empty in older clicks): what the edge made of
    // the request. `asn` is left empty when unknown.
    "country",
    "region",
    "asn",
    "device",
    "os",
    "browser",
    "language",
    "route",
];

/// One event as `(column, value)` pairs, in [`COLUMNS`] order, for the columns it has.
/// `personal` is what its record holds of its personal fields.
pub fn row(seq: u64, event: &Event, personal: Personal) -> Vec<(&'static str, Value)> {
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
        Event::ProgramEdit(p) => {
            r.push(("program_digest", p.digest.as_str().into()));
        }
        Event::Decision(_) => {}
    }
    r.push(("time", tally_model::time::format_ts(event.ts_ms()).into()));
    match event {
        Event::Click(c) => {
            r.push(("visitor", format!("{:016x}", c.visitor).into()));
            r.push(("personal", personal.as_str().into()));
        }
        Event::Conversion(c) => {
            r.push(("personal", personal.as_str().into()));
            r.push(("advertiser", c.advertiser.as_str().into()));
            r.push(("customer", c.customer.as_ref().map(|k| k.key.to_hex()).unwrap_or_default().into()));
            r.push(("customer_id", c.customer.as_ref().map_or("", |k| k.id.as_str()).into()));
        }
        Event::ProgramChange(_) => {}
        Event::ProgramEdit(p) => {
            r.push(("actor", p.actor.as_str().into()));
            r.push(("edit", p.edit.as_str().into()));
        }
        Event::Decision(d) => {
            r.push(("actor", d.actor.as_str().into()));
            r.push(("decision", d.decision.as_str().into()));
        }
    }
    if let Event::Click(c) = event {
        let g = &c.signals;
        r.push(("country", g.country.as_str().into()));
        r.push(("region", g.region.as_str().into()));
        if g.asn != 0 {
            r.push(("asn", u64::from(g.asn).into()));
        }
        r.push(("device", g.device.as_str().into()));
        r.push(("os", g.os.as_str().into()));
        r.push(("browser", g.browser.as_str().into()));
        r.push(("language", g.language.as_str().into()));
        r.push(("route", g.route.as_str().into()));
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
    "time",
    "visitor",
    "personal",
    "country",
    "region",
    "asn",
    "device",
    "os",
    "browser",
    "language",
    "route",
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
    "time",
    "personal",
    "advertiser",
    "customer",
    "customer_id",
];

/// What to export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum What {
    Events,
    Clicks,
    Conversions,
    Commissions,
}

impl What {
    /// The export's name: `tally export`'s subcommand, and a Parquet file's schema name.
    pub fn name(self) -> &'static str {
        match self {
            What::Events => "events",
            What::Clicks => "clicks",
            What::Conversions => "conversions",
            What::Commissions => "commissions",
        }
    }

    /// The export's columns, in order.
    pub fn columns(self) -> &'static [&'static str] {
        match self {
            What::Events => COLUMNS,
            What::Clicks => CLICK_COLUMNS,
            What::Conversions => CONVERSION_COLUMNS,
            What::Commissions => crate::digest::COLUMNS,
        }
    }

    /// The one event type of a typed log export.
    fn only(self) -> Option<EventKind> {
        match self {
            What::Clicks => Some(EventKind::Click),
            What::Conversions => Some(EventKind::Conversion),
            What::Events | What::Commissions => None,
        }
    }
}

/// What an export reads, opened: the log, or for commissions the attribution state, each as a
/// secondary (safe while a server runs).
pub struct Source {
    what: What,
    reader: Reader,
}

enum Reader {
    Log(LogReader),
    // Boxed: a ledger reader is over ten times the size of a log reader.
    Ledger(Box<LedgerReader>),
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source").field("what", &self.what).finish_non_exhaustive()
    }
}

/// What an export wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Exported {
    pub rows: u64,
    /// Log records skipped because they do not decode (`tally verify` finds why).
    pub undecodable: u64,
}

impl Source {
    /// Opens what `what` reads in `data_dir`. Open it before creating the output, so a bad
    /// data directory leaves an existing output file untouched.
    pub fn open(what: What, data_dir: &Path) -> Result<Source, ExportError> {
        let reader = match what {
            What::Commissions => Reader::Ledger(Box::new(LedgerReader::open(&tally_attribution::state_dir(data_dir))?)),
            What::Events | What::Clicks | What::Conversions => Reader::Log(LogReader::open_secondary(data_dir)?),
        };
        Ok(Source { what, reader })
    }

    pub fn what(&self) -> What {
        self.what
    }

    /// Writes the rows in `range`, in sequence order, to `sink` and finishes it. A log record
    /// that does not decode is passed to `undecodable` and skipped, so one bad record does not
    /// hide the rest; the count is in the result.
    pub fn export<W: Write>(
        &self,
        range: &Range,
        sink: Sink<W>,
        undecodable: impl FnMut(u64, &RecordError),
    ) -> Result<Exported, ExportError> {
        self.export_progress(range, sink, undecodable, |_| {})
    }

    /// [`Source::export`], calling `progress(seq)` with the sequence number of each record or
    /// entry read (written or not), for a caller that shows how far a long export has got.
    pub fn export_progress<W: Write>(
        &self,
        range: &Range,
        mut sink: Sink<W>,
        mut undecodable: impl FnMut(u64, &RecordError),
        mut progress: impl FnMut(u64),
    ) -> Result<Exported, ExportError> {
        let mut done = Exported::default();
        match &self.reader {
            Reader::Log(reader) => {
                let only = self.what.only();
                for item in reader.iter_from(range.first_seq()) {
                    let (seq, record) = item?;
                    if range.ended(seq) {
                        break;
                    }
                    progress(seq);
                    // The kind byte is enough to skip other types without decoding them.
                    if let (Some(kind), Ok(got)) = (only, tally_model::record::peek_kind(&record)) {
                        if got != kind {
                            continue;
                        }
                    }
                    match tally_model::decode_personal(&record) {
                        Ok((event, personal)) if range.contains(seq, event.ts_ms()) => {
                            sink.write(&row(seq, &event, personal))?;
                            done.rows += 1;
                        }
                        Ok(_) => {}
                        Err(e) => {
                            done.undecodable += 1;
                            undecodable(seq, &e);
                        }
                    }
                }
            }
            Reader::Ledger(state) => {
                for entry in state.entries() {
                    let entry = entry?;
                    // Entries iterate in sequence order, so a sequence bound can stop early.
                    if range.ended(entry.id.seq) {
                        break;
                    }
                    progress(entry.id.seq);
                    if range.contains(entry.id.seq, entry.ts_ms) {
                        sink.write(&crate::digest::row(&entry))?;
                        done.rows += 1;
                    }
                }
            }
        }
        sink.finish()?;
        Ok(done)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Log(#[from] tally_log::LogError),
    #[error(transparent)]
    Attribution(#[from] tally_attribution::AttributionError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Csv(#[from] csv::Error),
    #[cfg(feature = "parquet")]
    #[error(transparent)]
    Parquet(#[from] ::parquet::errors::ParquetError),
    #[cfg(feature = "parquet")]
    #[error("Parquet schema")]
    ParquetSchema(#[source] ::parquet::errors::ParquetError),
    #[cfg(feature = "parquet")]
    #[error("the Parquet schema has fewer columns than the export")]
    ParquetColumns,
    /// A row a Parquet file's schema cannot hold (`row` counts from 1); the export stops.
    #[error("row {row}: {reason}")]
    Row { row: u64, reason: String },
    #[error("this build has no Parquet support (cargo feature `parquet` of tally-audit)")]
    NoParquet,
}

/// Whether `e` comes from writing to a pipe whose reader has closed it (`tally export events |
/// head`), under whichever encoder was writing. Rust ignores SIGPIPE, so this arrives as an
/// error; walk an error's chain with it.
pub fn is_broken_pipe(e: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind::BrokenPipe;
    // Transparent variants leave their inner error out of the chain: look inside.
    let e: &(dyn std::error::Error + 'static) = match e.downcast_ref::<ExportError>() {
        Some(ExportError::Io(io)) => io,
        Some(ExportError::Json(json)) => json,
        Some(ExportError::Csv(csv)) => csv,
        Some(_) => return false,
        None => e,
    };
    if let Some(io) = e.downcast_ref::<std::io::Error>() {
        return io.kind() == BrokenPipe;
    }
    if let Some(json) = e.downcast_ref::<serde_json::Error>() {
        return json.io_error_kind() == Some(BrokenPipe);
    }
    if let Some(csv) = e.downcast_ref::<csv::Error>() {
        return matches!(csv.kind(), csv::ErrorKind::Io(io) if io.kind() == BrokenPipe);
    }
    false
}

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
            visitor: 0,
            // A known ASN: an unknown one leaves its cell out.
            signals: tally_model::Signals { asn: 1, ..Default::default() },
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
            advertiser: String::new(),
            customer: None,
        });
        for (event, columns) in [(click, CLICK_COLUMNS), (conversion, CONVERSION_COLUMNS)] {
            let keys: Vec<&str> =
                row(7, &event, Personal::Present).into_iter().map(|(k, _)| k).filter(|k| *k != "type").collect();
            assert_eq!(keys, columns);
            // In COLUMNS order, so the CSV writer's single forward walk finds every cell.
            let in_order: Vec<&str> = COLUMNS.iter().copied().filter(|c| columns.contains(c)).collect();
            assert_eq!(in_order, columns);
        }
    }

    #[test]
    fn a_broken_pipe_is_found_inside_export_errors_and_alone() {
        use std::io::{Error, ErrorKind};
        let pipe = || Error::from(ErrorKind::BrokenPipe);
        for e in [
            ExportError::Io(pipe()),
            ExportError::Json(serde_json::Error::io(pipe())),
            ExportError::Csv(csv::Error::from(pipe())),
        ] {
            assert!(is_broken_pipe(&e), "{e:?}");
        }
        assert!(is_broken_pipe(&pipe()) && is_broken_pipe(&csv::Error::from(pipe())));
        assert!(!is_broken_pipe(&ExportError::Io(Error::from(ErrorKind::PermissionDenied))));
        assert!(!is_broken_pipe(&ExportError::Row { row: 1, reason: "broken pipe".into() }));
    }
}
