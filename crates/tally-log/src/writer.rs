//! The batching writer: one thread owns sequence numbers and the chain head.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use rocksdb::{WriteBatch, WriteOptions};
use tokio::sync::oneshot;

use crate::chain::{BatchHasher, ChainEntry, GENESIS};
use crate::db::{self, cf, open_error, Committed, Db};
use crate::keys::{self, CF_CHAIN, CF_EVENTS, CF_UNIQUE};
use crate::reader::LogReader;
use crate::{LogError, LogMetrics, LogOptions, SyncPolicy};

/// With a park hook, the largest group an appender stages for it; see [`Log::staging_limit`].
const PARK_GROUP: usize = 64;

/// How often a writer whose last commit failed checks, while idle, whether writes work again.
const PROBE_EVERY: Duration = Duration::from_secs(1);

pub(crate) type Ack = oneshot::Sender<Result<Appended, LogError>>;

/// An acknowledgement handed to an [`crate::Appender`]'s task instead of sent from the writer.
pub(crate) type Delivery = (Ack, Result<Appended, LogError>);

/// Where the writer hands the acknowledgements of an appender's items: one message per batch,
/// so a batch costs the appender's runtime one wake-up rather than one per event.
pub(crate) type PumpTx = tokio::sync::mpsc::Sender<Vec<Delivery>>;

pub(crate) enum Msg {
    Append(Item),
    /// Items staged by an appender during one turn of its runtime.
    Batch(Vec<Item>),
    Shutdown,
}

pub(crate) struct Item {
    pub(crate) record: Vec<u8>,
    /// BLAKE3 of the caller's uniqueness key, for [`Log::submit_unique`].
    pub(crate) key: Option<[u8; 32]>,
    pub(crate) ack: Ack,
    /// Set for an appender's items: their acks go to its task in one message per batch.
    pub(crate) pump: Option<Arc<PumpTx>>,
}

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub seq: u64,
    /// For [`Log::submit_unique`]: the sequence number of the first event appended with the
    /// same key, if this is a repeat. The repeat is appended all the same (the log records
    /// every report); the caller decides what a repeat means.
    pub duplicate_of: Option<u64>,
}

/// A stage of appends that a runtime thread about to park commits: an [`crate::Appender`].
/// A trait so that this layer need not know the appender above it.
pub(crate) trait Staged: Send + Sync {
    /// Takes what is staged, leaving the stage empty.
    fn take_staged(&self) -> Vec<Item>;
}

pub(crate) struct Shared {
    db: Db,
    committed: Arc<Committed>,
    /// The writer runs and its last commit (or probe) succeeded; set by the commit core.
    writable: Arc<AtomicBool>,
    writer: Mutex<Option<JoinHandle<()>>>,
    options: LogOptions,
    /// Events submitted and not yet taken by the writer: the queue's bound, in events (an
    /// appender's message carries many).
    queued: Arc<AtomicUsize>,
    /// Set by [`Log::close`]: appends are refused from then on.
    closed: AtomicBool,
    /// Kept for its statistics object: RocksDB's stall counter lives there.
    db_options: rocksdb::Options,
    metrics: LogMetrics,
    /// Stall time already added to the counter, in microseconds.
    stall_reported_us: Mutex<u64>,
    /// Sequence numbers and the chain head: the writer thread commits under this lock, and
    /// so does a runtime thread about to park (see [`Log::park_hook`]).
    core: Arc<Mutex<Core>>,
    /// The appenders whose staged events a parking runtime thread commits.
    pub(crate) appenders: Mutex<Vec<std::sync::Weak<dyn Staged>>>,
    /// Set once [`Log::park_hook`] is installed: appenders then leave small groups for it.
    pub(crate) commits_on_park: AtomicBool,
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

/// A handle to the open log. Cheap to clone; every clone feeds the same writer thread.
#[derive(Clone)]
pub struct Log {
    tx: Sender<Msg>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log").field("options", &self.shared.options).finish_non_exhaustive()
    }
}

/// An append waiting for its batch to commit. Resolves to the event's sequence number.
#[derive(Debug)]
pub struct Pending(pub(crate) PendingUnique);

impl Future for Pending {
    type Output = Result<u64, LogError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|r| r.map(|a| a.seq))
    }
}

