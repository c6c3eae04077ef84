//! The attribution state: click index, dedup keys, ledger, counters, holds, stats and the
//! worker's checkpoint, in one RocksDB of its own (`{data_dir}/attribution`).
//!
//! Writes made while applying events go to an in-memory overlay; reads look there first. A
//! commit turns the overlay and the checkpoint into one `WriteBatch`, so outputs and position
//! are durable together or not at all: a worker killed between commits restarts from the
//! last checkpoint, re-applies the same events to the same state and produces the same
//! bytes. Without a database ([`State::in_memory`]) the overlay is the whole state; tests
//! and the benchmark's reference runs use that.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB};
use serde::{Deserialize, Serialize};
use tally_model::{ClickId, Program};

/// Maps on the hot path (several operations per click) use hashbrown with foldhash: a third
/// of the cost of SipHash, and xxh3's streaming state was slower still for short keys.
/// Nothing iterates them in an order that reaches the output.
type FastMap<K, V> = hashbrown::HashMap<K, V>;

/// Most counters [`State`] keeps in memory: a few MiB (counters are per offer, goal and
/// affiliate by day or month, so this is many days of a large program).
const COUNTER_CACHE_MAX: usize = 100_000;

/// The stats rows: hashbrown's raw entry API looks a row up by a borrowed key
/// ([`StatsKeyRef`]) and inserts the owned one only when the row is new.
type StatsMap = hashbrown::HashMap<StatsKey, RowDelta>;

use crate::keys;
use crate::ledger::{Entry, EntryId, StatsKey, StatsKeyRef};
use crate::runs::{self, Run};
use crate::stats::{self, Counters, RowDelta};
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

/// The layout of the column families. 2: clicks in sorted runs ([`runs`]), stats as one
/// merged table per day ([`stats`]); 1 (no format key): one key per click and per stats row.
/// A state is derived from the log, so a worker that finds another layout deletes the
/// state and rebuilds it from the log; readers refuse it ([`AttributionError::Format`]).
pub const FORMAT: u32 = 2;

/// What attribution remembers about a click.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClickFacts {
    pub ts_ms: u64,
    pub offer: String,
    pub affiliate: String,
    pub sub1: String,
    pub human: bool,
    /// Under the first-click rule, the earlier click of this visitor's cookie chain on the
    /// same offer that this click must not displace; `None` when this click is the first.
    pub first: Option<FirstClick>,
}

/// [`ClickFacts`] borrowed from the click being applied, for storing: the same encoding
/// (postcard writes `&str` as it writes `String`), without copying three strings per click.
#[derive(Debug, Serialize)]
pub(crate) struct ClickFactsRef<'a> {
    pub ts_ms: u64,
    pub offer: &'a str,
    pub affiliate: &'a str,
    pub sub1: &'a str,
    pub human: bool,
    pub first: Option<&'a FirstClick>,
}

