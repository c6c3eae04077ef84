//! The store: the attribution state's RocksDB (`{data_dir}/attribution`), and the only code
//! in this crate that touches RocksDB. It owns the column families and their options, the
//! three ways to open them ([`Access`]), the reads behind the write set, the queries of the
//! committed ledger and stats, and the commit's one `WriteBatch`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use rocksdb::{ColumnFamilyDescriptor, DBRawIterator, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB};
use serde::{Deserialize, Serialize};
use tally_log::ScratchDir;
use tally_model::{ClickId, Managed};

use crate::clicks::{self, ClickFacts, RunCursor};
use crate::keys;
use crate::ledger::{Entry, EntryId, StatsKey};
use crate::runs::{self, Run};
use crate::stats::{self, Counters, RowDelta};
use crate::write_set::WriteSet;
use crate::AttributionError;

const CF_CLICKS: &str = "clicks";
const CF_DEDUP: &str = "dedup";
const CF_LEDGER: &str = "ledger";
const CF_COUNTERS: &str = "counters";
const CF_HOLDS: &str = "holds";
const CF_STATS: &str = "stats";
const CF_UNIQUE: &str = "unique";
const CF_META: &str = "meta";
const CFS: [&str; 8] = [CF_CLICKS, CF_DEDUP, CF_LEDGER, CF_COUNTERS, CF_HOLDS, CF_STATS, CF_UNIQUE, CF_META];

/// The layout of the column families. 3: ledger entries gained `confirmed_by`; 2: clicks in sorted runs ([`runs`]), stats as one
/// merged table per day ([`stats`]); 1 (no format key): one key per click and per stats row.
/// A state is derived from the log, so a worker that finds another layout deletes the
/// state and rebuilds it from the log; readers refuse it ([`AttributionError::Format`]).
pub const FORMAT: u32 = 3;

/// Where the worker stands, committed with its outputs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The last sequence number applied.
    pub position: u64,
    /// The largest event time seen: attribution's clock.
    pub watermark_ms: u64,
    /// Clicks older than this are expired (see `Engine` docs); never moves back.
    pub horizon_ms: u64,
    /// Digest of the program in force, empty before the first program change.
    pub program: String,
}

/// How a store was opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Access {
    /// The worker's: the only one that writes. One process at a time.
    Primary { sync: bool },
    /// A RocksDB secondary following a running worker.
    Secondary,
    /// A snapshot, opened read-only as the starting point of a replay.
    Snapshot,
}

pub(crate) struct Store {
    db: DB,
    access: Access,
    /// A secondary's own directory; after `db`, so it goes once the database closed.
    _scratch: Option<ScratchDir>,
    /// Commits still to refuse, as a full disk would ([`crate::Worker::fail_next_commits`]).
    #[cfg(feature = "test-util")]
    pub(crate) fail_commits: u32,
}

/// What one commit writes besides the write set.
pub(crate) struct Commit<'a> {
    pub(crate) checkpoint: &'a Checkpoint,
    /// The program's source, when a program change was applied since the last commit.
    pub(crate) program: Option<&'a str>,
    /// Managed entities program edits put since the last commit: (kind, key, JSON).
    pub(crate) managed: &'a [(u8, String, String)],
    /// The greatest click ID stored: the clicks above it become new runs.
    pub(crate) clicks_last: Option<ClickId>,
    /// The last commit's batch size, to allocate this one at once.
    pub(crate) batch_hint: usize,
}

/// What a commit did.
pub(crate) struct Written {
    /// The new greatest click ID, if it moved.
    pub(crate) clicks_last: Option<ClickId>,
    pub(crate) batch_bytes: usize,
}

/// What a store holds beyond the rows the engine reads on demand: loaded once on open.
pub(crate) struct Loaded {
    pub(crate) checkpoint: Option<Checkpoint>,
    pub(crate) program: Option<String>,
    pub(crate) managed: Managed,
    pub(crate) holds: BTreeSet<(u64, EntryId)>,
    pub(crate) clicks_last: Option<ClickId>,
}

