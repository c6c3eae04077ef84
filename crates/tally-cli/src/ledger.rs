//! `tally commissions` and `tally report`: reading the attribution ledger and stats (safe
//! while a worker runs: the state is opened as a RocksDB secondary).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use serde_json::{Map, Value};
use tally_attribution::report::{report as build_report, GroupBy};
use tally_attribution::{LedgerReader, Status};
use tally_audit::Filter;

/// Output formats of the ledger commands.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum TableFormat {
    Table,
    Csv,
    Jsonl,
}

/// The ledger's columns and rows are the audit crate's canonical form, so what `commissions
/// --format csv` prints is exactly what the digest covers.
pub use tally_audit::digest::{row as commission_row, COLUMNS as COMMISSION_COLUMNS};

/// Columns shown by `--format table`; the others are in csv and jsonl.
const COMMISSION_TABLE: &[&str] =
    &["id", "date", "kind", "status", "reason", "affiliate", "offer", "goal", "amount", "currency", "rule"];

/// Writes rows as an aligned table, CSV or JSON lines.
fn write_rows(
    format: TableFormat,
    columns: &[&str],
    table_columns: &[&str],
    rows: impl Iterator<Item = anyhow::Result<Vec<(&'static str, Value)>>>,
) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
    let cell = |r: &[(&str, Value)], c: &str| {
        r.iter().find(|(k, _)| *k == c).map(|(_, v)| tally_audit::digest::cell(v)).unwrap_or_default()
    };
    match format {
        TableFormat::Jsonl => {
            for r in rows {
                let obj: Map<String, Value> = r?.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
                serde_json::to_writer(&mut out, &obj)?;
                out.write_all(b"\n")?;
            }
        }
        TableFormat::Csv => {
            let mut w = csv::Writer::from_writer(&mut out);
            w.write_record(columns)?;
            for r in rows {
                let r = r?;
                w.write_record(columns.iter().map(|c| cell(&r, c)))?;
            }
            w.flush()?;
        }
        TableFormat::Table => {
            // A table needs its widths before its first line, so it holds its rows; use csv
            // or jsonl for large ledgers.
            let mut cells: Vec<Vec<String>> = vec![table_columns.iter().map(|c| (*c).to_owned()).collect()];
            for r in rows {
                let r = r?;
                cells.push(table_columns.iter().map(|c| cell(&r, c)).collect());
            }
            let widths: Vec<usize> = (0..table_columns.len())
                .map(|i| cells.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
                .collect();
            for r in &cells {
                let line: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
                writeln!(out, "{}", line.join("  ").trim_end())?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

fn open_state(data_dir: &Path) -> anyhow::Result<LedgerReader> {
    Ok(LedgerReader::open(&tally_attribution::state_dir(data_dir))?)
}

pub struct CommissionsArgs {
    pub data_dir: PathBuf,
    pub affiliate: Option<String>,
    pub offer: Option<String>,
    pub status: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub format: TableFormat,
    pub digest: bool,
}

/// Parses `--from`/`--to` dates (inclusive days) into an entry-time filter.
fn date_filter(from: Option<&str>, to: Option<&str>) -> anyhow::Result<(Option<u64>, Option<u64>)> {
    let day = |flag: &str, v: &str| -> anyhow::Result<u64> {
        tally_model::time::parse_day(v)
            .map(u64::from)
            .with_context(|| format!("{flag}: \"{v}\" is not a date like 2026-11-23"))
    };
    let from_ms = from.map(|v| day("--from", v)).transpose()?.map(|d| d * tally_model::time::DAY_MS);
    let until_ms = to.map(|v| day("--to", v)).transpose()?.map(|d| (d + 1) * tally_model::time::DAY_MS);
    if let (Some(a), Some(b)) = (from_ms, until_ms) {
        if a >= b {
            anyhow::bail!("--from is after --to");
        }
    }
    Ok((from_ms, until_ms))
}

pub fn commissions(args: CommissionsArgs) -> anyhow::Result<ExitCode> {
    let status = match args.status.as_deref() {
        None => None,
        Some(s) => Some(Status::parse(s).with_context(|| {
            let all: Vec<&str> = Status::ALL.iter().map(|s| s.as_str()).collect();
            format!("--status: unknown status \"{s}\" (expected one of {})", all.join(", "))
        })?),
    };
    let (from_ms, until_ms) = date_filter(args.from.as_deref(), args.to.as_deref())?;
    let filter = Filter { affiliate: args.affiliate, offer: args.offer, from_ms, until_ms };
    let state = open_state(&args.data_dir)?;
    if args.digest {
        // Statuses change as holds pass and reversals arrive; a digest per status would not
        // be a stable thing for two parties to compare.
        if status.is_some() {
            anyhow::bail!("--digest covers entries of every status; drop --status");
        }
        let (n, digest) = tally_audit::ledger_digest(&state, &filter)?;
        println!("{n} entries up to sequence {}", state.checkpoint().position);
        println!("ledger {} {digest}", tally_audit::DIGEST_FORM);
        return Ok(ExitCode::SUCCESS);
    }
    let rows = state
        .entries()
        .filter(|e| match e {
            Ok(e) => filter.matches(e) && status.is_none_or(|s| e.status == s),
            Err(_) => true,
        })
        .map(|e| Ok(commission_row(&e?)));
    write_rows(args.format, COMMISSION_COLUMNS, COMMISSION_TABLE, rows)?;
    Ok(ExitCode::SUCCESS)
}

pub const REPORT_COLUMNS: &[&str] = &[
    "key",
    "currency",
    "clicks",
    "unique_clicks",
    "non_human_clicks",
    "conversions",
    "conversion_rate",
    "revenue",
    "payout",
    "epc",
];

pub fn report(
    data_dir: &Path,
    by: &str,
    from: Option<&str>,
    to: Option<&str>,
    tz: Option<&str>,
    format: TableFormat,
) -> anyhow::Result<ExitCode> {
    let group = GroupBy::parse(by)
        .with_context(|| format!("--by: unknown grouping \"{by}\" (expected affiliate, offer, day or sub1)"))?;
    let day = |flag: &str, v: Option<&str>, default: u32| -> anyhow::Result<u32> {
        match v {
            None => Ok(default),
            Some(s) => tally_model::time::parse_day(s)
                .with_context(|| format!("{flag}: \"{s}\" is not a date like 2026-11-23")),
        }
    };
    let (from, to) = (day("--from", from, 0)?, day("--to", to, u32::MAX)?);
    if from > to {
        anyhow::bail!("--from is after --to");
    }
    let rows = match tz {
        None => {
            let state = open_state(data_dir)?;
            build_report(&state, group, from, to)?
        }
        Some(name) => {
            let calendar = tally_model::time::Calendar::named(name).with_context(|| {
                format!("--tz: \"{name}\" is not a time zone (an IANA name such as Europe/Berlin, or UTC)")
            })?;
            let mut progress = crate::progress::Progress::for_log(data_dir, "report");
            let rows =
                tally_audit::zone_report::report_in_zone(data_dir, calendar, group, from, to, |seq| progress.at(seq))?;
            progress.finish();
            rows
        }
    };
    let by_name: &'static str = match group {
        GroupBy::Affiliate => "affiliate",
        GroupBy::Offer => "offer",
        GroupBy::Day => "day",
        GroupBy::Sub1 => "sub1",
    };
    // The key column is named after the grouping in every format.
    let lines = rows.iter().map(|r| {
        let r = r.render();
        Ok(vec![
            (by_name, r.key.into()),
            ("currency", r.currency.unwrap_or_default().into()),
            ("clicks", r.clicks.into()),
            ("unique_clicks", r.unique_clicks.into()),
            ("non_human_clicks", r.non_human_clicks.into()),
            ("conversions", r.conversions.into()),
            ("conversion_rate", r.conversion_rate.unwrap_or_default().into()),
            ("revenue", r.revenue.into()),
            ("payout", r.payout.into()),
            ("epc", r.epc.unwrap_or_default().into()),
        ])
    });
    let mut header: Vec<&str> = REPORT_COLUMNS.to_vec();
    header[0] = by_name;
    write_rows(format, &header, &header, lines)?;
    Ok(ExitCode::SUCCESS)
}
