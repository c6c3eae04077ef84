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

/// Environment variable naming a delay, in milliseconds, the writer sleeps before every commit:
/// a throttled writer lets tests fill the queue and see the queue-full policy. Only read in
/// builds with the `test-util` feature, so a production binary has no such knob.
pub const COMMIT_DELAY_ENV: &str = "TALLY_TEST_COMMIT_DELAY_MS";

pub(crate) fn throttle() {
    static DELAY: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let ms = *DELAY.get_or_init(|| std::env::var(COMMIT_DELAY_ENV).ok().and_then(|v| v.parse().ok()).unwrap_or(0));
    if ms > 0 {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}
