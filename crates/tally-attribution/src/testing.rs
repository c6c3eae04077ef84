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
