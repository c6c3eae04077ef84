//! `tally erase` and `tally retention`: personal fields of a stopped server's log. A running
//! server does the same through its admin API (`POST /admin/erase`, `POST /admin/retention`),
//! because only one process may write a log.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use serde_json::json;
use tally_log::{Erasure, ErasureReport, Log, LogMetrics, LogOptions};

use crate::output::{print_json, OutputFormat};

/// Opens the log in `data_dir` for writing: it must exist, and no server may hold it
/// (`instead` says what to do while one does).
pub(crate) fn open_for_writing(data_dir: &Path, instead: &str) -> anyhow::Result<Log> {
    anyhow::ensure!(
        data_dir.join("CURRENT").exists(),
        "no Tally log in {} (no RocksDB CURRENT file)",
        data_dir.display()
    );
    Log::open(data_dir, LogOptions::default(), LogMetrics::default()).map_err(|e| {
        let text = e.to_string();
        if text.contains("lock") {
            anyhow::anyhow!("{}: the log is open by a running server; {instead}", data_dir.display())
        } else {
            anyhow::Error::new(e)
        }
    })
}

const ASK_THE_SERVER: &str = "ask it instead (POST /admin/erase or /admin/retention on its admin listener)";

fn records_line(r: &ErasureReport) -> String {
    let mut line = format!("{} records read, {} erased now", r.scanned, r.erased);
    if r.already_erased > 0 {
        line.push_str(&format!(", {} already erased", r.already_erased));
    }
    if r.chained > 0 {
        line.push_str(&format!(
            "; {} written before record format 3 keep their personal fields (chained, not erasable; see README \"Privacy\")",
            r.chained
        ));
    }
    line
}

pub fn erase(data_dir: &Path, what: Erasure, format: OutputFormat) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(!what.is_empty(), "nothing to erase: give --click, --ip and/or --customer");
    if let Some(c) = what.customers.iter().find(|c| c.is_empty()) {
        anyhow::bail!("--customer \"{c}\": empty");
    }
    let log = open_for_writing(data_dir, ASK_THE_SERVER)?;
    let report = log.erase(&what).context("erasure failed")?;
    log.close();
    print(format, serde_json::to_value(&report)?, || println!("{}", records_line(&report)))
}

/// The report as one JSON object with `"ok": true`, or as `text` prints it.
fn print(format: OutputFormat, report: serde_json::Value, text: impl FnOnce()) -> anyhow::Result<ExitCode> {
    if format == OutputFormat::Json {
        let mut v = report;
        v["ok"] = json!(true);
        print_json(&v)?;
    } else {
        text();
    }
    Ok(ExitCode::SUCCESS)
}

pub fn retention(data_dir: &Path, days: u32, format: OutputFormat) -> anyhow::Result<ExitCode> {
    let log = open_for_writing(data_dir, ASK_THE_SERVER)?;
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let cutoff = now.saturating_sub(u64::from(days) * 86_400_000);
    let report = log.apply_retention(cutoff).context("retention failed")?;
    log.close();
    print(format, serde_json::to_value(&report)?, || {
        println!("personal fields before {}: {}", tally_model::time::format_ts(cutoff), records_line(&report.records));
        println!("day keys deleted: {}; next pass starts at sequence {}", report.day_keys_deleted, report.floor);
    })
}
