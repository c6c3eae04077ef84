//! Determinism and exactly-once: the same log gives byte-identical ledgers whether attributed
//! in one go, in other batch sizes, in memory, or by a worker killed and restarted at random
//! points, against a real log and a real RocksDB state in temp dirs.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::generate;
use tally_attribution::report::{report, GroupBy, ReportRow};
use tally_attribution::{AttributionMetrics, Entry, LedgerReader, State, Worker, WorkerOptions};
use tally_log::{Log, LogMetrics, LogOptions, LogReader};
use tally_model::Event;
use tally_testkit::Rng;

fn write_log(dir: &Path, events: &[Event]) -> Log {
    let log = Log::open(dir, LogOptions::default(), LogMetrics::default()).unwrap();
    let pending: Vec<_> = events.iter().map(|e| log.submit(tally_model::encode(e).unwrap()).unwrap()).collect();
    for p in pending {
        p.wait().unwrap();
    }
    log
}

fn options(commit_every: usize) -> WorkerOptions {
    WorkerOptions { commit_every, ..WorkerOptions::default() }
}

fn ledger(state: &State) -> Vec<Entry> {
    state.entries().collect::<Result<_, _>>().unwrap()
}

fn stats(state: &State) -> Vec<ReportRow> {
    let mut rows = report(state, GroupBy::Day, 0, u32::MAX).unwrap();
    rows.extend(report(state, GroupBy::Sub1, 0, u32::MAX).unwrap());
    rows
}

fn run_uninterrupted(dir: &Path, reader: &LogReader, commit_every: usize) -> (String, Vec<Entry>, Vec<ReportRow>) {
    let mut w = Worker::open(dir, options(commit_every), AttributionMetrics::default()).unwrap();
    w.catch_up(reader, None).unwrap();
    (w.state().ledger_digest().unwrap(), ledger(w.state()), stats(w.state()))
}

#[test]
fn same_log_same_ledger_in_every_way_of_running_it() {
    let variant = common::program_variant();
    let events = generate::log(11, 4_000, &[common::PROGRAM, &variant]);
    let tmp = tempfile::tempdir().unwrap();
    let log = write_log(&tmp.path().join("log"), &events);
    let reader = log.reader();
    let last = reader.last_seq().unwrap().unwrap();
    assert_eq!(last, events.len() as u64);

    let (digest, entries, rows) = run_uninterrupted(&tmp.path().join("a"), &reader, 512);
    assert!(entries.len() > 1_000, "the generated log should produce a real ledger, got {}", entries.len());
    for status in ["approved", "rejected", "rejected_cap", "duplicate", "unattributed"] {
        assert!(entries.iter().any(|e| e.status.as_str() == status), "no {status} entry in the generated ledger");
    }
    assert!(entries.iter().any(|e| e.kind == tally_attribution::Kind::Clawback));

    // Other batch sizes, other directory: the same bytes.
    let (digest_b, entries_b, rows_b) = run_uninterrupted(&tmp.path().join("b"), &reader, 37);
    assert_eq!(digest_b, digest);
    assert_eq!(entries_b, entries);
    assert_eq!(rows_b, rows);

    // The pure core on an in-memory state: the same ledger.
    let mut mem = State::in_memory();
    for (i, e) in events.iter().enumerate() {
        tally_attribution::apply(&mut mem, i as u64 + 1, e).unwrap();
    }
    assert_eq!(mem.ledger_digest().unwrap(), digest);
    assert_eq!(stats(&mem), rows);

    // Killed at 25 random points (uncommitted work lost, as with SIGKILL) and restarted.
    let dir = tmp.path().join("killed");
    let mut rng = Rng::new(99);
    let mut kills = 0;
    while kills < 25 {
        let mut w = Worker::open(&dir, options(1_000_000), AttributionMetrics::default()).unwrap();
        let start = w.position();
        let stop_at = (start + 1 + rng.below(2 * last / 25)).min(last);
        let records = reader.read_range(start + 1, (stop_at - start) as usize).unwrap();
        for (seq, bytes) in records {
            w.apply_record(seq, &bytes).unwrap();
            if rng.per_mille(20) {
                w.commit().unwrap();
            }
        }
        if rng.per_mille(500) {
            w.commit().unwrap();
        }
        drop(w); // the kill: whatever was not committed is gone
        kills += 1;
    }
    let mut w = Worker::open(&dir, options(512), AttributionMetrics::default()).unwrap();
    w.catch_up(&reader, None).unwrap();
    assert_eq!(w.position(), last);
    assert_eq!(w.state().ledger_digest().unwrap(), digest);
    assert_eq!(stats(w.state()), rows);
}

