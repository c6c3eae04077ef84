//! The commit core: one batch of records into RocksDB, with its sequence numbers, its chain
//! entry and its `unique` entries, and the answers to its waiters. Whoever holds [`Core`]'s
//! lock commits (the writer thread, or a runtime thread about to park); nothing here knows
//! which, nor how the batch was gathered.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use rocksdb::{WriteBatch, WriteOptions};
use tokio::sync::oneshot;

use crate::chain::{BatchHasher, ChainEntry, GENESIS};
use crate::db::{cf, Committed, Db};
use crate::keys::{self, CF_CHAIN, CF_EVENTS, CF_PROGRAM, CF_UNIQUE};
use crate::metrics::LogMetrics;
use crate::{LogError, SyncPolicy};

pub(crate) type Ack = oneshot::Sender<Result<Appended, LogError>>;

/// An acknowledgement handed to an [`crate::Appender`]'s task instead of sent from the committer.
pub(crate) type Delivery = (Ack, Result<Appended, LogError>);

/// Where a committer hands the acknowledgements of an appender's items: one message per batch,
/// so a batch costs the appender's runtime one wake-up rather than one per event.
pub(crate) type PumpTx = tokio::sync::mpsc::Sender<Vec<Delivery>>;

/// One append on its way to a batch.
pub(crate) struct Item {
    pub(crate) record: Vec<u8>,
    /// BLAKE3 of the caller's uniqueness key, for [`crate::Log::submit_unique`].
    pub(crate) key: Option<[u8; 32]>,
    pub(crate) ack: Ack,
    /// Set for an appender's items: their acks go to its task in one message per batch.
    pub(crate) pump: Option<Arc<PumpTx>>,
}

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub seq: u64,
    /// For [`crate::Log::submit_unique`]: the sequence number of the first event appended
    /// with the same key, if this is a repeat. The repeat is appended all the same (the log
    /// records every report); the caller decides what a repeat means.
    pub duplicate_of: Option<u64>,
}

/// What commits a batch: the sequence numbers, the chain head and the database. Shared by
/// both committers behind one mutex, so sequence numbers are assigned only under that lock.
pub(crate) struct Core {
    db: Db,
    sync: SyncPolicy,
    metrics: LogMetrics,
    next_seq: u64,
    head: [u8; 32],
    committed: Arc<Committed>,
    /// The last commit (or probe) succeeded.
    healthy: bool,
    /// `healthy`, for those who must not take the lock to read it: `/readyz`, and the writer
    /// thread (a park hook that found the lock taken for that would hand its group to the
    /// writer for nothing).
    healthy_flag: Arc<AtomicBool>,
    /// Events submitted and not yet taken by a committer: a committer gives back the room of
    /// what it takes.
    queued: Arc<AtomicUsize>,
}

impl Core {
    /// Finds where the log in `db` left off and starts from there. `queued` is the queue's
    /// count of events waiting.
    pub(crate) fn recover(
        db: Db,
        sync: SyncPolicy,
        metrics: LogMetrics,
        queued: Arc<AtomicUsize>,
    ) -> Result<Core, LogError> {
        let (next_seq, head) = recover(&db)?;
        metrics.last_sequence.set(i64::try_from(next_seq - 1).unwrap_or(i64::MAX));
        Ok(Core {
            db,
            sync,
            metrics,
            next_seq,
            head,
            committed: Arc::new(Committed { seq: Mutex::new(next_seq - 1), cond: Condvar::new() }),
            healthy: true,
            healthy_flag: Arc::new(AtomicBool::new(true)),
            queued,
        })
    }

    /// The commit signal readers in this process wait on.
    pub(crate) fn committed(&self) -> Arc<Committed> {
        Arc::clone(&self.committed)
    }

