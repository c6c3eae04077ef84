//! [`Log`], the handle that opens the database, starts the writer thread, and is the blocking
//! way in: [`Log::submit`], then [`crate::Pending::wait`]. It ties the layers below together
//! and adds nothing to how a batch is gathered or committed.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::commit::Core;
use crate::db::{self, open_error, Committed, Db};
use crate::keys;
use crate::metrics::LogMetrics;
use crate::park::Park;
use crate::queue::{Pending, PendingUnique, Queue};
use crate::reader::LogReader;
use crate::writer::Writer;
use crate::{LogError, LogOptions};

/// A handle to the open log. Cheap to clone; every clone feeds the same writer thread.
#[derive(Clone)]
pub struct Log {
    // Declared before `shared`, so it is dropped first: when the last handle goes, the writer
    // sees the queue close before `Shared`'s drop waits for it.
    queue: Queue,
    shared: Arc<Shared>,
}

struct Shared {
    db: Db,
    committed: Arc<Committed>,
    /// The commit core's health: its last commit (or probe) succeeded.
    healthy: Arc<AtomicBool>,
    writer: Mutex<Option<JoinHandle<()>>>,
    options: LogOptions,
    /// Kept for its statistics object: RocksDB's stall counter lives there.
    db_options: rocksdb::Options,
    metrics: LogMetrics,
    /// Stall time already added to the counter, in microseconds.
    stall_reported_us: Mutex<u64>,
    park: Park,
    /// The commit core, for [`Log::merge`] (the writer and the park hook hold it too).
    core: Arc<Mutex<Core>>,
}

impl Drop for Shared {
    /// The last handle is gone (its sender first, so the writer sees the queue close): wait
    /// for the writer to commit what is queued and exit, so the database is closed before
    /// the handle's drop returns. Left detached, the writer closed it whenever it got there,
    /// and a process exiting meanwhile aborted inside RocksDB ("pthread lock: Invalid
    /// argument"). The writer itself may hold the last reference for a moment; it cannot
    /// wait for itself.
    fn drop(&mut self) {
        let handle = self.writer.get_mut().ok().and_then(Option::take);
        if let Some(h) = handle {
            if h.thread().id() != std::thread::current().id() {
                let _ = h.join();
            }
        }
    }
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log").field("options", &self.shared.options).finish_non_exhaustive()
    }
}

impl Log {
    /// Opens (creating if needed) the log in `dir` and starts its writer thread.
    pub fn open(dir: &Path, options: LogOptions, metrics: LogMetrics) -> Result<Log, LogError> {
        let (db, db_options) = db::open_primary(dir)?;
        let db: Db = Arc::new(db);
        let (queue, rx) = Queue::bounded(options.queue_capacity);
        let core = Core::recover(Arc::clone(&db), options.sync, metrics.clone(), queue.counter())?;
        metrics.queue_capacity.set(queue.capacity() as i64);
        let committed = core.committed();
        let healthy = core.healthy_flag();
        let core = Arc::new(Mutex::new(core));
        let writer = Writer::new(rx, options.max_batch, options.linger, Arc::clone(&core))
            .spawn()
            .map_err(|e| open_error(dir, e))?;
        let shared = Arc::new(Shared {
            db,
            committed,
            healthy,
            writer: Mutex::new(Some(writer)),
            park: Park::new(Arc::clone(&core), options.sync, metrics.clone()),
            core,
            options,
            db_options,
            metrics,
            stall_reported_us: Mutex::new(0),
        });
        Ok(Log { queue, shared })
    }

    /// Enqueues one encoded record without blocking. Fails fast with [`LogError::QueueFull`]
    /// when the writer is behind, or [`LogError::Closed`] after shutdown. The way in for plain
    /// threads (the CLI, the server at start, tests, benchmarks): submit, then
    /// [`Pending::wait`] (many may be in flight first). Tokio tasks use an [`crate::Appender`].
    pub fn submit(&self, record: Vec<u8>) -> Result<Pending, LogError> {
        self.queue.enqueue(record, None).map(Pending)
    }

    /// Like [`Log::submit`], and also tells whether an earlier event was appended with the
    /// same `key` (e.g. a conversion's offer, goal, transaction ID and status). The check and
    /// the index update happen in the writer, atomically with the append, so two concurrent
    /// reports with one key get one "first" and one "duplicate", even across a crash.
    pub fn submit_unique(&self, record: Vec<u8>, key: &[u8]) -> Result<PendingUnique, LogError> {
        self.queue.enqueue(record, Some(*blake3::hash(key).as_bytes()))
    }

