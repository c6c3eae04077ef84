//! Replay against a real log and a real live state in temp dirs: a full replay and window
//! replays (from snapshots, from the start, bounded by time) reproduce the live ledger; an
//! edited, deleted or forged ledger entry is reported; `explain` tells a clawback's story.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use tally_attribution::{
    snapshots, state_dir, AttributionMetrics, Entry, EntryId, Kind, LedgerReader, SnapshotPolicy, Worker, WorkerOptions,
};
use tally_audit::{replay, Bound, Filter, ReplayOptions, ReplayReport};
use tally_log::{Log, LogMetrics, LogOptions};
use tally_testkit::{fixtures, generate};

const EVENTS: usize = 4_000;
/// The generator adds the program changes to the events it is asked for.
const LAST: u64 = 4_001;
const SNAPSHOT_EVERY: u64 = 500;

/// A data directory with the generated log and a live worker's state (with snapshots).
fn setup(dir: &Path, keep: usize) -> Log {
    let variant = fixtures::program_variant();
    let events = generate::log(31, EVENTS, &[fixtures::ATTRIBUTION_RULES, &variant]);
    let log = Log::open(dir, LogOptions::default(), LogMetrics::default()).unwrap();
    let pending: Vec<_> = events.iter().map(|e| log.submit(tally_model::encode(e).unwrap()).unwrap()).collect();
    for p in pending {
        p.wait().unwrap();
    }
    let options = WorkerOptions {
        commit_every: 100,
        snapshots: Some(SnapshotPolicy { dir: snapshots::dir(dir), every: SNAPSHOT_EVERY, keep }),
        ..WorkerOptions::default()
    };
    let mut w = Worker::open(&state_dir(dir), options, AttributionMetrics::default()).unwrap();
    w.catch_up(&log.reader(), None).unwrap();
    log
}

fn run(dir: &Path, options: ReplayOptions) -> ReplayReport {
    replay(dir, &options, &mut |_, _, _| {}).unwrap()
}

fn live_entries(dir: &Path) -> Vec<Entry> {
    LedgerReader::open(&state_dir(dir)).unwrap().entries().collect::<Result<_, _>>().unwrap()
}

#[test]
fn replays_of_the_whole_log_and_of_windows_reproduce_the_live_ledger() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let _log = setup(dir, 100);
    let snaps = snapshots::list(&snapshots::dir(dir)).unwrap();
    assert_eq!(snaps.len(), EVENTS / SNAPSHOT_EVERY as usize, "{snaps:?}");

    let full = run(dir, ReplayOptions::default());
    assert!(full.is_ok(), "{:?}", full.differences.first());
    assert_eq!((full.from, full.to, full.events, full.started_after), (1, LAST, LAST, 0));
    let live = live_entries(dir);
    assert_eq!(full.compared, live.len() as u64);
    assert!(live.len() > 1_000);
    assert_eq!(full.digest_replayed, full.digest_live);
    let state = LedgerReader::open(&state_dir(dir)).unwrap();
    assert_eq!(tally_audit::ledger_digest(&state, &Filter::default()).unwrap().1, full.digest_live);
    assert!(full.totals.values().all(|(r, l)| r == l) && !full.totals.is_empty());

    // A window from the middle starts from the snapshot before it and matches.
    let window = ReplayOptions { from: Some(Bound::Seq(1_700)), to: Some(Bound::Seq(2_601)), ..Default::default() };
    let w = run(dir, window.clone());
    assert!(w.is_ok(), "{:?}", w.differences.first());
    assert_eq!((w.started_after, w.events), (1_500, 2_600 - 1_500));
    assert!(w.compared > 100 && w.compared < full.compared);
    // The same window replayed from the first event agrees (the snapshot was right).
    let slow = run(dir, ReplayOptions { no_snapshots: true, ..window });
    assert_eq!((slow.started_after, slow.events), (0, 2_600));
    assert_eq!((slow.compared, &slow.digest_replayed), (w.compared, &w.digest_replayed));

    // Time bounds select the events of that time range.
    let reader = tally_log::LogReader::open_secondary(dir).unwrap();
    let ts = |seq: u64| tally_model::decode(&reader.read_range(seq, 1).unwrap()[0].1).unwrap().ts_ms();
    let by_time = run(
        dir,
        ReplayOptions {
            from: Some(Bound::Time(ts(2_000))),
            to: Some(Bound::Time(ts(3_000) + 1)),
            ..Default::default()
        },
    );
    assert!(by_time.is_ok());
    assert!(by_time.from <= 2_000 && by_time.to >= 3_000, "{}..{}", by_time.from, by_time.to);

    // One affiliate only.
    let aff = run(
        dir,
        ReplayOptions { filter: Filter { affiliate: Some("aff2".into()), ..Filter::default() }, ..Default::default() },
    );
    assert!(aff.is_ok());
    assert_eq!(aff.compared, live.iter().filter(|e| e.affiliate == "aff2").count() as u64);
    assert!(aff.totals.keys().all(|(a, _)| a == "aff2"));

    // An empty window is an error that says what can be replayed.
    let err = replay(dir, &ReplayOptions { from: Some(Bound::Seq(10_000)), ..Default::default() }, &mut |_, _, _| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("window is empty") && err.contains("up to 4001"), "{err}");
}

