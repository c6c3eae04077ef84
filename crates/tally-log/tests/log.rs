//! The event log against a real RocksDB in a temp dir.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

mod common;

use common::record;
use proptest::prelude::*;
use tally_log::{Log, LogMetrics, LogOptions, LogReader, SyncPolicy};

fn open(dir: &std::path::Path) -> Log {
    Log::open(dir, LogOptions::default(), LogMetrics::default()).unwrap()
}

const WAIT: Duration = Duration::from_secs(10);

#[test]
fn concurrent_appends_get_contiguous_unique_sequences() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let seqs: Vec<u64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let log = log.clone();
                s.spawn(move || {
                    (0..500).map(|i| log.submit(record(t * 1000 + i)).unwrap().wait().unwrap()).collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let unique: BTreeSet<u64> = seqs.iter().copied().collect();
    assert_eq!(unique.len(), 4000);
    assert_eq!(unique.first(), Some(&1));
    assert_eq!(unique.last(), Some(&4000));
    let reader = log.reader();
    let all = reader.read_range(1, usize::MAX).unwrap();
    assert_eq!(all.len(), 4000);
    assert!(all.windows(2).all(|w| w[1].0 == w[0].0 + 1));
    assert!(reader.verify().unwrap().is_ok());
    log.close();
}

#[test]
fn acknowledged_sequence_points_at_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    for i in 0..50 {
        let seq = log.submit(record(i)).unwrap().wait().unwrap();
        assert_eq!(log.reader().read_range(seq, 1).unwrap()[0].1, record(i));
    }
    log.close();
}

#[test]
fn reopening_continues_the_sequence_and_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    for i in 0..10 {
        log.submit(record(i)).unwrap().wait().unwrap();
    }
    log.close();
    drop(log);
    let log =
        Log::open(dir.path(), LogOptions { sync: SyncPolicy::Batch, ..LogOptions::default() }, LogMetrics::default())
            .unwrap();
    assert_eq!(log.last_committed(), 10);
    assert_eq!(log.submit(record(10)).unwrap().wait().unwrap(), 11);
    let report = log.reader().verify().unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!((report.records, report.head_seq), (11, 11));
    log.close();
}

#[test]
fn dropping_the_last_handle_commits_the_queue_and_closes_the_database() {
    let dir = tempfile::tempdir().unwrap();
    for round in 1..=20u64 {
        let log = open(dir.path());
        let clone = log.clone();
        let pending: Vec<_> = (0..50).map(|i| clone.submit(record(i)).unwrap()).collect();
        drop(clone);
        drop(log);
        // Nothing awaited, no `close`: the queue is committed and the database closed by
        // the time the drop returns, so it opens again at once (RocksDB refuses a second
        // open while the first holds its lock, even in the same process).
        let log = open(dir.path());
        assert_eq!(log.last_committed(), round * 50);
        drop(pending);
    }
}

#[test]
fn appends_after_close_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.close();
    assert!(matches!(log.submit(record(1)), Err(tally_log::LogError::Closed)));
    assert!(!log.is_writable());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_resolves_after_commit() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let pendings: Vec<_> = (0..100).map(|i| log.submit(record(i)).unwrap()).collect();
    let mut seqs = Vec::new();
    for p in pendings {
        seqs.push(p.await.unwrap());
    }
    assert_eq!(seqs, (1..=100).collect::<Vec<_>>());
    assert_eq!(log.last_committed(), 100);
    let log2 = log.clone();
    tokio::task::spawn_blocking(move || log2.close()).await.unwrap();
}

#[test]
fn tail_is_woken_by_commits() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let mut tail = log.reader().tail(1);
    assert!(tail.next_batch(10, Duration::from_millis(10)).unwrap().is_empty());
    let writer = {
        let log = log.clone();
        std::thread::spawn(move || {
            for i in 0..5 {
                log.submit(record(i)).unwrap().wait().unwrap();
            }
        })
    };
    let mut got = Vec::new();
    while got.len() < 5 {
        // A generous timeout: the test relies on the commit signal, not on sleeping.
        got.extend(tail.next_batch(10, WAIT).unwrap().into_iter().map(|(s, _)| s));
    }
    writer.join().unwrap();
    assert_eq!(got, vec![1, 2, 3, 4, 5]);
    assert_eq!(tail.position(), 6);
    log.close();
}