    /// A hook for [`tokio::runtime::Builder::on_thread_park`]: a runtime thread with nothing
    /// left to run commits its appenders' staged events itself before it sleeps, instead of
    /// handing them to the writer thread and sleeping until the writer wakes it.
    ///
    /// Why: under load every click waits for its commit, so the runtime thread runs out of
    /// work once a group is staged. Handing the group over then cost a wake-up of the writer
    /// (which on a busy 2-CPU machine waited ~50 µs for a CPU), the commit, and a wake-up
    /// back (~25 µs): about a tenth of both CPUs sat idle. Committing in the thread's own
    /// idle moment removes both wake-ups. The writer thread still takes everything else:
    /// large groups (see [`crate::Appender`]), keyed appends (their duplicate check reads the
    /// database), every commit under `sync = "batch"` (an fsync must not stall the runtime),
    /// anything while the writer is mid-commit, and any write RocksDB would stall.
    pub fn park_hook(&self) -> impl Fn() + Send + Sync + 'static {
        self.shared.park.install();
        let log = self.clone();
        move || log.shared.park.commit_staged(&log.queue)
    }

    pub(crate) fn queue(&self) -> &Queue {
        &self.queue
    }

    pub(crate) fn db(&self) -> &Db {
        &self.shared.db
    }

    /// The commit core, locked (a poisoned lock is taken as it is: the core's state is only
    /// changed after a successful write).
    pub(crate) fn core(&self) -> std::sync::MutexGuard<'_, Core> {
        self.shared.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn park(&self) -> &Park {
        &self.shared.park
    }

    /// Staged events beyond which an appender hands its group to the writer at once.
    pub(crate) fn staging_limit(&self) -> usize {
        self.shared.park.staging_limit(self.shared.options.max_batch)
    }

    /// True while the writer runs and its last commit succeeded.
    pub fn is_writable(&self) -> bool {
        self.shared.healthy.load(Ordering::Relaxed)
            && self.shared.writer.lock().map(|w| w.as_ref().is_some_and(|h| !h.is_finished())).unwrap_or(false)
    }

    /// Events waiting for the writer right now.
    pub fn queue_len(&self) -> usize {
        self.queue.len()
    }

    /// Refreshes the gauges that are read rather than counted: queue depth, RocksDB's
    /// estimate of bytes waiting for compaction, and write-stall time. Calls into RocksDB
    /// (in-memory properties, no I/O), so call it from a plain or blocking thread.
    pub fn sample_metrics(&self) {
        let s = &self.shared;
        s.metrics.queue_depth.set(self.queue_len() as i64);
        let pending: u64 = keys::ALL_CFS
            .iter()
            .filter_map(|name| s.db.cf_handle(name))
            .filter_map(|cf| {
                s.db.property_int_value_cf(cf, rocksdb::properties::ESTIMATE_PENDING_COMPACTION_BYTES).ok().flatten()
            })
            .sum();
        s.metrics.pending_compaction_bytes.set(i64::try_from(pending).unwrap_or(i64::MAX));
        let stalled_us = s.db_options.get_ticker_count(rocksdb::statistics::Ticker::StallMicros);
        if let Ok(mut reported) = s.stall_reported_us.lock() {
            if stalled_us > *reported {
                s.metrics.stall_seconds.inc_by((stalled_us - *reported) as f64 / 1e6);
                *reported = stalled_us;
            }
        }
    }

    /// The newest committed sequence number (0 for an empty log).
    pub fn last_committed(&self) -> u64 {
        self.shared.committed.seq.lock().map(|s| *s).unwrap_or(0)
    }

    /// The key of visitor pseudonyms for program day `day` (days since 1970-01-01 in the
    /// program's calendar): random, created and stored durably on first use, deleted by
    /// [`Log::apply_retention`] once the day is past retention. Reads (and on a day's first
    /// use, syncs) the database: call it off the runtime's threads.
    pub fn day_key(&self, day: u32) -> Result<[u8; 32], LogError> {
        crate::privacy::day_key(&self.shared.db, day)
    }

    /// The key of customer pseudonyms on conversions, random per log unless the operator
    /// gives one (a cluster's edges must share it), created on first use and kept for good.
    /// Blocking.
    pub fn customer_key(&self) -> Result<[u8; 32], LogError> {
        crate::privacy::customer_key(&self.shared.db)
    }

    /// Erases the personal fields of the records `what` matches (see [`crate::Erasure`]),
    /// leaving their chained bytes, so `verify` and replay are unaffected. Reads the whole
    /// log; blocking.
    pub fn erase(&self, what: &crate::Erasure) -> Result<crate::ErasureReport, LogError> {
        crate::privacy::erase(&self.shared.db, what)
    }

    /// Erases the personal fields of records stamped before `cutoff_ms` and deletes the day
    /// keys of days before it. Resumes where the previous pass stopped; blocking.
    pub fn apply_retention(&self, cutoff_ms: u64) -> Result<crate::RetentionReport, LogError> {
        crate::privacy::retain(&self.shared.db, cutoff_ms)
    }

    /// A reader sharing this process's database handle.
    pub fn reader(&self) -> LogReader {
        LogReader::from_primary(Arc::clone(&self.shared.db), Arc::clone(&self.shared.committed))
    }

    /// Stops accepting appends, commits everything already queued, and waits for the writer
    /// to finish. Appends submitted after this get [`LogError::Closed`].
    pub fn close(&self) {
        self.queue.close();
        let handle = self.shared.writer.lock().ok().and_then(|mut w| w.take());
        if let Some(h) = handle {
            let _ = h.join();
        }
        if let Err(e) = self.shared.db.flush_wal(true) {
            tracing::error!(error = %e, "final WAL sync failed");
        }
    }
}
