//! `tally snapshot --data-dir DIR --out DIR2`: a point-in-time copy of a data directory that
//! every read command (`verify`, `export`, `commissions`, `report`, `replay`) accepts as a
//! data directory, for handing to an auditor.
//!
//! The copy itself is `tally_audit::snapshot::take`.

use std::io::ErrorKind;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

pub fn snapshot(data_dir: &Path, out: &Path) -> anyhow::Result<ExitCode> {
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
    let made = tally_audit::snapshot::take(data_dir, out, &[tally_edge::links::OVERLAY_FILE]);
    if made.is_err() {
        // Leave nothing half-made that a later command could mistake for a snapshot.
        let _ = std::fs::remove_dir_all(out);
        let _ = std::fs::create_dir_all(out);
    }
    let summary = made?;
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
