//! `tally payouts` and `tally balances`: payout runs, statements and balances read off the
//! ledger in a data directory (works while a server runs on it). Runs and voids themselves
//! are operator decisions: `tally decide payout`, `tally decide void-payout`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use serde_json::json;
use tally_attribution::{Entry, LedgerReader};
use tally_audit::payouts;

use crate::output::{print_json, OutputFormat};

fn open(data_dir: &Path) -> anyhow::Result<LedgerReader> {
    Ok(LedgerReader::open(&tally_attribution::state_dir(data_dir))?)
}

fn payout_entries(reader: &LedgerReader) -> anyhow::Result<Vec<Entry>> {
    let mut out = Vec::new();
    for e in reader.entries() {
        let e = e?;
        if payouts::concerns_payouts(&e) {
            out.push(e);
        }
    }
    Ok(out)
}

/// Without `payout`: the runs. With it: that run's lines, or (with `out`) a statement per
/// affiliate it paid, `{payout}-{affiliate}.csv` and `.json` in `out`.
pub fn payouts(
    data_dir: &Path,
    payout: Option<&str>,
    out: Option<&PathBuf>,
    format: OutputFormat,
) -> anyhow::Result<ExitCode> {
    let reader = open(data_dir)?;
    let relevant = payout_entries(&reader)?;
    let runs = payouts::runs(&relevant);
    let Some(id) = payout else {
        anyhow::ensure!(out.is_none(), "--out needs --payout: the statements of which run?");
        if format == OutputFormat::Json {
            print_json(&json!({ "payouts": runs.iter().map(|r| r.json(false)).collect::<Vec<_>>() }))?;
        } else {
            for r in &runs {
                let v = r.json(false);
                println!(
                    "{}  {}  {}  {}",
                    r.id(),
                    v["state"].as_str().unwrap_or(""),
                    v["time"].as_str().unwrap_or(""),
                    r.entry.rule
                );
            }
            if runs.is_empty() {
                println!("no payout runs");
            }
        }
        return Ok(ExitCode::SUCCESS);
    };
    let run = runs
        .iter()
        .find(|r| r.id() == id)
        .with_context(|| format!("--payout: no payout run \"{id}\" in the ledger"))?;
    let Some(dir) = out else {
        if format == OutputFormat::Json {
            print_json(&run.json(true))?;
        } else {
            println!("{}", run.entry.rule);
            for ((affiliate, currency), (n, total)) in &run.lines {
                println!("{affiliate}  {currency}  {}  ({n} entries)", tally_model::format_minor(*total, *currency));
            }
        }
        return Ok(ExitCode::SUCCESS);
    };
    std::fs::create_dir_all(dir).with_context(|| format!("--out: cannot create {}", dir.display()))?;
    let affiliates: std::collections::BTreeSet<&str> = run.lines.keys().map(|(a, _)| a.as_str()).collect();
    for affiliate in &affiliates {
        let Some(s) = payouts::statement(&relevant, id, affiliate) else { continue };
        let base = dir.join(format!("{id}-{affiliate}"));
        std::fs::write(base.with_extension("csv"), s.csv())
            .with_context(|| format!("writing {}.csv", base.display()))?;
        let json = serde_json::to_string_pretty(&s.json())?;
        std::fs::write(base.with_extension("json"), json + "\n")
            .with_context(|| format!("writing {}.json", base.display()))?;
    }
    if format == OutputFormat::Json {
        print_json(&json!({ "ok": true, "payout": id, "statements": affiliates.len(), "out": dir }))?;
    } else {
        println!("{} statements of payout {id} in {}", affiliates.len(), dir.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Balances per affiliate and currency, with the minimum the program in force sets.
pub fn balances(data_dir: &Path, affiliate: Option<&str>, format: OutputFormat) -> anyhow::Result<ExitCode> {
    let reader = open(data_dir)?;
    let program = reader.program().cloned();
    let mut failed = None;
    let entries = reader.entries().map_while(|r| r.map_err(|e| failed = Some(e)).ok());
    let all = payouts::balances(entries, |a| affiliate.is_none_or(|x| x == a));
    if let Some(e) = failed {
        return Err(e.into());
    }
    let rows: Vec<_> = all
        .iter()
        .map(|((a, c), b)| {
            let minimum = program.as_ref().map(|p| p.payout_minimum_for(a, *c)).unwrap_or(0);
            payouts::balance_json(a, *c, b, minimum)
        })
        .collect();
    if format == OutputFormat::Json {
        print_json(&json!({ "balances": rows }))?;
    } else {
        println!(
            "{:<20} {:<8} {:>14} {:>14} {:>14} {:>12}  payable",
            "affiliate", "currency", "approved", "pending", "paid", "minimum"
        );
        for r in &rows {
            let s = |k: &str| r[k].as_str().unwrap_or("").to_owned();
            println!(
                "{:<20} {:<8} {:>14} {:>14} {:>14} {:>12}  {}",
                s("affiliate"),
                s("currency"),
                s("approved"),
                s("pending"),
                s("paid"),
                s("minimum"),
                if r["payable"] == true { "yes" } else { "no" }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
