//! Payouts as the ledger holds them: balances per affiliate and currency, payout runs with
//! what each paid, and an affiliate's statement of one run, as JSON and CSV. All of it is read
//! off ledger entries (`Entry::payments` and the runs' `payout` entries), by the admin API,
//! the affiliate API and `tally payouts`, so the three can never disagree.

use std::borrow::Borrow;
use std::collections::BTreeMap;

use serde_json::{json, Value};
use tally_attribution::{Entry, Kind, Status};
use tally_model::{format_minor, Currency};

/// What an affiliate has in one currency.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Balance {
    /// Approved and not paid: what the next payout run would pay (if it reaches the minimum).
    pub approved: i64,
    /// Pending: in a hold, or awaiting the merchant or an operator.
    pub pending: i64,
    /// Paid by payout runs (not voided).
    pub paid: i64,
}

/// Balances by affiliate and currency, of the affiliates `keep` accepts.
pub fn balances(
    entries: impl IntoIterator<Item = impl Borrow<Entry>>,
    keep: impl Fn(&str) -> bool,
) -> BTreeMap<(String, Currency), Balance> {
    let mut out: BTreeMap<(String, Currency), Balance> = BTreeMap::new();
    for e in entries {
        let e = e.borrow();
        if e.affiliate.is_empty() || e.amount == 0 || !keep(&e.affiliate) {
            continue;
        }
        let b = out.entry((e.affiliate.clone(), e.currency)).or_default();
        let slot = match (e.status, e.paid_in()) {
            (Status::Approved, Some(_)) => &mut b.paid,
            (Status::Approved, None) => &mut b.approved,
            (Status::Pending, _) => &mut b.pending,
            _ => continue,
        };
        *slot = slot.saturating_add(e.amount);
    }
    out
}

/// One balance as JSON, with the minimum a run needs (from the program) and whether it is met.
pub fn balance_json(affiliate: &str, currency: Currency, b: &Balance, minimum: i64) -> Value {
    let money = |v: i64| format_minor(v, currency);
    json!({
        "affiliate": affiliate,
        "currency": currency.code(),
        "approved": money(b.approved),
        "pending": money(b.pending),
        "paid": money(b.paid),
        "minimum": money(minimum),
        "payable": b.approved > 0 && b.approved >= minimum,
    })
}

/// A payout run and what it paid, per affiliate and currency.
#[derive(Debug, Clone)]
pub struct Run {
    /// The run's own ledger entry (kind `payout`; `txid` is the payout ID).
    pub entry: Entry,
    /// `(affiliate, currency)` → (entries, total).
    pub lines: BTreeMap<(String, Currency), (u64, i64)>,
}

impl Run {
    pub fn id(&self) -> &str {
        &self.entry.txid
    }

    pub fn json(&self, with_lines: bool) -> Value {
        let state = match (self.entry.status, self.entry.reversed_by) {
            (Status::Approved, None) => "paid",
            (Status::Approved, Some(_)) => "voided",
            _ => "not_applied",
        };
        let mut totals: BTreeMap<Currency, (u64, i64)> = BTreeMap::new();
        for ((_, c), (n, v)) in &self.lines {
            let t = totals.entry(*c).or_default();
            t.0 += n;
            t.1 = t.1.saturating_add(*v);
        }
        let mut v = json!({
            "payout": self.id(),
            "entry": self.entry.id.to_string(),
            "state": state,
            "time": tally_model::time::format_ts(self.entry.ts_ms),
            "voided_by": self.entry.reversed_by,
            "rule": self.entry.rule,
            "affiliates": self.lines.keys().map(|(a, _)| a.as_str()).collect::<std::collections::BTreeSet<_>>().len(),
            "totals": totals.iter().map(|(c, (n, v))| json!({"currency": c.code(), "entries": n, "amount": format_minor(*v, *c)})).collect::<Vec<_>>(),
        });
        if with_lines {
            v["lines"] = self
                .lines
                .iter()
                .map(|((a, c), (n, t))| json!({"affiliate": a, "currency": c.code(), "entries": n, "amount": format_minor(*t, *c)}))
                .collect();
        }
        v
    }
}

/// Every payout run in the ledger, in log order, with what each paid (voided runs included:
/// the entries keep the mark of the run that paid them).
pub fn runs(entries: impl IntoIterator<Item = impl Borrow<Entry>>) -> Vec<Run> {
    let mut runs: BTreeMap<u64, Run> = BTreeMap::new();
    let mut paid: Vec<(u64, String, Currency, i64)> = Vec::new();
    for e in entries {
        let e = e.borrow();
        if e.kind == Kind::Payout {
            runs.insert(e.id.seq, Run { entry: e.clone(), lines: BTreeMap::new() });
        }
        for p in e.payments.iter().filter(|p| !p.payout.is_empty()) {
            paid.push((p.seq, e.affiliate.clone(), e.currency, e.amount));
        }
    }
    for (seq, affiliate, currency, amount) in paid {
        if let Some(run) = runs.get_mut(&seq) {
            let line = run.lines.entry((affiliate, currency)).or_default();
            line.0 += 1;
            line.1 = line.1.saturating_add(amount);
        }
    }
    runs.into_values().collect()
}

