//! Commits at park: a runtime thread with nothing left to run commits its appenders' staged
//! events itself, through the commit core, when that cannot block it; otherwise it hands them
//! to the writer thread through the queue. Why, and what the runtime thread never takes: see
//! [`crate::Log::park_hook`] and decision 0005.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::commit::{Core, Item};
use crate::metrics::LogMetrics;
use crate::queue::Queue;
use crate::SyncPolicy;

/// With a park hook, the largest group an appender stages for it; see [`Park::staging_limit`].
const PARK_GROUP: usize = 64;

/// A stage of appends that a runtime thread about to park commits: an [`crate::Appender`].
/// A trait so that this layer need not know the appender above it.
pub(crate) trait Staged: Send + Sync {
    /// Takes what is staged, leaving the stage empty.
    fn take_staged(&self) -> Vec<Item>;
}

/// The stages a parking runtime thread commits, and what it commits them with.
///
/// Holds no sender of the queue: the writer must see the queue close when the last
/// [`crate::Log`] handle is gone, so the queue is passed in by the handle.
pub(crate) struct Park {
    core: Arc<Mutex<Core>>,
    sync: SyncPolicy,
    metrics: LogMetrics,
    stages: Mutex<Vec<Weak<dyn Staged>>>,
    /// Set once a park hook is installed: appenders then leave small groups for it.
    installed: AtomicBool,
}

impl Park {
    pub(crate) fn new(core: Arc<Mutex<Core>>, sync: SyncPolicy, metrics: LogMetrics) -> Park {
        Park { core, sync, metrics, stages: Mutex::new(Vec::new()), installed: AtomicBool::new(false) }
    }

    pub(crate) fn register(&self, stage: Weak<dyn Staged>) {
        self.stages.lock().unwrap_or_else(|p| p.into_inner()).push(stage);
    }

    pub(crate) fn install(&self) {
        self.installed.store(true, Ordering::Relaxed);
    }

    pub(crate) fn is_installed(&self) -> bool {
        self.installed.load(Ordering::Relaxed)
    }

    /// Staged events beyond which an appender hands its group to the writer at once. With a
    /// park hook this is smaller than a batch: a runtime that keeps finding work hands over
    /// groups as they fill, so the writer commits them while the runtime goes on.
    pub(crate) fn staging_limit(&self, max_batch: usize) -> usize {
        let max = max_batch.max(1);
        if self.is_installed() {
            max.min(PARK_GROUP)
        } else {
            max
        }
    }

    /// Commits (or hands to the writer through `queue`) what every live stage holds.
    pub(crate) fn commit_staged(&self, queue: &Queue) {
        let stages: Vec<_> = {
            let mut list = self.stages.lock().unwrap_or_else(|p| p.into_inner());
            list.retain(|w| w.strong_count() > 0);
            list.iter().filter_map(Weak::upgrade).collect()
        };
        for stage in stages {
            let items = stage.take_staged();
            if items.is_empty() {
                continue;
            }
            if let Some(back) = self.commit_inline(items, queue) {
                queue.send_batch(back);
            }
        }
    }

    /// Commits `items` on the calling thread if that cannot block it; otherwise gives them
    /// back for the writer thread.
    fn commit_inline(&self, items: Vec<Item>, queue: &Queue) -> Option<Vec<Item>> {
        #[cfg(feature = "test-util")]
        if crate::testing::active() {
            return Some(items);
        }
        if self.sync == SyncPolicy::Batch || queue.is_closed() || items.iter().any(|i| i.key.is_some()) {
            return Some(items);
        }
        let Ok(mut core) = self.core.try_lock() else { return Some(items) };
        if !core.is_healthy() {
            return Some(items);
        }
        let mut batch = items;
        let n = batch.len();
        if core.commit(&mut batch, true) {
            core.release(n);
            self.metrics.inline_batches.inc();
            None
        } else {
            Some(batch)
        }
    }
}