impl Pending {
    /// Blocks the calling thread until the batch commits. Not for use on an async runtime.
    pub fn wait(self) -> Result<u64, LogError> {
        self.0.wait().map(|a| a.seq)
    }
}

/// A keyed append waiting for its batch to commit; see [`Log::submit_unique`].
#[derive(Debug)]
pub struct PendingUnique(pub(crate) oneshot::Receiver<Result<Appended, LogError>>);

impl Future for PendingUnique {
    type Output = Result<Appended, LogError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // A dropped sender means the writer stopped before committing this record.
        Pin::new(&mut self.0).poll(cx).map(|r| r.unwrap_or(Err(LogError::Closed)))
    }
}

impl PendingUnique {
    /// Blocks the calling thread until the batch commits. Not for use on an async runtime.
    pub fn wait(self) -> Result<Appended, LogError> {
        self.0.blocking_recv().unwrap_or(Err(LogError::Closed))
    }
}

impl Log {
    /// Opens (creating if needed) the log in `dir` and starts its writer thread.
    pub fn open(dir: &Path, options: LogOptions, metrics: LogMetrics) -> Result<Log, LogError> {
        let (db, db_options) = db::open_primary(dir)?;
        let db: Db = Arc::new(db);
        let (next_seq, head) = recover(&db)?;
        let capacity = options.queue_capacity.max(1);
        let (tx, rx) = crossbeam_channel::bounded(capacity);
        let committed = Arc::new(Committed { seq: Mutex::new(next_seq - 1), cond: Condvar::new() });
        let queued = Arc::new(AtomicUsize::new(0));
        let healthy = Arc::new(AtomicBool::new(true));
        let writable = Arc::new(AtomicBool::new(true));
        metrics.queue_capacity.set(capacity as i64);
        metrics.last_sequence.set(i64::try_from(next_seq - 1).unwrap_or(i64::MAX));
        let shared = Arc::new(Shared {
            db: Arc::clone(&db),
            committed: Arc::clone(&committed),
            writable: Arc::clone(&writable),
            writer: Mutex::new(None),
            options: options.clone(),
            queued: Arc::clone(&queued),
            closed: AtomicBool::new(false),
            db_options,
            metrics: metrics.clone(),
            stall_reported_us: Mutex::new(0),
            core: Arc::new(Mutex::new(Core {
                db,
                sync: options.sync,
                metrics,
                next_seq,
                head,
                committed,
                writable,
                healthy: true,
                healthy_flag: Arc::clone(&healthy),
                queued,
            })),
            appenders: Mutex::new(Vec::new()),
            commits_on_park: AtomicBool::new(false),
        });
        let writer = Writer { rx, options, core: Arc::clone(&shared.core), healthy };
        let handle = std::thread::Builder::new()
            .name("tally-log-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| open_error(dir, e))?;
        if let Ok(mut w) = shared.writer.lock() {
            *w = Some(handle);
        }
        Ok(Log { tx, shared })
    }

    /// Enqueues one encoded record without blocking. Fails fast with [`LogError::QueueFull`]
    /// when the writer is behind, or [`LogError::Closed`] after shutdown. The way in for plain
    /// threads (the CLI, the server at start, tests, benchmarks): submit, then
    /// [`Pending::wait`] (many may be in flight first). Tokio tasks use an [`crate::Appender`].
    pub fn submit(&self, record: Vec<u8>) -> Result<Pending, LogError> {
        self.enqueue(record, None).map(Pending)
    }

    /// Like [`Log::submit`], and also tells whether an earlier event was appended with the
    /// same `key` (e.g. a conversion's offer, goal, transaction ID and status). The check and
    /// the index update happen in the writer, atomically with the append, so two concurrent
    /// reports with one key get one "first" and one "duplicate", even across a crash.
    pub fn submit_unique(&self, record: Vec<u8>, key: &[u8]) -> Result<PendingUnique, LogError> {
        self.enqueue(record, Some(*blake3::hash(key).as_bytes()))
    }

    pub(crate) fn enqueue(&self, record: Vec<u8>, key: Option<[u8; 32]>) -> Result<PendingUnique, LogError> {
        self.reserve(1)?;
        let (ack, rx) = oneshot::channel();
        match self.tx.try_send(Msg::Append(Item { record, key, ack, pump: None })) {
            Ok(()) => Ok(PendingUnique(rx)),
            Err(e) => {
                self.unreserve(1);
                Err(match e {
                    TrySendError::Full(_) => LogError::QueueFull,
                    TrySendError::Disconnected(_) => LogError::Closed,
                })
            }
        }
    }

    /// Takes room for `n` events in the queue, or says why there is none.
    pub(crate) fn reserve(&self, n: usize) -> Result<(), LogError> {
        let s = &self.shared;
        if s.closed.load(Ordering::Relaxed) {
            return Err(LogError::Closed);
        }
        let before = s.queued.fetch_add(n, Ordering::Relaxed);
        if before + n > s.options.queue_capacity.max(1) {
            s.queued.fetch_sub(n, Ordering::Relaxed);
            return Err(LogError::QueueFull);
        }
        Ok(())
    }

    /// Gives back room taken by [`Log::reserve`] for events that never reached the queue.
    pub(crate) fn unreserve(&self, n: usize) {
        self.shared.queued.fetch_sub(n, Ordering::Relaxed);
    }

    /// Hands a staged group of items to the writer (room for them already reserved). If the
    /// writer is gone, their acks are dropped, which their waiters see as [`LogError::Closed`].
    pub(crate) fn send_batch(&self, items: Vec<Item>) {
        let n = items.len();
        if let Err(e) = self.tx.try_send(Msg::Batch(items)) {
            self.unreserve(n);
            // Full cannot happen: every message holds at least one event, and the events
            // queued never exceed the channel's capacity (see `reserve`).
            if let TrySendError::Full(Msg::Batch(items)) = e {
                for item in items {
                    let _ = item.ack.send(Err(LogError::QueueFull));
                }
            }
        }
    }

    /// Staged events beyond which an appender hands its group to the writer at once. With a
    /// park hook this is smaller than a batch: a runtime that keeps finding work hands over
    /// groups as they fill, so the writer commits them while the runtime goes on.
    pub(crate) fn staging_limit(&self) -> usize {
        let max = self.shared.options.max_batch.max(1);
        if self.commits_on_park() {
            max.min(PARK_GROUP)
        } else {
            max
        }
    }

    pub(crate) fn commits_on_park(&self) -> bool {
        self.shared.commits_on_park.load(Ordering::Relaxed)
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    /// True while the writer runs and its last commit succeeded.
    pub fn is_writable(&self) -> bool {
        self.shared.writable.load(Ordering::Relaxed)
            && self.shared.writer.lock().map(|w| w.as_ref().is_some_and(|h| !h.is_finished())).unwrap_or(false)
    }

    /// Events waiting for the writer right now.
    pub fn queue_len(&self) -> usize {
        self.shared.queued.load(Ordering::Relaxed)
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

    /// A reader sharing this process's database handle.
    pub fn reader(&self) -> LogReader {
        LogReader::from_primary(Arc::clone(&self.shared.db), Arc::clone(&self.shared.committed))
    }

    /// Stops accepting appends, commits everything already queued, and waits for the writer
    /// to finish. Appends submitted after this get [`LogError::Closed`].
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::Relaxed);
        // The writer drains the queue up to this message, so every append queued before it
        // is committed and acknowledged.
        let _ = self.tx.send(Msg::Shutdown);
        let handle = self.shared.writer.lock().ok().and_then(|mut w| w.take());
        if let Some(h) = handle {
            let _ = h.join();
        }
        if let Err(e) = self.shared.db.flush_wal(true) {
            tracing::error!(error = %e, "final WAL sync failed");
        }
    }
}

/// Finds where the log left off: the next sequence number and the chain head.
fn recover(db: &Db) -> Result<(u64, [u8; 32]), LogError> {
    let events = cf(db, CF_EVENTS)?;
    let chain = cf(db, CF_CHAIN)?;
    let last_event = db
        .iterator_cf(events, rocksdb::IteratorMode::End)
        .next()
        .transpose()
        .map_err(|e| LogError::Read(e.to_string()))?
        .map(|(k, _)| keys::parse_seq_key(&k).ok_or_else(|| LogError::Corrupt("bad event key".into())))
        .transpose()?;
    let last_chain = db
        .iterator_cf(chain, rocksdb::IteratorMode::End)
        .next()
        .transpose()
        .map_err(|e| LogError::Read(e.to_string()))?;
    match (last_event, last_chain) {
        (None, None) => Ok((1, GENESIS)),
        (Some(seq), Some((_, v))) => {
            let entry = ChainEntry::decode(&v).ok_or_else(|| LogError::Corrupt("bad chain entry".into()))?;
            if entry.last() != seq {
                return Err(LogError::Corrupt(format!("last event is {seq} but the chain ends at {}", entry.last())));
            }
            Ok((seq + 1, entry.head))
        }
        _ => Err(LogError::Corrupt("events and chain disagree about whether the log is empty".into())),
    }
}

/// What commits a batch: the sequence numbers, the chain head and the database, behind
/// [`Shared::core`].
pub(crate) struct Core {
    db: Db,
    sync: SyncPolicy,
    metrics: LogMetrics,
    next_seq: u64,
    head: [u8; 32],
    committed: Arc<Committed>,
    /// `Shared::writable`: what `/readyz` reports.
    writable: Arc<AtomicBool>,
    /// The last commit (or probe) succeeded.
    healthy: bool,
    /// `healthy`, for the writer thread to read without taking the lock: a park hook that
    /// found the lock taken for that would hand its group to the writer for nothing.
    healthy_flag: Arc<AtomicBool>,
    /// `Shared::queued`: a committer gives back the room of what it takes.
    queued: Arc<AtomicUsize>,
}

struct Writer {
    rx: Receiver<Msg>,
    options: LogOptions,
    core: Arc<Mutex<Core>>,
    healthy: Arc<AtomicBool>,
}

impl Writer {
    fn core(&self) -> std::sync::MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn run(self) {
        let max = self.options.max_batch.max(1);
        let mut batch: Vec<Item> = Vec::with_capacity(max);
        let mut shutting_down = false;
        while !shutting_down {
            // After a failed commit the writer waits with a timeout, so that with no traffic
            // it still notices RocksDB recovering (from a full disk, say) and `/readyz`
            // turns ready again without waiting for an append to try.
            let msg = if self.healthy.load(Ordering::Relaxed) {
                self.rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
            } else {
                self.rx.recv_timeout(PROBE_EVERY)
            };
            match msg {
                Ok(Msg::Append(item)) => batch.push(item),
                Ok(Msg::Batch(items)) => batch.extend(items),
                Err(RecvTimeoutError::Timeout) => {
                    self.core().probe();
                    continue;
                }
                Ok(Msg::Shutdown) | Err(RecvTimeoutError::Disconnected) => break,
            }
            let linger_until = Instant::now() + self.options.linger;
            while batch.len() < max {
                let msg = match self.rx.try_recv() {
                    Ok(m) => m,
                    Err(_) if self.options.linger.is_zero() => break,
                    Err(_) => match self.rx.recv_deadline(linger_until) {
                        Ok(m) => m,
                        Err(RecvTimeoutError::Timeout) => break,
                        Err(RecvTimeoutError::Disconnected) => {
                            shutting_down = true;
                            break;
                        }
                    },
                };
                match msg {
                    Msg::Append(item) => batch.push(item),
                    Msg::Batch(items) => batch.extend(items),
                    Msg::Shutdown => {
                        shutting_down = true;
                        break;
                    }
                }
            }
            let mut core = self.core();
            core.queued.fetch_sub(batch.len(), Ordering::Relaxed);
            core.commit(&mut batch, false);
        }
        // Anything still queued after shutdown is refused: dropping its ack reports Closed.
        tracing::debug!(next_seq = self.core().next_seq, "log writer stopped");
    }
}

impl Log {
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
        self.shared.commits_on_park.store(true, Ordering::Relaxed);
        let log = self.clone();
        move || log.commit_staged()
    }

