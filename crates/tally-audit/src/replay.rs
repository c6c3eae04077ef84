//! Replay: re-run attribution over the raw log into a scratch state and compare the result
//! with the live ledger, entry by entry.
//!
//! The scratch state is never written to disk: a replay from the start uses an in-memory
//! state; a replay of a window that starts mid-log starts from the newest attribution
//! snapshot before the window (see `tally_attribution::snapshots`), read-only, with every
//! change kept in memory, and applies the events between the snapshot and the window
//! unchecked before checking the window's. Without a snapshot it starts from the log's first
//! event: slower, equally correct.
//!
//! What is compared: every entry created by an event of the window, and every older entry an
//! event of the window changed (an approval, a reversal), each as it stood after the window's
//! last event. The live ledger went on past the window, so its entries are taken back to that
//! point with [`Entry::as_of`]. The live worker may be behind the log: the window ends at its
//! position at the latest.
//!
//! Reading and decoding the log run on a thread of their own
//! (`tally_attribution::pipeline`), so the engine's thread only applies events.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use tally_attribution::{apply, snapshots, state_dir, AttributionError, Entry, EntryId, LedgerReader, Outputs, State};
use tally_log::LogReader;
use tally_model::Event;

use crate::digest::{Digest, Filter};
use crate::AuditError;

/// A window bound: a sequence number or a UTC time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    Seq(u64),
    /// Milliseconds since the epoch.
    Time(u64),
}

impl Bound {
    /// Digits are a sequence number; otherwise `YYYY-MM-DD` or `YYYY-MM-DDTHH:MM:SS[.mmm]Z`.
    pub fn parse(s: &str) -> Option<Bound> {
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return s.parse().ok().map(Bound::Seq);
        }
        tally_model::time::parse_time(s).map(Bound::Time)
    }
}

#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    /// First event of the window: a sequence number, or the first event at or after a time.
    pub from: Option<Bound>,
    /// End of the window, exclusive: the window holds the events before this sequence number
    /// or time (half-open like `tally export`, so consecutive windows tile).
    pub to: Option<Bound>,
    /// Compare only entries of this affiliate and offer (the replay still applies every
    /// event: caps, tiers and milestones depend on all of them).
    pub filter: Filter,
    /// Start from the log's first event even when a snapshot would do.
    pub no_snapshots: bool,
    /// Skip the comparison (for `--explain`, which only watches).
    pub no_compare: bool,
}

/// One entry on which the replay and the live ledger disagree.
#[derive(Debug, Clone)]
pub struct Difference {
    pub id: EntryId,
    /// `None`: the live ledger lacks an entry the replay produced ("missing").
    pub live: Option<Entry>,
    /// `None`: the live ledger has an entry the replay did not produce ("extra").
    pub replayed: Option<Entry>,
}

/// What a replay did and found.
#[derive(Debug, Clone, Default)]
pub struct ReplayReport {
    /// The window compared, inclusive.
    pub from: u64,
    pub to: u64,
    pub log_head: u64,
    /// The live worker's position; `None` when no worker has run on the directory.
    pub live_position: Option<u64>,
    /// The snapshot the replay started from, and its position (0 and `None`: from empty).
    pub started_after: u64,
    pub snapshot: Option<PathBuf>,
    /// Events applied, including those between the snapshot and the window.
    pub events: u64,
    pub seconds: f64,
    pub compared: u64,
    pub matched: u64,
    pub differences: Vec<Difference>,
    /// Amounts owed (pending and approved entries) per (affiliate, currency): (replayed, live).
    pub totals: BTreeMap<(String, String), (i64, i64)>,
    pub digest_replayed: String,
    pub digest_live: String,
}

impl ReplayReport {
    pub fn missing(&self) -> usize {
        self.differences.iter().filter(|d| d.live.is_none()).count()
    }

    pub fn extra(&self) -> usize {
        self.differences.iter().filter(|d| d.replayed.is_none()).count()
    }

    pub fn differing(&self) -> usize {
        self.differences.iter().filter(|d| d.live.is_some() && d.replayed.is_some()).count()
    }

    pub fn is_ok(&self) -> bool {
        self.differences.is_empty()
    }