#[test]
fn a_secondary_reads_a_running_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    for i in 0..20 {
        log.submit(record(i)).unwrap().wait().unwrap();
    }
    let secondary = LogReader::open_secondary(dir.path()).unwrap();
    assert_eq!(secondary.last_seq().unwrap(), Some(20));
    for i in 20..30 {
        log.submit(record(i)).unwrap().wait().unwrap();
    }
    secondary.catch_up().unwrap();
    assert_eq!(secondary.last_seq().unwrap(), Some(30));
    assert!(secondary.verify().unwrap().is_ok());
    let stats = secondary.stats(dir.path()).unwrap();
    assert_eq!(stats.events_by_kind["program_change"], 30);
    assert!(stats.bytes_on_disk > 0);
    // Its own directory goes with it, after the database closed (closing writes RocksDB's
    // info log there, which used to recreate a directory removed first).
    let scratch = secondary.scratch_dir().unwrap().to_path_buf();
    assert!(scratch.exists());
    drop(secondary);
    assert!(!scratch.exists(), "{} left behind", scratch.display());
    log.close();
}

#[test]
fn opening_a_secondary_where_there_is_no_log_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let err = LogReader::open_secondary(&dir.path().join("nope")).unwrap_err().to_string();
    assert!(err.contains("no Tally log here"), "{err}");
}

/// Logs written before December 2026 have a `meta` column family (consumer checkpoints that
/// nothing used). RocksDB opens a database for writing only with all of its families, so the
/// log, its snapshots and the test tools open it too, and leave it alone.
#[test]
fn a_log_with_the_old_meta_family_opens_appends_and_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    {
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let db = rocksdb::DB::open_cf(&opts, &data, ["events", "chain", "meta", "unique"]).unwrap();
        let meta = db.cf_handle("meta").unwrap();
        db.put_cf(meta, b"ckpt/x", 7u64.to_be_bytes()).unwrap();
    }
    let log = open(&data);
    assert_eq!(log.submit(record(1)).unwrap().wait().unwrap(), 1);
    log.close();
    drop(log);
    let log = open(&data);
    assert_eq!(log.submit(record(2)).unwrap().wait().unwrap(), 2);
    log.close();
    drop(log);
    let copy = dir.path().join("copy");
    assert_eq!(tally_log::snapshot_to(&data, &copy).unwrap(), tally_log::SnapshotMethod::Checkpoint);
    let reader = LogReader::open_secondary(&copy).unwrap();
    assert_eq!(reader.last_seq().unwrap(), Some(2));
    assert!(reader.verify().unwrap().first_bad.is_none());
}

#[test]
fn commits_are_counted_in_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = LogMetrics::default();
    let log =
        Log::open(dir.path(), LogOptions { queue_capacity: 7, ..LogOptions::default() }, metrics.clone()).unwrap();
    for i in 0..3 {
        log.submit(record(i)).unwrap().wait().unwrap();
    }
    assert_eq!(metrics.events_appended.get(), 3);
    assert_eq!(metrics.queue_capacity.get(), 7);
    assert_eq!(metrics.last_sequence.get(), 3);
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(text.contains("tally_log_events_appended_total 3"), "{text}");
    assert!(text.contains("tally_log_commit_duration_seconds_bucket"), "{text}");
    log.close();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Model check: random appends (from several threads) and reopenings against a Vec.
    #[test]
    fn log_matches_a_vec_model(ops in proptest::collection::vec((0u8..3, 1usize..40), 1..8)) {
        let dir = tempfile::tempdir().unwrap();
        let mut model: Vec<Vec<u8>> = Vec::new();
        let mut log = Some(open(dir.path()));
        for (op, n) in ops {
            match op {
                0 | 1 => {
                    let l = log.as_ref().unwrap();
                    let base = model.len() as u64;
                    let records: Vec<_> = (0..n as u64).map(|i| record(base + i)).collect();
                    // Submit all, then await: their order in the queue is their order in the log.
                    let pendings: Vec<_> = records.iter().map(|r| l.submit(r.clone()).unwrap()).collect();
                    for (i, p) in pendings.into_iter().enumerate() {
                        prop_assert_eq!(p.wait().unwrap(), model.len() as u64 + 1 + i as u64);
                    }
                    model.extend(records);
                }
                _ => {
                    let l = log.take().unwrap();
                    l.close();
                    drop(l);
                    log = Some(open(dir.path()));
                }
            }
        }
        let l = log.unwrap();
        let stored: Vec<Vec<u8>> = l.reader().read_range(1, usize::MAX).unwrap().into_iter().map(|(_, r)| r).collect();
        prop_assert_eq!(&stored, &model);
        prop_assert!(l.reader().verify().unwrap().is_ok());
        l.close();
    }
}

