//! `tally export events|clicks|conversions|commissions`: the raw log, or the commission
//! ledger, as JSON lines or CSV, streamed in constant memory from secondary instances, so it
//! works on a running server's directory.
//!
//! Event columns (CSV header, and the keys of each JSON object) are listed in [`COLUMNS`]; a
//! field that does not apply to an event's type is empty in CSV and absent in JSON. The typed
//! exports have only their type's columns ([`CLICK_COLUMNS`], [`CONVERSION_COLUMNS`],
//! `ledger::COMMISSION_COLUMNS`), so no column is always empty.
//!
//! `--from` / `--to` take a sequence number or a UTC time and select the half-open range
//! `from <= x < to`, so consecutive exports (`--to X`, then `--from X`) tile without
//! overlap or gap. A sequence bound compares with the event's sequence (for commissions, the
//! sequence of the conversion that made the entry); a time bound with its event time
//! (`ts_ms`). A time bound scans the whole log: event times follow the edges' clocks and are
//! not ordered by sequence.
//!
//! `--out FILE` writes to a file instead of standard output. `--format parquet` (cargo
//! feature `parquet`) needs it: Parquet is binary and is written only to a file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use serde_json::Value;
use tally_log::LogReader;
use tally_model::EventKind;

pub use tally_audit::export::{row, CLICK_COLUMNS, COLUMNS, CONVERSION_COLUMNS};

/// What to export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum What {
    Events,
    Clicks,
    Conversions,
    Commissions,
}

/// One end of an export range: the same bounds as `tally replay` takes.
pub use tally_audit::Bound;

/// The half-open range `from <= x < to` selected by `--from` / `--to`; see the module docs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Range {
    pub from: Option<Bound>,
    pub to: Option<Bound>,
}

impl Range {
    pub fn parse(from: Option<&str>, to: Option<&str>) -> anyhow::Result<Range> {
        let bound = |flag: &str, v: Option<&str>| -> anyhow::Result<Option<Bound>> {
            v.map(|s| {
                parse_bound(s).with_context(|| {
                    format!(
                        "{flag}: \"{s}\" is not a sequence number, a UTC date (2026-11-23) or a UTC time (2026-11-23T14:05:00Z)"
                    )
                })
            })
            .transpose()
        };
        let range = Range { from: bound("--from", from)?, to: bound("--to", to)? };
        match (range.from, range.to) {
            (Some(Bound::Seq(a)), Some(Bound::Seq(b))) | (Some(Bound::Time(a)), Some(Bound::Time(b))) if a >= b => {
                anyhow::bail!(
                    "--from {} is not before --to {}: the range is empty (--to is exclusive)",
                    from.unwrap_or_default(),
                    to.unwrap_or_default()
                )
            }
            _ => Ok(range),
        }
    }

    /// The first sequence number that can be in the range.
    fn first_seq(&self) -> u64 {
        match self.from {
            Some(Bound::Seq(s)) => s,
            _ => 1,
        }
    }

    /// Whether nothing at or after `seq` can be in the range.
    fn ended(&self, seq: u64) -> bool {
        matches!(self.to, Some(Bound::Seq(to)) if seq >= to)
    }

    fn contains(&self, seq: u64, ts_ms: u64) -> bool {
        let after_from = match self.from {
            None => true,
            Some(Bound::Seq(s)) => seq >= s,
            Some(Bound::Time(t)) => ts_ms >= t,
        };
        let before_to = match self.to {
            None => true,
            Some(Bound::Seq(s)) => seq < s,
            Some(Bound::Time(t)) => ts_ms < t,
        };
        after_from && before_to
    }
}

/// Digits are a sequence number; `YYYY-MM-DD` is midnight UTC; `YYYY-MM-DDTHH:MM:SS[.fff]Z`
/// an RFC 3339 UTC time. Other offsets are refused rather than guessed at.
fn parse_bound(s: &str) -> Option<Bound> {
    Bound::parse(s)
}

/// The output format of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Jsonl,
    Csv,
    /// Needs the cargo feature `parquet` and an output file.
    Parquet,
}

/// How to get a binary that writes Parquet; named by the error of a binary that cannot.
pub const PARQUET_BUILD: &str = "cargo build --release --features tally-cli/parquet";

/// The cells of `row` for `columns`, in order, `None` where the row has none. `row` lists its
/// cells in [`COLUMNS`] order, some missing and some (`type`) perhaps not wanted, so one
/// forward walk finds every wanted cell.
fn cells<'r>(columns: &'r [&str], row: &'r [(&'static str, Value)]) -> impl Iterator<Item = Option<&'r Value>> {
    let mut pos = 0;
    columns.iter().map(move |c| {
        let j = row[pos..].iter().position(|(k, _)| k == c)?;
        pos += j + 1;
        Some(&row[pos - 1].1)
    })
}

