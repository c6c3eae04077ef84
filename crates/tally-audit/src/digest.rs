//! The ledger's canonical form: one CSV row per entry, and a BLAKE3 digest over those rows.
//!
//! The digest is BLAKE3 of the selected entries' rows, in entry-id order, written exactly as
//! `tally commissions --format csv` writes them without its header line (RFC 4180 quoting,
//! `\n` line ends, columns [`COLUMNS`]). Anyone holding that CSV can recompute it with a
//! stock tool (`tail -n +2 ledger.csv | b3sum`), without Tally: two parties compare ledgers
//! by one line, and neither has to trust the other's software.

use serde_json::Value;
use tally_attribution::Entry;
use tally_model::format_minor;

/// Version of the canonical form, printed next to every digest; a change of columns is a new
/// version, never a silent change of digests.
/// v2 (December 2026) added `source`; v3 (December 2026) added `payout`.
pub const DIGEST_FORM: &str = "tally-ledger-csv-v3";

/// The columns of a commission row, in order.
pub const COLUMNS: &[&str] = &[
    "id",
    "date",
    "ts_ms",
    "kind",
    "status",
    "reason",
    "affiliate",
    "offer",
    "goal",
    "click_id",
    "coupon",
    "sub1",
    "txid",
    "sale_amount",
    "amount",
    "currency",
    "rule",
    "approve_at_ms",
    "approved_seq",
    "refers_to",
    "reversed_by",
    "program",
    "source",
    "payout",
];

/// One entry as `(column, value)` pairs in [`COLUMNS`] order (numbers stay numbers for JSON).
pub fn row(e: &Entry) -> Vec<(&'static str, Value)> {
    let opt = |v: Option<String>| Value::from(v.unwrap_or_default());
    vec![
        ("id", e.id.to_string().into()),
        ("date", tally_model::time::format_day(tally_model::time::day_of(e.ts_ms)).into()),
        ("ts_ms", e.ts_ms.into()),
        ("kind", e.kind.as_str().into()),
        ("status", e.status.as_str().into()),
        ("reason", e.reason.as_str().into()),
        ("affiliate", e.affiliate.as_str().into()),
        ("offer", e.offer.as_str().into()),
        ("goal", e.goal.as_str().into()),
        ("click_id", opt(e.click_id.map(|c| c.to_string()))),
        ("coupon", e.coupon.as_str().into()),
        ("sub1", e.sub1.as_str().into()),
        ("txid", e.txid.as_str().into()),
        // Exact decimal strings: money never passes through a float.
        ("sale_amount", opt(e.sale_amount.map(|a| format_minor(a, e.currency)))),
        ("amount", format_minor(e.amount, e.currency).into()),
        ("currency", e.currency.code().into()),
        ("rule", e.rule.as_str().into()),
        ("approve_at_ms", opt(e.approve_at_ms.map(|v| v.to_string()))),
        ("approved_seq", opt(e.approved_seq.map(|v| v.to_string()))),
        ("refers_to", opt(e.refers_to.map(|v| v.to_string()))),
        ("reversed_by", opt(e.reversed_by.map(|v| v.to_string()))),
        ("program", e.program.as_str().into()),
        ("source", e.source.as_str().into()),
        ("payout", e.paid_in().unwrap_or("").into()),
    ]
}

/// A value as it appears in a CSV cell.
pub fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The entry's CSV cells, in [`COLUMNS`] order.
pub fn cells(e: &Entry) -> Vec<String> {
    row(e).iter().map(|(_, v)| cell(v)).collect()
}

/// Which entries a digest or a comparison covers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub affiliate: Option<String>,
    pub offer: Option<String>,
    /// Entry time (`ts_ms`, the time of the event that created it), inclusive.
    pub from_ms: Option<u64>,
    /// Entry time, exclusive.
    pub until_ms: Option<u64>,
}

impl Filter {
    pub fn matches(&self, e: &Entry) -> bool {
        self.affiliate.as_deref().is_none_or(|a| e.affiliate == a)
            && self.offer.as_deref().is_none_or(|o| e.offer == o)
            && self.from_ms.is_none_or(|t| e.ts_ms >= t)
            && self.until_ms.is_none_or(|t| e.ts_ms < t)
    }
}

/// Accumulates the canonical digest of entries added in id order.
#[derive(Debug)]
pub struct Digest {
    writer: csv::Writer<HashWriter>,
    entries: u64,
}

#[derive(Debug)]
struct HashWriter(blake3::Hasher);

impl std::io::Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Default for Digest {
    fn default() -> Self {
        Digest { writer: csv::Writer::from_writer(HashWriter(blake3::Hasher::new())), entries: 0 }
    }
}

impl Digest {
    pub fn add(&mut self, e: &Entry) {
        // Writing into a hasher cannot fail; the csv writer only reports I/O errors.
        let _ = self.writer.write_record(cells(e));
        self.entries += 1;
    }

    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// The hex digest of what was added.
    pub fn finish(mut self) -> String {
        // Flushing into a hasher cannot fail.
        let _ = self.writer.flush();
        self.writer.get_ref().0.finalize().to_hex().to_string()
    }
}

/// The digest of every entry of `state` that `filter` selects.
pub fn ledger_digest(state: &tally_attribution::State, filter: &Filter) -> Result<(u64, String), crate::AuditError> {
    let mut d = Digest::default();
    for e in state.entries() {
        let e = e?;
        if filter.matches(&e) {
            d.add(&e);
        }
    }
    Ok((d.entries(), d.finish()))
}
