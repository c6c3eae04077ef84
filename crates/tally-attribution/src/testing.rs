//! Test-only access for tests that must edit a ledger on purpose (replay must notice).
//! Compiled only with the `test-util` feature, never into the `tally` binary's normal build.

use std::path::Path;

use crate::ledger::{Entry, EntryId};
use crate::state::State;
use crate::AttributionError;

/// Overwrites (or, with `None`, deletes) ledger entry `id` in a state no worker has open.
pub fn overwrite_entry(dir: &Path, id: EntryId, entry: Option<&Entry>) -> Result<(), AttributionError> {
    let state = State::open(dir, true)?;
    state.overwrite_entry_raw(id, entry)
}

/// Environment variable naming a crash point, `NAME:N`: the process aborts (no destructors,
/// no flush, like SIGKILL) the Nth time it reaches point NAME. Points: `apply` (after an event
/// is applied in memory), `commit_before_write` and `commit_after_write` (either side of the
/// state's one `WriteBatch`), `snapshot_before_rename` (a snapshot written but not yet
/// published). Only read in builds with the `test-util` feature.
pub const CRASH_AT_ENV: &str = "TALLY_TEST_CRASH_AT";

/// The crash points, for tests that iterate over them.
pub const CRASH_POINTS: [&str; 4] = ["apply", "commit_before_write", "commit_after_write", "snapshot_before_rename"];

pub(crate) fn crash_point(name: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static TARGET: std::sync::OnceLock<Option<(String, u64)>> = std::sync::OnceLock::new();
    static HITS: AtomicU64 = AtomicU64::new(0);
    let target = TARGET.get_or_init(|| {
        let v = std::env::var(CRASH_AT_ENV).ok()?;
        let (point, n) = v.split_once(':')?;
        Some((point.to_owned(), n.parse().ok()?))
    });
    if let Some((point, n)) = target {
        if point == name && HITS.fetch_add(1, Ordering::Relaxed) + 1 == *n {
            eprintln!("{CRASH_AT_ENV}: aborting at {name} #{n}");
            std::process::abort();
        }
    }
}
