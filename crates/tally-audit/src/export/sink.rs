//! Where export rows go: CSV (header first), JSON lines or Parquet, each with only its
//! export's columns. A cell missing from a row is empty in CSV, absent in JSON and null in
//! Parquet.

use std::fs::File;
use std::io::Write;

use serde_json::Value;

use super::{ExportError, What};

/// Streams rows into one output; [`Sink::finish`] completes it (a Parquet file without its
/// footer is unreadable).
pub struct Sink<W: Write> {
    columns: &'static [&'static str],
    out: Out<W>,
}

enum Out<W: Write> {
    // Boxed: the csv writer is large, and there is one sink per export.
    Csv(Box<csv::Writer<W>>),
    Jsonl(W),
    #[cfg(feature = "parquet")]
    Parquet(Box<super::parquet::Writer>),
}

impl<W: Write> std::fmt::Debug for Sink<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let format = match &self.out {
            Out::Csv(_) => "csv",
            Out::Jsonl(_) => "jsonl",
            #[cfg(feature = "parquet")]
            Out::Parquet(_) => "parquet",
        };
        f.debug_struct("Sink").field("format", &format).field("columns", &self.columns).finish()
    }
}

impl<W: Write> Sink<W> {
    /// CSV with `columns`; writes the header now.
    pub fn csv(out: W, columns: &'static [&'static str]) -> Result<Sink<W>, ExportError> {
        let mut w = csv::Writer::from_writer(out);
        w.write_record(columns)?;
        Ok(Sink { columns, out: Out::Csv(Box::new(w)) })
    }

    /// One JSON object per line, with the row's cells among `columns`.
    pub fn jsonl(out: W, columns: &'static [&'static str]) -> Sink<W> {
        Sink { columns, out: Out::Jsonl(out) }
    }

    /// A Parquet file with the columns of `what` (types: the `parquet` module). Binary, so only
    /// to a file; [`ExportError::NoParquet`] unless built with the cargo feature `parquet`.
    pub fn parquet(out: File, what: What) -> Result<Sink<W>, ExportError> {
        #[cfg(feature = "parquet")]
        {
            let columns = what.columns();
            Ok(Sink { columns, out: Out::Parquet(Box::new(super::parquet::Writer::new(out, what, columns)?)) })
        }
        #[cfg(not(feature = "parquet"))]
        {
            let _ = (out, what);
            Err(ExportError::NoParquet)
        }
    }

    /// Writes one row: `(column, value)` pairs in [`super::COLUMNS`] order (as
    /// [`super::row`] and [`crate::digest::row`] make them), some perhaps not wanted.
    pub fn write(&mut self, row: &[(&'static str, Value)]) -> Result<(), ExportError> {
        let columns = self.columns;
        match &mut self.out {
            Out::Csv(w) => {
                for cell in cells(columns, row) {
                    match cell {
                        Some(Value::String(s)) => w.write_field(s)?,
                        Some(other) => w.write_field(other.to_string())?,
                        None => w.write_field("")?,
                    }
                }
                w.write_record(None::<&[u8]>)?;
            }
            Out::Jsonl(out) => {
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
            Out::Parquet(w) => w.push(cells(columns, row))?,
        }
        Ok(())
    }

    /// Flushes the output (and writes a Parquet file's last row group and footer).
    pub fn finish(self) -> Result<(), ExportError> {
        match self.out {
            Out::Csv(mut w) => w.flush()?,
            Out::Jsonl(mut out) => out.flush()?,
            #[cfg(feature = "parquet")]
            Out::Parquet(w) => w.finish()?,
        }
        Ok(())
    }
}

/// The cells of `row` for `columns`, in order, `None` where the row has none. `row` lists its
/// cells in [`super::COLUMNS`] order, some missing and some (`type`) perhaps not wanted, so one
/// forward walk finds every wanted cell.
fn cells<'r>(columns: &'r [&str], row: &'r [(&'static str, Value)]) -> impl Iterator<Item = Option<&'r Value>> {
    let mut pos = 0;
    columns.iter().map(move |c| {
        let j = row[pos..].iter().position(|(k, _)| k == c)?;
        pos += j + 1;
        Some(&row[pos - 1].1)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn csv_rows_skip_unwanted_cells_and_leave_missing_ones_empty() {
        let mut out = Vec::new();
        let mut sink = Sink::csv(&mut out, &["seq", "ts_ms", "link", "flags"]).unwrap();
        let row = [("seq", Value::from(1)), ("type", "click".into()), ("ts_ms", 5.into()), ("flags", 2.into())];
        sink.write(&row).unwrap();
        sink.finish().unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "seq,ts_ms,link,flags\n1,5,,2\n");
        let mut out = Vec::new();
        let mut sink = Sink::jsonl(&mut out, &["seq", "flags"]);
        sink.write(&row).unwrap();
        sink.finish().unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "{\"seq\":1,\"flags\":2}\n");
    }
}
