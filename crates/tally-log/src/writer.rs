//! The writer thread: takes what is queued, in batches bounded by count and a short linger,
//! and commits each through the commit core.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::commit::{Core, Item};
use crate::queue::Msg;

/// How often a writer whose last commit failed checks, while idle, whether writes work again.
const PROBE_EVERY: Duration = Duration::from_secs(1);

pub(crate) struct Writer {
    rx: Receiver<Msg>,
    max_batch: usize,
    linger: Duration,
    core: Arc<Mutex<Core>>,
    /// The core's health, read without its lock.
    healthy: Arc<AtomicBool>,
}

impl Writer {
    pub(crate) fn new(rx: Receiver<Msg>, max_batch: usize, linger: Duration, core: Arc<Mutex<Core>>) -> Writer {
        let healthy = core.lock().unwrap_or_else(|p| p.into_inner()).healthy_flag();
        Writer { rx, max_batch: max_batch.max(1), linger, core, healthy }
    }

    /// Runs the writer on a thread of its own until the queue closes or says shut down.
    pub(crate) fn spawn(self) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new().name("tally-log-writer".into()).spawn(move || self.run())
    }

    fn core(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn run(self) {
        let max = self.max_batch;
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
            let linger_until = Instant::now() + self.linger;
            while batch.len() < max {
                let msg = match self.rx.try_recv() {
                    Ok(m) => m,
                    Err(_) if self.linger.is_zero() => break,
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
            core.release(batch.len());
            core.commit(&mut batch, false);
        }
        // Anything still queued after shutdown is refused: dropping its ack reports Closed.
        tracing::debug!(next_seq = self.core().next_seq(), "log writer stopped");
    }
}
