//! Parquet exports (cargo feature `parquet`; `tally export ... --format parquet --out FILE`):
//! the same columns, in the same order, as the CSV of each export, written through the `parquet` crate's
//! low-level column API (no Arrow; see docs/decisions/0031-parquet-without-arrow-behind-a-feature.md).
//!
//! Types: the integer columns ([`int_column`]) are INT64; every other column is a UTF-8
//! string (BYTE_ARRAY, STRING logical type), money included, as the exact decimal string of
//! the CSV. A cell that is empty in CSV is null in Parquet, so the other columns are
//! OPTIONAL; `seq` and `ts_ms`, which every row has, are REQUIRED.
//!
//! Rows are buffered per column and written one row group at a time ([`ROW_GROUP_ROWS`] rows,
//! or fewer once [`ROW_GROUP_BYTES`] of cell data are buffered), so memory stays bounded
//! whatever the size of the export.

use std::fs::File;
use std::io::BufWriter;
use std::sync::Arc;

use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use serde_json::Value;

use super::{ExportError, What};

/// Rows per row group: large enough for good compression and scans, small enough that a
/// group of clicks (a few hundred bytes each) stays in the tens of megabytes.
pub const ROW_GROUP_ROWS: usize = 64 * 1024;
/// A row group is also closed once this much cell data is buffered (long user agents).
pub const ROW_GROUP_BYTES: usize = 64 << 20;

