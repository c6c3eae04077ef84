//! Test-only access for tests that must damage a log on purpose (tamper detection), and
//! switches that make the writer slow or wrong on purpose, so harnesses can show they see it.
//! Compiled only with the `test-util` feature, never into the `tally` binary's normal build.

use std::path::Path;

use crate::chain::{self, ChainEntry};
use crate::db::open_existing;
use crate::keys::{self, CF_CHAIN, CF_EVENTS};
use crate::LogError;

/// Overwrites the stored bytes of event `seq` in a log no server has open.
pub fn overwrite_event(dir: &Path, seq: u64, bytes: &[u8]) -> Result<(), LogError> {
    let db = open_existing(dir)?;
    let cf = db.cf_handle(CF_EVENTS).ok_or_else(|| LogError::Corrupt("no events cf".into()))?;
    db.put_cf(cf, keys::seq_key(seq), bytes).map_err(|e| LogError::Write(e.to_string()))
}

/// Flushes every memtable of a log no server has open to table files, so that a reader
/// opened next replays no WAL: what a test then measures of the reader is the reader's own.
pub fn flush_memtables(dir: &Path) -> Result<(), LogError> {
    let db = open_existing(dir)?;
    for name in crate::keys::ALL_CFS {
        let cf = db.cf_handle(name).ok_or_else(|| LogError::Corrupt(format!("no {name} cf")))?;
        db.flush_cf(cf).map_err(|e| LogError::Write(e.to_string()))?;
    }
    Ok(())
}

/// Rewrites every chain entry from the stored records: what a forger with write access would
/// do after editing a record, so plain `verify` passes again and only a published anchor can
/// tell. `batch` regroups the records into batches of that many (the last may be shorter),
/// giving tests known batch boundaries; `None` keeps the stored ones.
pub fn rechain(dir: &Path, batch: Option<u32>) -> Result<(), LogError> {
    let db = open_existing(dir)?;
    let missing = |name: &str| LogError::Corrupt(format!("no {name} cf"));
    let read = |e: rocksdb::Error| LogError::Read(e.to_string());
    let write = |e: rocksdb::Error| LogError::Write(e.to_string());
    let events = db.cf_handle(CF_EVENTS).ok_or_else(|| missing(CF_EVENTS))?;
    let chain_cf = db.cf_handle(CF_CHAIN).ok_or_else(|| missing(CF_CHAIN))?;
    let mut ranges = Vec::new();
    for item in db.iterator_cf(chain_cf, rocksdb::IteratorMode::Start) {
        let (k, v) = item.map_err(read)?;
        let entry = ChainEntry::decode(&v).ok_or_else(|| LogError::Corrupt("bad chain entry".into()))?;
        ranges.push((entry.first, entry.last()));
        db.delete_cf(chain_cf, k).map_err(write)?;
    }
    if let (Some(n), Some(&(_, last))) = (batch, ranges.last()) {
        let n = u64::from(n.max(1));
        ranges = (0..last.div_ceil(n)).map(|i| (i * n + 1, ((i + 1) * n).min(last))).collect();
    }
    let mut head = chain::GENESIS;
    for (first, last) in ranges {
        let mut hasher = chain::BatchHasher::new(&head, first);
        for seq in first..=last {
            let record = db
                .get_cf(events, keys::seq_key(seq))
                .map_err(read)?
                .ok_or_else(|| LogError::Corrupt(format!("record {seq} missing")))?;
            hasher.add(seq, &record[..tally_model::record::chained_len(&record)]);
        }
        let (new_head, bytes) = hasher.finish();
        head = new_head;
        db.put_cf(chain_cf, keys::seq_key(last), bytes).map_err(write)?;
    }
    Ok(())
}

/// Rewrites the chain entries of batches ending at or before `up_to` as the version-1 writer
/// stored them (BLAKE3 leaves; the head is the same in both versions), giving tests a log
/// written partly before and partly after the leaf format changed.
pub fn store_v1_leaves(dir: &Path, up_to: u64) -> Result<(), LogError> {
    let db = open_existing(dir)?;
    let read = |e: rocksdb::Error| LogError::Read(e.to_string());
    let events = db.cf_handle(CF_EVENTS).ok_or_else(|| LogError::Corrupt("no events cf".into()))?;
    let chain_cf = db.cf_handle(CF_CHAIN).ok_or_else(|| LogError::Corrupt("no chain cf".into()))?;
    let mut rewritten = Vec::new();
    for item in db.iterator_cf(chain_cf, rocksdb::IteratorMode::Start) {
        let (k, v) = item.map_err(read)?;
        let entry = ChainEntry::decode(&v).ok_or_else(|| LogError::Corrupt("bad chain entry".into()))?;
        if entry.last() > up_to {
            break;
        }
        let mut bytes = vec![chain::LEAF_BLAKE3];
        bytes.extend_from_slice(&entry.first.to_be_bytes());
        bytes.extend_from_slice(&entry.count.to_be_bytes());
        bytes.extend_from_slice(&entry.head);
        for seq in entry.first..=entry.last() {
            let record = db
                .get_cf(events, keys::seq_key(seq))
                .map_err(read)?
                .ok_or_else(|| LogError::Corrupt(format!("record {seq} missing")))?;
            bytes.extend_from_slice(&chain::leaf(
                chain::LEAF_BLAKE3,
                seq,
                &record[..tally_model::record::chained_len(&record)],
            ));
        }
        rewritten.push((k, bytes));
    }
    for (k, bytes) in rewritten {
        db.put_cf(chain_cf, k, bytes).map_err(|e| LogError::Write(e.to_string()))?;
    }
    Ok(())
}

/// Environment variable naming a delay, in milliseconds, the writer sleeps before every commit:
/// a throttled writer lets tests fill the queue and see the queue-full policy. Only read in
/// builds with the `test-util` feature, so a production binary has no such knob.
pub const COMMIT_DELAY_ENV: &str = "TALLY_TEST_COMMIT_DELAY_MS";

fn delay_ms() -> u64 {
    static DELAY: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *DELAY.get_or_init(|| std::env::var(COMMIT_DELAY_ENV).ok().and_then(|v| v.parse().ok()).unwrap_or(0))
}

/// True when a switch above is on. Commits then stay on the writer thread: a delay or an
/// early acknowledgement on a runtime thread would block the very responses the harness
/// watches.
pub(crate) fn active() -> bool {
    early_ack() || delay_ms() > 0
}

pub(crate) fn throttle() {
    let ms = delay_ms();
    if ms > 0 {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

/// Environment variable that, when `1`, makes the writer acknowledge each batch *before*
/// writing it: the broken build the crash harness must catch (acknowledged events lost by a
/// kill). Combine with [`COMMIT_DELAY_ENV`] to widen the window. Only read with `test-util`.
pub const EARLY_ACK_ENV: &str = "TALLY_TEST_EARLY_ACK";

pub(crate) fn early_ack() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var(EARLY_ACK_ENV).is_ok_and(|v| v == "1"))
}

static STALL_AT_PARK: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// While on, every commit tried at park (see `Log::park_hook`) fails as RocksDB fails a
/// write it would stall under `no_slowdown`, so tests can see such groups reach the writer
/// thread. Process-wide: use it from a test binary of its own.
pub fn stall_commits_at_park(on: bool) {
    STALL_AT_PARK.store(on, std::sync::atomic::Ordering::SeqCst);
}

pub(crate) fn stalled_at_park() -> bool {
    STALL_AT_PARK.load(std::sync::atomic::Ordering::SeqCst)
}
