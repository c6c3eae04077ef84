//! `tally export events|clicks|conversions|commissions`: flags around `tally_audit::export`,
//! which reads, selects and encodes (its module docs list the columns and formats).
//!
//! `--from` / `--to` take a sequence number or a UTC time and select the half-open range
//! `from <= x < to`. `--out FILE` writes to a file instead of standard output; `--format
//! parquet` (cargo feature `parquet`) needs it, since Parquet is binary. A file left by a
//! failed export is removed, so a file that exists is complete (a Parquet file without its
//! footer is unreadable).

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use tally_audit::export::{Range, Sink, Source, What};
use tally_audit::Bound;

use crate::progress::Progress;

/// The output format of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    // No doc comments on these: clap would show them in `--help` as each value's help.
    Jsonl,
    Csv,
    Parquet,
}

/// How to get a binary that writes Parquet; named by the error of a binary that cannot.
pub const PARQUET_BUILD: &str = "cargo build --release --features tally-cli/parquet";

/// `--from` and `--to` as a range, naming the flag and value that are wrong.
pub fn range(from: Option<&str>, to: Option<&str>) -> anyhow::Result<Range> {
    let bound = |flag: &str, v: Option<&str>| -> anyhow::Result<Option<Bound>> {
        v.map(|s| {
            Bound::parse(s).with_context(|| {
                format!(
                    "{flag}: \"{s}\" is not a sequence number, a UTC date (2026-11-23) or a UTC time (2026-11-23T14:05:00Z)"
                )
            })
        })
        .transpose()
    };
    Range::new(bound("--from", from)?, bound("--to", to)?).with_context(|| {
        format!(
            "--from {} is not before --to {}: the range is empty (--to is exclusive)",
            from.unwrap_or_default(),
            to.unwrap_or_default()
        )
    })
}

/// Runs an export to standard output or `out` (`-` is standard output).
pub fn export(
    what: What,
    data_dir: &Path,
    range: &Range,
    format: Format,
    out: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let out = out.filter(|p| p.as_os_str() != "-");
    // Flag errors come first, before the data directory is opened.
    if format == Format::Parquet {
        if !tally_audit::export::PARQUET {
            anyhow::bail!(
                "this tally was built without Parquet support; build it with `{PARQUET_BUILD}` \
                 (or export with --format csv or jsonl)"
            );
        }
        if out.is_none() {
            anyhow::bail!("--format parquet writes a binary file, not to standard output: give --out FILE");
        }
    }
    // Opened before the output is created, so a bad data directory leaves an existing file.
    let source = Source::open(what, data_dir)?;
    let mut created = false;
    let result = write(&source, data_dir, range, format, out, &mut created);
    if let (Err(_), true, Some(path)) = (&result, created, out) {
        if path.is_file() {
            let _ = std::fs::remove_file(path);
        }
    }
    result
}

/// Creates the output (setting `created` once a file exists) and streams the export into it.
fn write(
    source: &Source,
    data_dir: &Path,
    range: &Range,
    format: Format,
    out: Option<&Path>,
    created: &mut bool,
) -> anyhow::Result<ExitCode> {
    let what = source.what();
    let file = match out {
        Some(path) => {
            let f = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
            *created = true;
            if format == Format::Parquet && std::io::IsTerminal::is_terminal(&f) {
                anyhow::bail!("--out {} is a terminal: Parquet is binary, write it to a file", path.display());
            }
            Some(f)
        }
        None => None,
    };
    let sink: Sink<Box<dyn Write>> = match (format, file) {
        (Format::Parquet, Some(f)) => Sink::parquet(f, what)?,
        (Format::Parquet, None) => anyhow::bail!("--format parquet needs --out FILE"),
        (Format::Jsonl | Format::Csv, file) => {
            let out: Box<dyn Write> = match file {
                Some(f) => Box::new(std::io::BufWriter::with_capacity(1 << 16, f)),
                None => Box::new(std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock())),
            };
            if format == Format::Csv {
                Sink::csv(out, what.columns())?
            } else {
                Sink::jsonl(out, what.columns())
            }
        }
    };
    let mut progress = Progress::for_log(data_dir, "export");
    let done = source.export_progress(
        range,
        sink,
        |seq, e| eprintln!("tally: sequence {seq} does not decode: {e}"),
        |seq| progress.at(seq),
    );
    progress.finish();
    let done = done?;
    if done.undecodable > 0 {
        // Trouble, not a finding: the output is incomplete, which a script must not take
        // for a whole export.
        eprintln!("tally: {} record(s) could not be decoded; run `tally verify`", done.undecodable);
        return Ok(ExitCode::from(crate::output::TROUBLE));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bad_ranges_name_the_flag_and_value() {
        assert_eq!(
            range(Some("10"), Some("20")).unwrap(),
            Range::new(Some(Bound::Seq(10)), Some(Bound::Seq(20))).unwrap()
        );
        let e = format!("{:#}", range(Some("yesterday"), None).unwrap_err());
        assert!(e.contains("--from") && e.contains("\"yesterday\""), "{e}");
        let e = format!("{:#}", range(None, Some("2026-11-23T14:05")).unwrap_err());
        assert!(e.contains("--to") && e.contains("2026-11-23T14:05"), "{e}");
        let e = format!("{:#}", range(Some("5"), Some("5")).unwrap_err());
        assert!(e.contains("empty"), "{e}");
    }
}