/// Whether `name` is an integer column of the export `what`, and if so whether every row has
/// it (REQUIRED) or it may be empty (OPTIONAL).
pub fn int_column(what: What, name: &str) -> Option<Required> {
    match name {
        "seq" | "ts_ms" => Some(Required::Yes),
        // Every click has flags; in the events export, other types leave it empty.
        "flags" if what == What::Clicks => Some(Required::Yes),
        // `asn` is left out of a row when unknown (0).
        "flags" | "approve_at_ms" | "approved_seq" | "reversed_by" | "asn" => Some(Required::No),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Required {
    Yes,
    No,
}

/// The Parquet schema (message type) of an export with `columns`.
pub fn schema(what: What, columns: &[&str]) -> String {
    let mut s = format!("message {} {{\n", what.name());
    for c in columns {
        match int_column(what, c) {
            Some(Required::Yes) => s.push_str(&format!("  REQUIRED INT64 {c};\n")),
            Some(Required::No) => s.push_str(&format!("  OPTIONAL INT64 {c};\n")),
            None => s.push_str(&format!("  OPTIONAL BYTE_ARRAY {c} (STRING);\n")),
        }
    }
    s.push('}');
    s
}

#[derive(Debug)]
enum Values {
    Int(Vec<i64>),
    Str(Vec<ByteArray>),
}

#[derive(Debug)]
struct Column {
    name: &'static str,
    required: bool,
    values: Values,
    /// Definition levels (1 = a value, 0 = null); unused for REQUIRED columns.
    defs: Vec<i16>,
}

/// Streams rows into a Parquet file, one row group at a time.
pub struct Writer {
    file: SerializedFileWriter<BufWriter<File>>,
    columns: Vec<Column>,
    rows: usize,
    bytes: usize,
    group_rows: usize,
    /// Rows pushed so far, to name a bad one.
    written: u64,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").field("columns", &self.columns.len()).field("rows", &self.rows).finish()
    }
}

impl Writer {
    /// `what` names the schema and decides which columns are REQUIRED ([`int_column`]).
    pub fn new(out: File, what: What, columns: &[&'static str]) -> Result<Writer, ExportError> {
        let schema = Arc::new(parse_message_type(&schema(what, columns)).map_err(ExportError::ParquetSchema)?);
        let props = WriterProperties::builder()
            // Snappy: pure Rust, fast, and read by every Parquet reader.
            .set_compression(Compression::SNAPPY)
            .set_created_by(format!("tally {}", env!("CARGO_PKG_VERSION")))
            .set_key_value_metadata(Some(vec![KeyValue::new("tally.export".to_owned(), what.name().to_owned())]))
            .build();
        let file = SerializedFileWriter::new(BufWriter::with_capacity(1 << 20, out), schema, Arc::new(props))?;
        let columns = columns
            .iter()
            .map(|&name| {
                let int = int_column(what, name);
                Column {
                    name,
                    required: int == Some(Required::Yes),
                    values: if int.is_some() { Values::Int(Vec::new()) } else { Values::Str(Vec::new()) },
                    defs: Vec::new(),
                }
            })
            .collect();
        Ok(Writer { file, columns, rows: 0, bytes: 0, group_rows: ROW_GROUP_ROWS, written: 0 })
    }

    /// Adds one row: `cells` has one entry per column, in order (`None` for a missing cell).
    pub fn push<'a>(&mut self, cells: impl Iterator<Item = Option<&'a Value>>) -> Result<(), ExportError> {
        self.written += 1;
        let row = self.written;
        let mut n = 0;
        for (col, cell) in self.columns.iter_mut().zip(cells) {
            n += 1;
            let present = match (&mut col.values, cell) {
                (Values::Int(v), Some(cell)) => match int_of(cell) {
                    Some(Some(i)) => {
                        v.push(i);
                        true
                    }
                    Some(None) => false,
                    None => return Err(bad(row, format!("{} is not an integer: {cell}", col.name))),
                },
                (Values::Str(v), Some(Value::String(s))) if !s.is_empty() => {
                    self.bytes += s.len();
                    v.push(ByteArray::from(s.as_bytes().to_vec()));
                    true
                }
                (Values::Str(v), Some(cell @ (Value::Number(_) | Value::Bool(_)))) => {
                    v.push(ByteArray::from(cell.to_string().into_bytes()));
                    true
                }
                (_, _) => false,
            };
            if col.required {
                if !present {
                    return Err(bad(row, format!("the required column {} is empty", col.name)));
                }
            } else {
                col.defs.push(i16::from(present));
            }
            self.bytes += 8;
        }
        if n != self.columns.len() {
            return Err(bad(row, format!("{n} cells for {} columns", self.columns.len())));
        }
        self.rows += 1;
        if self.rows >= self.group_rows || self.bytes >= ROW_GROUP_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes the buffered rows as one row group.
    fn flush(&mut self) -> Result<(), ExportError> {
        if self.rows == 0 {
            return Ok(());
        }
        let mut group = self.file.next_row_group()?;
        for col in &mut self.columns {
            let mut w = group.next_column()?.ok_or(ExportError::ParquetColumns)?;
            let defs = (!col.required).then_some(col.defs.as_slice());
            match &mut col.values {
                Values::Int(v) => {
                    w.typed::<Int64Type>().write_batch(v, defs, None)?;
                    v.clear();
                }
                Values::Str(v) => {
                    w.typed::<ByteArrayType>().write_batch(v, defs, None)?;
                    v.clear();
                }
            }
            w.close()?;
            col.defs.clear();
        }
        group.close()?;
        self.rows = 0;
        self.bytes = 0;
        Ok(())
    }

    /// Writes the last row group and the footer; the file is complete only after this.
    pub fn finish(mut self) -> Result<(), ExportError> {
        self.flush()?;
        let mut out = self.file.into_inner()?;
        std::io::Write::flush(&mut out)?;
        Ok(())
    }
}

fn bad(row: u64, reason: String) -> ExportError {
    ExportError::Row { row, reason }
}

/// An integer cell: a JSON number, or a decimal string (optional ledger fields); `Some(None)`
/// for an empty cell, `None` for anything else.
fn int_of(v: &Value) -> Option<Option<i64>> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| n.as_u64().and_then(|u| i64::try_from(u).ok())).map(Some),
        Value::String(s) if s.is_empty() => Some(None),
        Value::String(s) => s.parse::<i64>().ok().map(Some),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parquet_schema_types_integers_and_strings() {
        let s = schema(What::Clicks, &["seq", "ts_ms", "click_id", "flags"]);
        assert_eq!(
            s,
            "message clicks {\n  REQUIRED INT64 seq;\n  REQUIRED INT64 ts_ms;\n  OPTIONAL BYTE_ARRAY click_id (STRING);\n  REQUIRED INT64 flags;\n}"
        );
        assert!(parse_message_type(&s).is_ok());
        assert_eq!(int_column(What::Events, "flags"), Some(Required::No));
        assert_eq!(int_column(What::Commissions, "approved_seq"), Some(Required::No));
        assert_eq!(int_column(What::Commissions, "amount"), None);
        assert_eq!(int_of(&Value::from("12")), Some(Some(12)));
        assert_eq!(int_of(&Value::from("")), Some(None));
        assert_eq!(int_of(&Value::from("1.5")), None);
    }

    #[test]
    fn parquet_rows_stream_in_row_groups_with_nulls_for_empty_cells() {
        use parquet::file::reader::{FileReader, SerializedFileReader};
        use parquet::record::Field;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        let columns: &[&'static str] = &["seq", "ts_ms", "amount", "approved_seq"];
        let mut w = Writer::new(File::create(&path).unwrap(), What::Commissions, columns).unwrap();
        w.group_rows = 3;
        for seq in 1..=7u64 {
            let row = [
                Value::from(seq),
                Value::from(1000 + seq),
                Value::from(if seq % 2 == 0 { String::new() } else { format!("{seq}.05") }),
                Value::from(if seq % 3 == 0 { (seq * 10).to_string() } else { String::new() }),
            ];
            w.push(row.iter().map(Some)).unwrap();
        }
        w.finish().unwrap();

        let reader = SerializedFileReader::new(File::open(&path).unwrap()).unwrap();
        assert_eq!(reader.metadata().num_row_groups(), 3);
        let rows: Vec<Vec<Field>> = reader
            .get_row_iter(None)
            .unwrap()
            .map(|r| r.unwrap().get_column_iter().map(|(_, f)| f.clone()).collect())
            .collect();
        assert_eq!(rows.len(), 7);
        assert_eq!(rows[0], [Field::Long(1), Field::Long(1001), Field::Str("1.05".into()), Field::Null]);
        assert_eq!(rows[1], [Field::Long(2), Field::Long(1002), Field::Null, Field::Null]);
        assert_eq!(rows[2], [Field::Long(3), Field::Long(1003), Field::Str("3.05".into()), Field::Long(30)]);

        // A required column left empty is refused, naming it (the export then fails and its
        // file is removed).
        let mut w =
            Writer::new(File::create(dir.path().join("bad.parquet")).unwrap(), What::Commissions, columns).unwrap();
        let bad = [Value::from(8), Value::from(""), Value::from(""), Value::from("")];
        let e = w.push(bad.iter().map(Some)).unwrap_err().to_string();
        assert!(e.contains("ts_ms"), "{e}");
    }
}
