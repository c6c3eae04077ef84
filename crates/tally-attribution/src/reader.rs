//! [`LedgerReader`]: the ledger, stats and checkpoint of a worker's state, read-only, for the
//! CLI (`commissions`, `report`, `export commissions`, `snapshot`), the admin API and audits.

use std::path::Path;

use crate::{AttributionError, State};

/// A worker's committed state, opened as a RocksDB secondary (safe while the worker runs).
/// It dereferences to `&State` only, so everything that reads a state (reports, digests,
/// entries, the checkpoint) works on it, and nothing that changes one does: there is no
/// `&mut State` to apply events to or commit.
#[derive(Debug)]
pub struct LedgerReader {
    state: State,
}

impl LedgerReader {
    /// Opens the state in `dir` (`tally_attribution::state_dir(data_dir)`).
    pub fn open(dir: &Path) -> Result<LedgerReader, AttributionError> {
        Ok(LedgerReader { state: State::open_reader(dir)? })
    }

    /// Pulls in what the worker has committed since.
    pub fn refresh(&mut self) -> Result<(), AttributionError> {
        self.state.refresh()
    }

    /// Pulls in the ledger entries and the checkpoint the worker has committed since; the
    /// program stays the one loaded at open (cheaper than [`LedgerReader::refresh`] for a
    /// reader kept open to serve ledger queries).
    pub fn refresh_ledger(&mut self) -> Result<(), AttributionError> {
        self.state.refresh_ledger()
    }
}

impl std::ops::Deref for LedgerReader {
    type Target = State;

    fn deref(&self) -> &State {
        &self.state
    }
}
