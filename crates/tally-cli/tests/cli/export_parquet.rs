//! `tally export ... --format parquet --out FILE` (cargo feature `parquet`) against the server
//! (in-process) and RocksDB in a temp dir: every row read back with the parquet crate's
//! reader equals the CSV export's row, column by column; integer columns are INT64 and the
//! rest UTF-8 strings (money as exact decimals). The default build's refusal is tested in
//! audit_io.rs. CI runs these with `cargo test -p tally-cli --features parquet --test cli
//! parquet`, and the writer's unit tests with `cargo test -p tally-audit --features parquet
//! --lib parquet` (scripts/test).
#![cfg(feature = "parquet")]
#![allow(clippy::unwrap_used)]

use std::path::Path;

use crate::common::*;
use parquet::basic::{LogicalType, Repetition, Type as PhysicalType};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;

/// The CSV export's header and rows.
fn csv_of(args: &[&str]) -> (Vec<String>, Vec<Vec<String>>) {
    let (ok, out, err) = run(args);
    assert!(ok, "{args:?}: {err}");
    let mut r = csv::Reader::from_reader(out.as_bytes());
    let header = r.headers().unwrap().iter().map(str::to_owned).collect();
    let rows = r.records().map(|rec| rec.unwrap().iter().map(str::to_owned).collect()).collect();
    (header, rows)
}

/// A Parquet file's column names, (physical type, repetition, is-string) per column, and rows
/// as CSV cells (null is the empty cell).
type Schema = Vec<(String, PhysicalType, Repetition, bool)>;
fn parquet_of(path: &Path) -> (Schema, Vec<Vec<String>>) {
    let reader = SerializedFileReader::new(std::fs::File::open(path).unwrap()).unwrap();
    let schema = reader
        .metadata()
        .file_metadata()
        .schema_descr()
        .columns()
        .iter()
        .map(|c| {
            let t = c.self_type();
            let string = matches!(c.logical_type_ref(), Some(LogicalType::String));
            (c.name().to_owned(), c.physical_type(), t.get_basic_info().repetition(), string)
        })
        .collect();
    let rows = reader
        .get_row_iter(None)
        .unwrap()
        .map(|row| {
            row.unwrap()
                .get_column_iter()
                .map(|(name, f)| match f {
                    Field::Long(i) => i.to_string(),
                    Field::Str(s) => {
                        assert!(!s.is_empty(), "{name}: an empty string, where empty cells are null");
                        s.clone()
                    }
                    Field::Null => String::new(),
                    other => panic!("{name}: unexpected {other:?}"),
                })
                .collect()
        })
        .collect();
    (schema, rows)
}

const INTS: &[&str] = &["seq", "ts_ms", "flags", "approve_at_ms", "approved_seq", "reversed_by", "asn"];