    /// Commits (or hands to the writer) what every live appender has staged.
    fn commit_staged(&self) {
        let appenders: Vec<_> = {
            let mut list = self.shared.appenders.lock().unwrap_or_else(|p| p.into_inner());
            list.retain(|w| w.strong_count() > 0);
            list.iter().filter_map(std::sync::Weak::upgrade).collect()
        };
        for appender in appenders {
            let items = appender.take_staged();
            if items.is_empty() {
                continue;
            }
            if let Some(back) = self.commit_inline(items) {
                self.send_batch(back);
            }
        }
    }

    /// Commits `items` on the calling thread if that cannot block it; otherwise gives them
    /// back for the writer thread.
    pub(crate) fn commit_inline(&self, items: Vec<Item>) -> Option<Vec<Item>> {
        let s = &self.shared;
        #[cfg(feature = "test-util")]
        if crate::testing::active() {
            return Some(items);
        }
        if s.options.sync == SyncPolicy::Batch
            || s.closed.load(Ordering::Relaxed)
            || items.iter().any(|i| i.key.is_some())
        {
            return Some(items);
        }
        let Ok(mut core) = s.core.try_lock() else { return Some(items) };
        if !core.healthy {
            return Some(items);
        }
        let mut batch = items;
        let n = batch.len();
        if core.commit(&mut batch, true) {
            core.queued.fetch_sub(n, Ordering::Relaxed);
            s.metrics.inline_batches.inc();
            None
        } else {
            Some(batch)
        }
    }
}