/// Streams rows as CSV (header first), JSON lines or Parquet, with only `columns`.
enum Sink<W: Write> {
    // Boxed: the csv writer is large, and there is one sink per export.
    Csv(Box<csv::Writer<W>>),
    Jsonl(W),
    #[cfg(feature = "parquet")]
    Parquet(Box<crate::parquet_out::Writer>),
}

impl<W: Write> Sink<W> {
    fn new(out: W, csv: bool, columns: &[&str]) -> anyhow::Result<Sink<W>> {
        Ok(if csv {
            let mut w = csv::Writer::from_writer(out);
            w.write_record(columns)?;
            Sink::Csv(Box::new(w))
        } else {
            Sink::Jsonl(out)
        })
    }

    fn write(&mut self, columns: &[&str], row: &[(&'static str, Value)]) -> anyhow::Result<()> {
        match self {
            Sink::Csv(w) => {
                for cell in cells(columns, row) {
                    match cell {
                        Some(Value::String(s)) => w.write_field(s)?,
                        Some(other) => w.write_field(other.to_string())?,
                        None => w.write_field("")?,
                    }
                }
                w.write_record(None::<&[u8]>)?;
            }
            Sink::Jsonl(out) => {
                out.write_all(b"{")?;
                let mut first = true;
                for (k, v) in row.iter().filter(|(k, _)| columns.contains(k)) {
                    if !first {
                        out.write_all(b",")?;
                    }
                    first = false;
                    serde_json::to_writer(&mut *out, k)?;
                    out.write_all(b":")?;
                    serde_json::to_writer(&mut *out, v)?;
                }
                out.write_all(b"}\n")?;
            }
            #[cfg(feature = "parquet")]
            Sink::Parquet(w) => w.push(cells(columns, row))?,
        }
        Ok(())
    }

    fn finish(self) -> anyhow::Result<()> {
        match self {
            Sink::Csv(mut w) => w.flush()?,
            Sink::Jsonl(mut out) => out.flush()?,
            #[cfg(feature = "parquet")]
            Sink::Parquet(w) => w.finish()?,
        }
        Ok(())
    }
}

impl What {
    #[cfg_attr(not(feature = "parquet"), allow(dead_code))]
    fn name(self) -> &'static str {
        match self {
            What::Events => "events",
            What::Clicks => "clicks",
            What::Conversions => "conversions",
            What::Commissions => "commissions",
        }
    }
}

/// Where an export goes: standard output or `--out FILE`, and in which format.
#[derive(Debug)]
struct Target {
    format: Format,
    #[cfg_attr(not(feature = "parquet"), allow(dead_code))]
    what: What,
    out: Option<PathBuf>,
    /// Whether `out` was created (so a failed export removes it).
    created: bool,
}

impl Target {
    /// Checks the format and output before any work; the file is created by [`Target::sink`],
    /// once the data directory has opened.
    fn new(format: Format, what: What, out: Option<&Path>) -> anyhow::Result<Target> {
        let out = out.filter(|p| p.as_os_str() != "-");
        if format == Format::Parquet {
            if !cfg!(feature = "parquet") {
                anyhow::bail!(
                    "this tally was built without Parquet support; build it with `{PARQUET_BUILD}` \
                     (or export with --format csv or jsonl)"
                );
            }
            if out.is_none() {
                anyhow::bail!("--format parquet writes a binary file, not to standard output: give --out FILE");
            }
        }
        Ok(Target { format, what, out: out.map(Path::to_owned), created: false })
    }

    fn sink(&mut self, columns: &'static [&'static str]) -> anyhow::Result<Sink<Box<dyn Write>>> {
        let file = match &self.out {
            Some(path) => {
                let f = std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
                self.created = true;
                if self.format == Format::Parquet && std::io::IsTerminal::is_terminal(&f) {
                    anyhow::bail!("--out {} is a terminal: Parquet is binary, write it to a file", path.display());
                }
                Some(f)
            }
            None => None,
        };
        if self.format == Format::Parquet {
            #[cfg(feature = "parquet")]
            if let Some(f) = file {
                return Ok(Sink::Parquet(Box::new(crate::parquet_out::Writer::new(f, self.what.name(), columns)?)));
            }
            anyhow::bail!("--format parquet needs --out FILE");
        }
        let out: Box<dyn Write> = match file {
            Some(f) => Box::new(std::io::BufWriter::with_capacity(1 << 16, f)),
            None => Box::new(std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock())),
        };
        Sink::new(out, self.format == Format::Csv, columns)
    }
}

/// Runs an export to standard output or `out`. A file left by a failed export is removed,
/// so a file that exists is complete (a Parquet file without its footer is unreadable).
pub fn export(
    what: What,
    data_dir: &Path,
    range: &Range,
    format: Format,
    out: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let mut target = Target::new(format, what, out)?;
    let result = run(what, data_dir, range, &mut target);
    if let (Err(_), true, Some(path)) = (&result, target.created, &target.out) {
        if path.is_file() {
            let _ = std::fs::remove_file(path);
        }
    }
    result
}

