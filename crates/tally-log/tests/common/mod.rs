//! Helpers shared by the log's integration tests.
#![allow(clippy::unwrap_used, dead_code)]

use tally_model::{Event, ProgramChange};

/// A small valid record, told apart by `i` (its timestamp and source).
pub fn record(i: u64) -> Vec<u8> {
    tally_model::encode(&Event::ProgramChange(ProgramChange {
        ts_ms: i,
        digest: String::new(),
        source: format!("r{i}"),
    }))
    .unwrap()
}

/// Awaits every append of `n` tasks spawned together, records `first..first + n`; their
/// sequence numbers in task order.
pub async fn append_from(appender: &tally_log::Appender, first: u64, n: u64) -> Vec<u64> {
    let tasks: Vec<_> = (first..first + n)
        .map(|i| {
            let a = appender.clone();
            tokio::spawn(async move { a.submit(record(i)).unwrap().await.unwrap() })
        })
        .collect();
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap());
    }
    seqs
}

/// [`append_from`] with records `0..n`.
pub async fn append_concurrently(appender: &tally_log::Appender, n: u64) -> Vec<u64> {
    append_from(appender, 0, n).await
}
