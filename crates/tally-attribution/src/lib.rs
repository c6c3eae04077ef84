//! Tally's attribution worker: joins conversions to clicks, applies the program's rules and
//! keeps the commission ledger and per-day stats.
//!
//! - [`engine::apply`] is the pure core: one event in, ledger changes out, time taken only
//!   from event timestamps. Live attribution, replay and tests all run it.
//! - [`State`] holds the click index, dedup keys, ledger, counters, holds and stats, in a
//!   RocksDB of its own, committed atomically with the worker's checkpoint.
//! - [`Worker`] feeds the log to the engine, in-process (woken by commits) or from another
//!   process (a secondary instance of the log), and commits in groups.
//! - [`report`] aggregates stats rows for `tally report`.

mod clicks;
pub mod config;
pub mod deliveries;
pub mod engine;
mod keys;
pub mod ledger;
pub mod metrics;
mod notify;
pub mod pipeline;
mod reader;
pub mod report;
mod runs;
pub mod snapshots;
pub mod state;
pub mod stats;
mod store;
#[cfg(feature = "test-util")]
pub mod testing;
pub mod worker;
mod write_set;

use std::path::PathBuf;

pub use config::{AttributionConfig, AttributionSection};
pub use engine::{apply, apply_click, ClickIn, Outputs};
pub use ledger::{Adjustment, Entry, EntryId, Kind, Payment, Reason, Source, StatsKey, Status};
pub use metrics::AttributionMetrics;
pub use reader::LedgerReader;
pub use snapshots::SnapshotPolicy;
pub use state::{Checkpoint, State};
pub use stats::{Counters, Row};
pub use worker::{Worker, WorkerOptions};

/// The directory of the delivery log inside a data directory ([`deliveries`]).
pub fn deliveries_dir(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("deliveries")
}

/// The directory of the attribution state inside a data directory.
pub fn state_dir(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("attribution")
}

/// Copies the attribution state in `dir` into `out` (which must not exist) as of one point
/// in time, for `tally snapshot`: a checkpoint when no worker holds it, else a copy through
/// a secondary instance. The copy opens like the original.
pub fn snapshot_state_to(
    dir: &std::path::Path,
    out: &std::path::Path,
) -> Result<tally_log::SnapshotMethod, AttributionError> {
    store::copy(dir, out)
}

#[derive(Debug, thiserror::Error)]
pub enum AttributionError {
    #[error("cannot open attribution state {}: {reason}", .dir.display())]
    Open { dir: PathBuf, reason: String },
    #[error("attribution state: {0}")]
    Store(String),
    #[error(
        "attribution state {} has layout {found}; this build reads layout {}: start the worker \
         (`tally serve` or `tally attribute`) to rebuild it from the log",
        .dir.display(),
        store::FORMAT
    )]
    Format { dir: PathBuf, found: u32 },
    #[error("attribution state is corrupt: {0}")]
    Corrupt(String),
    #[error("event {got} applied out of order: expected sequence {expected}")]
    OutOfOrder { expected: u64, got: u64 },
    #[error("log record {seq} does not decode: {error}")]
    Record { seq: u64, error: tally_model::RecordError },
    #[error(transparent)]
    Log(#[from] tally_log::LogError),
}

impl AttributionError {
    /// Failures that can pass by themselves (a full disk, a read that failed), after which
    /// the worker reloads its committed state and carries on. The others (a record that does
    /// not decode, a corrupt state) repeat on every try and need an operator.
    pub fn is_transient(&self) -> bool {
        matches!(self, AttributionError::Store(_) | AttributionError::Log(_))
    }
}
