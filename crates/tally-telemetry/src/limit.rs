//! Rate-limited error and warning logs, one limiter per call site.
//!
//! A failing disk or an exhausted file-descriptor table can fail every request or every
//! batch; an ERROR line for each would bury the first (useful) one and fill the journal at
//! thousands of lines a second. Each call site logs at most [`BURST`] lines per
//! [`WINDOW_SECS`] window; the first line of the next window says how many were suppressed.
//! Metrics still count every occurrence.

use std::sync::atomic::{AtomicU64, Ordering};

/// Lines a call site may log per window.
pub const BURST: u64 = 5;
/// Window length in seconds.
pub const WINDOW_SECS: u64 = 10;

/// One call site's limiter: the window it is in and how many lines it logged or dropped in
/// it, packed so one atomic update decides.
#[derive(Debug)]
pub struct Limiter {
    /// Window number (seconds since the epoch / WINDOW_SECS) in the high 40 bits, the count
    /// in the low 24 (saturating).
    state: AtomicU64,
}

const COUNT_BITS: u32 = 24;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

impl Limiter {
    pub const fn new() -> Limiter {
        Limiter { state: AtomicU64::new(0) }
    }

    /// `Some(suppressed)` when a line may be logged now (with how many were dropped in the
    /// previous window), `None` when this one must be dropped.
    pub fn check(&self) -> Option<u64> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        self.check_at(now)
    }

    pub fn check_at(&self, now_secs: u64) -> Option<u64> {
        let window = now_secs / WINDOW_SECS;
        let mut cur = self.state.load(Ordering::Relaxed);
        loop {
            let (w, n) = (cur >> COUNT_BITS, cur & COUNT_MASK);
            let (next, verdict) = if w != window {
                ((window << COUNT_BITS) | 1, Some(n.saturating_sub(BURST)))
            } else {
                ((w << COUNT_BITS) | (n + 1).min(COUNT_MASK), (n < BURST).then_some(0))
            };
            match self.state.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return verdict,
                Err(actual) => cur = actual,
            }
        }
    }
}

impl Default for Limiter {
    fn default() -> Self {
        Limiter::new()
    }
}

/// `tracing::error!` limited per call site (see the module doc); adds a `suppressed` field
/// when earlier lines were dropped.
#[macro_export]
macro_rules! error_limited {
    ($($arg:tt)+) => {{
        static LIMITER: $crate::limit::Limiter = $crate::limit::Limiter::new();
        if let Some(suppressed) = LIMITER.check() {
            if suppressed > 0 {
                ::tracing::error!(suppressed, $($arg)+);
            } else {
                ::tracing::error!($($arg)+);
            }
        }
    }};
}

/// `tracing::warn!` limited per call site, like [`error_limited!`].
#[macro_export]
macro_rules! warn_limited {
    ($($arg:tt)+) => {{
        static LIMITER: $crate::limit::Limiter = $crate::limit::Limiter::new();
        if let Some(suppressed) = LIMITER.check() {
            if suppressed > 0 {
                ::tracing::warn!(suppressed, $($arg)+);
            } else {
                ::tracing::warn!($($arg)+);
            }
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_silence_then_a_count_of_what_was_dropped() {
        let l = Limiter::new();
        let t = 1_000 * WINDOW_SECS;
        let allowed = (0..100).filter(|_| l.check_at(t).is_some()).count() as u64;
        assert_eq!(allowed, BURST);
        assert_eq!(l.check_at(t + WINDOW_SECS), Some(100 - BURST));
        assert_eq!(l.check_at(t + WINDOW_SECS), Some(0));
    }

    #[test]
    fn a_quiet_window_reports_nothing_suppressed() {
        let l = Limiter::new();
        assert_eq!(l.check_at(50), Some(0));
        assert_eq!(l.check_at(50 + 3 * WINDOW_SECS), Some(0));
    }
}
