//! Test-only access for tests that must damage a log on purpose (tamper detection).
//! Compiled only with the `test-util` feature, never into the `tally` binary's normal build.

use std::path::Path;

use crate::keys::{self, CF_EVENTS};
use crate::{open_error, reader, LogError};

/// Overwrites the stored bytes of event `seq` in a log no server has open.
pub fn overwrite_event(dir: &Path, seq: u64, bytes: &[u8]) -> Result<(), LogError> {
    let opts = reader::db_options();
    let db = rocksdb::DB::open_cf_descriptors(&opts, dir, reader::cf_descriptors()).map_err(|e| open_error(dir, e))?;
    let cf = db.cf_handle(CF_EVENTS).ok_or_else(|| LogError::Corrupt("no events cf".into()))?;
    db.put_cf(cf, keys::seq_key(seq), bytes).map_err(|e| LogError::Write(e.to_string()))
}