impl Core {
    /// Asks RocksDB whether writes work again: an empty batch goes through the write path's
    /// background-error check and stores nothing. RocksDB clears a no-space error by itself
    /// once space is free (its file manager polls for it every few seconds).
    fn probe(&mut self) {
        if self.db.write_opt(WriteBatch::default(), &WriteOptions::default()).is_ok() {
            tracing::info!(next_seq = self.next_seq, "the log is writable again");
            self.set_healthy(true);
        }
    }

    fn set_healthy(&mut self, healthy: bool) {
        self.healthy = healthy;
        self.healthy_flag.store(healthy, Ordering::Relaxed);
        self.writable.store(healthy, Ordering::Relaxed);
    }

    /// Commits `batch` and answers its waiters. With `no_slowdown` (a runtime thread
    /// committing), a write RocksDB would stall is not attempted: this returns false and
    /// leaves the batch as it was, for the writer thread. Otherwise returns true.
    fn commit(&mut self, batch: &mut Vec<Item>, no_slowdown: bool) -> bool {
        if batch.is_empty() {
            return true;
        }
        let started = Instant::now();
        let first = self.next_seq;
        #[cfg(feature = "test-util")]
        if crate::testing::early_ack() {
            // The negative control of the crash harness: acknowledge what is not yet stored,
            // so a kill during the throttle below loses acknowledged events.
            for (i, item) in batch.iter_mut().enumerate() {
                let ack = std::mem::replace(&mut item.ack, oneshot::channel().0);
                let _ = ack.send(Ok(Appended { seq: first + i as u64, duplicate_of: None }));
            }
        }
        #[cfg(feature = "test-util")]
        crate::testing::throttle();
        let result = match self.write(first, batch, no_slowdown) {
            Err(WriteError::Stalled) => return false,
            Err(WriteError::Failed(e)) => Err(e),
            Ok(written) => Ok(written),
        };
        let n = batch.len() as u64;
        // Metrics, the commit signal and the writable flag are updated before any ack is
        // sent, so whoever sees an ack also sees them.
        self.set_healthy(result.is_ok());
        self.metrics.batch_size.observe(n as f64);
        self.metrics.commit_duration.observe(started.elapsed().as_secs_f64());
        self.metrics.queue_depth.set(self.queued.load(Ordering::Relaxed) as i64);
        match result {
            Ok((head, duplicates)) => {
                self.head = head;
                self.next_seq += n;
                self.metrics.events_appended.inc_by(n);
                self.metrics.batches_committed.inc();
                if self.sync == SyncPolicy::Batch {
                    self.metrics.fsyncs.inc();
                }
                self.metrics.last_sequence.set(i64::try_from(self.next_seq - 1).unwrap_or(i64::MAX));
                if let Ok(mut s) = self.committed.seq.lock() {
                    *s = self.next_seq - 1;
                }
                self.committed.cond.notify_all();
                deliver(batch, |i| {
                    let duplicate_of = duplicates.get(i).copied().flatten();
                    Ok(Appended { seq: first + i as u64, duplicate_of })
                });
            }
            Err(e) => {
                tally_telemetry::error_limited!(error = %e, events = n, "log commit failed; appends refused");
                self.metrics.commit_errors.inc();
                deliver(batch, |_| Err(e.clone()));
            }
        }
        true
    }

