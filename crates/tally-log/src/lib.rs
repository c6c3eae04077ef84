//! Tally's durable event log on RocksDB.
//!
//! This is the only crate that talks to RocksDB. It owns:
//! - the **writer thread**, fed by a bounded crossbeam channel, which commits group batches
//!   (bounded by count and a short linger), assigns contiguous `u64` sequence numbers, and
//!   acknowledges each append only after its batch is durable under the configured
//!   [`SyncPolicy`];
//! - the [`Appender`], the front for callers on a tokio runtime: it stages the appends of one
//!   turn of the runtime and hands them to the writer as one message, and delivers their
//!   acknowledgements on the runtime, one wake-up per batch instead of one per event;
//! - [`Log::park_hook`], for a runtime whose thread should commit its staged appends itself
//!   when it runs out of work, rather than wake the writer and sleep until woken back;
//! - **readers** ([`LogReader`]): sequence ranges, an in-process [`Tail`] woken by commits,
//!   and a secondary instance for reading a running server's log from another process;
//! - the tamper-evident **hash chain** ([`chain`]) and [`LogReader::verify`];
//! - point-in-time copies ([`snapshot`]) for `tally snapshot`.
//!
//! On-disk layout, six column families:
//!
//! | CF        | key                       | value                                  |
//! |-----------|---------------------------|----------------------------------------|
//! | `events`  | seq, u64 big-endian       | one record (see `tally_model::record`) |
//! | `chain`   | last seq of a batch, u64 BE | chain entry (see [`chain`])          |
//! | `unique`  | BLAKE3 of a caller's key  | seq of the first event with that key   |
//! | `privacy` | day keys, retention floor | see `privacy`                          |
//! | `bus`     | shipped position; origins | see [`origin`] (logs in a cluster)     |
//! | `program` | seq of a program edit     | empty ([`LogReader::program_edits`])   |
//!
//! The chain covers each record's chained bytes, not a format-3 record's personal trailer:
//! [`Log::erase`] and [`Log::apply_retention`] cut trailers off and `verify` still passes.
//!
//! (Logs written before December 2026 also have an empty `meta` family, for consumer
//! checkpoints that nothing used; it is opened and ignored.)
//!
//! Layers, each using only those before it: `db` (options, column families, open, the
//! commit signal) → `commit` (the commit core: one batch, its sequence numbers and chain
//! entry, its acks) → `queue` (the bounded queue, [`Pending`]) → `writer` (the writer
//! thread) → `park` (commits at park) → `log` ([`Log`], the handle that ties them together
//! and the blocking way in) → `appender` (the async way in). Readers (`reader`, `snapshot`)
//! and the test tools (`testing`) use `db` only; `log` hands out readers.
//!
//! A batch's records, its chain entry and its `unique` entries are written in one RocksDB
//! `WriteBatch`, so a crash leaves either the whole batch or none of it. Sequence numbers
//! start at 1. The `unique` index is derived data: it can be rebuilt from the events.
//!
//! Architecture invariant: no RocksDB call runs on a tokio worker thread from this crate's
//! async API: [`Log::submit`] and [`Appender::submit`] only enqueue (or stage), the appender's
//! task only moves messages, and the returned [`Pending`] only awaits a oneshot. The one
//! exception is opt-in: the hook of [`Log::park_hook`] writes on an idle runtime thread, and
//! only writes that cannot wait (no fsync, no read, no write stall, never behind the writer).

mod appender;
pub mod chain;
mod commit;
pub mod config;
mod db;
mod keys;
mod log;
mod metrics;
pub mod origin;
mod park;
mod privacy;
mod queue;
mod reader;
pub mod snapshot;
#[cfg(feature = "test-util")]
pub mod testing;
mod writer;

use std::time::Duration;

use thiserror::Error;

pub use appender::Appender;
pub use commit::Appended;
pub use config::LogSection;
pub use db::ScratchDir;
pub use log::Log;
pub use metrics::LogMetrics;
pub use origin::{MergeCheckpoint, OriginReport, Shipped};
pub use privacy::{Erasure, ErasureReport, RetentionReport};
pub use queue::{Pending, PendingUnique};
pub use reader::{Anchor, AnchorCheck, LogReader, LogStats, PersonalCounts, Tail, VerifyReport};
pub use snapshot::{snapshot_to, SnapshotMethod};

/// How hard a commit tries before its appends are acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncPolicy {
    /// The batch is written to the RocksDB WAL (the OS page cache): it survives a killed
    /// process but not a power loss.
    #[default]
    None,
    /// The WAL is fsynced once per batch: it survives power loss.
    Batch,
}

impl SyncPolicy {
    pub fn parse(s: &str) -> Option<SyncPolicy> {
        match s {
            "none" => Some(SyncPolicy::None),
            "batch" => Some(SyncPolicy::Batch),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SyncPolicy::None => "none",
            SyncPolicy::Batch => "batch",
        }
    }
}

/// Tuning of the writer.
#[derive(Debug, Clone)]
pub struct LogOptions {
    pub sync: SyncPolicy,
    /// Appends that may wait for the writer, counted in events (staged by an [`Appender`] or
    /// queued); beyond this, [`Log::submit`] and [`Appender::submit`] fail fast with
    /// [`LogError::QueueFull`].
    pub queue_capacity: usize,
    /// Most events in one batch.
    pub max_batch: usize,
    /// How long the writer waits for more events after the first of a batch. Zero means
    /// "take what is queued": the time spent committing one batch already gathers the next.
    pub linger: Duration,
    /// Whether a server installs [`Log::park_hook`] on its runtime, so that a runtime thread
    /// out of work commits its staged events itself. The log does not read it; `tally serve`
    /// does.
    pub commit_on_park: bool,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            sync: SyncPolicy::None,
            queue_capacity: 65_536,
            max_batch: 1024,
            linger: Duration::ZERO,
            commit_on_park: true,
        }
    }
}

#[derive(Debug, Error, Clone)]
pub enum LogError {
    /// The writer's queue is full; the caller should shed (503) or retry later.
    #[error("log queue is full")]
    QueueFull,
    /// The log is shutting down or its writer has stopped.
    #[error("log is closed")]
    Closed,
    /// RocksDB refused the write (disk full, I/O error). Nothing of the batch was stored.
    #[error("log write failed: {0}")]
    Write(String),
    #[error("cannot open log at {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("log read failed: {0}")]
    Read(String),
    #[error("log is corrupt: {0}")]
    Corrupt(String),
}
