//! Feeds the log to the engine and commits outputs with the checkpoint.
//!
//! The worker reads events after its checkpoint, applies up to `commit_every` of them to the
//! state's overlay, then commits overlay and checkpoint in one RocksDB write. Killed anywhere,
//! it restarts from the last commit and re-applies the same events to the same state, so its
//! ledger is the one an uninterrupted run would have produced (exactly-once effects).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tally_log::{LogReader, Tail};
use tally_model::EventView;

use crate::engine::{self, ClickIn};
use crate::metrics::AttributionMetrics;
use crate::pipeline::{self, ClickBatch, Decoded};
use crate::snapshots::{self, SnapshotPolicy};
use crate::state::State;
use crate::AttributionError;

/// The first pause before a retry; it doubles while retries fail.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// The longest pause between retries after a transient failure.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Sleeps `d` in short steps; true if `stop` was set meanwhile.
fn sleep_unless_stopped(d: Duration, stop: &AtomicBool) -> bool {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if stop.load(Ordering::Relaxed) {
            return true;
        }
        std::thread::sleep((until - Instant::now()).min(Duration::from_millis(50)));
    }
    stop.load(Ordering::Relaxed)
}

#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Events applied between commits (fewer when the log runs dry).
    pub commit_every: usize,
    /// How long a tail waits for new events before checking for shutdown (and, reading
    /// another process's log, how often it catches up).
    pub poll: Duration,
    /// fsync each commit. The log is the source of truth and attribution re-derives from it,
    /// so the default is off: a power loss costs only re-applying the last events.
    pub sync: bool,
    /// Periodic snapshots for replays of windows that start mid-log; `None` takes none.
    pub snapshots: Option<SnapshotPolicy>,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions { commit_every: 65_536, poll: Duration::from_millis(200), sync: false, snapshots: None }
    }
}

#[derive(Debug)]
pub struct Worker {
    state: State,
    metrics: AttributionMetrics,
    options: WorkerOptions,
    uncommitted: usize,
    /// Position of the newest snapshot (0 when none).
    snapshot_at: u64,
}

impl Worker {
    /// Opens the state in `dir` (creating it).
    pub fn open(dir: &Path, options: WorkerOptions, metrics: AttributionMetrics) -> Result<Worker, AttributionError> {
        let state = State::open(dir, options.sync)?;
        Ok(Worker::with_state(state, options, metrics))
    }

    pub fn with_state(state: State, options: WorkerOptions, metrics: AttributionMetrics) -> Worker {
        metrics.position.set(i64::try_from(state.checkpoint().position).unwrap_or(i64::MAX));
        metrics.pending_holds.set(i64::try_from(state.pending_holds()).unwrap_or(i64::MAX));
        let snapshot_at = options
            .snapshots
            .as_ref()
            .and_then(|p| snapshots::list(&p.dir).ok())
            .and_then(|l| l.last().map(|(pos, _)| *pos))
            .unwrap_or(0);
        Worker { state, metrics, options, uncommitted: 0, snapshot_at }
    }