fn cf_descriptors() -> Vec<ColumnFamilyDescriptor> {
    CFS.iter().map(|name| ColumnFamilyDescriptor::new(*name, cf_options(name))).collect()
}

fn cf_options(name: &str) -> Options {
    let mut o = Options::default();
    // Level 0 uncompressed: its files are rewritten by the next compaction within seconds,
    // and compressing every flush was most of the LZ4 time (a tenth of a core with 100,000
    // affiliates, whose stats tables are large). The levels kept are compressed.
    let lz4 = rocksdb::DBCompressionType::Lz4;
    o.set_compression_type(lz4);
    o.set_compression_per_level(&[rocksdb::DBCompressionType::None, lz4, lz4, lz4, lz4, lz4, lz4]);
    match name {
        // Uncompressed: compressing the click runs on every flush was a sixth of a core on
        // a 2-core machine (live attribution +5-7%), for a quarter less disk on an index
        // that expires anyway. Files written compressed before still read.
        CF_CLICKS => {
            o.set_compression_type(rocksdb::DBCompressionType::None);
            o.set_compression_per_level(&[rocksdb::DBCompressionType::None; 7]);
        }
        CF_STATS => o.set_merge_operator(stats::MERGE_OPERATOR, merge_stats, merge_many),
        // Point lookups of keys that are often absent (a new transaction, a counter not yet
        // started): bloom filters, in the table files and the memtable, skip the search.
        CF_DEDUP | CF_COUNTERS | CF_LEDGER => {
            let mut t = rocksdb::BlockBasedOptions::default();
            t.set_bloom_filter(10.0, false);
            o.set_block_based_table_factory(&t);
            o.set_memtable_whole_key_filtering(true);
            o.set_memtable_prefix_bloom_ratio(0.02);
        }
        _ => {}
    }
    o
}

fn merge_stats(_key: &[u8], existing: Option<&[u8]>, operands: &rocksdb::MergeOperands) -> Option<Vec<u8>> {
    stats::merge_days(existing, operands)
}

/// Partial merges (of operands alone, when a flush writes them) only of many operands: `None`
/// is "not merged" here, not a failure, and RocksDB keeps them as they are until the
/// compaction that reaches the day's table merges them once. Merging a catch-up's few large
/// operands at every flush too was merging most rows twice (a tenth of attribution's time
/// with 100,000 affiliates); a live worker's many small ones are still folded at the flush,
/// so a read never has thousands to fold.
fn merge_many(_key: &[u8], _existing: Option<&[u8]>, operands: &rocksdb::MergeOperands) -> Option<Vec<u8>> {
    if operands.len() < PARTIAL_MERGE_MIN {
        return None;
    }
    stats::merge_days(None, operands)
}

/// See [`merge_many`].
const PARTIAL_MERGE_MIN: usize = 64;

fn db_err(e: rocksdb::Error) -> AttributionError {
    AttributionError::Store(e.to_string())
}

fn open_err(dir: &Path) -> impl Fn(rocksdb::Error) -> AttributionError + '_ {
    |e| AttributionError::Open { dir: dir.to_path_buf(), reason: e.to_string() }
}

pub(crate) fn decode<T: for<'de> Deserialize<'de>>(what: &str, bytes: &[u8]) -> Result<T, AttributionError> {
    postcard::from_bytes(bytes).map_err(|e| AttributionError::Corrupt(format!("{what}: {e}")))
}

/// A stored ledger entry. Entries stored before `Entry::adjustments` or `Entry::payments`
/// existed end where the first missing list starts: postcard writes an empty list as one
/// zero byte, so such an entry is its bytes and a zero for each missing list (as the log
/// decodes version-1 clicks).
pub(crate) fn decode_entry(bytes: &[u8]) -> Result<Entry, AttributionError> {
    let mut padded = None::<Vec<u8>>;
    for _ in 0..2 {
        match postcard::from_bytes(padded.as_deref().unwrap_or(bytes)) {
            Ok(e) => return Ok(e),
            Err(postcard::Error::DeserializeUnexpectedEnd) => padded.get_or_insert_with(|| bytes.to_vec()).push(0),
            Err(e) => return Err(AttributionError::Corrupt(format!("ledger entry: {e}"))),
        }
    }
    decode("ledger entry", padded.as_deref().unwrap_or(bytes))
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising our own structs into a Vec cannot fail.
    postcard::to_stdvec(value).unwrap_or_default()
}

