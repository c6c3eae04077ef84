//! `tally replay`: re-derive the ledger from the raw log and compare it with the live one,
//! or explain one conversion. The work is `tally_audit`'s; this prints it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use serde_json::{json, Map, Value};
use tally_audit::{Bound, Filter, ReplayOptions, ReplayReport};
use tally_model::format_minor;
use tally_model::time::format_ts;

use crate::output::{found, print_json, OutputFormat};
use crate::progress::Progress;

pub struct ReplayArgs {
    pub data_dir: PathBuf,
    pub from: Option<String>,
    pub to: Option<String>,
    pub affiliate: Option<String>,
    pub offer: Option<String>,
    pub explain: Option<String>,
    pub no_snapshots: bool,
    pub format: OutputFormat,
}

/// Differences listed in full; the counts cover all of them.
const SHOWN: usize = 20;

fn bound(flag: &str, v: Option<&str>) -> anyhow::Result<Option<Bound>> {
    v.map(|s| {
        Bound::parse(s).with_context(|| {
            format!(
                "{flag}: \"{s}\" is neither a sequence number nor a UTC time like 2026-11-23 or 2026-11-23T08:00:00Z"
            )
        })
    })
    .transpose()
}

pub fn replay(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    if let Some(target) = &args.explain {
        let x = tally_audit::explain(&args.data_dir, target)?;
        if args.format == OutputFormat::Json {
            print_json(&json!({ "ok": x.matches_live, "id": x.id.to_string(), "lines": x.lines }))?;
        } else {
            for line in &x.lines {
                println!("{line}");
            }
        }
        return Ok(found(x.matches_live));
    }
    let options = ReplayOptions {
        from: bound("--from", args.from.as_deref())?,
        to: bound("--to", args.to.as_deref())?,
        filter: Filter { affiliate: args.affiliate, offer: args.offer, ..Filter::default() },
        no_snapshots: args.no_snapshots,
        no_compare: false,
    };
    let mut progress = Progress::for_log(&args.data_dir, "replay");
    let r = tally_audit::replay(&args.data_dir, &options, &mut |seq, _, _| progress.at(seq));
    progress.finish();
    let r = r?;
    if args.format == OutputFormat::Json {
        print_json(&report_json(&r))?;
        return Ok(found(r.is_ok()));
    }
    let start = match &r.snapshot {
        Some(p) => format!("from the snapshot at sequence {} ({})", r.started_after, p.display()),
        None => "from the first event".to_owned(),
    };
    println!(
        "window          sequences {}..={} (log head {}, live ledger at {})",
        r.from,
        r.to,
        r.log_head,
        r.live_position.map(|p| p.to_string()).unwrap_or_else(|| "- (no live ledger)".into())
    );
    println!(
        "replayed        {} events {start} in {:.2} s ({:.0} events/s)",
        r.events,
        r.seconds,
        r.events_per_second()
    );
    println!("compared        {} entries", r.compared);
    println!("matched         {}", r.matched);
    println!("missing         {}  (replayed, not in the live ledger)", r.missing());
    println!("extra           {}  (in the live ledger, not replayed)", r.extra());
    println!("differing       {}", r.differing());
    if !r.totals.is_empty() {
        println!("owed (pending + approved), replay / live:");
        for ((affiliate, currency), (replayed, live)) in &r.totals {
            let money = |v: i64| money(v, currency);
            let mark = if replayed == live { "" } else { "   <- differs" };
            let who = if affiliate.is_empty() { "(none)" } else { affiliate };
            println!("  {who:<20} {currency} {:>14} / {:<14}{mark}", money(*replayed), money(*live));
        }
    }
    println!("digest replay   {} {}", tally_audit::DIGEST_FORM, r.digest_replayed);
    println!("digest live     {} {}", tally_audit::DIGEST_FORM, r.digest_live);
    for d in r.differences.iter().take(SHOWN) {
        match (&d.live, &d.replayed) {
            (None, Some(e)) => println!(
                "missing {}: replay has {} {} at {}",
                d.id,
                e.kind.as_str(),
                e.status.as_str(),
                format_ts(e.ts_ms)
            ),
            (Some(e), None) => {
                println!("extra {}: live has {} {} at {}", d.id, e.kind.as_str(), e.status.as_str(), format_ts(e.ts_ms))
            }
            (Some(l), Some(rep)) => {
                println!("differing {}:", d.id);
                for f in tally_audit::explain::field_differences(l, rep) {
                    println!("  {f}");
                }
            }
            (None, None) => {}
        }
    }
    if r.differences.len() > SHOWN {
        println!("... and {} more", r.differences.len() - SHOWN);
    }
    if r.is_ok() {
        println!("ok: the replay reproduces the live ledger");
    } else {
        println!("FAILED: {} difference(s) between the replay and the live ledger", r.differences.len());
    }
    Ok(found(r.is_ok()))
}

/// Amounts as the ledger's exports write them ("2.50"), or minor units for a currency the
/// model does not know.
fn money(v: i64, currency: &str) -> String {
    match tally_model::Currency::from_code(currency) {
        Ok(c) => format_minor(v, c),
        Err(_) => v.to_string(),
    }
}

/// The report as `--format json` prints it: the same facts as the text, with every
/// difference (the text lists the first 20) as canonical ledger rows.
fn report_json(r: &ReplayReport) -> Value {
    let row = |e: &tally_attribution::Entry| -> Value {
        Value::Object(tally_audit::digest::row(e).into_iter().map(|(k, v)| (k.to_owned(), v)).collect::<Map<_, _>>())
    };
    let differences: Vec<Value> = r
        .differences
        .iter()
        .map(|d| {
            let (kind, fields) = match (&d.live, &d.replayed) {
                (None, _) => ("missing", Vec::new()),
                (_, None) => ("extra", Vec::new()),
                (Some(l), Some(rep)) => ("differing", tally_audit::explain::field_differences(l, rep)),
            };
            json!({
                "id": d.id.to_string(),
                "kind": kind,
                "fields": fields,
                "live": d.live.as_ref().map(row),
                "replayed": d.replayed.as_ref().map(row),
            })
        })
        .collect();
    let totals: Vec<Value> = r
        .totals
        .iter()
        .map(|((affiliate, currency), (replayed, live))| {
            json!({
                "affiliate": affiliate,
                "currency": currency,
                "replayed": money(*replayed, currency),
                "live": money(*live, currency),
            })
        })
        .collect();
    json!({
        "ok": r.is_ok(),
        "from": r.from,
        "to": r.to,
        "log_head": r.log_head,
        "live_position": r.live_position,
        "started_after": r.started_after,
        "snapshot": r.snapshot.as_ref().map(|p| p.display().to_string()),
        "events": r.events,
        "seconds": r.seconds,
        "compared": r.compared,
        "matched": r.matched,
        "missing": r.missing(),
        "extra": r.extra(),
        "differing": r.differing(),
        "digest_form": tally_audit::DIGEST_FORM,
        "digest_replay": r.digest_replayed,
        "digest_live": r.digest_live,
        "totals": totals,
        "differences": differences,
    })
}
