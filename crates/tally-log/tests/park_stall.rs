//! A commit at park that RocksDB would stall goes to the writer thread instead: nothing is
//! lost, acknowledged twice or numbered out of turn. Its own test binary, because the stall
//! switch is process-wide.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

mod common;

use common::append_from;
use tally_log::{Log, LogMetrics, LogOptions};

#[test]
fn a_stalled_commit_at_park_is_handed_to_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = LogMetrics::default();
    let log = Log::open(dir.path(), LogOptions::default(), metrics.clone()).unwrap();
    let appender = log.appender();
    let rt =
        tokio::runtime::Builder::new_current_thread().on_thread_park(log.park_hook()).enable_all().build().unwrap();
    let append = |from: u64| rt.block_on(append_from(&appender, from, 40)).into_iter().collect::<BTreeSet<_>>();

    tally_log::testing::stall_commits_at_park(true);
    assert_eq!(append(0), (1..=40).collect::<BTreeSet<_>>());
    assert_eq!(metrics.inline_batches.get(), 0, "a stalled group was committed at park");
    assert_eq!(metrics.commit_errors.get(), 0, "a stall is not a failed commit");
    assert!(log.is_writable());

    tally_log::testing::stall_commits_at_park(false);
    // Without the stall groups are committed at park again. On a loaded machine the writer
    // thread can still take a round first (it failed once that way, with every core busy),
    // so a few rounds are allowed; each must still number its events in turn.
    let mut appended = 40;
    while metrics.inline_batches.get() == 0 && appended < 40 * 50 {
        assert_eq!(append(appended), (appended + 1..=appended + 40).collect::<BTreeSet<_>>());
        appended += 40;
    }
    assert!(metrics.inline_batches.get() >= 1, "no group was committed at park in {appended} events");
    assert_eq!(metrics.events_appended.get(), appended);
    assert!(log.reader().verify().unwrap().is_ok());
    drop(rt);
    log.close();
}