    /// True while the last commit (or probe) succeeded; readable without the lock.
    pub(crate) fn healthy_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.healthy_flag)
    }

    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy
    }

    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Gives back the queue's room for `n` events a committer has taken.
    pub(crate) fn release(&self, n: usize) {
        self.queued.fetch_sub(n, Ordering::Relaxed);
    }

    /// Asks RocksDB whether writes work again: an empty batch goes through the write path's
    /// background-error check and stores nothing. RocksDB clears a no-space error by itself
    /// once space is free (its file manager polls for it every few seconds).
    pub(crate) fn probe(&mut self) {
        if self.db.write_opt(WriteBatch::default(), &WriteOptions::default()).is_ok() {
            tracing::info!(next_seq = self.next_seq, "the log is writable again");
            self.set_healthy(true);
        }
    }

    fn set_healthy(&mut self, healthy: bool) {
        self.healthy = healthy;
        self.healthy_flag.store(healthy, Ordering::Relaxed);
    }

    /// Commits `batch` and answers its waiters. With `no_slowdown` (a runtime thread
    /// committing), a write RocksDB would stall is not attempted: this returns false and
    /// leaves the batch as it was, for the writer thread. Otherwise returns true.
    pub(crate) fn commit(&mut self, batch: &mut Vec<Item>, no_slowdown: bool) -> bool {
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
                self.advance(head, n);
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

    /// Counts a committed batch of `n` records ending in chain head `head`, and wakes the
    /// readers waiting for it.
    fn advance(&mut self, head: [u8; 32], n: u64) {
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
    }

    /// Commits `records` as one batch, with the writes `extra` adds (given the batch's first
    /// sequence number) in the same `WriteBatch`, and returns that first sequence number. For
    /// a merged log, whose one writer stores each record's origin and its checkpoint beside
    /// it (`crate::origin`); blocking. An empty `records` writes only `extra`.
    pub(crate) fn commit_with(
        &mut self,
        records: &[&[u8]],
        extra: impl FnOnce(&mut WriteBatch, u64) -> Result<(), LogError>,
    ) -> Result<u64, LogError> {
        let started = Instant::now();
        let first = self.next_seq;
        let mut wb = WriteBatch::default();
        let mut head = self.head;
        if !records.is_empty() {
            let events = cf(&self.db, CF_EVENTS)?;
            let mut hasher = BatchHasher::new(&self.head, first);
            for (i, record) in records.iter().enumerate() {
                let seq = first + i as u64;
                hasher.add(seq, &record[..tally_model::record::chained_len(record)]);
                wb.put_cf(events, keys::seq_key(seq), record);
                index_program_edit(&self.db, &mut wb, seq, record)?;
            }
            let entry;
            (head, entry) = hasher.finish();
            wb.put_cf(cf(&self.db, CF_CHAIN)?, keys::seq_key(first + records.len() as u64 - 1), entry);
        }
        extra(&mut wb, first)?;
        let mut opts = WriteOptions::default();
        opts.set_sync(self.sync == SyncPolicy::Batch);
        let written = self.db.write_opt(wb, &opts).map_err(|e| LogError::Write(e.to_string()));
        self.set_healthy(written.is_ok());
        self.metrics.commit_duration.observe(started.elapsed().as_secs_f64());
        if let Err(e) = written {
            self.metrics.commit_errors.inc();
            return Err(e);
        }
        if !records.is_empty() {
            self.metrics.batch_size.observe(records.len() as f64);
            self.advance(head, records.len() as u64);
        }
        Ok(first)
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
            // The chain covers the chained bytes; a personal trailer stays outside it.
            hasher.add(seq, &item.record[..tally_model::record::chained_len(&item.record)]);
            wb.put_cf(events, keys::seq_key(seq), &item.record);
            index_program_edit(&self.db, &mut wb, seq, &item.record)?;
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

/// Adds `record` at `seq` to the `program` index if it is a program edit. The kind byte is
/// read from the envelope without decoding: a click costs one comparison.
fn index_program_edit(db: &Db, wb: &mut WriteBatch, seq: u64, record: &[u8]) -> Result<(), LogError> {
    if record.get(1) == Some(&(tally_model::EventKind::ProgramEdit as u8)) {
        wb.put_cf(cf(db, CF_PROGRAM)?, keys::seq_key(seq), []);
    }
    Ok(())
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