#[cfg(test)]
impl ClickFacts {
    fn borrowed(&self) -> ClickFactsRef<'_> {
        ClickFactsRef {
            ts_ms: self.ts_ms,
            offer: &self.offer,
            affiliate: &self.affiliate,
            sub1: &self.sub1,
            human: self.human,
            first: self.first.as_ref(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirstClick {
    pub click_id: ClickId,
    pub ts_ms: u64,
    pub affiliate: String,
    pub sub1: String,
}

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

/// The clicks of one UTC day (by the time in their ID), encoded back to back in one arena.
/// Most clicks are never looked up, and a replay holds every click inside the horizon in
/// memory, so the compact form matters: no allocation per click, a small index entry, and
/// expiry drops whole days instead of sweeping one big map (whose growth would also copy
/// every click at once).
#[derive(Default)]
struct DayClicks {
    /// Click ID → (offset, length) of its encoded [`ClickFacts`] in `arena`.
    index: FastMap<ClickId, (u32, u32)>,
    arena: Vec<u8>,
    /// For a state that commits: click IDs and offsets in the order applied, which is nearly
    /// ID order, so the commit sorts them in about linear time (the index's order is random).
    order: Vec<(ClickId, u32)>,
}

impl DayClicks {
    fn get(&self, id: &ClickId) -> Option<&[u8]> {
        let &(at, len) = self.index.get(id)?;
        self.arena.get(at as usize..(at as usize).checked_add(len as usize)?)
    }

    /// The latest facts of each click, sorted by ID.
    fn sorted(&self) -> Vec<(ClickId, &[u8])> {
        let mut out: Vec<(ClickId, &[u8])> = self
            .order
            .iter()
            // A click applied twice is in `order` twice; the index points at the later one.
            .filter(|(id, at)| self.index.get(id).is_some_and(|(latest, _)| latest == at))
            .filter_map(|(id, _)| Some((*id, self.get(id)?)))
            .collect();
        // Stable sort: finds the presorted runs instead of partitioning them.
        out.sort_by_key(|(id, _)| *id);
        out
    }

    /// Empties it, keeping the allocations for the next commit's clicks.
    fn clear(&mut self) {
        self.index.clear();
        self.arena.clear();
        self.order.clear();
    }
}

#[derive(Default)]
struct Overlay {
    /// Clicks by the UTC day of their ID's timestamp.
    clicks: BTreeMap<u32, DayClicks>,
    dedup: FastMap<Vec<u8>, EntryId>,
    entries: BTreeMap<EntryId, Entry>,
    counters: FastMap<Vec<u8>, i64>,
    unique: Vec<(u32, u128)>,
    holds: BTreeMap<(u64, EntryId), bool>,
}

/// The state the engine reads and writes; see the module docs.
pub struct State {
    db: Option<Arc<DB>>,
    /// Opened from a snapshot or as a secondary: reads only, never commits.
    read_only: bool,
    sync: bool,
    overlay: Overlay,
    pub(crate) checkpoint: Checkpoint,
    pub(crate) program: Option<Arc<Program>>,
    /// How far behind the watermark clicks stay live under `program`: its longest window
    /// and a day. Kept here because every event needs it.
    pub(crate) reach_ms: Option<u64>,
    program_dirty: bool,
    /// Every pending hold, by due time: small (conversions within their hold period).
    pub(crate) holds: BTreeSet<(u64, EntryId)>,
    /// Unique-visitor keys of the days loaded, complete for each day present.
    unique_days: BTreeMap<u32, hashbrown::HashSet<u128>>,
    /// What the events applied since the last commit changed in each stats row; a commit
    /// hands the rows to RocksDB's merge operator. Without a database the deltas since the
    /// start, which are the rows themselves.
    stats: StatsMap,
    /// The greatest click ID stored (an upper bound once expiry deleted runs): new clicks
    /// above it become new runs, the others are inserted into stored ones.
    clicks_last: Option<ClickId>,
    /// Emptied overlay days, reused: growing a fresh index and arena every commit was a tenth
    /// of the apply thread (rehashing, page faults).
    spare_days: Vec<DayClicks>,
    /// The last commit's batch size, to allocate the next one at once.
    batch_bytes: usize,
    /// Committed counter values read or written, so a conversion's caps, tiers and
    /// milestones are not read back from RocksDB at every commit (a read each was a fifth
    /// of a conversion's time). Only this state writes counters, so the cache never goes
    /// stale; it holds nothing uncommitted, and is emptied when it grows past
    /// [`COUNTER_CACHE_MAX`].
    counter_cache: FastMap<Vec<u8>, i64>,
    /// A buffer the engine reuses (hashing a visitor's key).
    pub(crate) scratch: Vec<u8>,
    /// Horizon up to which expired clicks were physically deleted.
    purged_to_ms: u64,
    secondary_dir: Option<PathBuf>,
    /// Commits still to refuse, as a full disk would ([`crate::Worker::fail_next_commits`]).
    #[cfg(feature = "test-util")]
    pub(crate) fail_commits: u32,
}

pub(crate) fn cf_descriptors() -> Vec<ColumnFamilyDescriptor> {
    CFS.iter().map(|name| ColumnFamilyDescriptor::new(*name, cf_options(name))).collect()
}

fn cf_options(name: &str) -> Options {
    let mut o = Options::default();
    o.set_compression_type(rocksdb::DBCompressionType::Lz4);
    match name {
        // Uncompressed: compressing the click runs on every flush was a sixth of a core on
        // a 2-core machine (live attribution +5-7%), for a quarter less disk on an index
        // that expires anyway. Files written compressed before still read.
        CF_CLICKS => o.set_compression_type(rocksdb::DBCompressionType::None),
        CF_STATS => o.set_merge_operator_associative(stats::MERGE_OPERATOR, stats::merge_operator),
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

/// A day's grace past the longest window, so a click just outside its window is reported
/// as that rather than as expired.
fn reach_ms(program: &Program) -> u64 {
    (u64::from(program.max_window_days()) + 1) * tally_model::time::DAY_MS
}

fn db_err(e: rocksdb::Error) -> AttributionError {
    AttributionError::Store(e.to_string())
}

fn decode<T: for<'de> Deserialize<'de>>(what: &str, bytes: &[u8]) -> Result<T, AttributionError> {
    postcard::from_bytes(bytes).map_err(|e| AttributionError::Corrupt(format!("{what}: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising our own structs into a Vec cannot fail.
    postcard::to_stdvec(value).unwrap_or_default()
}

impl State {
    /// A state with no database: everything stays in memory.
    pub fn in_memory() -> State {
        State::with_db(None, false, None)
    }

    fn with_db(db: Option<Arc<DB>>, sync: bool, secondary_dir: Option<PathBuf>) -> State {
        State {
            read_only: secondary_dir.is_some(),
            db,
            sync,
            overlay: Overlay::default(),
            checkpoint: Checkpoint::default(),
            program: None,
            reach_ms: None,
            program_dirty: false,
            holds: BTreeSet::new(),
            unique_days: BTreeMap::new(),
            stats: StatsMap::default(),
            clicks_last: None,
            spare_days: Vec::new(),
            batch_bytes: 0,
            scratch: Vec::new(),
            counter_cache: FastMap::default(),
            purged_to_ms: 0,
            secondary_dir,
            #[cfg(feature = "test-util")]
            fail_commits: 0,
        }
    }

    /// Opens (creating if needed) the state in `dir` for a worker. Only one process may.
    pub fn open(dir: &Path, sync: bool) -> Result<State, AttributionError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.increase_parallelism(2);
        // Bounded memory: eight column families at RocksDB's default 64 MiB write buffers
        // (two each) would take over 1 GiB; share 64 MiB. Small column families (meta, holds)
        // would otherwise pin old WAL files for ever; bound the WAL so they get flushed.
        opts.set_db_write_buffer_size(64 << 20);
        opts.set_max_total_wal_size(256 << 20);
        let open = || {
            DB::open_cf_descriptors(&opts, dir, cf_descriptors())
                .map_err(|e| AttributionError::Open { dir: dir.to_path_buf(), reason: e.to_string() })
        };
        let mut db = open()?;
        match stored_format(&db)? {
            Some(FORMAT) => {}
            None if !has_checkpoint(&db)? => {}
            found => {
                let found = found.unwrap_or(1);
                tracing::warn!(
                    dir = %dir.display(),
                    found,
                    expected = FORMAT,
                    "attribution state has another layout; deleting it to rebuild from the log"
                );
                drop(db);
                DB::destroy(&opts, dir)
                    .map_err(|e| AttributionError::Open { dir: dir.to_path_buf(), reason: e.to_string() })?;
                db = open()?;
            }
        }
        db.put_cf(cf(&db, CF_META)?, keys::META_FORMAT, FORMAT.to_be_bytes()).map_err(db_err)?;
        let mut state = State::with_db(Some(Arc::new(db)), sync, None);
        state.load()?;
        Ok(state)
    }

    /// Opens the state in `dir` read-only, safe while a worker runs (a RocksDB secondary).
    /// Outside this crate, through [`crate::LedgerReader`], which cannot change it.
    pub(crate) fn open_reader(dir: &Path) -> Result<State, AttributionError> {
        if !dir.join("CURRENT").exists() {
            return Err(AttributionError::Open {
                dir: dir.to_path_buf(),
                reason: "no attribution state here (has a worker run on this data directory?)".into(),
            });
        }
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let secondary = std::env::temp_dir().join(format!("tally-attr-secondary-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&secondary)
            .map_err(|e| AttributionError::Open { dir: secondary.clone(), reason: e.to_string() })?;
        let mut opts = Options::default();
        opts.set_max_open_files(-1);
        let db = DB::open_cf_descriptors_as_secondary(&opts, dir, &secondary, cf_descriptors()).map_err(|e| {
            let _ = std::fs::remove_dir_all(&secondary);
            AttributionError::Open { dir: dir.to_path_buf(), reason: e.to_string() }
        })?;
        let mut state = State::with_db(Some(Arc::new(db)), false, Some(secondary));
        state.check_format(dir)?;
        state.load()?;
        Ok(state)
    }

    /// Opens a snapshot written by [`State::snapshot_to`] as the starting point of a
    /// replay: the snapshot is only read; everything applied stays in memory (the overlay)
    /// and [`State::commit`] is refused.
    pub fn open_snapshot(dir: &Path) -> Result<State, AttributionError> {
        let opts = Options::default();
        let db = DB::open_cf_descriptors_read_only(&opts, dir, cf_descriptors(), false)
            .map_err(|e| AttributionError::Open { dir: dir.to_path_buf(), reason: e.to_string() })?;
        let mut state = State::with_db(Some(Arc::new(db)), false, None);
        state.read_only = true;
        state.check_format(dir)?;
        state.load()?;
        Ok(state)
    }

    /// Writes a consistent copy of the committed state to `dir` (which must not exist): a
    /// RocksDB checkpoint, hard-linking the table files, so it costs little disk and time.
    pub fn snapshot_to(&self, dir: &Path) -> Result<(), AttributionError> {
        let Some(db) = &self.db else {
            return Err(AttributionError::Store("an in-memory state has nothing to snapshot".into()));
        };
        let cp = rocksdb::checkpoint::Checkpoint::new(db).map_err(db_err)?;
        cp.create_checkpoint(dir).map_err(db_err)
    }

    /// Forgets everything applied since the last commit and reads the committed state back,
    /// as a restart would: after a failed commit (a full disk, say) the in-memory state is
    /// ahead of the database, and the worker re-applies from the checkpoint instead.
    pub fn reload(&mut self) -> Result<(), AttributionError> {
        if self.read_only || self.db.is_none() {
            return Err(AttributionError::Store("only a worker's state can be reloaded".into()));
        }
        #[cfg(feature = "test-util")]
        let fail_commits = self.fail_commits;
        *self = State::with_db(self.db.take(), self.sync, None);
        #[cfg(feature = "test-util")]
        {
            self.fail_commits = fail_commits;
        }
        self.load()
    }

    /// Refuses a state in another layout than this build's (readers cannot rebuild it).
    fn check_format(&self, dir: &Path) -> Result<(), AttributionError> {
        let Some(db) = &self.db else { return Ok(()) };
        match stored_format(db)? {
            Some(FORMAT) => Ok(()),
            None if !has_checkpoint(db)? => Ok(()),
            found => Err(AttributionError::Format { dir: dir.to_path_buf(), found: found.unwrap_or(1) }),
        }
    }

    fn load(&mut self) -> Result<(), AttributionError> {
        let Some(db) = self.db.clone() else { return Ok(()) };
        let meta = cf(&db, CF_META)?;
        if let Some(v) = db.get_cf(meta, keys::META_CHECKPOINT).map_err(db_err)? {
            self.checkpoint = decode("checkpoint", &v)?;
        }
        if let Some(v) = db.get_cf(meta, keys::META_PROGRAM).map_err(db_err)? {
            let source = String::from_utf8(v).map_err(|_| AttributionError::Corrupt("program is not UTF-8".into()))?;
            let program = Program::from_toml(&source)
                .map_err(|e| AttributionError::Corrupt(format!("stored program no longer parses: {e}")))?;
            self.reach_ms = Some(reach_ms(&program));
            self.program = Some(Arc::new(program));
        }
        for item in db.iterator_cf(cf(&db, CF_HOLDS)?, IteratorMode::Start) {
            let (k, _) = item.map_err(db_err)?;
            let (at, id) = keys::parse_hold(&k).ok_or_else(|| AttributionError::Corrupt("bad hold key".into()))?;
            self.holds.insert((at, id));
        }
        self.purged_to_ms = self.checkpoint.horizon_ms;
        let mut it = db.raw_iterator_cf(cf(&db, CF_CLICKS)?);
        it.seek_to_last();
        self.clicks_last = match it.value() {
            Some(v) => {
                let run = Run::parse(v).ok_or_else(|| AttributionError::Corrupt("click run".into()))?;
                run.len().checked_sub(1).and_then(|i| run.id(i))
            }
            None => None,
        };
        it.status().map_err(db_err)?;
        Ok(())
    }

    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    pub fn program(&self) -> Option<&Arc<Program>> {
        self.program.as_ref()
    }

    pub(crate) fn set_program(&mut self, program: Arc<Program>) {
        self.checkpoint.program = program.digest.clone();
        self.reach_ms = Some(reach_ms(&program));
        self.program = Some(program);
        self.program_dirty = true;
    }

    // ---- reads and writes used by the engine ------------------------------------------------

    pub(crate) fn click(&self, id: &ClickId) -> Result<Option<ClickFacts>, AttributionError> {
        let day = tally_model::time::day_of(id.timestamp_ms());
        if let Some(c) = self.overlay.clicks.get(&day).and_then(|d| d.get(id)) {
            return Ok(Some(decode("click", c)?));
        }
        let Some(db) = &self.db else { return Ok(None) };
        // The run that would hold the click: the one with the greatest first ID not above
        // it, if that run is of the click's hour (see `runs`).
        let mut it = db.raw_iterator_cf(cf(db, CF_CLICKS)?);
        it.seek_for_prev(keys::click_run(id));
        let (Some(k), Some(v)) = (it.key(), it.value()) else {
            it.status().map_err(db_err)?;
            return Ok(None);
        };
        let first = keys::parse_click_run(k).ok_or_else(|| AttributionError::Corrupt("click run key".into()))?;
        if runs::bucket(&first) != runs::bucket(id) {
            return Ok(None);
        }
        let run = Run::parse(v).ok_or_else(|| AttributionError::Corrupt("click run".into()))?;
        match run.get(id) {
            Ok(Some(facts)) => Ok(Some(decode("click", facts)?)),
            Ok(None) => Ok(None),
            Err(()) => Err(AttributionError::Corrupt("click run".into())),
        }
    }

    pub(crate) fn put_click(&mut self, id: ClickId, facts: &ClickFactsRef<'_>) {
        let spare = &mut self.spare_days;
        let day = self
            .overlay
            .clicks
            .entry(tally_model::time::day_of(id.timestamp_ms()))
            .or_insert_with(|| spare.pop().unwrap_or_default());
        let at = day.arena.len();
        // Serialising our own struct into a Vec cannot fail; a day's arena stays far below
        // 4 GiB (that would be some 100 million clicks in one day).
        if postcard::to_io(facts, &mut day.arena).is_ok() {
            if let (Ok(at32), Ok(len)) = (u32::try_from(at), u32::try_from(day.arena.len() - at)) {
                day.index.insert(id, (at32, len));
                if self.db.is_some() {
                    day.order.push((id, at32));
                }
            }
        }
    }

    pub(crate) fn dedup(&self, key: &[u8]) -> Result<Option<EntryId>, AttributionError> {
        if let Some(id) = self.overlay.dedup.get(key) {
            return Ok(Some(*id));
        }
        let Some(db) = &self.db else { return Ok(None) };
        match db.get_pinned_cf(cf(db, CF_DEDUP)?, key).map_err(db_err)? {
            Some(v) => keys::parse_entry(&v).map(Some).ok_or_else(|| AttributionError::Corrupt("dedup value".into())),
            None => Ok(None),
        }
    }

    pub(crate) fn put_dedup(&mut self, key: Vec<u8>, id: EntryId) {
        self.overlay.dedup.insert(key, id);
    }

    pub fn entry(&self, id: EntryId) -> Result<Option<Entry>, AttributionError> {
        if let Some(e) = self.overlay.entries.get(&id) {
            return Ok(Some(e.clone()));
        }
        let Some(db) = &self.db else { return Ok(None) };
        match db.get_pinned_cf(cf(db, CF_LEDGER)?, keys::entry(id)).map_err(db_err)? {
            Some(v) => Ok(Some(decode("ledger entry", &v)?)),
            None => Ok(None),
        }
    }

    pub(crate) fn put_entry(&mut self, entry: Entry) {
        self.overlay.entries.insert(entry.id, entry);
    }

    pub(crate) fn counter(&mut self, key: &[u8]) -> Result<i64, AttributionError> {
        if let Some(v) = self.overlay.counters.get(key).or_else(|| self.counter_cache.get(key)) {
            return Ok(*v);
        }
        let Some(db) = &self.db else { return Ok(0) };
        let v = match db.get_pinned_cf(cf(db, CF_COUNTERS)?, key).map_err(db_err)? {
            Some(v) => i64::from_be_bytes(
                v.as_ref().try_into().map_err(|_| AttributionError::Corrupt("counter value".into()))?,
            ),
            None => 0,
        };
        self.counter_cache.insert(key.to_vec(), v);
        Ok(v)
    }

    pub(crate) fn add_counter(&mut self, key: &[u8], delta: i64) -> Result<i64, AttributionError> {
        let v = self.counter(key)?.saturating_add(delta);
        self.overlay.counters.insert(key.to_vec(), v);
        Ok(v)
    }

    /// The changes to the stats row `key` since the last commit, to add to. Nothing is
    /// read: the row's stored value is never needed (see [`stats`]).
    pub(crate) fn stats_mut(&mut self, key: StatsKeyRef<'_>) -> &mut RowDelta {
        self.stats.raw_entry_mut().from_key(&key).or_insert_with(|| (key.to_owned_key(), RowDelta::default())).1
    }

    /// Records a visitor key for `day`; true if it was new.
    pub(crate) fn first_visit(&mut self, day: u32, key: u128) -> Result<bool, AttributionError> {
        if !self.unique_days.contains_key(&day) {
            let mut set = hashbrown::HashSet::new();
            if let Some(db) = &self.db {
                let cf = cf(db, CF_UNIQUE)?;
                let prefix = keys::day(day);
                for item in db.iterator_cf(cf, IteratorMode::From(&prefix, Direction::Forward)) {
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
            }
            for (d, h) in &self.overlay.unique {
                if *d == day {
                    set.insert(*h);
                }
            }
            self.unique_days.insert(day, set);
        }
        let set = self.unique_days.get_mut(&day).ok_or_else(|| AttributionError::Corrupt("unique day".into()))?;
        let new = set.insert(key);
        // Only a state that commits needs the new keys apart: without a database (or
        // read-only) the day's set in memory is all there is, and it is never trimmed.
        if new && self.db.is_some() && !self.read_only {
            self.overlay.unique.push((day, key));
        }
        Ok(new)
    }

    pub(crate) fn add_hold(&mut self, at: u64, id: EntryId) {
        self.holds.insert((at, id));
        self.overlay.holds.insert((at, id), true);
    }

    pub(crate) fn remove_hold(&mut self, at: u64, id: EntryId) {
        self.holds.remove(&(at, id));
        self.overlay.holds.insert((at, id), false);
    }

    // ---- commit -------------------------------------------------------------------------------

    /// Makes everything applied so far durable, with the checkpoint, in one write. A no-op
    /// for an in-memory state (the overlay is its storage).
    pub fn commit(&mut self) -> Result<(), AttributionError> {
        if self.read_only {
            return Err(AttributionError::Store("state opened read-only".into()));
        }
        let Some(db) = self.db.clone() else {
            self.purge_in_memory();
            return Ok(());
        };
        let mut o = std::mem::take(&mut self.overlay);
        let mut batch = WriteBatch::with_capacity_bytes(self.batch_bytes + self.batch_bytes / 8);
        let clicks_last = self.write_clicks(&db, &mut batch, &o.clicks)?;
        let dedup = cf(&db, CF_DEDUP)?;
        for (k, id) in &o.dedup {
            batch.put_cf(dedup, k, keys::entry(*id));
        }
        let ledger = cf(&db, CF_LEDGER)?;
        for (id, e) in &o.entries {
            batch.put_cf(ledger, keys::entry(*id), encode(e));
        }
        let counters = cf(&db, CF_COUNTERS)?;
        for (k, v) in &o.counters {
            batch.put_cf(counters, k, v.to_be_bytes());
        }
        // One merge operand per day: the day's changed rows, sorted.
        let stats = cf(&db, CF_STATS)?;
        let mut days: BTreeMap<u32, Vec<(&str, &str, &str, &RowDelta)>> = BTreeMap::new();
        for (k, d) in &self.stats {
            days.entry(k.day).or_default().push((&k.offer, &k.affiliate, &k.sub1, d));
        }
        for (day, mut rows) in days {
            rows.sort_unstable_by(|a, b| (a.0, a.1, a.2).cmp(&(b.0, b.1, b.2)));
            batch.merge_cf(stats, keys::day(day), stats::encode_day(&rows));
        }
        // New visitors go in one value per day per commit (key: day, then the position),
        // not one key each: a key per click was a third of all memtable inserts.
        let unique = cf(&db, CF_UNIQUE)?;
        let mut by_day: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
        for (day, h) in &o.unique {
            by_day.entry(*day).or_default().extend_from_slice(&h.to_be_bytes());
        }
        for (day, hashes) in by_day {
            batch.put_cf(unique, keys::visitors(day, self.checkpoint.position), hashes);
        }
        let holds = cf(&db, CF_HOLDS)?;
        for ((at, id), present) in &o.holds {
            let k = keys::hold(*at, *id);
            if *present {
                batch.put_cf(holds, k, []);
            } else {
                batch.delete_cf(holds, k);
            }
        }
        let horizon = self.checkpoint.horizon_ms;
        let meta = cf(&db, CF_META)?;
        batch.put_cf(meta, keys::META_CHECKPOINT, encode(&self.checkpoint));
        if self.program_dirty {
            if let Some(p) = &self.program {
                batch.put_cf(meta, keys::META_PROGRAM, p.source.as_bytes());
            }
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(self.sync);
        #[cfg(feature = "test-util")]
        crate::testing::crash_point("commit_before_write");
        #[cfg(feature = "test-util")]
        if self.fail_commits > 0 {
            self.fail_commits -= 1;
            return Err(AttributionError::Store("injected commit failure (test-util)".into()));
        }
        self.batch_bytes = batch.size_in_bytes();
        db.write_opt(batch, &wo).map_err(db_err)?;
        #[cfg(feature = "test-util")]
        crate::testing::crash_point("commit_after_write");
        if horizon >= self.purged_to_ms + 3_600_000 {
            self.purged_to_ms = horizon;
            drop_expired(&db, horizon)?;
        }
        if clicks_last.is_some() {
            self.clicks_last = clicks_last;
        }
        if self.counter_cache.len() + o.counters.len() > COUNTER_CACHE_MAX {
            self.counter_cache.clear();
        }
        self.counter_cache.extend(o.counters.drain());
        // Cleared, not replaced: the map keeps its capacity for the next commit's rows.
        self.stats.clear();
        for mut day in std::mem::take(&mut o.clicks).into_values() {
            if self.spare_days.len() < 2 {
                day.clear();
                self.spare_days.push(day);
            }
        }
        self.program_dirty = false;
        // Keep the visitor sets of the last days only; older ones reload on demand (late
        // events are rare).
        let today = tally_model::time::day_of(self.checkpoint.watermark_ms);
        self.unique_days.retain(|d, _| *d + 1 >= today);
        Ok(())
    }

    /// Puts the clicks applied since the last commit into `batch` as runs (see [`runs`]):
    /// those after every stored click as new runs, the others into the runs that own them,
    /// read back and rewritten. Returns the new greatest click ID, if it moved.
    fn write_clicks(
        &self,
        db: &DB,
        batch: &mut WriteBatch,
        days: &BTreeMap<u32, DayClicks>,
    ) -> Result<Option<ClickId>, AttributionError> {
        // Days in order, each sorted: all sorted.
        let new: Vec<(ClickId, &[u8])> = days.values().flat_map(DayClicks::sorted).collect();
        let split = self.clicks_last.map_or(0, |last| new.partition_point(|(id, _)| *id <= last));
        let (late, fresh) = new.split_at(split);
        let cf = cf(db, CF_CLICKS)?;

        // Runs to rewrite, by key (their first click).
        let mut dirty: BTreeMap<ClickId, Vec<(ClickId, Vec<u8>)>> = BTreeMap::new();
        if !late.is_empty() {
            let mut it = db.raw_iterator_cf(cf);
            for (id, facts) in late {
                let hour = runs::bucket(id);
                let in_dirty = dirty.range(..=*id).next_back().map(|(k, _)| *k).filter(|k| runs::bucket(k) == hour);
                it.seek_for_prev(keys::click_run(id));
                let stored = match it.key() {
                    Some(k) => keys::parse_click_run(k).filter(|k| runs::bucket(k) == hour),
                    None => {
                        it.status().map_err(db_err)?;
                        None
                    }
                };
                let owner = match (in_dirty, stored) {
                    (Some(d), Some(s)) if s > d => Some(s),
                    (Some(d), _) => Some(d),
                    (None, s) => s,
                };
                let key = match owner {
                    Some(k) => {
                        if let std::collections::btree_map::Entry::Vacant(e) = dirty.entry(k) {
                            // `stored` is `it`'s key, so its value is that run.
                            let run = it
                                .value()
                                .and_then(Run::parse)
                                .and_then(|r| r.to_vec())
                                .ok_or_else(|| AttributionError::Corrupt("click run".into()))?;
                            e.insert(run);
                        }
                        k
                    }
                    // Before every run of its hour: a run of its own.
                    None => *id,
                };
                let run = dirty.entry(key).or_default();
                match run.binary_search_by_key(id, |(k, _)| *k) {
                    Ok(i) => run[i].1 = facts.to_vec(),
                    Err(i) => run.insert(i, (*id, facts.to_vec())),
                }
            }
        }
        for (key, run) in &dirty {
            for (i, part) in runs::split(run).into_iter().enumerate() {
                let k = if i == 0 { Some(*key) } else { part.first().map(|(id, _)| *id) };
                if let Some(k) = k {
                    batch.put_cf(cf, keys::click_run(&k), runs::encode(part));
                }
            }
        }
        for range in runs::chunk(fresh) {
            let run = &fresh[range];
            if let Some((first, _)) = run.first() {
                batch.put_cf(cf, keys::click_run(first), runs::encode(run));
            }
        }
        Ok(fresh.last().map(|(id, _)| *id))
    }

    /// Without a database the overlay is the storage: drop clicks past the expiry horizon
    /// (lookups already ignore them) once the horizon has moved a day, so a replay's memory
    /// follows the clicks inside the longest window, not the whole log.
    fn purge_in_memory(&mut self) {
        let horizon = self.checkpoint.horizon_ms;
        if horizon < self.purged_to_ms + tally_model::time::DAY_MS {
            return;
        }
        let old_day = tally_model::time::day_of(horizon);
        // Whole days before the horizon's; lookups ignore the rest of the expired clicks.
        self.overlay.clicks.retain(|day, _| *day >= old_day);
        self.unique_days.retain(|d, _| *d >= old_day);
        self.overlay.unique.retain(|(d, _)| *d >= old_day);
        self.purged_to_ms = horizon;
    }

    /// Pulls in what the worker has committed since (secondary instances only).
    pub fn refresh(&mut self) -> Result<(), AttributionError> {
        if let (Some(db), Some(_)) = (&self.db, &self.secondary_dir) {
            db.try_catch_up_with_primary().map_err(db_err)?;
            self.holds.clear();
            self.counter_cache.clear();
            self.load()?;
        }
        Ok(())
    }

    // ---- reading the results ------------------------------------------------------------------

    /// Every ledger entry in id order. For a database-backed state this reads what is
    /// committed; commit first.
    pub fn entries(&self) -> Box<dyn Iterator<Item = Result<Entry, AttributionError>> + '_> {
        match &self.db {
            None => Box::new(self.overlay.entries.values().cloned().map(Ok)),
            Some(db) => match cf(db, CF_LEDGER) {
                Err(e) => Box::new(std::iter::once(Err(e))),
                Ok(cf) => Box::new(db.iterator_cf(cf, IteratorMode::Start).map(|item| {
                    let (_, v) = item.map_err(db_err)?;
                    decode("ledger entry", &v)
                })),
            },
        }
    }

    /// Ledger entries created by events `from..=to`, in id order, including what is applied
    /// but not committed (a replay never commits).
    pub fn entries_range(&self, from: u64, to: u64) -> Result<Vec<Entry>, AttributionError> {
        let lo = EntryId::of_event(from);
        let mut out: BTreeMap<EntryId, Entry> = BTreeMap::new();
        if let Some(db) = &self.db {
            let cf = cf(db, CF_LEDGER)?;
            for item in db.iterator_cf(cf, IteratorMode::From(&keys::entry(lo), Direction::Forward)) {
                let (k, v) = item.map_err(db_err)?;
                let id = keys::parse_entry(&k).ok_or_else(|| AttributionError::Corrupt("ledger key".into()))?;
                if id.seq > to {
                    break;
                }
                out.insert(id, decode("ledger entry", &v)?);
            }
        }
        for (id, e) in self.overlay.entries.range(lo..) {
            if id.seq > to {
                break;
            }
            out.insert(*id, e.clone());
        }
        Ok(out.into_values().collect())
    }

    /// Stats rows with `from <= day <= to`, in key order.
    pub fn stats(
        &self,
        from: u32,
        to: u32,
    ) -> Box<dyn Iterator<Item = Result<(StatsKey, Counters), AttributionError>> + '_> {
        match &self.db {
            None => {
                let mut rows: Vec<(StatsKey, Counters)> = self
                    .stats
                    .iter()
                    .filter(|(k, _)| k.day >= from && k.day <= to)
                    .map(|(k, d)| (k.clone(), d.counters()))
                    .collect();
                rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                Box::new(rows.into_iter().map(Ok))
            }
            Some(db) => match cf(db, CF_STATS) {
                Err(e) => Box::new(std::iter::once(Err(e))),
                Ok(cf) => {
                    let start = keys::day(from);
                    let mut ro = rocksdb::ReadOptions::default();
                    // Keys are the day, big-endian: the range ends before day `to + 1`.
                    if let Some(end) = to.checked_add(1) {
                        ro.set_iterate_upper_bound(keys::day(end));
                    }
                    Box::new(db.iterator_cf_opt(cf, ro, IteratorMode::From(&start, Direction::Forward)).flat_map(
                        |item| -> Box<dyn Iterator<Item = Result<(StatsKey, Counters), AttributionError>>> {
                            match day_rows(item) {
                                Ok(rows) => Box::new(rows.into_iter().map(Ok)),
                                Err(e) => Box::new(std::iter::once(Err(e))),
                            }
                        },
                    ))
                }
            },
        }
    }

    /// BLAKE3 over every ledger entry's id and stored bytes, in order: two ledgers are the
    /// same if and only if (barring a hash collision) their digests are.
    pub fn ledger_digest(&self) -> Result<String, AttributionError> {
        let mut h = blake3::Hasher::new();
        for e in self.entries() {
            let e = e?;
            let bytes = encode(&e);
            h.update(&keys::entry(e.id));
            h.update(&(bytes.len() as u64).to_be_bytes());
            h.update(&bytes);
        }
        Ok(h.finalize().to_hex().to_string())
    }

    #[cfg(feature = "test-util")]
    pub(crate) fn overwrite_entry_raw(&self, id: EntryId, entry: Option<&Entry>) -> Result<(), AttributionError> {
        let db = self.db.as_ref().ok_or_else(|| AttributionError::Store("in-memory state".into()))?;
        let cf = cf(db, CF_LEDGER)?;
        match entry {
            Some(e) => db.put_cf(cf, keys::entry(id), encode(e)),
            None => db.delete_cf(cf, keys::entry(id)),
        }
        .map_err(db_err)
    }

    /// Number of pending holds (for metrics and tests).
    pub fn pending_holds(&self) -> usize {
        self.holds.len()
    }
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("persistent", &self.db.is_some())
            .field("checkpoint", &self.checkpoint)
            .field("pending_holds", &self.holds.len())
            .finish_non_exhaustive()
    }
}

impl Drop for State {
    fn drop(&mut self) {
        if let Some(dir) = self.secondary_dir.take() {
            self.db = None;
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Drops the table files that hold only clicks and visitor sets from before `horizon`'s
/// hour and day. Run keys begin with the click time (big-endian ms) and runs never cross an
/// hour; visitor keys begin with the day. A range delete in the commit's batch did the same
/// but made every later compaction of the click index rewrite all of it (the tombstone's
/// file spans from the oldest key to the newest), a third of attribution's CPU. Lookups
/// ignore expired clicks and visitor sets of days before the horizon anyway, so when files
/// go changes no result; one that straddles the horizon goes on a later purge.
fn drop_expired(db: &DB, horizon: u64) -> Result<(), AttributionError> {
    let hour_ms = runs::bucket_start(horizon).timestamp_ms();
    if let Some(last_ms) = hour_ms.checked_sub(1) {
        let last = ClickId::new(last_ms, u16::MAX, u64::MAX);
        db.delete_file_in_range_cf(cf(db, CF_CLICKS)?, [0u8; 16], keys::click_run(&last)).map_err(db_err)?;
    }
    if let Some(last_day) = tally_model::time::day_of(horizon).checked_sub(1) {
        db.delete_file_in_range_cf(cf(db, CF_UNIQUE)?, &[0u8; 4][..], &keys::visitors_end(last_day)[..])
            .map_err(db_err)?;
    }
    Ok(())
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

fn stored_format(db: &DB) -> Result<Option<u32>, AttributionError> {
    match db.get_cf(cf(db, CF_META)?, keys::META_FORMAT).map_err(db_err)? {
        Some(v) => {
            let b: [u8; 4] = v.as_slice().try_into().map_err(|_| AttributionError::Corrupt("format value".into()))?;
            Ok(Some(u32::from_be_bytes(b)))
        }
        None => Ok(None),
    }
}

fn has_checkpoint(db: &DB) -> Result<bool, AttributionError> {
    Ok(db.get_pinned_cf(cf(db, CF_META)?, keys::META_CHECKPOINT).map_err(db_err)?.is_some())
}

fn cf<'a>(db: &'a DB, name: &str) -> Result<&'a rocksdb::ColumnFamily, AttributionError> {
    db.cf_handle(name).ok_or_else(|| AttributionError::Store(format!("column family {name} missing")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::runs::BUCKET_MS;
    use proptest::prelude::*;

    fn facts(ts_ms: u64, tag: u32) -> ClickFacts {
        ClickFacts {
            ts_ms,
            offer: "o".into(),
            affiliate: format!("a{tag}"),
            sub1: String::new(),
            human: true,
            first: None,
        }
    }

    #[test]
    fn borrowed_click_facts_encode_as_the_owned_ones() {
        let first =
            FirstClick { click_id: ClickId::new(7, 1, 9), ts_ms: 7, affiliate: "a0".into(), sub1: "s\u{e9}".into() };
        for first in [None, Some(first)] {
            let owned = ClickFacts { sub1: "s1".into(), human: false, first, ..facts(1_234, 5) };
            let borrowed = owned.borrowed();
            assert_eq!(encode(&borrowed), encode(&owned));
            let mut state = State::in_memory();
            let id = ClickId::new(1_234, 1, 1);
            state.put_click(id, &borrowed);
            assert_eq!(state.click(&id).unwrap(), Some(owned));
        }
    }

    fn commit_at(state: &mut State, position: u64) {
        state.checkpoint.position = position;
        state.commit().unwrap();
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
        /// Clicks committed in any order (late ones, repeats with new facts, several hours,
        /// runs that overflow) are each found with their latest facts, before and after a
        /// reopen, and IDs never stored are not.
        #[test]
        fn the_click_index_finds_every_click_whatever_order_they_come_in(
            commits in proptest::collection::vec(
                proptest::collection::vec((0u64..3 * BUCKET_MS, 0u64..4), 0..700), 1..6),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut state = State::open(dir.path(), false).unwrap();
            let mut expected: BTreeMap<ClickId, ClickFacts> = BTreeMap::new();
            let mut tag = 0;
            for (n, clicks) in commits.iter().enumerate() {
                for (ts, r) in clicks {
                    tag += 1;
                    // Few distinct random parts: the same ID comes back with new facts.
                    let id = ClickId::new(*ts, 1, *r);
                    let f = facts(*ts, tag);
                    state.put_click(id, &f.borrowed());
                    expected.insert(id, f);
                }
                commit_at(&mut state, n as u64 + 1);
                for (id, f) in &expected {
                    prop_assert_eq!(state.click(id).unwrap(), Some(f.clone()));
                }
            }
            drop(state);
            let state = State::open(dir.path(), false).unwrap();
            prop_assert_eq!(state.clicks_last, expected.keys().next_back().copied());
            for (id, f) in &expected {
                prop_assert_eq!(state.click(id).unwrap(), Some(f.clone()));
                let absent = ClickId::new(id.timestamp_ms(), 2, id.random());
                prop_assert_eq!(state.click(&absent).unwrap(), None);
            }
        }
    }

    #[test]
    fn expiry_drops_table_files_of_clicks_before_the_horizons_hour_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = State::open(dir.path(), false).unwrap();
        let db = state.db.clone().unwrap();
        let clicks = |from: u64, to: u64| -> Vec<ClickId> {
            (from..to).map(|i| ClickId::new(i * BUCKET_MS / 400, 1, i)).collect()
        };
        let (old, live) = (clicks(0, 800), clicks(800, 1_600));
        let put = |state: &mut State, ids: &[ClickId], position| {
            for (i, id) in ids.iter().enumerate() {
                state.put_click(*id, &facts(id.timestamp_ms(), i as u32).borrowed());
            }
            commit_at(state, position);
        };
        // The first two hours' clicks in a table file of the bottom level, the rest in
        // another file.
        put(&mut state, &old, 1);
        db.flush_cf(cf(&db, CF_CLICKS).unwrap()).unwrap();
        db.compact_range_cf(cf(&db, CF_CLICKS).unwrap(), None::<&[u8]>, None::<&[u8]>);
        put(&mut state, &live, 2);
        db.flush_cf(cf(&db, CF_CLICKS).unwrap()).unwrap();

        // A horizon inside the third hour keeps every file holding a click of that hour.
        state.checkpoint.horizon_ms = 2 * BUCKET_MS + 5;
        commit_at(&mut state, 3);
        assert!(old.iter().all(|id| state.click(id).unwrap().is_none()), "the old file is gone");
        assert!(live.iter().all(|id| state.click(id).unwrap().is_some()));
        assert_eq!(state.click(&live[0]).unwrap().map(|f| f.ts_ms), Some(2 * BUCKET_MS));
    }

    #[test]
    fn stats_rows_summed_from_deltas_equal_the_rows_kept_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = State::open(dir.path(), false).unwrap();
        let mut mem = State::in_memory();
        let usd = tally_model::Currency::from_code("USD").ok();
        for i in 0..300u32 {
            for state in [&mut db, &mut mem] {
                let sub1 = format!("s{}", i % 7);
                let row = state.stats_mut(StatsKeyRef { day: i % 3, offer: "o", affiliate: "a", sub1: &sub1 });
                row.clicks += 1;
                row.payout = row.payout.wrapping_add(i64::from(i));
                row.set_currency_if_none(usd);
            }
            if i % 40 == 0 {
                commit_at(&mut db, u64::from(i) + 1);
            }
        }
        commit_at(&mut db, 1_000);
        let rows = |s: &State, from, to| s.stats(from, to).collect::<Result<Vec<_>, _>>().unwrap();
        assert_eq!(rows(&db, 0, 2), rows(&mem, 0, 2));
        assert_eq!(rows(&db, 0, 2).len(), 21);
        assert_eq!(rows(&db, 1, 1), rows(&mem, 1, 1));
        assert!(rows(&db, 1, 1).iter().all(|(k, c)| k.day == 1 && c.currency == usd));
        assert!(rows(&db, 5, 9).is_empty());
        // A secondary reader sees the same merged rows.
        let reader = State::open_reader(dir.path()).unwrap();
        assert_eq!(rows(&reader, 0, 2), rows(&mem, 0, 2));
    }

    #[test]
    fn a_state_in_another_layout_is_rebuilt_by_the_worker_and_refused_by_readers() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = State::open(dir.path(), false).unwrap();
        let id = ClickId::new(1_000, 1, 1);
        state.put_click(id, &facts(1_000, 1).borrowed());
        commit_at(&mut state, 7);
        // What a layout-1 state looks like: a checkpoint and no format key.
        let db = state.db.clone().unwrap();
        db.delete_cf(cf(&db, CF_META).unwrap(), keys::META_FORMAT).unwrap();
        drop(db);
        drop(state);

        match State::open_reader(dir.path()) {
            Err(AttributionError::Format { found: 1, .. }) => {}
            other => panic!("expected a layout error, got {other:?}"),
        }
        let err = State::open_reader(dir.path()).unwrap_err().to_string();
        assert!(err.contains("layout 1") && err.contains("rebuild"), "{err}");

        let state = State::open(dir.path(), false).unwrap();
        assert_eq!(state.checkpoint().position, 0, "rebuilt from the start of the log");
        assert_eq!(state.click(&id).unwrap(), None);
        drop(state);
        assert_eq!(State::open(dir.path(), false).unwrap().checkpoint().position, 0);
        assert!(State::open_reader(dir.path()).is_ok());
    }
}
