//! `--explain`: how one conversion's commission came to be, re-derived from the raw log.
//!
//! A replay from the log's first event watches everything that touches the conversion: the
//! click it reported and the click credited (they differ under the first-click rule), the
//! program change whose rules applied, the entry as first recorded with its rule and amount,
//! every later change (hold passed, reversal), and the entries that refer to it (duplicate
//! reports, reversals, clawbacks, milestone bonuses), each with its sequence number. The
//! result is then set beside the live ledger's entry.

use std::collections::BTreeMap;
use std::path::Path;

use tally_attribution::{state_dir, Entry, EntryId, LedgerReader, Source, Status};
use tally_log::LogReader;
use tally_model::time::format_ts;
use tally_model::{format_minor, ClickId, Event};

use crate::digest::{cells, COLUMNS};
use crate::replay::{replay, ReplayOptions};
use crate::AuditError;

/// The explanation, as lines for people; `matches_live` is false when the live ledger's
/// entry differs from the replay's.
#[derive(Debug, Clone)]
pub struct Explanation {
    pub id: EntryId,
    pub lines: Vec<String>,
    pub matches_live: bool,
}

/// Finds the conversion: an entry id (`1234`, or `1234.1` for a bonus) or else a transaction
/// ID, looked up in the live ledger (the first commission reporting it).
fn resolve(data_dir: &Path, target: &str) -> Result<EntryId, AuditError> {
    if let Some(id) = EntryId::parse(target) {
        return Ok(id);
    }
    let dir = state_dir(data_dir);
    if dir.join("CURRENT").exists() {
        let live = LedgerReader::open(&dir)?;
        for e in live.entries() {
            let e = e?;
            if e.txid == target && e.id.sub == 0 {
                return Ok(e.id);
            }
        }
    }
    Err(AuditError::NoSuchConversion(target.to_owned()))
}

fn money(e: &Entry, amount: i64) -> String {
    format!("{} {}", format_minor(amount, e.currency), e.currency)
}

fn describe(e: &Entry) -> String {
    let mut s = format!("{} {} {}", e.kind.as_str(), e.status.as_str(), money(e, e.amount));
    if !e.reason.as_str().is_empty() {
        s.push_str(&format!(" ({})", e.reason.as_str()));
    }
    if !e.rule.is_empty() {
        s.push_str(&format!(", rule \"{}\"", e.rule));
    }
    s
}