#[test]
fn snapshots_are_pruned_to_the_newest_few() {
    let tmp = tempfile::tempdir().unwrap();
    let _log = setup(tmp.path(), 3);
    let snaps: Vec<u64> = snapshots::list(&snapshots::dir(tmp.path())).unwrap().into_iter().map(|s| s.0).collect();
    assert_eq!(snaps, [3_000, 3_500, 4_000]);
    // A window before the oldest snapshot still replays correctly, from the first event.
    let w = run(tmp.path(), ReplayOptions { from: Some(Bound::Seq(2_000)), ..Default::default() });
    assert!(w.is_ok() && w.started_after == 0);
}

#[test]
fn an_edited_deleted_or_forged_ledger_entry_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let log = setup(dir, 100);
    drop(log);
    let live = live_entries(dir);
    let paid = live.iter().find(|e| e.kind == Kind::Commission && e.amount > 0).unwrap().clone();
    let deleted = live.iter().rev().find(|e| e.id.seq > paid.id.seq + 10).unwrap().clone();
    let mut edited = paid.clone();
    edited.amount += 1;
    let forged_id = EntryId { seq: 5, sub: 7 };
    let mut forged = paid.clone();
    forged.id = forged_id;
    let state = state_dir(dir);
    tally_attribution::testing::overwrite_entry(&state, paid.id, Some(&edited)).unwrap();
    tally_attribution::testing::overwrite_entry(&state, deleted.id, None).unwrap();
    tally_attribution::testing::overwrite_entry(&state, forged_id, Some(&forged)).unwrap();

    let r = run(dir, ReplayOptions::default());
    assert!(!r.is_ok());
    assert_eq!((r.differing(), r.missing(), r.extra()), (1, 1, 1), "{:#?}", r.differences);
    let d = r.differences.iter().find(|d| d.live.is_some() && d.replayed.is_some()).unwrap();
    assert_eq!(d.id, paid.id);
    assert_eq!(d.replayed.as_ref().unwrap(), &paid);
    let diff = tally_audit::explain::field_differences(d.live.as_ref().unwrap(), &paid);
    assert_eq!(diff.len(), 1, "{diff:?}");
    assert!(diff[0].starts_with("amount: "), "{diff:?}");
    assert_eq!(r.differences.iter().find(|d| d.live.is_none()).unwrap().id, deleted.id);
    assert_eq!(r.differences.iter().find(|d| d.replayed.is_none()).unwrap().id, forged_id);
    assert_ne!(r.digest_live, r.digest_replayed);
}

#[test]
fn explain_follows_a_clawed_back_conversion() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let _log = setup(dir, 100);
    let live = live_entries(dir);
    let clawback = live.iter().find(|e| e.kind == Kind::Clawback).expect("the generated log has a clawback");
    let original = clawback.refers_to.unwrap();
    let entry = live.iter().find(|e| e.id == original).unwrap();
    let x = tally_audit::explain(dir, &original.to_string()).unwrap();
    let text = x.lines.join("\n");
    assert!(x.matches_live, "{text}");
    let click = entry.click_id.map(|c| c.to_string());
    if let Some(click) = &click {
        assert!(text.contains(&format!("click {click}: seq ")), "{text}");
    }
    assert!(text.contains(&entry.rule), "{text}");
    let approved = entry.approved_seq.unwrap();
    if approved != original.seq {
        assert!(text.contains(&format!("seq {approved}: approved")), "{text}");
    }
    assert!(text.contains(&format!("seq {}: clawback entry {}", clawback.id.seq, clawback.id)), "{text}");
    assert!(text.contains(&format!("seq {}: reversed", clawback.id.seq)), "{text}");
    // By transaction ID too.
    let by_txid = tally_audit::explain(dir, &entry.txid).unwrap();
    assert_eq!(by_txid.id, original);
    // Not a conversion, or nothing at all.
    let err = tally_audit::explain(dir, "1").unwrap_err().to_string();
    assert!(err.contains("not a conversion"), "{err}");
    let err = tally_audit::explain(dir, "no-such-txid").unwrap_err().to_string();
    assert!(err.contains("no conversion \"no-such-txid\""), "{err}");
}
