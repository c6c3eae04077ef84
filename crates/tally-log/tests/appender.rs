//! `Appender`, the log's front for tokio callers, against a real RocksDB in a temp dir.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::Duration;

mod common;

use common::{append_concurrently, record};
use tally_log::{Log, LogError, LogMetrics, LogOptions};
use tally_model::Event;

fn open(dir: &std::path::Path, options: LogOptions) -> (Log, LogMetrics) {
    let metrics = LogMetrics::default();
    (Log::open(dir, options, metrics.clone()).unwrap(), metrics)
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// The point of the appender: what one turn of the runtime appends goes to the writer as one
/// group, so it is committed in a batch or a few, not one batch per event.
#[test]
fn appends_of_one_turn_are_committed_together_and_all_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let (log, metrics) = open(dir.path(), LogOptions::default());
    let appender = log.appender();
    let seqs = current_thread().block_on(append_concurrently(&appender, 200));
    let unique: BTreeSet<u64> = seqs.iter().copied().collect();
    assert_eq!(unique, (1..=200).collect::<BTreeSet<_>>(), "every append acknowledged once, no gaps");
    let batches = metrics.batches_committed.get();
    assert!(batches <= 4, "200 appends of one turn took {batches} batches");
    let stored = log.reader().read_range(1, usize::MAX).unwrap();
    assert_eq!(stored.len(), 200);
    for (seq, bytes) in stored {
        let Event::ProgramChange(p) = tally_model::decode(&bytes).unwrap() else { panic!("not a program change") };
        assert_eq!(
            seqs.iter().position(|&s| s == seq).map(|i| i as u64),
            Some(p.ts_ms),
            "seq {seq} holds another's record"
        );
    }
    assert!(log.reader().verify().unwrap().is_ok());
    log.close();
}

/// Appends made within one turn wait for the turn to end, however slowly they come: here
/// the runtime's only task appends twenty records a few milliseconds apart (a writer fed
/// directly would commit each on its own), and they are committed as one batch.
#[test]
fn a_turn_is_one_batch_however_long_it_takes() {
    let dir = tempfile::tempdir().unwrap();
    let (log, metrics) = open(dir.path(), LogOptions::default());
    let appender = log.appender();
    current_thread().block_on(async {
        let pendings: Vec<_> = (0..20)
            .map(|i| {
                // Blocks the runtime on purpose: the turn does not end between appends.
                std::thread::sleep(Duration::from_millis(2));
                appender.submit(record(i)).unwrap()
            })
            .collect();
        for (i, p) in pendings.into_iter().enumerate() {
            assert_eq!(p.await.unwrap(), i as u64 + 1);
        }
    });
    assert_eq!(metrics.batches_committed.get(), 1);
    log.close();
}

#[test]
fn many_workers_share_one_appender() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), LogOptions::default());
    let appender = log.appender();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap();
    let seqs = rt.block_on(append_concurrently(&appender, 2000));
    assert_eq!(seqs.iter().copied().collect::<BTreeSet<_>>(), (1..=2000).collect::<BTreeSet<_>>());
    assert_eq!(log.last_committed(), 2000);
    log.close();
}

/// Staged events count against the queue's capacity like queued ones: a caller that appends
/// more than the capacity in one turn is refused at once for the excess, and nothing that was
/// accepted is lost.
#[test]
fn staged_events_count_against_the_queue_capacity() {
    let dir = tempfile::tempdir().unwrap();
    let (log, metrics) = open(dir.path(), LogOptions { queue_capacity: 10, ..LogOptions::default() });
    let appender = log.appender();
    current_thread().block_on(async {
        // No await between the submits: all of them are staged in this turn.
        let results: Vec<_> = (0..15).map(|i| appender.submit(record(i))).collect();
        let (accepted, refused): (Vec<_>, Vec<_>) = results.into_iter().partition(Result::is_ok);
        assert_eq!(accepted.len(), 10);
        assert!(refused.iter().all(|r| matches!(r, Err(LogError::QueueFull))), "{refused:?}");
        let mut seqs = Vec::new();
        for p in accepted {
            seqs.push(p.unwrap().await.unwrap());
        }
        assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
        // The room is back once the writer has taken them.
        assert_eq!(appender.submit(record(99)).unwrap().await.unwrap(), 11);
    });
    assert_eq!(metrics.events_appended.get(), 11);
    log.close();
}