    /// Writes one batch; returns the new chain head and, per item, the earlier sequence number
    /// of its key if it repeats one (empty when no item carries a key).
    fn write(&self, first: u64, batch: &[Item], no_slowdown: bool) -> Result<([u8; 32], Vec<Option<u64>>), WriteError> {
        let events = cf(&self.db, CF_EVENTS)?;
        let chain = cf(&self.db, CF_CHAIN)?;
        let mut wb = WriteBatch::default();
        let mut hasher = BatchHasher::new(&self.head, first);
        let mut duplicates = Vec::new();
        let mut batch_keys: Vec<([u8; 32], u64)> = Vec::new();
        for (i, item) in batch.iter().enumerate() {
            let seq = first + i as u64;
            hasher.add(seq, &item.record);
            wb.put_cf(events, keys::seq_key(seq), &item.record);
            if let Some(key) = &item.key {
                if duplicates.is_empty() {
                    duplicates.resize(batch.len(), None);
                }
                let unique = cf(&self.db, CF_UNIQUE)?;
                let earlier = match batch_keys.iter().find(|(k, _)| k == key) {
                    Some((_, s)) => Some(*s),
                    None => self
                        .db
                        .get_cf(unique, key)
                        .map_err(|e| WriteError::Failed(LogError::Write(e.to_string())))?
                        .and_then(|v| keys::parse_seq_key(&v)),
                };
                match earlier {
                    Some(s) => duplicates[i] = Some(s),
                    None => {
                        wb.put_cf(unique, key, keys::seq_key(seq));
                        batch_keys.push((*key, seq));
                    }
                }
            }
        }
        let (head, entry) = hasher.finish();
        wb.put_cf(chain, keys::seq_key(first + batch.len() as u64 - 1), entry);
        #[cfg(feature = "test-util")]
        if no_slowdown && crate::testing::stalled_at_park() {
            return Err(WriteError::Stalled);
        }
        let mut opts = WriteOptions::default();
        opts.set_sync(self.sync == SyncPolicy::Batch);
        opts.set_no_slowdown(no_slowdown);
        self.db.write_opt(wb, &opts).map_err(|e| match e.kind() {
            rocksdb::ErrorKind::Incomplete if no_slowdown => WriteError::Stalled,
            _ => WriteError::Failed(LogError::Write(e.to_string())),
        })?;
        Ok((head, duplicates))
    }
}