fn run(what: What, data_dir: &Path, range: &Range, target: &mut Target) -> anyhow::Result<ExitCode> {
    if what == What::Commissions {
        return commissions(data_dir, range, target);
    }
    let (columns, only) = match what {
        What::Clicks => (CLICK_COLUMNS, Some(EventKind::Click)),
        What::Conversions => (CONVERSION_COLUMNS, Some(EventKind::Conversion)),
        _ => (COLUMNS, None),
    };
    let reader = LogReader::open_secondary(data_dir)?;
    let mut sink = target.sink(columns)?;
    let mut bad = 0u64;
    for item in reader.iter_from(range.first_seq()) {
        let (seq, record) = item?;
        if range.ended(seq) {
            break;
        }
        // The kind byte is enough to skip other types without decoding them.
        if let (Some(kind), Ok(got)) = (only, tally_model::record::peek_kind(&record)) {
            if got != kind {
                continue;
            }
        }
        match tally_model::decode(&record) {
            Ok(event) if range.contains(seq, event.ts_ms()) => sink.write(columns, &row(seq, &event))?,
            Ok(_) => {}
            Err(e) => {
                bad += 1;
                eprintln!("tally: sequence {seq} does not decode: {e}");
            }
        }
    }
    sink.finish()?;
    if bad > 0 {
        eprintln!("tally: {bad} record(s) could not be decoded; run `tally verify`");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn commissions(data_dir: &Path, range: &Range, target: &mut Target) -> anyhow::Result<ExitCode> {
    let state = tally_attribution::LedgerReader::open(&tally_attribution::state_dir(data_dir))?;
    let columns = crate::ledger::COMMISSION_COLUMNS;
    let mut sink = target.sink(columns)?;
    for entry in state.entries() {
        let entry = entry?;
        // Entries iterate in sequence order, so a sequence bound can stop early.
        if range.ended(entry.id.seq) {
            break;
        }
        if range.contains(entry.id.seq, entry.ts_ms) {
            sink.write(columns, &crate::ledger::commission_row(&entry))?;
        }
    }
    sink.finish()?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bounds_parse_sequences_dates_and_utc_times() {
        assert_eq!(parse_bound("42"), Some(Bound::Seq(42)));
        assert_eq!(parse_bound("1970-01-02"), Some(Bound::Time(86_400_000)));
        assert_eq!(parse_bound("2026-11-23T14:05:09Z"), Some(Bound::Time(1_795_442_709_000)));
        assert_eq!(parse_bound("2026-11-23T14:05:09.5Z"), Some(Bound::Time(1_795_442_709_500)));
        for bad in [
            "",
            "-1",
            "x",
            "2026-13-01",
            "2026-11-23T14:05:09",
            "2026-11-23T14:05:09+01:00",
            "2026-11-23T24:00:00Z",
            "2026-11-23T1:05:09Z",
            "2026-11-23T14:05:09.1234Z",
            "99999999999999999999999",
        ] {
            assert_eq!(parse_bound(bad), None, "{bad}");
        }
    }

    #[test]
    fn ranges_are_half_open_and_name_bad_values() {
        let r = Range::parse(Some("10"), Some("20")).unwrap();
        assert!(r.contains(10, 0) && r.contains(19, 0) && !r.contains(20, 0) && !r.contains(9, 0));
        assert!(r.ended(20) && !r.ended(19));
        let r = Range::parse(Some("1970-01-02"), Some("1970-01-03")).unwrap();
        assert!(r.contains(1, 86_400_000) && !r.contains(1, 2 * 86_400_000) && !r.contains(1, 86_399_999));
        let e = format!("{:#}", Range::parse(Some("yesterday"), None).unwrap_err());
        assert!(e.contains("--from") && e.contains("\"yesterday\""), "{e}");
        let e = format!("{:#}", Range::parse(None, Some("2026-11-23T14:05")).unwrap_err());
        assert!(e.contains("--to") && e.contains("2026-11-23T14:05"), "{e}");
        let e = format!("{:#}", Range::parse(Some("5"), Some("5")).unwrap_err());
        assert!(e.contains("empty"), "{e}");
    }

    #[test]
    fn csv_rows_skip_unwanted_cells_and_leave_missing_ones_empty() {
        let mut out = Vec::new();
        let mut sink = Sink::new(&mut out, true, &["seq", "ts_ms", "link", "flags"]).unwrap();
        let row = [("seq", Value::from(1)), ("type", "click".into()), ("ts_ms", 5.into()), ("flags", 2.into())];
        sink.write(&["seq", "ts_ms", "link", "flags"], &row).unwrap();
        sink.finish().unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "seq,ts_ms,link,flags\n1,5,,2\n");
        let mut out = Vec::new();
        let mut sink = Sink::new(&mut out, false, &["seq", "flags"]).unwrap();
        sink.write(&["seq", "flags"], &row).unwrap();
        sink.finish().unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "{\"seq\":1,\"flags\":2}\n");
    }
}