    /// Makes the next `n` commits fail after the state has handed over its overlay, the way
    /// a write refused by a full disk does.
    #[cfg(feature = "test-util")]
    pub fn fail_next_commits(&mut self, n: u32) {
        self.state.fail_next_commits(n);
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn into_state(self) -> State {
        self.state
    }

    /// The last sequence number applied (committed or not).
    pub fn position(&self) -> u64 {
        self.state.checkpoint().position
    }

    /// Decodes and applies one log record, without committing. A click is read in place.
    pub fn apply_record(&mut self, seq: u64, bytes: &[u8]) -> Result<(), AttributionError> {
        match tally_model::decode_view(bytes).map_err(|error| AttributionError::Record { seq, error })? {
            EventView::Click(view) => {
                let click = ClickIn::of(&view);
                self.apply_click(seq, &click)
            }
            EventView::Owned(event) => self.apply_event(seq, &event),
        }
    }

    /// Applies one decoded event, without committing.
    pub fn apply_event(&mut self, seq: u64, event: &tally_model::Event) -> Result<(), AttributionError> {
        let out = engine::apply(&mut self.state, seq, event)?;
        self.applied(&out);
        Ok(())
    }

    /// Applies one click, without committing.
    pub fn apply_click(&mut self, seq: u64, click: &ClickIn<'_>) -> Result<(), AttributionError> {
        let out = engine::apply_click(&mut self.state, seq, click)?;
        self.applied(&out);
        Ok(())
    }

    fn applied(&mut self, out: &engine::Outputs) {
        for e in &out.entries {
            self.metrics.entry(e.status);
        }
        self.metrics.events.inc();
        self.uncommitted += 1;
        #[cfg(feature = "test-util")]
        crate::testing::crash_point("apply");
    }

    /// Commits everything applied so far, with the checkpoint.
    pub fn commit(&mut self) -> Result<(), AttributionError> {
        if self.uncommitted == 0 {
            return Ok(());
        }
        let started = Instant::now();
        self.state.commit()?;
        self.metrics.commit_duration.observe(started.elapsed().as_secs_f64());
        self.metrics.position.set(i64::try_from(self.position()).unwrap_or(i64::MAX));
        self.metrics.pending_holds.set(i64::try_from(self.state.pending_holds()).unwrap_or(i64::MAX));
        self.uncommitted = 0;
        self.maybe_snapshot();
        Ok(())
    }

    /// Snapshots the state when the position has crossed a multiple of the policy's
    /// interval since the last one. A failed snapshot costs replay speed, not correctness,
    /// so it is logged and attribution goes on.
    fn maybe_snapshot(&mut self) {
        let Some(policy) = &self.options.snapshots else { return };
        let every = policy.every.max(1);
        let position = self.position();
        if position / every <= self.snapshot_at / every {
            return;
        }
        match snapshots::take(&self.state, policy, position) {
            Ok(_) => self.snapshot_at = position,
            Err(e) => {
                self.metrics.errors.inc();
                tracing::warn!(position, error = %e, "attribution snapshot failed");
            }
        }
    }

    /// Applies a batch of records and commits when `commit_every` is reached.
    fn process(&mut self, batch: &[(u64, Vec<u8>)]) -> Result<(), AttributionError> {
        for (seq, bytes) in batch {
            self.apply_record(*seq, bytes)?;
            if self.uncommitted >= self.options.commit_every {
                self.commit()?;
            }
        }
        Ok(())
    }

    /// Attributes everything in the log up to `upto` (default: the head as of now), then
    /// commits. Returns the number of events applied. The log is read and decoded on a
    /// second thread ([`pipeline`]).
    pub fn catch_up(&mut self, reader: &LogReader, upto: Option<u64>) -> Result<u64, AttributionError> {
        self.catch_up_progress(reader, upto, |_| {})
    }

    /// [`Worker::catch_up`], calling `progress(seq)` after each batch read, for a caller that
    /// shows how far a long catch-up has got.
    pub fn catch_up_progress(
        &mut self,
        reader: &LogReader,
        upto: Option<u64>,
        mut progress: impl FnMut(u64),
    ) -> Result<u64, AttributionError> {
        reader.catch_up()?;
        let head = reader.last_seq()?.unwrap_or(0);
        let end = upto.unwrap_or(head).min(head);
        let mut applied = 0u64;
        if self.position() < end {
            let every = self.options.commit_every;
            applied = pipeline::for_each_batch(reader, self.position() + 1, end, |batch: &ClickBatch| {
                for item in batch.iter() {
                    match item? {
                        (seq, Decoded::Click(c)) => self.apply_click(seq, &c)?,
                        (seq, Decoded::Event(e)) => self.apply_event(seq, e)?,
                    }
                    if self.uncommitted >= every {
                        self.commit()?;
                    }
                }
                progress(self.position());
                Ok::<(), AttributionError>(())
            })?;
        }
        self.commit()?;
        self.observe_lag(reader)?;
        Ok(applied)
    }

    /// Follows the log until `stop` is set, committing at least every `poll` while events
    /// flow. Returns after a final commit.
    ///
    /// A transient failure ([`AttributionError::is_transient`], e.g. a commit refused by a full
    /// disk) does not stop the worker: it reloads the committed state and re-applies from the
    /// checkpoint after a pause that doubles up to [`MAX_BACKOFF`], as a restart would, so
    /// the ledger is the same as if nothing had failed. Other errors are returned.
    pub fn run(&mut self, reader: LogReader, stop: &AtomicBool) -> Result<(), AttributionError> {
        self.metrics.up.set(1);
        let mut tail = reader.tail(self.position() + 1);
        let mut backoff = FIRST_BACKOFF;
        let mut retried_from = None;
        let result = 'run: loop {
            let failed_at = self.position();
            match self.follow(&mut tail, stop) {
                Ok(()) => break Ok(()),
                Err(e) if e.is_transient() => {
                    // Progress since the last retry: the trouble passed once, start short again.
                    if retried_from.is_some_and(|p| failed_at > p) {
                        backoff = FIRST_BACKOFF;
                    }
                    retried_from = Some(failed_at);
                    self.metrics.up.set(0);
                    self.metrics.errors.inc();
                    tracing::warn!(error = %e, position = failed_at, "attribution failed; retrying from its checkpoint");
                    let mut last = e;
                    // The state is only trusted again once it has been read back whole.
                    loop {
                        if sleep_unless_stopped(backoff, stop) {
                            break 'run Err(last);
                        }
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        match self.reload() {
                            Ok(()) => break,
                            Err(e) if e.is_transient() => last = e,
                            Err(e) => {
                                self.metrics.errors.inc();
                                break 'run Err(e);
                            }
                        }
                    }
                    tail.seek(self.position() + 1);
                    self.metrics.up.set(1);
                }
                Err(e) => {
                    self.metrics.errors.inc();
                    break Err(e);
                }
            }
        };
        self.metrics.up.set(0);
        result
    }

    /// Drops what was applied since the last commit and reads the committed state back.
    fn reload(&mut self) -> Result<(), AttributionError> {
        self.state.reload()?;
        self.uncommitted = 0;
        self.metrics.position.set(i64::try_from(self.position()).unwrap_or(i64::MAX));
        Ok(())
    }

    fn follow(&mut self, tail: &mut Tail, stop: &AtomicBool) -> Result<(), AttributionError> {
        let mut last_commit = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let batch = tail.next_batch(self.options.commit_every, self.options.poll)?;
            self.process(&batch)?;
            if batch.len() < self.options.commit_every || last_commit.elapsed() >= self.options.poll {
                self.commit()?;
                last_commit = Instant::now();
                self.observe_lag(tail.reader())?;
            }
        }
        self.commit()
    }

    fn observe_lag(&self, reader: &LogReader) -> Result<(), AttributionError> {
        let head = reader.last_seq()?.unwrap_or(0);
        let position = self.position();
        self.metrics.lag_events.set(i64::try_from(head.saturating_sub(position)).unwrap_or(i64::MAX));
        let mut lag = 0.0;
        if head > position {
            if let Some((_, bytes)) = reader.read_range(head, 1)?.first() {
                if let Ok(event) = tally_model::decode(bytes) {
                    lag = event.ts_ms().saturating_sub(self.state.checkpoint().watermark_ms) as f64 / 1000.0;
                }
            }
        }
        self.metrics.lag_seconds.set(lag);
        Ok(())
    }
}
