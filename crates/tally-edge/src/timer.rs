//! hyper's timer for the header-read timeout, one per connection, re-armed lazily.
//!
//! hyper arms its header-read timeout for every request head it reads and drops it once the
//! head is parsed. With `hyper_util`'s `TokioTimer` each request therefore inserts a timer
//! into tokio's wheel and removes it again, under the time driver's lock: a few percent of a
//! click's CPU. Here each connection keeps one tokio timer for its whole life. A request's
//! sleep only records its deadline; the connection's timer is moved only when it fires before
//! the newest deadline (deadlines only move later on a keep-alive connection, so that is once
//! per timeout period at most) or when a deadline is earlier than where it stands.
//!
//! The guarantee is hyper's: a head that has not arrived by its deadline fails the
//! connection. A fired timer whose request is already answered wakes the connection once,
//! which then finds nothing to do.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// The timer of one connection; give each connection its own.
#[derive(Clone, Default)]
pub(crate) struct ConnTimer {
    armed: Arc<Mutex<Option<Pin<Box<tokio::time::Sleep>>>>>,
}

impl hyper::rt::Timer for ConnTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(ConnSleep { deadline, armed: Arc::clone(&self.armed) })
    }
}

/// A request's sleep: its deadline, and the connection's timer to be woken by.
struct ConnSleep {
    deadline: Instant,
    armed: Arc<Mutex<Option<Pin<Box<tokio::time::Sleep>>>>>,
}

impl hyper::rt::Sleep for ConnSleep {}

impl Future for ConnSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.deadline {
            return Poll::Ready(());
        }
        let deadline = tokio::time::Instant::from_std(self.deadline);
        let mut armed = self.armed.lock().unwrap_or_else(|p| p.into_inner());
        let timer = armed.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() > deadline {
            timer.as_mut().reset(deadline);
        }
        // A timer set for an earlier request's deadline fires early: move it to ours once.
        while timer.as_mut().poll(cx).is_ready() {
            if Instant::now() >= self.deadline {
                return Poll::Ready(());
            }
            timer.as_mut().reset(deadline);
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use hyper::rt::Timer;

    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[tokio::test]
    async fn a_sleep_ends_at_its_deadline_not_before() {
        let timer = ConnTimer::default();
        let started = Instant::now();
        timer.sleep(ms(40)).await;
        assert!(started.elapsed() >= ms(40));
    }

    /// The keep-alive case: the connection's timer still stands at the first request's
    /// deadline when the second request's sleep, with a later deadline, waits on it.
    #[tokio::test]
    async fn a_later_deadline_is_kept_although_the_timer_was_armed_for_an_earlier_one() {
        let timer = ConnTimer::default();
        let started = Instant::now();
        let first = timer.sleep(ms(20));
        // Polled once (arming the timer for +20 ms), then dropped like a parsed head's.
        assert!(futures_poll_once(first).await.is_pending());
        timer.sleep(ms(120)).await;
        assert!(started.elapsed() >= ms(120), "woke at {:?}", started.elapsed());
    }

    #[tokio::test]
    async fn an_earlier_deadline_moves_the_timer_forward() {
        let timer = ConnTimer::default();
        let first = timer.sleep(Duration::from_secs(30));
        assert!(futures_poll_once(first).await.is_pending());
        let started = Instant::now();
        // Would hang for 30 s if the timer stayed where the first sleep put it.
        tokio::time::timeout(Duration::from_secs(5), timer.sleep(ms(30)))
            .await
            .expect("the earlier deadline was missed");
        assert!(started.elapsed() >= ms(30));
    }

    /// Polls `f` once with the task's real waker, then drops it.
    async fn futures_poll_once(mut f: Pin<Box<dyn hyper::rt::Sleep>>) -> Poll<()> {
        std::future::poll_fn(|cx| Poll::Ready(f.as_mut().poll(cx))).await
    }
}
