//! A background task of the bus: one future on a single-threaded runtime on a thread of its
//! own (off the edge's runtime and the attribution worker's thread), stopped by a flag the
//! future watches.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub(crate) struct Background {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Background {
    /// Runs the future `task(stop)` builds on thread `name` until it returns.
    pub(crate) fn spawn<F, Fut>(name: &str, task: F) -> io::Result<Background>
    where
        F: FnOnce(Arc<AtomicBool>) -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        // Its blocking-pool threads carry the task's name too (the shipper reads the log on
        // them), so `top -H` and CPU pinning see one task.
        let rt = tokio::runtime::Builder::new_current_thread().thread_name(name).enable_all().build()?;
        let thread = std::thread::Builder::new().name(name.into()).spawn(move || rt.block_on(task(flag)))?;
        Ok(Background { stop, thread })
    }

    /// Sets the flag and waits for the future to return.
    pub(crate) fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

/// Sleeps for `d`, waking early when `stop` is set.
pub(crate) async fn pause(d: Duration, stop: &AtomicBool) {
    let until = Instant::now() + d;
    while Instant::now() < until && !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(50).min(until - Instant::now())).await;
    }
}