/// An affiliate's statement of one payout run: the entries the run paid them, and the total
/// per currency.
#[derive(Debug, Clone)]
pub struct Statement {
    pub payout: String,
    pub affiliate: String,
    /// The run's sequence number (its ledger entry's).
    pub run_seq: u64,
    pub run_ts_ms: u64,
    pub voided_by: Option<u64>,
    pub entries: Vec<Entry>,
}

/// The statement columns, in order (a `total` row per currency ends the CSV).
pub const STATEMENT_COLUMNS: &[&str] = &[
    "payout",
    "affiliate",
    "entry",
    "date",
    "kind",
    "offer",
    "goal",
    "txid",
    "sale_amount",
    "amount",
    "currency",
    "rule",
];

impl Statement {
    pub fn totals(&self) -> BTreeMap<Currency, (u64, i64)> {
        let mut t: BTreeMap<Currency, (u64, i64)> = BTreeMap::new();
        for e in &self.entries {
            let x = t.entry(e.currency).or_default();
            x.0 += 1;
            x.1 = x.1.saturating_add(e.amount);
        }
        t
    }

    pub fn json(&self) -> Value {
        json!({
            "payout": self.payout,
            "affiliate": self.affiliate,
            "paid_at": tally_model::time::format_ts(self.run_ts_ms),
            "run_entry": self.run_seq.to_string(),
            "voided_by": self.voided_by,
            "entries": self.entries.iter().map(|e| json!({
                "entry": e.id.to_string(),
                "date": tally_model::time::format_day(tally_model::time::day_of(e.ts_ms)),
                "kind": e.kind.as_str(),
                "offer": e.offer,
                "goal": e.goal,
                "txid": e.txid,
                "sale_amount": e.sale_amount.map(|a| format_minor(a, e.currency)),
                "amount": format_minor(e.amount, e.currency),
                "currency": e.currency.code(),
                "rule": e.rule,
            })).collect::<Vec<_>>(),
            "totals": self.totals().iter().map(|(c, (n, v))| json!({"currency": c.code(), "entries": n, "amount": format_minor(*v, *c)})).collect::<Vec<_>>(),
        })
    }

    /// RFC 4180 CSV: a header of [`STATEMENT_COLUMNS`], a row per entry, a `total` row per
    /// currency.
    pub fn csv(&self) -> String {
        let mut w = csv::WriterBuilder::new().terminator(csv::Terminator::Any(b'\n')).from_writer(Vec::new());
        let _ = w.write_record(STATEMENT_COLUMNS);
        for e in &self.entries {
            let _ = w.write_record([
                self.payout.as_str(),
                self.affiliate.as_str(),
                &e.id.to_string(),
                &tally_model::time::format_day(tally_model::time::day_of(e.ts_ms)),
                e.kind.as_str(),
                &e.offer,
                &e.goal,
                &e.txid,
                &e.sale_amount.map(|a| format_minor(a, e.currency)).unwrap_or_default(),
                &format_minor(e.amount, e.currency),
                e.currency.code(),
                &e.rule,
            ]);
        }
        for (c, (n, v)) in self.totals() {
            let _ = w.write_record([
                self.payout.as_str(),
                self.affiliate.as_str(),
                "",
                "",
                "total",
                "",
                "",
                "",
                "",
                &format_minor(v, c),
                c.code(),
                &format!("{n} entries"),
            ]);
        }
        String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
    }
}

/// Whether a payout report needs `e`: a run's entry, or an entry some run paid.
pub fn concerns_payouts(e: &Entry) -> bool {
    e.kind == Kind::Payout || !e.payments.is_empty()
}

/// `affiliate`'s statement of payout run `payout`, `None` if there is no such run. An
/// affiliate the run did not pay gets a statement with no entries. `entries` needs only
/// those [`concerns_payouts`] keeps.
pub fn statement<'a>(
    entries: impl IntoIterator<Item = &'a Entry> + Clone,
    payout: &str,
    affiliate: &str,
) -> Option<Statement> {
    let run = entries
        .clone()
        .into_iter()
        .find(|e| e.kind == Kind::Payout && e.txid == payout && e.status == Status::Approved)?;
    let paid = entries
        .into_iter()
        .filter(|e| e.affiliate == affiliate && e.payments.iter().any(|p| p.seq == run.id.seq && p.payout == payout))
        .cloned()
        .collect();
    Some(Statement {
        payout: payout.to_owned(),
        affiliate: affiliate.to_owned(),
        run_seq: run.id.seq,
        run_ts_ms: run.ts_ms,
        voided_by: run.reversed_by,
        entries: paid,
    })
}
