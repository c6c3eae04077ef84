//! The log's front for callers on a tokio runtime (the edge): appends staged per turn of
//! the runtime, acknowledgements delivered per batch.
//!
//! [`Log::submit`] costs two cross-thread wake-ups per event under load: the first append of
//! a batch wakes the writer thread (a futex), and every acknowledgement wakes its waiting task
//! from the writer thread, which on a current-thread runtime is a write to the runtime's
//! eventfd each time. On a loaded 2-core machine those system calls and context switches
//! were a large share of a click's cost, and the writer, woken for every few events, committed
//! batches of four.
//!
//! An [`Appender`] owns one task on the runtime that first used it. Appends made while the
//! runtime runs its ready tasks go into a staging buffer; the first one wakes the task (a
//! local wake-up: no system call), which runs after the tasks already queued and hands the
//! whole group to the writer as one message. The writer sends the group's acknowledgements
//! back to the task as one message, and the task completes each waiter on its own thread.
//! So a batch costs one wake-up each way, however many events it holds.
//!
//! Guarantees are those of [`Log::submit`]: an append resolves `Ok` only after its batch is
//! committed; a full queue refuses at once with [`LogError::QueueFull`] (the queue's bound
//! counts staged events too); after [`Log::close`] appends fail with [`LogError::Closed`].
//! If the task is gone (its runtime shut down) or cannot take a group, the writer sends the
//! acknowledgements directly, as for [`Log::submit`]. Called outside a tokio runtime, or after
//! the runtime its task ran on has shut down, an appender is a plain [`Log::submit`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use tokio::sync::{mpsc, oneshot, Notify};

use crate::commit::{Delivery, Item, PumpTx};
use crate::log::Log;
use crate::park::Staged;
use crate::queue::{Pending, PendingUnique};
use crate::LogError;

/// Acknowledgement groups the writer may have handed over and the task not yet delivered.
/// Beyond this the writer acknowledges directly (correct, only slower).
const PUMP_CAPACITY: usize = 1024;

/// A cloneable async front of a [`Log`]; see the module docs.
#[derive(Clone)]
pub struct Appender {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Appender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Appender").field("started", &self.inner.task.get().is_some()).finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    log: Log,
    staged: Mutex<Vec<Item>>,
    /// Counts groups taken from `staged`: the task's timer tells by it whether the group it
    /// waits for is still there.
    taken: AtomicU64,
    flush: Arc<Notify>,
    /// Started on the first append made on a runtime.
    task: OnceLock<Task>,
}

struct Task {
    pump: Arc<PumpTx>,
    handle: tokio::task::AbortHandle,
}

impl Staged for Inner {
    fn take_staged(&self) -> Vec<Item> {
        let mut staged = self.staged.lock().unwrap_or_else(|p| p.into_inner());
        if staged.is_empty() {
            return Vec::new();
        }
        self.taken.fetch_add(1, Ordering::Relaxed);
        std::mem::take(&mut *staged)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(t) = self.task.get() {
            t.handle.abort();
        }
        // Staged items not handed over yet (only possible if the task never ran): hand them
        // over now, so their waiters get an answer.
        let items = std::mem::take(self.staged.get_mut().unwrap_or_else(|p| p.into_inner()));
        if !items.is_empty() {
            self.log.queue().send_batch(items);
        }
    }
}

impl Log {
    /// An appender for callers on a tokio runtime; see [`Appender`].
    pub fn appender(&self) -> Appender {
        let inner = Arc::new(Inner {
            log: self.clone(),
            staged: Mutex::new(Vec::new()),
            taken: AtomicU64::new(0),
            flush: Arc::new(Notify::new()),
            task: OnceLock::new(),
        });
        let weak: Weak<Inner> = Arc::downgrade(&inner);
        let staged: Weak<dyn Staged> = weak;
        self.park().register(staged);
        Appender { inner }
    }
}

impl Appender {
    /// Like [`Log::submit`]: stages one encoded record for the next batch.
    pub fn submit(&self, record: Vec<u8>) -> Result<Pending, LogError> {
        self.enqueue(record, None).map(Pending)
    }

    /// Like [`Log::submit_unique`].
    pub fn submit_unique(&self, record: Vec<u8>, key: &[u8]) -> Result<PendingUnique, LogError> {
        self.enqueue(record, Some(*blake3::hash(key).as_bytes()))
    }