#[test]
fn keyed_appends_through_an_appender_report_repeats() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), LogOptions::default());
    let appender = log.appender();
    current_thread().block_on(async {
        let a = appender.submit_unique(record(1), b"order-1").unwrap();
        let b = appender.submit_unique(record(2), b"order-1").unwrap();
        let c = appender.submit_unique(record(3), b"order-2").unwrap();
        let (a, b, c) = (a.await.unwrap(), b.await.unwrap(), c.await.unwrap());
        assert_eq!(a.duplicate_of, None);
        assert_eq!(b.duplicate_of, Some(a.seq));
        assert_eq!(c.duplicate_of, None);
    });
    log.close();
}

#[test]
fn appends_after_close_fail_with_closed() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), LogOptions::default());
    let appender = log.appender();
    current_thread().block_on(async {
        assert_eq!(appender.submit(record(1)).unwrap().await.unwrap(), 1);
        log.close();
        assert!(matches!(appender.submit(record(2)), Err(LogError::Closed)));
    });
}

/// Called from a plain thread there is no runtime to stage on: the appender appends directly.
#[test]
fn outside_a_runtime_an_appender_appends_directly() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), LogOptions::default());
    let appender = log.appender();
    assert_eq!(appender.submit(record(1)).unwrap().wait().unwrap(), 1);
    assert_eq!(appender.submit_unique(record(2), b"k").unwrap().wait().unwrap().seq, 2);
    log.close();
}

/// The appender's task lives on the runtime that first used it. Once that runtime is gone,
/// appends still go through (directly), and so do their acknowledgements.
#[test]
fn an_appender_outlives_the_runtime_its_task_ran_on() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), LogOptions::default());
    let appender = log.appender();
    let first = current_thread();
    assert_eq!(first.block_on(async { appender.submit(record(1)).unwrap().await.unwrap() }), 1);
    drop(first);
    let second = current_thread();
    let seqs = second.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), append_concurrently(&appender, 50)).await.expect("appends hung")
    });
    assert_eq!(seqs.iter().copied().collect::<BTreeSet<_>>(), (2..=51).collect::<BTreeSet<_>>());
    assert_eq!(appender.submit(record(99)).unwrap().wait().unwrap(), 52);
    log.close();
}

/// A current-thread runtime whose thread commits its staged appends before it parks.
fn parking_runtime(log: &Log) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().on_thread_park(log.park_hook()).enable_all().build().unwrap()
}

/// Opens a log with `options`, appends `n` records from as many tasks on a parking runtime,
/// and checks each got its own sequence number, 1..=n with no gaps.
fn appended_at_park(options: LogOptions, n: u64) -> (tempfile::TempDir, Log, LogMetrics, Vec<u64>) {
    let dir = tempfile::tempdir().unwrap();
    let (log, metrics) = open(dir.path(), options);
    let appender = log.appender();
    let rt = parking_runtime(&log);
    let seqs = rt.block_on(append_concurrently(&appender, n));
    assert_eq!(seqs.iter().copied().collect::<BTreeSet<_>>(), (1..=n).collect::<BTreeSet<_>>());
    (dir, log, metrics, seqs)
}

/// With the park hook, the runtime thread commits what it staged itself once it runs out of
/// work: no batch goes through the writer thread, and every append is acknowledged with its
/// own record under its sequence number.
#[test]
fn with_a_park_hook_the_runtime_thread_commits_what_it_staged() {
    let (_dir, log, metrics, seqs) = appended_at_park(LogOptions::default(), 50);
    assert!(metrics.inline_batches.get() >= 1);
    assert_eq!(metrics.inline_batches.get(), metrics.batches_committed.get(), "a batch went through the writer");
    for (seq, bytes) in log.reader().read_range(1, usize::MAX).unwrap() {
        let Event::ProgramChange(p) = tally_model::decode(&bytes).unwrap() else { panic!("not a program change") };
        assert_eq!(seqs.iter().position(|&s| s == seq).map(|i| i as u64), Some(p.ts_ms), "seq {seq}");
    }
    assert!(log.reader().verify().unwrap().is_ok());
    log.close();
}

