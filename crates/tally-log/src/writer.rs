//! The batching writer: one thread owns sequence numbers and the chain head.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use rocksdb::{WriteBatch, WriteOptions};
use tokio::sync::oneshot;

use crate::chain::{BatchHasher, ChainEntry, GENESIS};
use crate::keys::{self, CF_CHAIN, CF_EVENTS, CF_META};
use crate::reader::{self, LogReader};
use crate::{open_error, Db, LogError, LogMetrics, LogOptions, SyncPolicy};

type Ack = oneshot::Sender<Result<u64, LogError>>;

enum Msg {
    Append { record: Vec<u8>, ack: Ack },
    Shutdown,
}

/// What readers in this process can wait on: the newest committed sequence number.
pub(crate) struct Committed {
    pub(crate) seq: Mutex<u64>,
    pub(crate) cond: Condvar,
}

struct Shared {
    db: Db,
    committed: Arc<Committed>,
    writable: AtomicBool,
    writer: Mutex<Option<JoinHandle<()>>>,
    options: LogOptions,
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
pub struct Pending(oneshot::Receiver<Result<u64, LogError>>);

impl Future for Pending {
    type Output = Result<u64, LogError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // A dropped sender means the writer stopped before committing this record.
        Pin::new(&mut self.0).poll(cx).map(|r| r.unwrap_or(Err(LogError::Closed)))
    }
}

impl Pending {
    /// Blocks the calling thread until the batch commits. Not for use on an async runtime.
    pub fn wait(self) -> Result<u64, LogError> {
        self.0.blocking_recv().unwrap_or(Err(LogError::Closed))
    }
}

