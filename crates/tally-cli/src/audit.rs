//! `tally replay`: re-derive the ledger from the raw log and compare it with the live one,
//! or explain one conversion. The work is `tally_audit`'s; this prints it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use tally_audit::{Bound, Filter, ReplayOptions};
use tally_model::format_minor;
use tally_model::time::format_ts;

pub struct ReplayArgs {
    pub data_dir: PathBuf,
    pub from: Option<String>,
    pub to: Option<String>,
    pub affiliate: Option<String>,
    pub offer: Option<String>,
    pub explain: Option<String>,
    pub no_snapshots: bool,
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
        for line in &x.lines {
            println!("{line}");
        }
        return Ok(if x.matches_live { ExitCode::SUCCESS } else { ExitCode::FAILURE });
    }
    let options = ReplayOptions {
        from: bound("--from", args.from.as_deref())?,
        to: bound("--to", args.to.as_deref())?,
        filter: Filter { affiliate: args.affiliate, offer: args.offer, ..Filter::default() },
        no_snapshots: args.no_snapshots,
        no_compare: false,
    };
    let r = tally_audit::replay(&args.data_dir, &options, &mut |_, _, _| {})?;
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
            let money = |v: i64| match tally_model::Currency::from_code(currency) {
                Ok(c) => format_minor(v, c),
                Err(_) => v.to_string(),
            };
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
        Ok(ExitCode::SUCCESS)
    } else {
        println!("FAILED: {} difference(s) between the replay and the live ledger", r.differences.len());
        Ok(ExitCode::FAILURE)
    }
}