/// Copies the store in `dir` into `out` (which must not exist) as of one point in time
/// (see [`crate::snapshot_state_to`]).
pub(crate) fn copy(dir: &Path, out: &Path) -> Result<tally_log::SnapshotMethod, AttributionError> {
    Ok(tally_log::snapshot::copy_db(dir, out, &Options::default, &cf_descriptors)?)
}

impl Store {
    fn new(db: DB, access: Access, scratch: Option<ScratchDir>) -> Store {
        Store {
            db,
            access,
            _scratch: scratch,
            #[cfg(feature = "test-util")]
            fail_commits: 0,
        }
    }

    /// Opens (creating if needed) the store in `dir` for the worker, rebuilding one in
    /// another layout (it is derived from the log).
    pub(crate) fn open_primary(dir: &Path, sync: bool) -> Result<Store, AttributionError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.increase_parallelism(2);
        // Bounded memory: eight column families at RocksDB's default 64 MiB write buffers
        // (two each) would take over 1 GiB; share 64 MiB. Small column families (meta, holds)
        // would otherwise pin old WAL files for ever; bound the WAL so they get flushed.
        opts.set_db_write_buffer_size(64 << 20);
        opts.set_max_total_wal_size(256 << 20);
        let open = || DB::open_cf_descriptors(&opts, dir, cf_descriptors()).map_err(open_err(dir));
        let mut store = Store::new(open()?, Access::Primary { sync }, None);
        match store.stored_format()? {
            Some(FORMAT) => {}
            None if !store.has_checkpoint()? => {}
            found => {
                let found = found.unwrap_or(1);
                tracing::warn!(
                    dir = %dir.display(),
                    found,
                    expected = FORMAT,
                    "attribution state has another layout; deleting it to rebuild from the log"
                );
                drop(store);
                DB::destroy(&opts, dir).map_err(open_err(dir))?;
                store = Store::new(open()?, Access::Primary { sync }, None);
            }
        }
        store.db.put_cf(store.cf(CF_META)?, keys::META_FORMAT, FORMAT.to_be_bytes()).map_err(db_err)?;
        Ok(store)
    }

    /// Opens the store in `dir` as a RocksDB secondary: read-only, safe while a worker runs.
    pub(crate) fn open_secondary(dir: &Path) -> Result<Store, AttributionError> {
        if !dir.join("CURRENT").exists() {
            return Err(AttributionError::Open {
                dir: dir.to_path_buf(),
                reason: "no attribution state here (has a worker run on this data directory?)".into(),
            });
        }
        let scratch = ScratchDir::create("tally-attr-secondary")
            .map_err(|e| AttributionError::Open { dir: std::env::temp_dir(), reason: e.to_string() })?;
        let mut opts = Options::default();
        opts.set_max_open_files(-1);
        let db = DB::open_cf_descriptors_as_secondary(&opts, dir, scratch.path(), cf_descriptors())
            .map_err(open_err(dir))?;
        let store = Store::new(db, Access::Secondary, Some(scratch));
        store.check_format(dir)?;
        Ok(store)
    }

    /// Opens a snapshot written by [`Store::snapshot_to`] read-only.
    pub(crate) fn open_snapshot(dir: &Path) -> Result<Store, AttributionError> {
        let db = DB::open_cf_descriptors_read_only(&Options::default(), dir, cf_descriptors(), false)
            .map_err(open_err(dir))?;
        let store = Store::new(db, Access::Snapshot, None);
        store.check_format(dir)?;
        Ok(store)
    }

    pub(crate) fn access(&self) -> &Access {
        &self.access
    }

    fn cf(&self, name: &str) -> Result<&rocksdb::ColumnFamily, AttributionError> {
        self.db.cf_handle(name).ok_or_else(|| AttributionError::Store(format!("column family {name} missing")))
    }

    fn stored_format(&self) -> Result<Option<u32>, AttributionError> {
        match self.db.get_cf(self.cf(CF_META)?, keys::META_FORMAT).map_err(db_err)? {
            Some(v) => {
                let b: [u8; 4] =
                    v.as_slice().try_into().map_err(|_| AttributionError::Corrupt("format value".into()))?;
                Ok(Some(u32::from_be_bytes(b)))
            }
            None => Ok(None),
        }
    }

    fn has_checkpoint(&self) -> Result<bool, AttributionError> {
        Ok(self.db.get_pinned_cf(self.cf(CF_META)?, keys::META_CHECKPOINT).map_err(db_err)?.is_some())
    }

    /// Refuses a store in another layout than this build's (readers cannot rebuild it).
    fn check_format(&self, dir: &Path) -> Result<(), AttributionError> {
        match self.stored_format()? {
            Some(FORMAT) => Ok(()),
            None if !self.has_checkpoint()? => Ok(()),
            found => Err(AttributionError::Format { dir: dir.to_path_buf(), found: found.unwrap_or(1) }),
        }
    }

    /// The checkpoint, the program in force, the pending holds and the greatest click ID.
    /// Up to `limit` committed outbox items after `after` (an outbox key; `None`: from the
    /// first), in order.
    pub(crate) fn outbox_after(
        &self,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, String)>, AttributionError> {
        let meta = self.cf(CF_META)?;
        let from = after.map(<[u8]>::to_vec).unwrap_or_else(|| keys::META_OUTBOX.to_vec());
        let mut out = Vec::new();
        for item in self.db.iterator_cf(meta, IteratorMode::From(&from, Direction::Forward)) {
            let (k, v) = item.map_err(db_err)?;
            if !k.starts_with(keys::META_OUTBOX) || out.len() == limit {
                break;
            }
            if after.is_some_and(|a| *k == *a) {
                continue;
            }
            let json = String::from_utf8(v.to_vec()).map_err(|_| AttributionError::Corrupt("outbox item".into()))?;
            out.push((k.to_vec(), json));
        }
        Ok(out)
    }

    /// The committed checkpoint alone (a reader of the ledger needs no more).
    pub(crate) fn checkpoint(&self) -> Result<Option<Checkpoint>, AttributionError> {
        match self.db.get_cf(self.cf(CF_META)?, keys::META_CHECKPOINT).map_err(db_err)? {
            Some(v) => Ok(Some(decode("checkpoint", &v)?)),
            None => Ok(None),
        }
    }

    pub(crate) fn load(&self) -> Result<Loaded, AttributionError> {
        let meta = self.cf(CF_META)?;
        let checkpoint = match self.db.get_cf(meta, keys::META_CHECKPOINT).map_err(db_err)? {
            Some(v) => Some(decode("checkpoint", &v)?),
            None => None,
        };
        let program = match self.db.get_cf(meta, keys::META_PROGRAM).map_err(db_err)? {
            Some(v) => {
                Some(String::from_utf8(v).map_err(|_| AttributionError::Corrupt("program is not UTF-8".into()))?)
            }
            None => None,
        };
        let mut managed = Managed::default();
        for item in self.db.iterator_cf(meta, IteratorMode::From(keys::META_MANAGED, Direction::Forward)) {
            let (k, v) = item.map_err(db_err)?;
            let Some(rest) = k.strip_prefix(keys::META_MANAGED) else { break };
            let bad = |why: String| {
                AttributionError::Corrupt(format!("managed entity {}: {why}", String::from_utf8_lossy(&k)))
            };
            let json = std::str::from_utf8(&v).map_err(|e| bad(e.to_string()))?;
            managed.put_keyed(rest.first().copied().unwrap_or(0), json).map_err(bad)?;
        }
        let mut holds = BTreeSet::new();
        for item in self.db.iterator_cf(self.cf(CF_HOLDS)?, IteratorMode::Start) {
            let (k, _) = item.map_err(db_err)?;
            holds.insert(keys::parse_hold(&k).ok_or_else(|| AttributionError::Corrupt("bad hold key".into()))?);
        }
        let mut it = self.db.raw_iterator_cf(self.cf(CF_CLICKS)?);
        it.seek_to_last();
        let clicks_last = match it.value() {
            Some(v) => {
                let run = Run::parse(v).ok_or_else(|| AttributionError::Corrupt("click run".into()))?;
                run.len().checked_sub(1).and_then(|i| run.id(i))
            }
            None => None,
        };
        it.status().map_err(db_err)?;
        Ok(Loaded { checkpoint, program, managed, holds, clicks_last })
    }

    /// Pulls in what the worker has committed since (a secondary only; others are current).
    pub(crate) fn catch_up(&self) -> Result<(), AttributionError> {
        match self.access {
            Access::Secondary => self.db.try_catch_up_with_primary().map_err(db_err),
            _ => Ok(()),
        }
    }

    // ---- what the engine reads behind the write set ---------------------------------------

    pub(crate) fn click(&self, id: &ClickId) -> Result<Option<ClickFacts>, AttributionError> {
        // The run that would hold the click: the one with the greatest first ID not above it.
        let mut it = self.db.raw_iterator_cf(self.cf(CF_CLICKS)?);
        it.seek_for_prev(keys::click_run(id));
        let (Some(k), Some(v)) = (it.key(), it.value()) else {
            it.status().map_err(db_err)?;
            return Ok(None);
        };
        let first = keys::parse_click_run(k).ok_or_else(|| AttributionError::Corrupt("click run key".into()))?;
        clicks::find_in_run(&first, v, id)
    }

    pub(crate) fn dedup(&self, key: &[u8]) -> Result<Option<EntryId>, AttributionError> {
        match self.db.get_pinned_cf(self.cf(CF_DEDUP)?, key).map_err(db_err)? {
            Some(v) => keys::parse_entry(&v).map(Some).ok_or_else(|| AttributionError::Corrupt("dedup value".into())),
            None => Ok(None),
        }
    }

    pub(crate) fn entry(&self, id: EntryId) -> Result<Option<Entry>, AttributionError> {
        match self.db.get_pinned_cf(self.cf(CF_LEDGER)?, keys::entry(id)).map_err(db_err)? {
            Some(v) => Ok(Some(decode_entry(&v)?)),
            None => Ok(None),
        }
    }

    /// A counter's committed value; 0 when it never counted.
    pub(crate) fn counter(&self, key: &[u8]) -> Result<i64, AttributionError> {
        match self.db.get_pinned_cf(self.cf(CF_COUNTERS)?, key).map_err(db_err)? {
            Some(v) => Ok(i64::from_be_bytes(
                v.as_ref().try_into().map_err(|_| AttributionError::Corrupt("counter value".into()))?,
            )),
            None => Ok(0),
        }
    }

    /// Adds the committed visitor keys of `day` to `set`.
    pub(crate) fn visitors(&self, day: u32, set: &mut hashbrown::HashSet<u128>) -> Result<(), AttributionError> {
        let prefix = keys::day(day);
        for item in self.db.iterator_cf(self.cf(CF_UNIQUE)?, IteratorMode::From(&prefix, Direction::Forward)) {
            let (k, v) = item.map_err(db_err)?;
            if !k.starts_with(&prefix) {
                break;
            }
            if v.len() % 16 != 0 {
                return Err(AttributionError::Corrupt("unique visitors value".into()));
            }
            for chunk in v.chunks_exact(16) {
                let mut b = [0u8; 16];
                b.copy_from_slice(chunk);
                set.insert(u128::from_be_bytes(b));
            }
        }
        Ok(())
    }

    // ---- queries of what is committed -----------------------------------------------------

    /// Every committed ledger entry in id order.
    pub(crate) fn entries(&self) -> Box<dyn Iterator<Item = Result<Entry, AttributionError>> + '_> {
        match self.cf(CF_LEDGER) {
            Err(e) => Box::new(std::iter::once(Err(e))),
            Ok(cf) => Box::new(self.db.iterator_cf(cf, IteratorMode::Start).map(|item| {
                let (_, v) = item.map_err(db_err)?;
                decode_entry(&v)
            })),
        }
    }

    /// Committed ledger entries from `from` up to those of event `to`, into `out`.
    pub(crate) fn entries_range(
        &self,
        from: EntryId,
        to: u64,
        out: &mut BTreeMap<EntryId, Entry>,
    ) -> Result<(), AttributionError> {
        let cf = self.cf(CF_LEDGER)?;
        for item in self.db.iterator_cf(cf, IteratorMode::From(&keys::entry(from), Direction::Forward)) {
            let (k, v) = item.map_err(db_err)?;
            let id = keys::parse_entry(&k).ok_or_else(|| AttributionError::Corrupt("ledger key".into()))?;
            if id.seq > to {
                break;
            }
            out.insert(id, decode_entry(&v)?);
        }
        Ok(())
    }

    /// Committed stats rows with `from <= day <= to`, in key order.
    pub(crate) fn stats(
        &self,
        from: u32,
        to: u32,
    ) -> Box<dyn Iterator<Item = Result<(StatsKey, Counters), AttributionError>> + '_> {
        let cf = match self.cf(CF_STATS) {
            Err(e) => return Box::new(std::iter::once(Err(e))),
            Ok(cf) => cf,
        };
        let start = keys::day(from);
        let mut ro = rocksdb::ReadOptions::default();
        // Keys are the day, big-endian: the range ends before day `to + 1`.
        if let Some(end) = to.checked_add(1) {
            ro.set_iterate_upper_bound(keys::day(end));
        }
        Box::new(self.db.iterator_cf_opt(cf, ro, IteratorMode::From(&start, Direction::Forward)).flat_map(
            |item| -> Box<dyn Iterator<Item = Result<(StatsKey, Counters), AttributionError>>> {
                match day_rows(item) {
                    Ok(rows) => Box::new(rows.into_iter().map(Ok)),
                    Err(e) => Box::new(std::iter::once(Err(e))),
                }
            },
        ))
    }

    // ---- writing ------------------------------------------------------------------------------

    /// Writes the write set, the checkpoint and (when changed) the program in one
    /// `WriteBatch`: outputs and position are durable together or not at all.
    pub(crate) fn write(&mut self, writes: &WriteSet, commit: Commit<'_>) -> Result<Written, AttributionError> {
        let sync = match self.access {
            Access::Primary { sync } => sync,
            _ => return Err(AttributionError::Store("state opened read-only".into())),
        };
        let hint = commit.batch_hint;
        let mut batch = WriteBatch::with_capacity_bytes(hint + hint / 8);
        let clicks_cf = self.cf(CF_CLICKS)?;
        let mut cursor = StoredRuns { it: self.db.raw_iterator_cf(clicks_cf) };
        let clicks_last = clicks::fold_into_runs(&writes.clicks, commit.clicks_last, &mut cursor, |k, run| {
            batch.put_cf(clicks_cf, keys::click_run(k), run)
        })?;
        drop(cursor);
        let dedup = self.cf(CF_DEDUP)?;
        for (k, id) in &writes.dedup {
            batch.put_cf(dedup, k, keys::entry(*id));
        }
        let ledger = self.cf(CF_LEDGER)?;
        for (id, e) in &writes.entries {
            batch.put_cf(ledger, keys::entry(*id), encode(e));
        }
        let counters = self.cf(CF_COUNTERS)?;
        for (k, v) in &writes.counters {
            batch.put_cf(counters, k, v.to_be_bytes());
        }
        // One merge operand per day: the day's changed rows, sorted.
        let stats_cf = self.cf(CF_STATS)?;
        let sorted = writes.stats.sorted();
        for day in sorted.chunk_by(|a, b| a.0.day == b.0.day) {
            let Some((first, _)) = day.first() else { continue };
            let rows: Vec<(&str, &str, &str, &RowDelta)> =
                day.iter().map(|(k, d)| (k.offer, k.affiliate, k.sub1, *d)).collect();
            batch.merge_cf(stats_cf, keys::day(first.day), stats::encode_day(&rows));
        }
        // New visitors go in one value per day per commit (key: day, then the position),
        // not one key each: a key per click was a third of all memtable inserts.
        let unique = self.cf(CF_UNIQUE)?;
        let mut by_day: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
        for (day, h) in &writes.unique {
            by_day.entry(*day).or_default().extend_from_slice(&h.to_be_bytes());
        }
        for (day, hashes) in by_day {
            batch.put_cf(unique, keys::visitors(day, commit.checkpoint.position), hashes);
        }
        let holds = self.cf(CF_HOLDS)?;
        for ((at, id), present) in &writes.holds {
            let k = keys::hold(*at, *id);
            if *present {
                batch.put_cf(holds, k, []);
            } else {
                batch.delete_cf(holds, k);
            }
        }
        let meta = self.cf(CF_META)?;
        batch.put_cf(meta, keys::META_CHECKPOINT, encode(commit.checkpoint));
        // The layout with every checkpoint, in the same batch: a secondary that sees a
        // checkpoint sees the layout too. Written only at open, a secondary could catch the
        // primary between a flush and its manifest and see a checkpoint without it, which is
        // what a layout-1 state looks like, and refuse a good state.
        batch.put_cf(meta, keys::META_FORMAT, FORMAT.to_be_bytes());
        if let Some(source) = commit.program {
            batch.put_cf(meta, keys::META_PROGRAM, source.as_bytes());
        }
        for (kind, key, json) in commit.managed {
            batch.put_cf(meta, keys::managed(*kind, key), json.as_bytes());
        }
        for (key, json) in &writes.outbox {
            batch.put_cf(meta, key, json.as_bytes());
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        #[cfg(feature = "test-util")]
        crate::testing::crash_point("commit_before_write");
        #[cfg(feature = "test-util")]
        if self.fail_commits > 0 {
            self.fail_commits -= 1;
            return Err(AttributionError::Store("injected commit failure (test-util)".into()));
        }
        let batch_bytes = batch.size_in_bytes();
        self.db.write_opt(batch, &wo).map_err(db_err)?;
        #[cfg(feature = "test-util")]
        crate::testing::crash_point("commit_after_write");
        Ok(Written { clicks_last, batch_bytes })
    }

    /// Drops the table files that hold only clicks and visitor sets from before `horizon`'s
    /// hour and day. Run keys begin with the click time (big-endian ms) and runs never cross
    /// an hour; visitor keys begin with the day. A range delete in the commit's batch did the
    /// same but made every later compaction of the click index rewrite all of it (the
    /// tombstone's file spans from the oldest key to the newest), a third of attribution's
    /// CPU. Lookups ignore expired clicks and visitor sets of days before the horizon anyway,
    /// so when files go changes no result; one that straddles the horizon goes on a later
    /// purge.
    pub(crate) fn drop_expired(&self, horizon: u64) -> Result<(), AttributionError> {
        let hour_ms = runs::bucket_start(horizon).timestamp_ms();
        if let Some(last_ms) = hour_ms.checked_sub(1) {
            let last = ClickId::new(last_ms, u16::MAX, u64::MAX);
            self.db.delete_file_in_range_cf(self.cf(CF_CLICKS)?, [0u8; 16], keys::click_run(&last)).map_err(db_err)?;
        }
        // Visitor sets by local day (a program's time zone) can be a day behind the UTC one:
        // keep the day before the horizon's too, so a live local day's set is never deleted.
        if let Some(last_day) = tally_model::time::day_of(horizon).checked_sub(2) {
            self.db
                .delete_file_in_range_cf(self.cf(CF_UNIQUE)?, &[0u8; 4][..], &keys::visitors_end(last_day)[..])
                .map_err(db_err)?;
        }
        Ok(())
    }

    /// Writes a consistent copy of the committed state to `dir` (which must not exist): a
    /// RocksDB checkpoint, hard-linking the table files, so it costs little disk and time.
    pub(crate) fn snapshot_to(&self, dir: &Path) -> Result<(), AttributionError> {
        let cp = rocksdb::checkpoint::Checkpoint::new(&self.db).map_err(db_err)?;
        cp.create_checkpoint(dir).map_err(db_err)
    }

    #[cfg(feature = "test-util")]
    pub(crate) fn overwrite_entry_raw(&self, id: EntryId, entry: Option<&Entry>) -> Result<(), AttributionError> {
        let cf = self.cf(CF_LEDGER)?;
        match entry {
            Some(e) => self.db.put_cf(cf, keys::entry(id), encode(e)),
            None => self.db.delete_cf(cf, keys::entry(id)),
        }
        .map_err(db_err)
    }

    #[cfg(test)]
    pub(crate) fn flush_and_compact_clicks(&self, compact: bool) {
        self.flush_and_compact(CF_CLICKS, compact);
    }

    #[cfg(test)]
    pub(crate) fn flush_and_compact_stats(&self, compact: bool) {
        self.flush_and_compact(CF_STATS, compact);
    }

    #[cfg(test)]
    fn flush_and_compact(&self, name: &str, compact: bool) {
        #[allow(clippy::unwrap_used)]
        let cf = self.cf(name).unwrap();
        #[allow(clippy::unwrap_used)]
        self.db.flush_cf(cf).unwrap();
        if compact {
            self.db.compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
        }
    }

    /// Makes the store look like a layout-1 one (a checkpoint and no format key).
    #[cfg(test)]
    pub(crate) fn forget_format(&self) -> Result<(), AttributionError> {
        self.db.delete_cf(self.cf(CF_META)?, keys::META_FORMAT).map_err(db_err)
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("access", &self.access).finish_non_exhaustive()
    }
}