enum WriteError {
    /// With `no_slowdown`: RocksDB would have stalled the write; nothing was written.
    Stalled,
    Failed(LogError),
}

impl From<LogError> for WriteError {
    fn from(e: LogError) -> WriteError {
        WriteError::Failed(e)
    }
}

/// Sends each item's result: directly to its waiter, or, for an appender's items, to the
/// appender's task in one message for the whole batch (it wakes the waiters on their own
/// runtime, where a wake-up costs no system call). If the task is gone or behind, the acks
/// go directly: they are never lost or delayed by it.
fn deliver(batch: &mut Vec<Item>, result: impl Fn(usize) -> Result<Appended, LogError>) {
    let mut group: Vec<Delivery> = Vec::new();
    let mut pump: Option<Arc<PumpTx>> = None;
    for (i, item) in batch.drain(..).enumerate() {
        let r = result(i);
        match item.pump {
            None => {
                let _ = item.ack.send(r);
            }
            Some(p) => {
                if pump.as_ref().is_some_and(|cur| !Arc::ptr_eq(cur, &p)) {
                    hand_over(pump.take(), &mut group);
                }
                pump = Some(p);
                group.push((item.ack, r));
            }
        }
    }
    hand_over(pump, &mut group);
}

fn hand_over(pump: Option<Arc<PumpTx>>, group: &mut Vec<Delivery>) {
    let Some(pump) = pump else { return };
    if let Err(e) = pump.try_send(std::mem::take(group)) {
        let deliveries = match e {
            tokio::sync::mpsc::error::TrySendError::Full(d) | tokio::sync::mpsc::error::TrySendError::Closed(d) => d,
        };
        for (ack, r) in deliveries {
            let _ = ack.send(r);
        }
    }
}
