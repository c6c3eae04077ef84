//! Tally's audits: re-derive every commission from the raw log and show how it came to be.
//!
//! - [`replay`] re-runs attribution (the same `tally_attribution::apply` the live worker
//!   runs) over the log into a scratch state, by the rules in force at each event, and
//!   compares the result with the live ledger entry by entry;
//! - [`explain`] follows one conversion through a replay: its click, rule, amounts, hold,
//!   duplicates and reversals, each with its sequence number;
//! - [`digest`] is the ledger's canonical form: a CSV row per entry and a BLAKE3 digest over
//!   those rows that anyone can recompute from an export;
//! - [`export`] streams the raw log or the ledger, over a half-open range, as CSV, JSON lines
//!   or (cargo feature `parquet`) Parquet, by one schema: its columns and one event as a row;
//! - [`payouts`] reads payout runs, balances and per-affiliate statements off the ledger;
//! - [`snapshot`] copies a whole data directory as of one point in time, for auditors.
//!
//! Nothing here writes to the data directory it reads (a snapshot writes only its copy): the log and the live state are opened as
//! RocksDB secondaries (safe while a server runs), snapshots read-only.

pub mod digest;
pub mod explain;
pub mod export;
pub mod payouts;
pub mod replay;
pub mod snapshot;
pub mod zone_report;

use std::path::PathBuf;

pub use digest::{ledger_digest, Digest, Filter, DIGEST_FORM};
pub use explain::{explain, Explanation};
pub use replay::{replay, Bound, Difference, ReplayOptions, ReplayReport};

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Attribution(#[from] tally_attribution::AttributionError),
    #[error(transparent)]
    Log(#[from] tally_log::LogError),
    #[error("log record {seq} does not decode: {error} (run `tally verify`)")]
    Record { seq: u64, error: tally_model::RecordError },
    #[error("the window is empty: from sequence {from} to {to} (events up to {limit} can be replayed)")]
    EmptyWindow { from: u64, to: u64, limit: u64 },
    #[error("snapshot {}: {reason}", .dir.display())]
    Snapshot { dir: PathBuf, reason: String },
    #[error("the log ended at sequence {got}, before {expected}")]
    Truncated { expected: u64, got: u64 },
    #[error("no conversion \"{0}\": give its sequence number or transaction ID")]
    NoSuchConversion(String),
    #[error("sequence {seq} is a {kind}, not a conversion")]
    NotAConversion { seq: u64, kind: &'static str },
    #[error("{}: {source}", .path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("inconsistent snapshot: {0}")]
    Inconsistent(String),
}