impl Log {
    /// Opens (creating if needed) the log in `dir` and starts its writer thread.
    pub fn open(dir: &Path, options: LogOptions, metrics: LogMetrics) -> Result<Log, LogError> {
        let db: Db = Arc::new(open_primary(dir)?);
        let (next_seq, head) = recover(&db)?;
        let capacity = options.queue_capacity.max(1);
        let (tx, rx) = crossbeam_channel::bounded(capacity);
        let committed = Arc::new(Committed { seq: Mutex::new(next_seq - 1), cond: Condvar::new() });
        metrics.queue_capacity.set(capacity as i64);
        metrics.last_sequence.set(i64::try_from(next_seq - 1).unwrap_or(i64::MAX));
        let shared = Arc::new(Shared {
            db: Arc::clone(&db),
            committed: Arc::clone(&committed),
            writable: AtomicBool::new(true),
            writer: Mutex::new(None),
            options: options.clone(),
        });
        let writer = Writer { db, rx, options, metrics, next_seq, head, committed, shared: Arc::downgrade(&shared) };
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
    /// when the writer is behind, or [`LogError::Closed`] after shutdown.
    pub fn submit(&self, record: Vec<u8>) -> Result<Pending, LogError> {
        let (ack, rx) = oneshot::channel();
        match self.tx.try_send(Msg::Append { record, ack }) {
            Ok(()) => Ok(Pending(rx)),
            Err(TrySendError::Full(_)) => Err(LogError::QueueFull),
            Err(TrySendError::Disconnected(_)) => Err(LogError::Closed),
        }
    }

    /// Appends one record from a plain thread, waiting up to `deadline` for queue space, then
    /// for the commit. For the CLI and tests; the edge uses [`Log::submit`].
    pub fn append_blocking(&self, record: Vec<u8>, deadline: Duration) -> Result<u64, LogError> {
        let (ack, rx) = oneshot::channel();
        self.tx.send_timeout(Msg::Append { record, ack }, deadline).map_err(|e| match e {
            crossbeam_channel::SendTimeoutError::Timeout(_) => LogError::QueueFull,
            crossbeam_channel::SendTimeoutError::Disconnected(_) => LogError::Closed,
        })?;
        Pending(rx).wait()
    }

    /// True while the writer runs and its last commit succeeded.
    pub fn is_writable(&self) -> bool {
        self.shared.writable.load(Ordering::Relaxed)
            && self.shared.writer.lock().map(|w| w.as_ref().is_some_and(|h| !h.is_finished())).unwrap_or(false)
    }

    /// Events waiting for the writer right now.
    pub fn queue_len(&self) -> usize {
        self.tx.len()
    }

    pub fn queue_capacity(&self) -> usize {
        self.tx.capacity().unwrap_or(0)
    }

    /// The newest committed sequence number (0 for an empty log).
    pub fn last_committed(&self) -> u64 {
        self.shared.committed.seq.lock().map(|s| *s).unwrap_or(0)
    }

    /// A reader sharing this process's database handle.
    pub fn reader(&self) -> LogReader {
        LogReader::from_primary(Arc::clone(&self.shared.db), Arc::clone(&self.shared.committed))
    }

    /// Stores a named consumer's checkpoint (the last sequence it has fully processed).
    /// Synchronous and fsynced: checkpoints are rare and must not go backwards after a crash.
    pub fn set_checkpoint(&self, name: &str, seq: u64) -> Result<(), LogError> {
        let cf = reader::cf(&self.shared.db, CF_META)?;
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.shared
            .db
            .put_cf_opt(cf, keys::checkpoint_key(name), seq.to_be_bytes(), &opts)
            .map_err(|e| LogError::Write(e.to_string()))
    }

    /// Stops accepting appends, commits everything already queued, and waits for the writer
    /// to finish. Appends submitted after this get [`LogError::Closed`].
    pub fn close(&self) {
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

fn open_primary(dir: &Path) -> Result<rocksdb::DB, LogError> {
    std::fs::create_dir_all(dir).map_err(|e| open_error(dir, e))?;
    let mut opts = reader::db_options();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    // One writer thread and small records: a larger memtable means fewer, bigger flushes.
    opts.set_write_buffer_size(64 << 20);
    opts.set_max_background_jobs(2);
    opts.set_bytes_per_sync(1 << 20);
    rocksdb::DB::open_cf_descriptors(&opts, dir, reader::cf_descriptors()).map_err(|e| open_error(dir, e))
}

/// Finds where the log left off: the next sequence number and the chain head.
fn recover(db: &Db) -> Result<(u64, [u8; 32]), LogError> {
    let events = reader::cf(db, CF_EVENTS)?;
    let chain = reader::cf(db, CF_CHAIN)?;
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

struct Writer {
    db: Db,
    rx: Receiver<Msg>,
    options: LogOptions,
    metrics: LogMetrics,
    next_seq: u64,
    head: [u8; 32],
    committed: Arc<Committed>,
    shared: std::sync::Weak<Shared>,
}

impl Writer {
    fn run(mut self) {
        let max = self.options.max_batch.max(1);
        let mut batch: Vec<(Vec<u8>, Ack)> = Vec::with_capacity(max);
        let mut shutting_down = false;
        while !shutting_down {
            match self.rx.recv() {
                Ok(Msg::Append { record, ack }) => batch.push((record, ack)),
                Ok(Msg::Shutdown) | Err(_) => break,
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
                    Msg::Append { record, ack } => batch.push((record, ack)),
                    Msg::Shutdown => {
                        shutting_down = true;
                        break;
                    }
                }
            }
            self.commit(&mut batch);
        }
        // Anything still queued after shutdown is refused: dropping its ack reports Closed.
        tracing::debug!(next_seq = self.next_seq, "log writer stopped");
    }

    fn commit(&mut self, batch: &mut Vec<(Vec<u8>, Ack)>) {
        if batch.is_empty() {
            return;
        }
        let started = Instant::now();
        let first = self.next_seq;
        let result = self.write(first, batch);
        let n = batch.len() as u64;
        let writable = result.is_ok();
        match result {
            Ok(head) => {
                self.head = head;
                self.next_seq += n;
                for (i, (_, ack)) in batch.drain(..).enumerate() {
                    let _ = ack.send(Ok(first + i as u64));
                }
                if let Ok(mut s) = self.committed.seq.lock() {
                    *s = self.next_seq - 1;
                }
                self.committed.cond.notify_all();
                self.metrics.events_appended.inc_by(n);
                self.metrics.batches_committed.inc();
                if self.options.sync == SyncPolicy::Batch {
                    self.metrics.fsyncs.inc();
                }
                self.metrics.last_sequence.set(i64::try_from(self.next_seq - 1).unwrap_or(i64::MAX));
            }
            Err(e) => {
                tracing::error!(error = %e, events = n, "log commit failed; appends refused");
                self.metrics.commit_errors.inc();
                for (_, ack) in batch.drain(..) {
                    let _ = ack.send(Err(e.clone()));
                }
            }
        }
        if let Some(shared) = self.shared.upgrade() {
            shared.writable.store(writable, Ordering::Relaxed);
        }
        self.metrics.batch_size.observe(n as f64);
        self.metrics.commit_duration.observe(started.elapsed().as_secs_f64());
        self.metrics.queue_depth.set(self.rx.len() as i64);
    }

    fn write(&self, first: u64, batch: &[(Vec<u8>, Ack)]) -> Result<[u8; 32], LogError> {
        let events = reader::cf(&self.db, CF_EVENTS)?;
        let chain = reader::cf(&self.db, CF_CHAIN)?;
        let mut wb = WriteBatch::default();
        let mut hasher = BatchHasher::new(&self.head, first);
        for (i, (record, _)) in batch.iter().enumerate() {
            let seq = first + i as u64;
            hasher.add(seq, record);
            wb.put_cf(events, keys::seq_key(seq), record);
        }
        let (head, entry) = hasher.finish();
        wb.put_cf(chain, keys::seq_key(first + batch.len() as u64 - 1), entry);
        let mut opts = WriteOptions::default();
        opts.set_sync(self.options.sync == SyncPolicy::Batch);
        self.db.write_opt(wb, &opts).map_err(|e| LogError::Write(e.to_string()))?;
        Ok(head)
    }
}