/// A runtime that keeps finding work hands full groups to the writer as they fill (so the
/// writer commits them meanwhile), and at most the rest itself.
#[test]
fn with_a_park_hook_large_groups_still_go_to_the_writer() {
    let (_dir, log, metrics, _) = appended_at_park(LogOptions::default(), 300);
    // The rest of the turn is committed at park, unless the writer is still committing the
    // full groups then: the hook never waits for it, and hands the rest over too.
    let (inline, all) = (metrics.inline_batches.get(), metrics.batches_committed.get());
    assert!(inline < all, "{inline} of {all} batches inline: no full group reached the writer");
    assert!(log.reader().verify().unwrap().is_ok());
    log.close();
}

/// What could block the runtime thread stays on the writer: keyed appends (their duplicate
/// check reads the database) and every commit under `sync = batch` (an fsync).
#[test]
fn keyed_appends_and_fsynced_commits_stay_on_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let (log, metrics) = open(dir.path(), LogOptions::default());
    let appender = log.appender();
    let rt = parking_runtime(&log);
    rt.block_on(async {
        let a = appender.submit_unique(record(1), b"order-1").unwrap().await.unwrap();
        let b = appender.submit_unique(record(2), b"order-1").unwrap().await.unwrap();
        assert_eq!(b.duplicate_of, Some(a.seq));
    });
    assert_eq!(metrics.inline_batches.get(), 0);
    drop(rt);
    log.close();

    let options = LogOptions { sync: tally_log::SyncPolicy::Batch, ..LogOptions::default() };
    let (_dir, log, metrics, _) = appended_at_park(options, 20);
    assert_eq!(metrics.inline_batches.get(), 0);
    assert_eq!(metrics.fsyncs.get(), metrics.batches_committed.get());
    log.close();
}

/// A runtime that never parks (its task yields forever) never runs the hook: its staged
/// append is handed to the writer after the grace period instead of waiting for a park.
#[test]
fn a_runtime_that_never_parks_still_gets_its_appends_committed() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let (log, metrics) = open(dir.path(), LogOptions::default());
    let appender = log.appender();
    let rt = parking_runtime(&log);
    rt.block_on(async {
        let done = Arc::new(AtomicBool::new(false));
        let pending = appender.submit(record(1)).unwrap();
        let flag = Arc::clone(&done);
        tokio::spawn(async move {
            assert_eq!(pending.await.unwrap(), 1);
            flag.store(true, Ordering::SeqCst);
        });
        let started = std::time::Instant::now();
        // Yielding re-queues this task at once, so the runtime always has work: no park.
        while !done.load(Ordering::SeqCst) {
            assert!(started.elapsed() < Duration::from_secs(10), "the append was never committed");
            tokio::task::yield_now().await;
        }
    });
    assert_eq!(metrics.inline_batches.get(), 0);
    assert_eq!(metrics.events_appended.get(), 1);
    drop(rt);
    log.close();
}

/// Several worker threads park and commit at once, beside the writer: every append is
/// acknowledged once and the log has no gaps.
#[test]
fn with_a_park_hook_many_workers_commit_without_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let (log, metrics) = open(dir.path(), LogOptions::default());
    let appender = log.appender();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .on_thread_park(log.park_hook())
        .enable_all()
        .build()
        .unwrap();
    let seqs = rt.block_on(append_concurrently(&appender, 2000));
    assert_eq!(seqs.iter().copied().collect::<BTreeSet<_>>(), (1..=2000).collect::<BTreeSet<_>>());
    assert_eq!(log.last_committed(), 2000);
    assert_eq!(metrics.events_appended.get(), 2000);
    assert!(log.reader().verify().unwrap().is_ok());
    drop(rt);
    log.close();
}
