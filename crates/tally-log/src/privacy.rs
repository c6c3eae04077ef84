//! Personal fields in the log: the day keys behind visitor pseudonyms, erasure, retention.
//!
//! A record of format 3 keeps its personal fields (IP, user agent, referrer) in a trailer
//! after its chained bytes (see `tally_model::record`). Cutting the trailer off, by writing
//! the record's chained bytes back under its sequence number, erases them and leaves every
//! chain hash as it was: `verify` passes, and replay, which never reads personal fields,
//! gives the same ledger. Both operations here do only that, on the primary database,
//! beside the writer (which only ever writes new sequence numbers), and then compact the
//! rewritten range so the old values leave the table files.
//!
//! The `privacy` column family holds:
//!
//! | key                          | value                                               |
//! |------------------------------|-----------------------------------------------------|
//! | `day_key` ‖ day, u32 BE      | 32 random bytes: the visitor key of that program day |
//! | `floor`                      | seq, u64 BE: retention has erased everything before |
//! | `customer_key`               | 32 random bytes: the key of customer pseudonyms     |
//!
//! The customer key, unlike day keys, is never deleted: lifetime commissions join a
//! customer's purchases by the pseudonym it gives, for as long as the program runs.

use rocksdb::{IteratorMode, WriteBatch, WriteOptions};
use tally_model::record::{self, Personal};
use tally_model::{ClickId, Event};

use crate::db::{cf, Db};
use crate::keys::{self, CF_BUS, CF_CHAIN, CF_EVENTS, CF_PRIVACY, CF_PROGRAM, CF_UNIQUE};
use crate::LogError;

const DAY_KEY: &[u8] = b"day_key";
const FLOOR: &[u8] = b"floor";
const CUSTOMER_KEY: &[u8] = b"customer_key";
/// Records are written in sequence order but stamped by the edge's clock, which may step
/// back a little: retention reads this far past the cutoff before it decides it is done.
const CLOCK_SLACK_MS: u64 = 3_600_000;
/// Rewrites per RocksDB batch.
const BATCH: usize = 4096;

fn read_err(e: rocksdb::Error) -> LogError {
    LogError::Read(e.to_string())
}

fn write_err(e: rocksdb::Error) -> LogError {
    LogError::Write(e.to_string())
}

fn day_key_key(day: u32) -> Vec<u8> {
    let mut k = DAY_KEY.to_vec();
    k.extend_from_slice(&day.to_be_bytes());
    k
}

/// The key of program day `day` (days since 1970-01-01 in the program's calendar), created
/// at random and stored durably on first use.
pub(crate) fn day_key(db: &Db, day: u32) -> Result<[u8; 32], LogError> {
    let privacy = cf(db, CF_PRIVACY)?;
    let k = day_key_key(day);
    if let Some(v) = db.get_cf(privacy, &k).map_err(read_err)? {
        return <[u8; 32]>::try_from(v.as_slice()).map_err(|_| LogError::Corrupt("day key is not 32 bytes".into()));
    }
    let key: [u8; 32] = rand::random();
    db.put_cf(privacy, &k, key).map_err(write_err)?;
    settle(db)?;
    Ok(key)
}

/// The key of customer pseudonyms (`tally_model::CustomerKey`), created at random and
/// stored durably on first use.
pub(crate) fn customer_key(db: &Db) -> Result<[u8; 32], LogError> {
    let privacy = cf(db, CF_PRIVACY)?;
    if let Some(v) = db.get_cf(privacy, CUSTOMER_KEY).map_err(read_err)? {
        return <[u8; 32]>::try_from(v.as_slice())
            .map_err(|_| LogError::Corrupt("customer key is not 32 bytes".into()));
    }
    let key: [u8; 32] = rand::random();
    db.put_cf(privacy, CUSTOMER_KEY, key).map_err(write_err)?;
    settle(db)?;
    Ok(key)
}

/// Makes the `privacy` family's last writes durable by flushing its memtable. Besides
/// syncing them, this keeps the family from pinning write-ahead log files: RocksDB deletes a
/// WAL file only once every family with data in it has flushed, and this one, written a few
/// times a day, would otherwise hold every WAL file written since (the clicks' included).
fn settle(db: &Db) -> Result<(), LogError> {
    db.flush_cf(cf(db, CF_PRIVACY)?).map_err(write_err)
}