    pub fn events_per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.events as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// An in-memory replay drops expired clicks this often (in events).
const PURGE_EVERY: u64 = 1 << 16;

/// The first sequence number whose event time is at least `ts`, by binary search: the edge
/// stamps events as it logs them, so times follow sequence numbers (up to clock steps,
/// which move the bound by the size of the step, never break the replay).
pub fn seq_at_time(reader: &LogReader, ts: u64, first: u64, last: u64) -> Result<u64, AuditError> {
    let (mut lo, mut hi) = (first, last + 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let ts_mid = match reader.read_range(mid, 1)?.first() {
            Some((_, bytes)) => {
                tally_model::decode(bytes).map_err(|error| AuditError::Record { seq: mid, error })?.ts_ms()
            }
            None => u64::MAX,
        };
        if ts_mid < ts {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    Ok(lo)
}

/// Replays `data_dir`'s log as `options` say; `observe` sees every event applied with what
/// it did to the ledger.
pub fn replay(
    data_dir: &Path,
    options: &ReplayOptions,
    observe: &mut dyn FnMut(u64, &Event, &Outputs),
) -> Result<ReplayReport, AuditError> {
    let reader = LogReader::open_secondary(data_dir)?;
    let log_head = reader.last_seq()?.unwrap_or(0);
    let live_dir = state_dir(data_dir);
    let live = if live_dir.join("CURRENT").exists() { Some(LedgerReader::open(&live_dir)?) } else { None };
    let live_position = live.as_ref().map(|s| s.checkpoint().position);
    let limit = live_position.unwrap_or(log_head).min(log_head);

    let from = match options.from {
        None => 1,
        Some(Bound::Seq(s)) => s.max(1),
        Some(Bound::Time(t)) => seq_at_time(&reader, t, 1, log_head)?,
    };
    let to = match options.to {
        None => limit,
        Some(Bound::Seq(s)) => s.saturating_sub(1).min(limit),
        Some(Bound::Time(t)) => seq_at_time(&reader, t, 1, log_head)?.saturating_sub(1).min(limit),
    };
    if from > to {
        return Err(AuditError::EmptyWindow { from, to, limit });
    }

    let mut report = ReplayReport { from, to, log_head, live_position, ..ReplayReport::default() };
    let mut state = State::in_memory();
    state.ledger_only();
    let mut in_memory = true;
    if !options.no_snapshots && from > 1 {
        let usable = match snapshots::latest_before(&snapshots::dir(data_dir), from)? {
            Some((position, path)) => match State::open_snapshot(&path) {
                Ok(s) => Some((position, path, s)),
                // Written by a build with another state layout: replay from the start instead.
                Err(e @ AttributionError::Format { .. }) => {
                    tracing::warn!(error = %e, "snapshot not used");
                    None
                }
                Err(e) => return Err(e.into()),
            },
            None => None,
        };
        if let Some((position, path, snapshot)) = usable {
            state = snapshot;
            state.ledger_only();
            if state.checkpoint().position != position {
                return Err(AuditError::Snapshot {
                    dir: path,
                    reason: format!("holds position {}, its name says {position}", state.checkpoint().position),
                });
            }
            in_memory = false;
            report.started_after = position;
            report.snapshot = Some(path);
        }
    }

    let started = Instant::now();
    let mut touched: BTreeSet<EntryId> = BTreeSet::new();
    let start = report.started_after + 1;
    let mut since_purge = 0u64;
    let applied = tally_attribution::pipeline::for_each_batch(
        &reader,
        start,
        to,
        |batch: &Vec<(u64, Event)>| -> Result<(), AuditError> {
            for (seq, event) in batch {
                let out = apply(&mut state, *seq, event)?;
                if *seq >= from && !options.no_compare {
                    touched.extend(out.entries.iter().map(|e| e.id));
                }
                observe(*seq, event, &out);
            }
            since_purge += batch.len() as u64;
            if in_memory && since_purge >= PURGE_EVERY {
                since_purge = 0;
                state.commit()?;
            }
            Ok(())
        },
    )?;
    report.events = applied;
    report.seconds = started.elapsed().as_secs_f64();
    if state.checkpoint().position < to {
        return Err(AuditError::Truncated { expected: to, got: state.checkpoint().position });
    }
    if options.no_compare {
        return Ok(report);
    }

    // Live entries of the window the replay may not have produced ("extra").
    let mut ids = touched;
    if let Some(live) = &live {
        ids.extend(live.entries_range(from, to)?.into_iter().map(|e| e.id));
    }
    let (mut digest_replayed, mut digest_live) = (Digest::default(), Digest::default());
    let filter = Filter {
        affiliate: options.filter.affiliate.clone(),
        offer: options.filter.offer.clone(),
        ..Filter::default()
    };
    for id in ids {
        let live_entry = match &live {
            Some(l) => l.entry(id)?.and_then(|e| e.as_of(to)),
            None => None,
        };
        let replayed = state.entry(id)?;
        let selected = [&live_entry, &replayed].into_iter().flatten().any(|e| filter.matches(e));
        if !selected {
            continue;
        }
        report.compared += 1;
        for (e, side) in [(&replayed, 0), (&live_entry, 1)] {
            if let Some(e) = e {
                if side == 0 {
                    digest_replayed.add(e);
                } else {
                    digest_live.add(e);
                }
                if e.status.counts() {
                    let t = report.totals.entry((e.affiliate.clone(), e.currency.code().to_owned())).or_default();
                    if side == 0 {
                        t.0 = t.0.saturating_add(e.amount);
                    } else {
                        t.1 = t.1.saturating_add(e.amount);
                    }
                }
            }
        }
        let agree = match (&live_entry, &replayed) {
            (Some(l), Some(r)) => l.agrees_with(r),
            (l, r) => l == r,
        };
        if agree {
            report.matched += 1;
        } else {
            report.differences.push(Difference { id, live: live_entry, replayed });
        }
    }
    report.digest_replayed = digest_replayed.finish();
    report.digest_live = digest_live.finish();
    Ok(report)
}