#[test]
fn verify_names_the_edited_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    // Submitted together, so several land in one batch: verify must still name the exact one.
    let pendings: Vec<_> = (0..100).map(|i| log.submit(record(i)).unwrap()).collect();
    for p in pendings {
        p.wait().unwrap();
    }
    log.close();
    drop(log);
    let good = LogReader::open_secondary(dir.path()).unwrap().verify().unwrap();
    assert!(good.is_ok());
    assert_eq!(good.records, 100);
    drop(Arc::new(()));

    // A forged record with a valid envelope checksum: only the chain can catch it.
    tally_log::testing::overwrite_event(dir.path(), 37, &record(9999)).unwrap();
    let bad = LogReader::open_secondary(dir.path()).unwrap().verify().unwrap();
    assert_eq!(bad.first_bad.as_ref().map(|(s, _)| *s), Some(37), "{bad:?}");
}

/// Logs written before the leaf format changed (BLAKE3 leaves, entry version 1) keep
/// verifying, keep being appended to, and an edit in either kind of batch is named exactly.
#[test]
fn a_log_with_both_leaf_versions_verifies_and_names_edits_in_either() {
    let dir = batched_log(60, 10);
    tally_log::testing::store_v1_leaves(dir.path(), 30).unwrap();
    // The writer recovers its head from a version-1 entry and goes on with version 2.
    let log = open(dir.path());
    for i in 60..70 {
        log.submit(record(i)).unwrap().wait().unwrap();
    }
    log.close();
    drop(log);
    let good = LogReader::open_secondary(dir.path()).unwrap().verify().unwrap();
    assert!(good.is_ok(), "{good:?}");
    assert_eq!(good.records, 70);

    for (seq, batch_kind) in [(45, "version 2"), (17, "version 1")] {
        tally_log::testing::overwrite_event(dir.path(), seq, &record(9999)).unwrap();
        let bad = LogReader::open_secondary(dir.path()).unwrap().verify().unwrap();
        assert_eq!(bad.first_bad.as_ref().map(|(s, _)| *s), Some(seq), "{batch_kind}: {bad:?}");
    }
}

#[test]
fn keyed_appends_report_the_first_occurrence_within_a_batch_across_batches_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    // Submitted together so they share a batch: the writer must see the in-batch repeat.
    let a = log.submit_unique(record(1), b"order-1").unwrap();
    let b = log.submit_unique(record(2), b"order-1").unwrap();
    let c = log.submit_unique(record(3), b"order-2").unwrap();
    let d = log.submit(record(4)).unwrap();
    let (a, b, c) = (a.wait().unwrap(), b.wait().unwrap(), c.wait().unwrap());
    assert_eq!(d.wait().unwrap(), 4);
    assert_eq!((a.seq, a.duplicate_of), (1, None));
    assert_eq!((b.seq, b.duplicate_of), (2, Some(1)), "a repeat is still appended");
    assert_eq!((c.seq, c.duplicate_of), (3, None));
    let e = log.submit_unique(record(5), b"order-2").unwrap().wait().unwrap();
    assert_eq!(e.duplicate_of, Some(3));
    log.close();
    drop(log);

    let log = open(dir.path());
    let f = log.submit_unique(record(6), b"order-1").unwrap().wait().unwrap();
    assert_eq!((f.seq, f.duplicate_of), (6, Some(1)));
    assert!(log.reader().verify().unwrap().is_ok());
    log.close();
}

/// A log of `n` records in batches of `batch`, closed: known batch boundaries.
fn batched_log(n: u64, batch: u32) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    for i in 0..n {
        log.submit(record(i)).unwrap().wait().unwrap();
    }
    log.close();
    drop(log);
    tally_log::testing::rechain(dir.path(), Some(batch)).unwrap();
    dir
}

fn head_at(dir: &std::path::Path, seq: u64) -> tally_log::Anchor {
    // The published anchor is the `head` that verify reports when the log ends at `seq`;
    // here, the recomputed head of the batch ending there, read back through a wrong anchor.
    let reader = LogReader::open_secondary(dir).unwrap();
    let probe = tally_log::Anchor { seq, head: [0xff; 32] };
    match reader.verify_anchor(&probe).unwrap().1 {
        tally_log::AnchorCheck::Differs { recomputed } => tally_log::Anchor { seq, head: recomputed },
        other => panic!("no batch ends at {seq}: {other:?}"),
    }
}

#[test]
fn an_anchor_at_the_head_matches_and_round_trips_as_text() {
    let dir = batched_log(30, 10);
    let reader = LogReader::open_secondary(dir.path()).unwrap();
    let report = reader.verify().unwrap();
    let anchor = tally_log::Anchor { seq: report.head_seq, head: report.head };
    assert_eq!(anchor.to_string().parse::<tally_log::Anchor>().unwrap(), anchor);
    let (again, check) = reader.verify_anchor(&anchor).unwrap();
    assert_eq!((check, again), (tally_log::AnchorCheck::Matches, report));
    // An anchor from earlier in the log matches too, and the rest is still verified.
    let (rest, check) = reader.verify_anchor(&head_at(dir.path(), 20)).unwrap();
    assert_eq!(check, tally_log::AnchorCheck::Matches);
    assert!(rest.is_ok() && rest.head_seq == 30);
}