/// Whose personal fields to erase.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Erasure {
    /// Clicks with these IDs, and conversions that claim them.
    pub click_ids: Vec<ClickId>,
    /// Clicks and conversions recorded with these IPs (as stored, after the privacy policy).
    pub ips: Vec<String>,
    /// Conversions of these customers, by the merchant's customer ID. Their pseudonym stays
    /// (it is chained, and it is what keeps paying the customer's referrer).
    pub customers: Vec<String>,
}

impl Erasure {
    pub fn is_empty(&self) -> bool {
        self.click_ids.is_empty() && self.ips.is_empty() && self.customers.is_empty()
    }

    fn matches(&self, event: &Event) -> bool {
        let (click_id, ip, customer) = match event {
            Event::Click(c) => (Some(c.click_id), c.ip.as_str(), ""),
            Event::Conversion(c) => (c.click_id, c.ip.as_str(), c.customer.as_ref().map_or("", |k| k.id.as_str())),
            Event::ProgramChange(_) | Event::ProgramEdit(_) | Event::Decision(_) => return false,
        };
        click_id.is_some_and(|id| self.click_ids.contains(&id))
            || (!ip.is_empty() && self.ips.iter().any(|i| i == ip))
            || (!customer.is_empty() && self.customers.iter().any(|c| c == customer))
    }
}

/// What an erasure or a retention pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ErasureReport {
    /// Records read.
    pub scanned: u64,
    /// Records whose personal fields were erased now.
    pub erased: u64,
    /// Matching records whose personal fields were already erased.
    pub already_erased: u64,
    /// Matching records written before format 3: their personal fields are inside the
    /// chained bytes and cannot be erased without breaking `verify` (see decision 0041).
    pub chained: u64,
}

/// Erases the personal fields of every record `what` matches. Reads the whole log.
pub(crate) fn erase(db: &Db, what: &Erasure) -> Result<ErasureReport, LogError> {
    let mut report = ErasureReport::default();
    let mut rewrite = Rewrite::new(db)?;
    for item in db.iterator_cf(cf(db, CF_EVENTS)?, IteratorMode::Start) {
        let (k, v) = item.map_err(read_err)?;
        report.scanned += 1;
        let Some(seq) = keys::parse_seq_key(&k) else { continue };
        // A record that does not decode is left for `verify` to report.
        let Ok((event, personal)) = record::decode_personal(&v) else { continue };
        if !what.matches(&event) {
            continue;
        }
        match personal {
            Personal::Present => {
                if let Some(chained) = record::without_personal(&v) {
                    rewrite.put(seq, chained)?;
                    report.erased += 1;
                }
            }
            Personal::Erased => report.already_erased += 1,
            Personal::Chained => report.chained += 1,
            Personal::None => {}
        }
    }
    rewrite.finish()?;
    Ok(report)
}

/// What a retention pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RetentionReport {
    pub cutoff_ms: u64,
    #[serde(flatten)]
    pub records: ErasureReport,
    /// Day keys deleted: visitor keys of those days can no longer be linked to anyone.
    pub day_keys_deleted: u64,
    /// Everything before this sequence number is now erased or had no personal fields.
    pub floor: u64,
}