    pub fn log(&self) -> &Log {
        &self.inner.log
    }

    fn enqueue(&self, record: Vec<u8>, key: Option<[u8; 32]>) -> Result<PendingUnique, LogError> {
        let inner = &self.inner;
        let queue = inner.log.queue();
        let Some(task) = self.task() else { return queue.enqueue(record, key) };
        if task.pump.is_closed() {
            // The task's runtime has shut down: nothing would hand over what we stage. Hand
            // over what it left, and append directly from now on.
            let left = std::mem::take(&mut *inner.staged.lock().unwrap_or_else(|p| p.into_inner()));
            if !left.is_empty() {
                queue.send_batch(left);
            }
            return queue.enqueue(record, key);
        }
        queue.reserve(1)?;
        let (ack, rx) = oneshot::channel();
        let item = Item { record, key, ack, pump: Some(Arc::clone(&task.pump)) };
        let full = {
            let mut staged = inner.staged.lock().unwrap_or_else(|p| p.into_inner());
            staged.push(item);
            if staged.len() == 1 {
                inner.flush.notify_one();
            }
            (staged.len() >= inner.log.staging_limit()).then(|| {
                inner.taken.fetch_add(1, Ordering::Relaxed);
                std::mem::take(&mut *staged)
            })
        };
        // A full batch goes now rather than waiting for the turn to end (or the park).
        if let Some(items) = full {
            queue.send_batch(items);
        }
        Ok(PendingUnique(rx))
    }

    /// The task, started on the current runtime if it is not running yet; `None` outside a
    /// runtime.
    fn task(&self) -> Option<&Task> {
        if let Some(t) = self.inner.task.get() {
            return Some(t);
        }
        let rt = tokio::runtime::Handle::try_current().ok()?;
        Some(self.inner.task.get_or_init(|| {
            let (tx, rx) = mpsc::channel(PUMP_CAPACITY);
            let handle = rt.spawn(run(Arc::downgrade(&self.inner), Arc::clone(&self.inner.flush), rx)).abort_handle();
            Task { pump: Arc::new(tx), handle }
        }))
    }
}

/// The appender's task: hands staged groups to the writer and delivers acknowledgements.
/// With a park hook installed it leaves a group for the hook (the runtime thread commits it
/// when it runs out of work), and hands it over only if the runtime has not parked within
/// [`PARK_GRACE`]: under a flood of other requests it may not park for a long time.
async fn run(inner: Weak<Inner>, flush: Arc<Notify>, mut acks: mpsc::Receiver<Vec<Delivery>>) {
    let mut late = Box::pin(tokio::time::sleep(PARK_GRACE));
    // The `taken` count when the timer was armed for the group then staged.
    let mut armed: Option<u64> = None;
    loop {
        tokio::select! {
            // Answers first: they finish requests, and free the waiters' memory.
            biased;
            Some(group) = acks.recv() => {
                for (ack, result) in group {
                    let _ = ack.send(result);
                }
            }
            () = flush.notified() => {
                let Some(inner) = inner.upgrade() else { return };
                if !inner.log.park().is_installed() {
                    hand_over(&inner);
                } else if armed.is_none() {
                    late.as_mut().reset(tokio::time::Instant::now() + PARK_GRACE);
                    armed = Some(inner.taken.load(Ordering::Relaxed));
                }
            }
            () = late.as_mut(), if armed.is_some() => {
                let Some(inner) = inner.upgrade() else { return };
                let taken = inner.taken.load(Ordering::Relaxed);
                if armed == Some(taken) {
                    // The group waited the whole grace: the runtime has not parked.
                    armed = None;
                    hand_over(&inner);
                } else if inner.staged.lock().map(|s| s.is_empty()).unwrap_or(false) {
                    armed = None;
                } else {
                    // That group was taken; a newer one is staged: give it its own grace.
                    late.as_mut().reset(tokio::time::Instant::now() + PARK_GRACE);
                    armed = Some(taken);
                }
            }
        }
    }
}

/// How long a staged group may wait for its runtime thread to park before the appender's
/// task hands it to the writer thread.
const PARK_GRACE: std::time::Duration = std::time::Duration::from_millis(1);

fn hand_over(inner: &Inner) {
    let items = inner.take_staged();
    if !items.is_empty() {
        inner.log.queue().send_batch(items);
    }
}