/// The stored click runs through one raw iterator, for a commit's late clicks.
struct StoredRuns<'a> {
    it: DBRawIterator<'a>,
}

impl RunCursor for StoredRuns<'_> {
    fn seek(&mut self, id: &ClickId) -> Result<Option<ClickId>, AttributionError> {
        self.it.seek_for_prev(keys::click_run(id));
        match self.it.key() {
            Some(k) => Ok(keys::parse_click_run(k)),
            None => {
                self.it.status().map_err(db_err)?;
                Ok(None)
            }
        }
    }

    fn run(&self) -> Result<Vec<(ClickId, Vec<u8>)>, AttributionError> {
        self.it
            .value()
            .and_then(Run::parse)
            .and_then(|r| r.to_vec())
            .ok_or_else(|| AttributionError::Corrupt("click run".into()))
    }
}

/// An item of a RocksDB iterator: key and value.
type DbItem = Result<(Box<[u8]>, Box<[u8]>), rocksdb::Error>;

/// The rows of one day's stats table, from a stats column family item.
fn day_rows(item: DbItem) -> Result<Vec<(StatsKey, Counters)>, AttributionError> {
    let (k, v) = item.map_err(db_err)?;
    let day = keys::parse_day(&k).ok_or_else(|| AttributionError::Corrupt("stats key".into()))?;
    let rows = stats::decode_day(&v).map_err(|e| AttributionError::Corrupt(format!("stats of day {day}: {e}")))?;
    Ok(rows
        .into_iter()
        .map(|(offer, affiliate, sub1, d)| {
            (StatsKey { day, offer: offer.into(), affiliate: affiliate.into(), sub1: sub1.into() }, d.counters())
        })
        .collect())
}
