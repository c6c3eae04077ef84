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