#[test]
fn parquet_exports_equal_the_csv_exports_row_for_row() {
    let env = Env::new("");
    let dir = env.data();
    let d = dir.to_str().unwrap();
    let server = env.serve();
    let cids = click_storm(server.addr, 2, 15, "pq");
    for (i, cid) in cids.iter().take(6).enumerate() {
        let r = server.get(&format!(
            "/postback?cid={cid}&offer=shoes&goal=sale&txid=pq-{i}&amount=1{i}.05&sub1=s%2C{i}&token={TOKEN}"
        ));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // A refund: a reversal in the ledger, and a conversion without an amount.
    let r = server.get(&format!("/postback?offer=shoes&goal=sale&txid=pq-0&status=refunded&token={TOKEN}"));
    assert_eq!(r.status, 200, "{}", r.text());
    wait_for_ledger(&dir, 7);

    // While the server is running: exports read its directory as secondaries.
    let tmp = tempfile::tempdir().unwrap();
    for what in ["clicks", "conversions", "commissions", "events"] {
        let (header, csv_rows) = csv_of(&["export", what, "--data-dir", d, "--format", "csv"]);
        let out = tmp.path().join(format!("{what}.parquet"));
        let o = out.to_str().unwrap();
        let (ok, stdout, err) = run(&["export", what, "--data-dir", d, "--format", "parquet", "--out", o]);
        assert!(ok, "{what}: {err}");
        assert!(stdout.is_empty(), "{what}: {stdout}");
        let (schema, rows) = parquet_of(&out);

        let names: Vec<&str> = schema.iter().map(|(n, ..)| n.as_str()).collect();
        assert_eq!(names, header, "{what}: the CSV's columns, in its order");
        for (name, physical, repetition, string) in &schema {
            if INTS.contains(&name.as_str()) {
                assert_eq!(*physical, PhysicalType::INT64, "{what}.{name}");
                let required = name == "seq" || name == "ts_ms" || (name == "flags" && what == "clicks");
                let want = if required { Repetition::REQUIRED } else { Repetition::OPTIONAL };
                assert_eq!(*repetition, want, "{what}.{name}");
            } else {
                assert_eq!(*physical, PhysicalType::BYTE_ARRAY, "{what}.{name}");
                assert!(*string, "{what}.{name}: STRING logical type");
                assert_eq!(*repetition, Repetition::OPTIONAL, "{what}.{name}");
            }
        }
        assert!(!csv_rows.is_empty(), "{what}");
        assert_eq!(rows, csv_rows, "{what}: every row equals the CSV's");
    }
    // Money is the exact decimal string, never a float.
    let (_, conv) = parquet_of(&tmp.path().join("conversions.parquet"));
    assert!(conv.iter().any(|r| r.contains(&"13.05".to_owned())), "{conv:?}");

    // Ranges select the same rows as for CSV (half-open).
    let (_, all) = csv_of(&["export", "clicks", "--data-dir", d, "--format", "csv"]);
    let (from, to) = (all[3][0].clone(), all[9][0].clone());
    let (_, csv_rows) = csv_of(&["export", "clicks", "--data-dir", d, "--format", "csv", "--from", &from, "--to", &to]);
    let out = tmp.path().join("range.parquet");
    let o = out.to_str().unwrap();
    let (ok, _, err) =
        run(&["export", "clicks", "--data-dir", d, "--format", "parquet", "--out", o, "--from", &from, "--to", &to]);
    assert!(ok, "{err}");
    assert_eq!(parquet_of(&out).1, csv_rows);
    assert_eq!(csv_rows.len(), 6);
    drop(server);
}

#[test]
fn parquet_needs_a_file_and_leaves_none_on_failure() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("data");
    let d = d.to_str().unwrap();
    for out in [None, Some("-")] {
        let mut args = vec!["export", "clicks", "--data-dir", d, "--format", "parquet"];
        args.extend(out.map(|o| ["--out", o]).into_iter().flatten());
        let (ok, stdout, err) = run(&args);
        assert!(!ok && stdout.is_empty(), "{stdout}");
        assert!(
            err.contains("--format parquet writes a binary file, not to standard output: give --out FILE"),
            "{err}"
        );
    }
    // A data directory that does not open: no file is created.
    let out = tmp.path().join("x.parquet");
    let (ok, _, err) = run(&[
        "export",
        "commissions",
        "--data-dir",
        "/nonexistent/tally-x",
        "--format",
        "parquet",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("/nonexistent/tally-x"), "{err}");
    assert!(!out.exists());
    // --out also works for the text formats.
    let env = Env::new("");
    let mut server = env.serve();
    click_storm(server.addr, 1, 3, "out");
    assert!(server.stop());
    let dir = env.data();
    let csv_out = tmp.path().join("c.csv");
    let (ok, stdout, err) = run(&[
        "export",
        "clicks",
        "--data-dir",
        dir.to_str().unwrap(),
        "--format",
        "csv",
        "--out",
        csv_out.to_str().unwrap(),
    ]);
    assert!(ok && stdout.is_empty(), "{err}");
    let (_, rows) = csv_of(&["export", "clicks", "--data-dir", dir.to_str().unwrap(), "--format", "csv"]);
    assert_eq!(std::fs::read_to_string(&csv_out).unwrap().lines().count(), 1 + rows.len());
}