#[test]
fn an_anchor_fails_after_an_edit_before_it_even_when_the_chain_is_rewritten() {
    let dir = batched_log(30, 10);
    let anchor = head_at(dir.path(), 20);
    tally_log::testing::overwrite_event(dir.path(), 13, &record(9999)).unwrap();
    // Edited only: verify fails at 13, and the anchor, recomputed past it, differs.
    let reader = LogReader::open_secondary(dir.path()).unwrap();
    let (report, check) = reader.verify_anchor(&anchor).unwrap();
    assert_eq!(report.first_bad.as_ref().map(|b| b.0), Some(13));
    assert!(matches!(check, tally_log::AnchorCheck::Differs { .. }), "{check:?}");
    drop(reader);
    // Chain rewritten to match the edit: plain verify passes, the anchor still fails.
    tally_log::testing::rechain(dir.path(), None).unwrap();
    let reader = LogReader::open_secondary(dir.path()).unwrap();
    let (report, check) = reader.verify_anchor(&anchor).unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert!(matches!(check, tally_log::AnchorCheck::Differs { .. }), "{check:?}");
    // An edit after the anchor leaves it intact.
    let dir = batched_log(30, 10);
    let anchor = head_at(dir.path(), 20);
    tally_log::testing::overwrite_event(dir.path(), 25, &record(9999)).unwrap();
    tally_log::testing::rechain(dir.path(), None).unwrap();
    let reader = LogReader::open_secondary(dir.path()).unwrap();
    assert_eq!(reader.verify_anchor(&anchor).unwrap().1, tally_log::AnchorCheck::Matches);
}

#[test]
fn an_anchor_off_a_batch_boundary_or_past_the_head_is_refused() {
    let dir = batched_log(30, 10);
    let reader = LogReader::open_secondary(dir.path()).unwrap();
    let head = reader.verify().unwrap().head;
    let (_, check) = reader.verify_anchor(&tally_log::Anchor { seq: 15, head }).unwrap();
    assert_eq!(check, tally_log::AnchorCheck::NotABatchBoundary { before: Some(10), after: Some(20) });
    let (_, check) = reader.verify_anchor(&tally_log::Anchor { seq: 31, head }).unwrap();
    assert_eq!(check, tally_log::AnchorCheck::BeyondHead { head_seq: 30 });
}

#[test]
fn malformed_anchors_are_named() {
    let ok = format!("7:{}", "ab".repeat(32));
    assert_eq!(ok.parse::<tally_log::Anchor>().unwrap().seq, 7);
    for bad in [
        "",
        "7",
        "x:ab",
        "0:ab",
        "-1:ab",
        "7:abc",
        &format!("7:{}", "zz".repeat(32)),
        &format!("+7:{}", "ab".repeat(32)),
    ] {
        let err = bad.parse::<tally_log::Anchor>().unwrap_err();
        assert!(err.contains(&format!("\"{bad}\"")), "{bad}: {err}");
    }
}

fn program_edit(i: u64) -> Vec<u8> {
    tally_model::encode(&tally_model::Event::ProgramEdit(tally_model::event::ProgramEdit {
        ts_ms: i,
        actor: "ops".into(),
        digest: String::new(),
        edit: format!("{{\"n\":{i}}}"),
    }))
    .unwrap()
}

#[test]
fn program_edits_are_indexed_and_survive_reopen_and_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("log");
    let log = open(&data);
    let mut expected = Vec::new();
    for i in 0..30 {
        let edit = i % 10 == 3;
        let bytes = if edit { program_edit(i) } else { record(i) };
        let seq = log.submit(bytes.clone()).unwrap().wait().unwrap();
        if edit {
            expected.push((seq, bytes));
        }
    }
    assert_eq!(log.reader().program_edits().unwrap(), expected, "only the edits, in order");
    log.close();
    drop(log);
    let log = open(&data);
    assert_eq!(log.reader().program_edits().unwrap(), expected, "after a reopen");
    // A snapshot taken while a server holds the log is a logical copy: it keeps the index.
    let copy = dir.path().join("snapshot");
    assert_eq!(tally_log::snapshot_to(&data, &copy).unwrap(), tally_log::SnapshotMethod::LogicalCopy);
    assert_eq!(LogReader::open_secondary(&copy).unwrap().program_edits().unwrap(), expected, "in the snapshot");
    assert_eq!(LogReader::open_secondary(&data).unwrap().program_edits().unwrap(), expected, "by a secondary");
    log.close();
}
