//! The bounded queue in front of the writer thread, and the handles a caller waits on.
//!
//! The bound counts events, not messages: an appender's message carries many, and events it
//! has staged but not yet handed over hold room too, so a full queue refuses at once whichever
//! way an append comes in.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use tokio::sync::oneshot;

use crate::commit::{Appended, Item};
use crate::LogError;

pub(crate) enum Msg {
    Append(Item),
    /// Items staged by an appender during one turn of its runtime.
    Batch(Vec<Item>),
    Shutdown,
}

/// The sending side of the queue. Each [`crate::Log`] handle holds its own clone, so the
/// writer sees the channel close when the last handle is gone.
#[derive(Clone)]
pub(crate) struct Queue {
    tx: Sender<Msg>,
    capacity: usize,
    /// Events submitted and not yet taken by a committer.
    queued: Arc<AtomicUsize>,
    /// Set by [`Queue::close`]: appends are refused from then on.
    closed: Arc<AtomicBool>,
}

impl Queue {
    /// A queue for `capacity` events (at least one), and its receiving side for the writer.
    pub(crate) fn bounded(capacity: usize) -> (Queue, Receiver<Msg>) {
        let capacity = capacity.max(1);
        let (tx, rx) = crossbeam_channel::bounded(capacity);
        let queue =
            Queue { tx, capacity, queued: Arc::new(AtomicUsize::new(0)), closed: Arc::new(AtomicBool::new(false)) };
        (queue, rx)
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// The count of events waiting, for the commit core to give back what it takes.
    pub(crate) fn counter(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.queued)
    }

    /// Events waiting for a committer right now.
    pub(crate) fn len(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Enqueues one append without blocking.
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
        if self.is_closed() {
            return Err(LogError::Closed);
        }
        let before = self.queued.fetch_add(n, Ordering::Relaxed);
        if before + n > self.capacity {
            self.queued.fetch_sub(n, Ordering::Relaxed);
            return Err(LogError::QueueFull);
        }
        Ok(())
    }

    /// Gives back room taken by [`Queue::reserve`] for events that never reached the queue.
    pub(crate) fn unreserve(&self, n: usize) {
        self.queued.fetch_sub(n, Ordering::Relaxed);
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

    /// Refuses appends from now on and tells the writer to stop once it has taken everything
    /// queued before: the writer drains the queue up to this message, so every append queued
    /// before it is committed and acknowledged.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        let _ = self.tx.send(Msg::Shutdown);
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

/// A keyed append waiting for its batch to commit; see [`crate::Log::submit_unique`].
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

#[cfg(test)]
mod tests {
    use super::*;

    fn item() -> (Item, PendingUnique) {
        let (ack, rx) = oneshot::channel();
        (Item { record: vec![1], key: None, ack, pump: None }, PendingUnique(rx))
    }

    #[test]
    fn the_bound_counts_events_not_messages() {
        let (queue, _rx) = Queue::bounded(3);
        queue.reserve(2).expect("room for two");
        assert!(matches!(queue.reserve(2), Err(LogError::QueueFull)));
        assert_eq!(queue.len(), 2, "a refused reservation takes no room");
        queue.unreserve(2);
        assert!(queue.enqueue(vec![1], None).is_ok());
        assert_eq!(queue.len(), 1);
    }

    #[test]
    fn a_closed_queue_refuses_and_tells_the_writer() {
        let (queue, rx) = Queue::bounded(4);
        queue.close();
        assert!(matches!(queue.enqueue(vec![1], None), Err(LogError::Closed)));
        assert_eq!(queue.len(), 0);
        assert!(matches!(rx.try_recv(), Ok(Msg::Shutdown)));
    }

    #[test]
    fn a_group_for_a_gone_writer_answers_closed() {
        let (queue, rx) = Queue::bounded(4);
        drop(rx);
        queue.reserve(1).expect("room");
        let (it, pending) = item();
        queue.send_batch(vec![it]);
        assert_eq!(queue.len(), 0, "the room of a group that never reached the queue is given back");
        assert!(matches!(pending.wait(), Err(LogError::Closed)));
    }
}