pub fn explain(data_dir: &Path, target: &str) -> Result<Explanation, AuditError> {
    let id = resolve(data_dir, target)?;
    let reader = LogReader::open_secondary(data_dir)?;
    let conversion = match reader.read_range(id.seq, 1)?.into_iter().next() {
        Some((seq, bytes)) if seq == id.seq => {
            tally_model::decode(&bytes).map_err(|error| AuditError::Record { seq, error })?
        }
        _ => return Err(AuditError::NoSuchConversion(target.to_owned())),
    };
    let Event::Conversion(c) = &conversion else {
        return Err(AuditError::NotAConversion { seq: id.seq, kind: conversion.kind().as_str() });
    };
    let live_dir = state_dir(data_dir);
    let live = if live_dir.join("CURRENT").exists() { Some(LedgerReader::open(&live_dir)?) } else { None };
    let live_entry = match &live {
        Some(l) => l.entry(id)?,
        None => None,
    };
    let mut clicks_wanted: Vec<ClickId> = c.click_id.into_iter().collect();
    clicks_wanted.extend(live_entry.as_ref().and_then(|e| e.click_id));

    let mut clicks: BTreeMap<ClickId, (u64, tally_model::Click)> = BTreeMap::new();
    // (seq, digest, what set it): program changes and edits.
    let mut programs: Vec<(u64, String, String)> = Vec::new();
    let mut history: Vec<(u64, Entry)> = Vec::new();
    let mut observe = |seq: u64, event: &Event, out: &tally_attribution::Outputs| {
        match event {
            Event::Click(k) if clicks_wanted.contains(&k.click_id) => {
                clicks.insert(k.click_id, (seq, k.clone()));
            }
            Event::ProgramChange(p) => programs.push((seq, p.digest.clone(), String::new())),
            Event::ProgramEdit(p) => {
                let what = tally_model::Edit::from_json(&p.edit).map(|e| e.summary()).unwrap_or_default();
                programs.push((seq, p.digest.clone(), format!(" (edit by {}: {what})", p.actor)));
            }
            _ => {}
        }
        for e in &out.entries {
            if e.id == id || e.refers_to == Some(id) || (e.id.seq == id.seq && id.sub == 0) {
                history.push((seq, e.clone()));
            }
        }
    };
    let options = ReplayOptions { no_snapshots: true, no_compare: true, ..ReplayOptions::default() };
    let report = replay(data_dir, &options, &mut observe)?;

    let mut lines = Vec::new();
    let what = match (c.amount, c.txid.as_str()) {
        (Some(a), t) => format!("sale {} {}, txid \"{t}\"", format_minor(a, c.currency), c.currency),
        (None, t) => format!("txid \"{t}\""),
    };
    let offer = if c.offer.is_empty() { "(from the click)" } else { c.offer.as_str() };
    let goal = if c.goal.is_empty() { "(the offer's default)" } else { c.goal.as_str() };
    let via = match (c.source.is_browser(), c.advertiser.as_str()) {
        (true, _) => format!("{} (a browser's report)", c.source.as_str()),
        (false, "") => c.source.as_str().to_owned(),
        (false, advertiser) => format!("{} from advertiser {advertiser}", c.source.as_str()),
    };
    lines.push(format!(
        "conversion {id}: seq {} at {}, {} report of offer {offer} goal {goal} via {via}, {what}",
        id.seq,
        format_ts(c.ts_ms),
        c.status.as_str(),
    ));
    match (c.click_id, c.coupon.as_str()) {
        (Some(cid), _) => match clicks.get(&cid) {
            Some((seq, k)) => lines.push(format!(
                "  click {cid}: seq {seq} at {}, link {}, affiliate {}, sub1 \"{}\"{}",
                format_ts(k.ts_ms),
                k.link,
                k.affiliate,
                k.subs[0],
                if k.is_human() { "" } else { ", not a person (not paid)" }
            )),
            None => lines.push(format!("  click {cid}: not in the log (or not before the conversion)")),
        },
        (None, "") => lines.push("  no click ID and no coupon reported".into()),
        (None, coupon) => lines.push(format!("  no click ID; coupon \"{coupon}\"")),
    }
    let own: Vec<&(u64, Entry)> = history.iter().filter(|(_, e)| e.id == id).collect();
    if let Some((_, first)) = own.first() {
        if let Some(credited) = first.click_id.filter(|k| Some(*k) != c.click_id) {
            match clicks.get(&credited) {
                Some((seq, k)) => lines.push(format!(
                    "  credited click {credited} (first click of the visitor): seq {seq} at {}, affiliate {}",
                    format_ts(k.ts_ms),
                    k.affiliate
                )),
                None => lines.push(format!("  credited click {credited} (first click of the visitor)")),
            }
        }
        if !first.coupon.is_empty() {
            lines.push(format!("  credited through coupon \"{}\" to affiliate {}", first.coupon, first.affiliate));
        }
        let program = programs.iter().rev().find(|(seq, d, _)| *seq <= id.seq && *d == first.program);
        match program {
            Some((seq, d, how)) => {
                lines.push(format!("  rules: program {} set at seq {seq}{how}", &d[..d.len().min(16)]))
            }
            None => lines.push("  rules: no program in force".into()),
        }
    }
    let mut previous: Option<&Entry> = None;
    for (seq, e) in &history {
        if e.id == id {
            match previous {
                None => {
                    lines.push(format!("  seq {seq}: recorded as {}", describe(e)));
                    if e.status == Status::Pending {
                        if let Some(at) = e.approve_at_ms {
                            lines.push(format!("    held until {}", format_ts(at)));
                        }
                    }
                    if let Some(original) = e.refers_to {
                        lines.push(format!("    refers to entry {original}"));
                    }
                }
                Some(p) => {
                    let by_operator = history
                        .iter()
                        .any(|(_, x)| x.id.seq == *seq && x.refers_to == Some(id) && x.source == Source::Operator);
                    if p.amount != e.amount {
                        lines.push(format!(
                            "  seq {seq}: amount {} -> {}{}",
                            format_minor(p.amount, e.currency),
                            format_minor(e.amount, e.currency),
                            if by_operator { " by an operator's decision" } else { "" }
                        ));
                    }
                    if p.status != e.status && e.status == Status::Approved && by_operator {
                        lines.push(format!("  seq {seq}: approved by an operator's decision"));
                    } else if p.status != e.status && e.status == Status::Approved {
                        lines.push(format!(
                            "  seq {seq}: approved (hold passed at event time {})",
                            format_ts(e.ts_ms.max(e.approve_at_ms.unwrap_or(0)))
                        ));
                    } else if p.status != e.status {
                        lines.push(format!(
                            "  seq {seq}: {} -> {} ({})",
                            p.status.as_str(),
                            e.status.as_str(),
                            e.reason.as_str()
                        ));
                    }
                    if p.reversed_by.is_none() {
                        if let Some(r) = e.reversed_by {
                            // The reversal's own entry carries why (refund or chargeback).
                            let why = history
                                .iter()
                                .find(|(_, x)| x.id.seq == r && x.refers_to == Some(id))
                                .map_or(e.reason.as_str(), |(_, x)| x.reason.as_str());
                            lines.push(format!("  seq {r}: reversed ({why})"));
                        }
                    }
                    for pay in e.payments.iter().skip(p.payments.len()) {
                        match pay.payout.as_str() {
                            "" => lines.push(format!("  seq {}: its payout was voided: unpaid again", pay.seq)),
                            id => lines.push(format!("  seq {}: paid in payout {id}", pay.seq)),
                        }
                    }
                }
            }
            previous = Some(e);
        } else {
            let role = match e.status {
                Status::Duplicate => "duplicate report",
                _ => e.kind.as_str(),
            };
            lines.push(format!("  seq {seq}: {role} entry {}: {}", e.id, describe(e)));
        }
    }
    let replayed = own.last().map(|(_, e)| e.clone());
    if replayed.is_none() {
        lines
            .push(format!("  the replay produced no entry {id} (replayed up to seq {})", report.to.max(report.events)));
    }
    let matches_live = match (&live_entry, &replayed) {
        (Some(l), Some(r)) if l == r => {
            lines.push(format!("  live ledger: entry {id} matches the replay"));
            true
        }
        (None, _) => {
            lines.push(format!("  live ledger: no entry {id}"));
            replayed.is_none()
        }
        (Some(l), None) => {
            lines.push(format!("  live ledger: entry {id} is {} but the replay produced none", describe(l)));
            false
        }
        (Some(l), Some(r)) => {
            lines.push(format!("  live ledger: entry {id} DIFFERS from the replay:"));
            lines.extend(field_differences(l, r).into_iter().map(|d| format!("    {d}")));
            false
        }
    };
    Ok(Explanation { id, lines, matches_live })
}

/// `column: live "x", replay "y"` for each column where two versions of an entry differ.
pub fn field_differences(live: &Entry, replayed: &Entry) -> Vec<String> {
    COLUMNS
        .iter()
        .zip(cells(live).into_iter().zip(cells(replayed)))
        .filter(|(_, (a, b))| a != b)
        .map(|(col, (a, b))| format!("{col}: live \"{a}\", replay \"{b}\""))
        .collect()
}