#[test]
fn a_reader_sees_the_workers_commits_while_it_runs() {
    let events = generate::log(5, 500, &[common::PROGRAM]);
    let tmp = tempfile::tempdir().unwrap();
    let log = write_log(&tmp.path().join("log"), &events);
    let dir = tmp.path().join("state");
    let mut w = Worker::open(&dir, options(100), AttributionMetrics::default()).unwrap();
    w.catch_up(&log.reader(), Some(200)).unwrap();
    let mut reader = LedgerReader::open(&dir).unwrap();
    assert_eq!(reader.checkpoint().position, 200);
    w.catch_up(&log.reader(), None).unwrap();
    reader.refresh().unwrap();
    assert_eq!(reader.checkpoint().position, 501);
    assert_eq!(reader.ledger_digest().unwrap(), w.state().ledger_digest().unwrap());

    // A second worker on the same state is refused with a clear error.
    let err = Worker::open(&dir, options(100), AttributionMetrics::default()).unwrap_err().to_string();
    assert!(err.contains("cannot open attribution state"), "{err}");
    assert!(LedgerReader::open(&tmp.path().join("nothing")).unwrap_err().to_string().contains("no attribution state"));
}

#[test]
fn an_undecodable_record_stops_the_worker_where_it_is() {
    let events = generate::log(3, 50, &[common::PROGRAM]);
    let tmp = tempfile::tempdir().unwrap();
    let log = write_log(&tmp.path().join("log"), &events);
    let mut bad = tally_model::encode(&events[1]).unwrap();
    let n = tally_model::record::chained_len(&bad);
    bad[n - 1] ^= 1;
    log.submit(bad).unwrap().wait().unwrap();
    let mut w = Worker::open(&tmp.path().join("state"), options(10), AttributionMetrics::default()).unwrap();
    let err = w.catch_up(&log.reader(), None).unwrap_err().to_string();
    assert!(err.contains("log record 52 does not decode"), "{err}");
    assert_eq!(w.position(), 51, "everything before the bad record is attributed");
}

/// A replay that stops at sequence N is compared with a live ledger that went on, taken back
/// to N: this shows that taking an entry back (`Entry::as_of`) gives exactly the entry as it
/// stood at N, for every kind of later change (approvals, rejections, clawbacks).
#[test]
fn entries_taken_back_to_a_point_equal_the_ledger_at_that_point() {
    let variant = common::program_variant();
    let events = generate::log(23, 4_000, &[common::PROGRAM, &variant]);
    let cuts = [1u64, 400, 1_234, 2_000, 2_999, 3_999];
    let mut state = State::in_memory();
    let mut at_cut = Vec::new();
    for (i, e) in events.iter().enumerate() {
        let seq = i as u64 + 1;
        tally_attribution::apply(&mut state, seq, e).unwrap();
        if cuts.contains(&seq) {
            at_cut.push((seq, ledger(&state)));
        }
    }
    let last = ledger(&state);
    let mut changed_later = 0;
    for (cut, then) in at_cut {
        let back: Vec<Entry> = last.iter().filter_map(|e| e.as_of(cut)).collect();
        changed_later += last.iter().filter(|e| e.as_of(cut).is_some_and(|b| &b != *e)).count();
        assert_eq!(back, then, "ledger taken back to {cut}");
    }
    assert!(changed_later > 50, "the log should change entries after the cuts, got {changed_later}");
}

/// A commit refused by the disk loses the overlay it had taken; the worker reloads its
/// committed state, re-applies from the checkpoint and ends with the ledger of a worker that
/// never failed, without a restart.
#[test]
fn a_worker_whose_commits_fail_retries_from_its_checkpoint_and_ends_with_the_same_ledger() {
    let events = generate::log(7, 2_000, &[common::PROGRAM]);
    let tmp = tempfile::tempdir().unwrap();
    let log = write_log(&tmp.path().join("log"), &events);
    let reader = log.reader();
    let last = reader.last_seq().unwrap().unwrap();
    let (digest, entries, rows) = run_uninterrupted(&tmp.path().join("a"), &reader, 300);

    let metrics = AttributionMetrics::default();
    let mut w = Worker::open(&tmp.path().join("b"), options(300), metrics.clone()).unwrap();
    w.catch_up(&reader, Some(900)).unwrap();
    w.fail_next_commits(3);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = std::sync::Arc::clone(&stop);
    let reader2 = log.reader();
    let thread = std::thread::spawn(move || {
        let r = w.run(reader2, &flag);
        (w, r)
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let position = || {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text.lines()
            .find(|l| l.starts_with("tally_attribution_position "))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    while position() < last && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (w, result) = thread.join().unwrap();
    result.unwrap();
    assert_eq!(w.position(), last);
    assert_eq!(w.state().ledger_digest().unwrap(), digest);
    assert_eq!(ledger(w.state()), entries);
    assert_eq!(stats(w.state()), rows);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(text.contains("tally_attribution_errors_total 3"), "{text}");
    drop(w);
    // And what it committed is what a reopened worker finds.
    let w = Worker::open(&tmp.path().join("b"), options(300), AttributionMetrics::default()).unwrap();
    assert_eq!(w.state().ledger_digest().unwrap(), digest);
}
