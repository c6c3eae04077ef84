//! The admin API's view of the commission ledger (`tally_edge::LedgerView`): the worker's
//! state in the data directory, opened read-only (a RocksDB secondary) once and caught up
//! with the worker at each request (opening it, which loads the program, took tens of
//! milliseconds per request with a few thousand affiliates). Entries are rendered as `tally
//! commissions --format jsonl` renders them (`tally_audit::digest::row`).

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tally_attribution::{Entry, EntryId, LedgerReader, Status};
use tally_audit::payouts;
use tally_edge::admin::{HookError, StatementDoc};
use tally_edge::{LedgerQuery, LedgerView};
use tally_model::Program;

/// The ledger of the attribution state in `dir` (`tally_attribution::state_dir`).
pub struct StateLedger {
    dir: PathBuf,
    /// The reader, once the state could be opened; requests take turns with it.
    reader: Mutex<Option<LedgerReader>>,
}

impl std::fmt::Debug for StateLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateLedger").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl StateLedger {
    pub fn new(data_dir: &std::path::Path) -> StateLedger {
        StateLedger { dir: tally_attribution::state_dir(data_dir), reader: Mutex::new(None) }
    }

    /// Runs `f` on the reader, caught up with what the worker has committed. A reader that
    /// cannot catch up (the worker rebuilt its state) is opened again.
    fn with<T>(&self, f: impl FnOnce(&LedgerReader) -> Result<T, HookError>) -> Result<T, HookError> {
        let mut guard = self.reader.lock().map_err(|_| HookError::new(500, "the ledger reader is poisoned"))?;
        let caught_up = guard.take().and_then(|mut r| r.refresh_ledger().is_ok().then_some(r));
        let fresh = match caught_up {
            Some(r) => r,
            None => LedgerReader::open(&self.dir)
                .map_err(|e| HookError::new(503, format!("attribution state unavailable: {e}")))?,
        };
        let reader = guard.insert(fresh);
        f(reader)
    }
}

fn row(e: &Entry) -> Value {
    Value::Object(tally_audit::digest::row(e).into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

fn entry_id(id: &str) -> Result<EntryId, HookError> {
    EntryId::parse(id)
        .ok_or_else(|| HookError::new(400, format!("\"{id}\" is not a ledger entry ID (like 1234 or 1234.1)")))
}

fn read_error(e: tally_attribution::AttributionError) -> HookError {
    HookError::new(500, format!("cannot read the ledger: {e}"))
}

impl LedgerView for StateLedger {
    fn entry(&self, id: &str) -> Result<Option<Value>, HookError> {
        let id = entry_id(id)?;
        self.with(|r| Ok(r.entry(id).map_err(read_error)?.map(|e| row(&e))))
    }

    fn related(&self, id: &str) -> Result<Vec<Value>, HookError> {
        let id = entry_id(id)?;
        self.with(|reader| {
            let mut out = Vec::new();
            for e in reader.entries() {
                let e = e.map_err(read_error)?;
                // What refers to an entry was made by a later event.
                if e.id.seq > id.seq && e.refers_to == Some(id) {
                    out.push(row(&e));
                }
            }
            Ok(out)
        })
    }

    fn list(&self, q: &LedgerQuery) -> Result<Value, HookError> {
        let after = q.after.as_deref().map(entry_id).transpose()?;
        if let Some(s) = q.status.as_deref().filter(|s| Status::parse(s).is_none()) {
            return Err(HookError::new(
                400,
                format!("status: \"{s}\" is not pending, approved, rejected, rejected_cap, duplicate or unattributed"),
            ));
        }
        self.with(|reader| {
            let mut entries = Vec::new();
            let mut next = None;
            for e in reader.entries() {
                let e = e.map_err(read_error)?;
                if after.is_some_and(|a| e.id <= a) {
                    continue;
                }
                let keep = q.affiliate.as_deref().is_none_or(|a| e.affiliate == a)
                    && q.offer.as_deref().is_none_or(|o| e.offer == o)
                    && q.status.as_deref().is_none_or(|s| e.status.as_str() == s)
                    && q.kind.as_deref().is_none_or(|k| e.kind.as_str() == k);
                if !keep {
                    continue;
                }
                if entries.len() == q.limit {
                    next = entries.last().and_then(|v: &Value| v["id"].as_str().map(str::to_owned));
                    break;
                }
                entries.push(row(&e));
            }
            Ok(json!({
                "entries": entries,
                "next": next,
                "attributed_through_seq": reader.checkpoint().position,
            }))
        })
    }

    fn wait_applied(&self, seq: u64, timeout: Duration) -> Result<bool, HookError> {
        let deadline = Instant::now() + timeout;
        loop {
            // The reader is released between polls: other requests go on meanwhile.
            if self.with(|r| Ok(r.checkpoint().position >= seq))? {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn made_by(&self, seq: u64) -> Result<Vec<Value>, HookError> {
        self.with(|r| Ok(r.entries_range(seq, seq).map_err(read_error)?.iter().map(row).collect()))
    }

    fn balances(&self, program: &Program, affiliate: Option<&str>) -> Result<Value, HookError> {
        self.with(|reader| {
            // Streamed: a balance is a few sums, the ledger may be millions of entries.
            let mut failed = None;
            let entries = reader.entries().map_while(|r| r.map_err(|e| failed = Some(e)).ok());
            let all = payouts::balances(entries, |a| affiliate.is_none_or(|x| x == a));
            if let Some(e) = failed {
                return Err(read_error(e));
            }
            Ok(all
                .iter()
                .map(|((a, c), b)| payouts::balance_json(a, *c, b, program.payout_minimum_for(a, *c)))
                .collect())
        })
    }

    fn payouts(&self, affiliate: Option<&str>, lines: bool) -> Result<Value, HookError> {
        let relevant = self.payout_entries()?;
        let mut runs = payouts::runs(&relevant);
        if let Some(a) = affiliate {
            runs.retain_mut(|r| {
                r.lines.retain(|(x, _), _| x == a);
                !r.lines.is_empty()
            });
        }
        Ok(runs.iter().map(|r| r.json(lines)).collect())
    }

    fn statement(&self, payout: &str, affiliate: &str) -> Result<Option<StatementDoc>, HookError> {
        let relevant = self.payout_entries()?;
        Ok(payouts::statement(&relevant, payout, affiliate).map(|s| StatementDoc { json: s.json(), csv: s.csv() }))
    }
}

impl StateLedger {
    /// The entries payout reports need ([`payouts::concerns_payouts`]).
    fn payout_entries(&self) -> Result<Vec<Entry>, HookError> {
        self.with(|reader| {
            let mut out = Vec::new();
            for e in reader.entries() {
                let e = e.map_err(read_error)?;
                if payouts::concerns_payouts(&e) {
                    out.push(e);
                }
            }
            Ok(out)
        })
    }
}
