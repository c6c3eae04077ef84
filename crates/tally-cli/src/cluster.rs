//! `tally log reship`: an edge of a cluster ships part of its log again, for a tier whose
//! stream lost events (retention, a purge; `tally_bus_gaps_total` counts what it holds back).
//! The tier's high-water marks drop whatever it already has, so shipping too much is safe.

use std::path::Path;
use std::process::ExitCode;

use serde_json::json;

use crate::output::{print_json, OutputFormat};
use crate::privacy::open_for_writing;

pub fn reship(data_dir: &Path, from: u64, format: OutputFormat) -> anyhow::Result<ExitCode> {
    let log = open_for_writing(data_dir, "stop it first (systemctl stop tally), then run this again")?;
    let last = log.last_committed();
    anyhow::ensure!(
        (1..=last + 1).contains(&from),
        "--from {from}: the log holds events 1..={last}, so --from must be 1-{}",
        last + 1
    );
    let before = log.shipped()?;
    log.set_shipped(from - 1)?;
    log.close();
    if format == OutputFormat::Json {
        print_json(&json!({ "ok": true, "from": from, "shipped_before": before, "last_seq": last }))?;
    } else {
        println!("the shipper sends events {from}..={last} again at the next start (it had shipped up to {before})");
    }
    Ok(ExitCode::SUCCESS)
}
