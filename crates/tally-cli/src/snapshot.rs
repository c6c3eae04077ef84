//! `tally snapshot --data-dir DIR --out DIR2`: a point-in-time copy of a data directory that
//! every read command (`verify`, `export`, `commissions`, `report`, `replay`) accepts as a
//! data directory, for handing to an auditor.
//!
//! The copy itself is `tally_audit::snapshot::take`.

use std::io::ErrorKind;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use serde_json::json;

use crate::output::{print_json, OutputFormat};

pub fn snapshot(data_dir: &Path, out: &Path, format: OutputFormat) -> anyhow::Result<ExitCode> {
    if !data_dir.join("CURRENT").exists() {
        anyhow::bail!("--data-dir {}: no Tally log here (no RocksDB CURRENT file)", data_dir.display());
    }
    match std::fs::read_dir(out) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                anyhow::bail!("--out {}: exists and is not empty; give a new or empty directory", out.display());
            }
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("--out {}", out.display())),
    }
    std::fs::create_dir_all(out).with_context(|| format!("--out {}: cannot create it", out.display()))?;
    let mut progress = crate::progress::Progress::for_log(data_dir, "snapshot");
    let made =
        tally_audit::snapshot::take(data_dir, out, &[tally_edge::links::OVERLAY_FILE], &mut |seq| progress.at(seq));
    progress.finish();
    if made.is_err() {
        // Leave nothing half-made that a later command could mistake for a snapshot.
        let _ = std::fs::remove_dir_all(out);
        let _ = std::fs::create_dir_all(out);
    }
    let summary = made?;
    if format == OutputFormat::Json {
        let attribution =
            summary.attribution.map(|(method, position)| json!({ "method": method.as_str(), "position": position }));
        print_json(&json!({
            "ok": true,
            "data_dir": data_dir.display().to_string(),
            "out": out.display().to_string(),
            "log": { "method": summary.log.as_str(), "seq": summary.log_seq },
            "attribution": attribution,
            "snapshots_copied": summary.copied,
            "snapshots_skipped": summary.skipped,
            "files": summary.files,
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("snapshot of {} in {}", data_dir.display(), out.display());
    println!("log            {} (up to sequence {})", summary.log.as_str(), summary.log_seq);
    match summary.attribution {
        Some((method, position)) => println!("attribution    {} (at position {position})", method.as_str()),
        None => println!("attribution    none (no worker has run on this data directory)"),
    }
    println!("attribution snapshots {} copied, {} skipped (removed while copying)", summary.copied, summary.skipped);
    if !summary.files.is_empty() {
        println!("files          {}", summary.files.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}