/// Erases the personal fields of every record stamped before `cutoff_ms`, and deletes the
/// day keys of days that ended before it. Starts where the last pass stopped.
pub(crate) fn retain(db: &Db, cutoff_ms: u64) -> Result<RetentionReport, LogError> {
    let privacy = cf(db, CF_PRIVACY)?;
    let start = match db.get_cf(privacy, FLOOR).map_err(read_err)? {
        Some(v) => keys::parse_seq_key(&v).ok_or_else(|| LogError::Corrupt("retention floor is not 8 bytes".into()))?,
        None => 1,
    };
    let mut report = RetentionReport { cutoff_ms, floor: start, ..RetentionReport::default() };
    let mut floor: Option<u64> = None;
    let mut last = start.saturating_sub(1);
    let mut rewrite = Rewrite::new(db)?;
    let from = keys::seq_key(start);
    for item in db.iterator_cf(cf(db, CF_EVENTS)?, IteratorMode::From(&from, rocksdb::Direction::Forward)) {
        let (k, v) = item.map_err(read_err)?;
        let Some(seq) = keys::parse_seq_key(&k) else { continue };
        report.records.scanned += 1;
        last = seq;
        // Program changes have no personal fields: their stamps do not decide anything.
        let Some(ts) = stamp(&v) else { continue };
        if ts >= cutoff_ms {
            floor.get_or_insert(seq);
            if ts >= cutoff_ms.saturating_add(CLOCK_SLACK_MS) {
                break;
            }
            continue;
        }
        match record::personal(&v) {
            Ok(Personal::Present) => {
                if let Some(chained) = record::without_personal(&v) {
                    rewrite.put(seq, chained)?;
                    report.records.erased += 1;
                }
            }
            Ok(Personal::Erased) => report.records.already_erased += 1,
            Ok(Personal::Chained) => report.records.chained += 1,
            _ => {}
        }
    }
    rewrite.finish()?;
    // Everything read was before the cutoff: the next pass starts after it.
    let floor = floor.unwrap_or(last + 1).max(start);
    db.put_cf(privacy, FLOOR, keys::seq_key(floor)).map_err(write_err)?;
    report.floor = floor;
    // Program days are at most 14 hours off UTC days: a day key is deleted once the UTC
    // day after its own has passed the cutoff, so no day still inside retention loses it.
    let last_gone = (cutoff_ms / 86_400_000).saturating_sub(1);
    let mut wb = WriteBatch::default();
    for item in db.prefix_iterator_cf(privacy, DAY_KEY) {
        let (k, _) = item.map_err(read_err)?;
        let Some(day) = k.strip_prefix(DAY_KEY).and_then(|d| <[u8; 4]>::try_from(d).ok()).map(u32::from_be_bytes)
        else {
            break;
        };
        if u64::from(day) >= last_gone {
            break;
        }
        wb.delete_cf(privacy, &k);
        report.day_keys_deleted += 1;
    }
    db.write(wb).map_err(write_err)?;
    settle(db)?;
    Ok(report)
}

/// The timestamp of a click or conversion record, if it decodes.
fn stamp(v: &[u8]) -> Option<u64> {
    match record::decode_view(v).ok()? {
        record::EventView::Click(c) => Some(c.ts_ms),
        record::EventView::Owned(Event::ProgramChange(_)) => None,
        record::EventView::Owned(e) => Some(e.ts_ms()),
    }
}

/// Writes records back without their trailers, in batches, then compacts what it rewrote.
struct Rewrite<'a> {
    db: &'a Db,
    batch: WriteBatch,
    queued: usize,
    range: Option<(u64, u64)>,
}

impl<'a> Rewrite<'a> {
    fn new(db: &'a Db) -> Result<Rewrite<'a>, LogError> {
        cf(db, CF_EVENTS)?;
        Ok(Rewrite { db, batch: WriteBatch::default(), queued: 0, range: None })
    }

    fn put(&mut self, seq: u64, chained: &[u8]) -> Result<(), LogError> {
        self.batch.put_cf(cf(self.db, CF_EVENTS)?, keys::seq_key(seq), chained);
        self.queued += 1;
        self.range = Some(match self.range {
            None => (seq, seq),
            Some((a, b)) => (a.min(seq), b.max(seq)),
        });
        if self.queued >= BATCH {
            self.flush_batch()?;
        }
        Ok(())
    }

    fn flush_batch(&mut self) -> Result<(), LogError> {
        let batch = std::mem::take(&mut self.batch);
        self.queued = 0;
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db.write_opt(batch, &opts).map_err(write_err)
    }

    /// Writes what is left, then makes the old values (with their trailers) leave the files:
    /// every column family's memtable is flushed, so no write-ahead log file still holds
    /// them and RocksDB deletes those files, and the rewritten range is compacted, so no
    /// table file holds them either.
    fn finish(mut self) -> Result<(), LogError> {
        self.flush_batch()?;
        let Some((first, last)) = self.range else { return Ok(()) };
        for name in [CF_EVENTS, CF_CHAIN, CF_UNIQUE, CF_PRIVACY, CF_BUS, CF_PROGRAM] {
            self.db.flush_cf(cf(self.db, name)?).map_err(write_err)?;
        }
        let events = cf(self.db, CF_EVENTS)?;
        self.db.compact_range_cf(events, Some(keys::seq_key(first)), Some(keys::seq_key(last)));
        Ok(())
    }
}
