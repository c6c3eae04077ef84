//! The attribution state: click index, dedup keys, ledger, counters, holds, stats and the
//! worker's checkpoint, in one RocksDB of its own (`{data_dir}/attribution`).
//!
//! Writes made while applying events go to an in-memory overlay; reads look there first. A
//! commit turns the overlay and the checkpoint into one `WriteBatch`, so outputs and position
//! are durable together or not at all: a worker killed between commits restarts from the
//! last checkpoint, re-applies the same events to the same state and produces the same
//! bytes. Without a database ([`State::in_memory`]) the overlay is the whole state; tests
//! and the benchmark's reference runs use that.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB};
use serde::{Deserialize, Serialize};
use tally_model::{ClickId, Program};
use xxhash_rust::xxh3::Xxh3DefaultBuilder;

/// Hash maps on the hot path hash with xxh3: keys are ours (IDs, stats keys), so SipHash's
/// flood resistance buys nothing and costs a third of a lookup.
type FastMap<K, V> = HashMap<K, V, Xxh3DefaultBuilder>;

/// hashbrown's map for the stats rows: its raw entry API looks a row up by a borrowed key
/// ([`StatsKeyRef`]) and inserts the owned one only when the row is new.
type StatsMap = hashbrown::HashMap<StatsKey, (Counters, bool), Xxh3DefaultBuilder>;

use crate::ledger::{Counters, Entry, EntryId, StatsKey, StatsKeyRef};
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

const META_CHECKPOINT: &[u8] = b"checkpoint";
const META_PROGRAM: &[u8] = b"program";

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
}

impl DayClicks {
    fn get(&self, id: &ClickId) -> Option<&[u8]> {
        let &(at, len) = self.index.get(id)?;
        self.arena.get(at as usize..(at as usize).checked_add(len as usize)?)
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
    program_dirty: bool,
    /// Every pending hold, by due time: small (conversions within their hold period).
    pub(crate) holds: BTreeSet<(u64, EntryId)>,
    /// Unique-visitor keys of the days loaded, complete for each day present.
    unique_days: BTreeMap<u32, HashSet<u128, Xxh3DefaultBuilder>>,
    /// Stats rows of recent days, kept across commits (each click updates one, and reading
    /// it back from RocksDB after every commit was a quarter of attribution time). The flag
    /// marks rows changed since the last commit. Without a database this is the storage.
    stats: StatsMap,
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
    if name == CF_CLICKS {
        // Point lookups of keys that are often absent: bloom filters save the disk reads.
        let mut t = rocksdb::BlockBasedOptions::default();
        t.set_bloom_filter(10.0, false);
        o.set_block_based_table_factory(&t);
    }
    o
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
            program_dirty: false,
            holds: BTreeSet::new(),
            unique_days: BTreeMap::new(),
            stats: StatsMap::default(),
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
        let db = DB::open_cf_descriptors(&opts, dir, cf_descriptors())
            .map_err(|e| AttributionError::Open { dir: dir.to_path_buf(), reason: e.to_string() })?;
        let mut state = State::with_db(Some(Arc::new(db)), sync, None);
        state.load()?;
        Ok(state)
    }

    /// Opens the state in `dir` read-only, safe while a worker runs (a RocksDB secondary).
    pub fn open_reader(dir: &Path) -> Result<State, AttributionError> {
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

    fn load(&mut self) -> Result<(), AttributionError> {
        let Some(db) = self.db.clone() else { return Ok(()) };
        let meta = cf(&db, CF_META)?;
        if let Some(v) = db.get_cf(meta, META_CHECKPOINT).map_err(db_err)? {
            self.checkpoint = decode("checkpoint", &v)?;
        }
        if let Some(v) = db.get_cf(meta, META_PROGRAM).map_err(db_err)? {
            let source = String::from_utf8(v).map_err(|_| AttributionError::Corrupt("program is not UTF-8".into()))?;
            let program = Program::from_toml(&source)
                .map_err(|e| AttributionError::Corrupt(format!("stored program no longer parses: {e}")))?;
            self.program = Some(Arc::new(program));
        }
        for item in db.iterator_cf(cf(&db, CF_HOLDS)?, IteratorMode::Start) {
            let (k, _) = item.map_err(db_err)?;
            let at = k.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes);
            match (at, k.get(8..).and_then(EntryId::from_key)) {
                (Some(at), Some(id)) => {
                    self.holds.insert((at, id));
                }
                _ => return Err(AttributionError::Corrupt("bad hold key".into())),
            }
        }
        self.purged_to_ms = self.checkpoint.horizon_ms;
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
        self.program = Some(program);
        self.program_dirty = true;
    }

    // ---- reads and writes used by the engine ------------------------------------------------

    pub(crate) fn click(&self, id: &ClickId) -> Result<Option<ClickFacts>, AttributionError> {
        let day = crate::ledger::day_of(id.timestamp_ms());
        if let Some(c) = self.overlay.clicks.get(&day).and_then(|d| d.get(id)) {
            return Ok(Some(decode("click", c)?));
        }
        let Some(db) = &self.db else { return Ok(None) };
        match db.get_pinned_cf(cf(db, CF_CLICKS)?, id.as_bytes()).map_err(db_err)? {
            Some(v) => Ok(Some(decode("click", &v)?)),
            None => Ok(None),
        }
    }

    pub(crate) fn put_click(&mut self, id: ClickId, facts: &ClickFacts) {
        let day = self.overlay.clicks.entry(crate::ledger::day_of(id.timestamp_ms())).or_default();
        let at = day.arena.len();
        // Serialising our own struct into a Vec cannot fail; a day's arena stays far below
        // 4 GiB (that would be some 100 million clicks in one day).
        if postcard::to_io(facts, &mut day.arena).is_ok() {
            if let (Ok(at32), Ok(len)) = (u32::try_from(at), u32::try_from(day.arena.len() - at)) {
                day.index.insert(id, (at32, len));
            }
        }
    }

    pub(crate) fn dedup(&self, key: &[u8]) -> Result<Option<EntryId>, AttributionError> {
        if let Some(id) = self.overlay.dedup.get(key) {
            return Ok(Some(*id));
        }
        let Some(db) = &self.db else { return Ok(None) };
        match db.get_pinned_cf(cf(db, CF_DEDUP)?, key).map_err(db_err)? {
            Some(v) => EntryId::from_key(&v).map(Some).ok_or_else(|| AttributionError::Corrupt("dedup value".into())),
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
        match db.get_pinned_cf(cf(db, CF_LEDGER)?, id.key()).map_err(db_err)? {
            Some(v) => Ok(Some(decode("ledger entry", &v)?)),
            None => Ok(None),
        }
    }

    pub(crate) fn put_entry(&mut self, entry: Entry) {
        self.overlay.entries.insert(entry.id, entry);
    }

    pub(crate) fn counter(&mut self, key: &[u8]) -> Result<i64, AttributionError> {
        if let Some(v) = self.overlay.counters.get(key) {
            return Ok(*v);
        }
        let v = match &self.db {
            Some(db) => match db.get_pinned_cf(cf(db, CF_COUNTERS)?, key).map_err(db_err)? {
                Some(v) => i64::from_be_bytes(
                    v.as_ref().try_into().map_err(|_| AttributionError::Corrupt("counter value".into()))?,
                ),
                None => 0,
            },
            None => 0,
        };
        self.overlay.counters.insert(key.to_vec(), v);
        Ok(v)
    }

    pub(crate) fn add_counter(&mut self, key: &[u8], delta: i64) -> Result<i64, AttributionError> {
        let v = self.counter(key)?.saturating_add(delta);
        self.overlay.counters.insert(key.to_vec(), v);
        Ok(v)
    }

    /// The stats row for `key`, for update in place.
    pub(crate) fn stats_mut(&mut self, key: StatsKeyRef<'_>) -> Result<&mut Counters, AttributionError> {
        use hashbrown::hash_map::RawEntryMut;
        let row = match self.stats.raw_entry_mut().from_key(&key) {
            RawEntryMut::Occupied(o) => o.into_mut(),
            RawEntryMut::Vacant(v) => {
                let owned = key.to_owned_key();
                let row = match &self.db {
                    Some(db) => match db.get_pinned_cf(cf(db, CF_STATS)?, owned.encode()).map_err(db_err)? {
                        Some(bytes) => decode("stats row", &bytes)?,
                        None => Counters::default(),
                    },
                    None => Counters::default(),
                };
                v.insert(owned, (row, false)).1
            }
        };
        row.1 = true;
        Ok(&mut row.0)
    }

    /// Records a visitor key for `day`; true if it was new.
    pub(crate) fn first_visit(&mut self, day: u32, key: u128) -> Result<bool, AttributionError> {
        if !self.unique_days.contains_key(&day) {
            let mut set = HashSet::with_hasher(Xxh3DefaultBuilder::new());
            if let Some(db) = &self.db {
                let cf = cf(db, CF_UNIQUE)?;
                let prefix = day.to_be_bytes();
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
        let o = std::mem::take(&mut self.overlay);
        let mut batch = WriteBatch::default();
        let clicks = cf(&db, CF_CLICKS)?;
        for day in o.clicks.values() {
            for id in day.index.keys() {
                if let Some(facts) = day.get(id) {
                    batch.put_cf(clicks, id.as_bytes(), facts);
                }
            }
        }
        let dedup = cf(&db, CF_DEDUP)?;
        for (k, id) in &o.dedup {
            batch.put_cf(dedup, k, id.key());
        }
        let ledger = cf(&db, CF_LEDGER)?;
        for (id, e) in &o.entries {
            batch.put_cf(ledger, id.key(), encode(e));
        }
        let counters = cf(&db, CF_COUNTERS)?;
        for (k, v) in &o.counters {
            batch.put_cf(counters, k, v.to_be_bytes());
        }
        let stats = cf(&db, CF_STATS)?;
        for (k, (v, dirty)) in &self.stats {
            if *dirty {
                batch.put_cf(stats, k.encode(), encode(v));
            }
        }
        // New visitors go in one value per day per commit (key: day, then the position),
        // not one key each: a key per click was a third of all memtable inserts.
        let unique = cf(&db, CF_UNIQUE)?;
        let mut by_day: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
        for (day, h) in &o.unique {
            by_day.entry(*day).or_default().extend_from_slice(&h.to_be_bytes());
        }
        for (day, hashes) in by_day {
            let mut k = [0u8; 12];
            k[..4].copy_from_slice(&day.to_be_bytes());
            k[4..].copy_from_slice(&self.checkpoint.position.to_be_bytes());
            batch.put_cf(unique, k, hashes);
        }
        let holds = cf(&db, CF_HOLDS)?;
        for ((at, id), present) in &o.holds {
            let mut k = at.to_be_bytes().to_vec();
            k.extend_from_slice(&id.key());
            if *present {
                batch.put_cf(holds, k, []);
            } else {
                batch.delete_cf(holds, k);
            }
        }
        // Expired clicks: keys begin with the click time (big-endian ms), so one range delete
        // drops every click older than the horizon. Lookups already treat them as expired, so
        // when this runs does not change any result.
        let horizon = self.checkpoint.horizon_ms;
        if horizon >= self.purged_to_ms + 3_600_000 {
            let end = ClickId::new(horizon, 0, 0);
            batch.delete_range_cf(clicks, [0u8; 16], *end.as_bytes());
            let old_day = crate::ledger::day_of(horizon);
            batch.delete_range_cf(unique, [0u8; 4], old_day.to_be_bytes());
        }
        let meta = cf(&db, CF_META)?;
        batch.put_cf(meta, META_CHECKPOINT, encode(&self.checkpoint));
        if self.program_dirty {
            if let Some(p) = &self.program {
                batch.put_cf(meta, META_PROGRAM, p.source.as_bytes());
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
        db.write_opt(batch, &wo).map_err(db_err)?;
        #[cfg(feature = "test-util")]
        crate::testing::crash_point("commit_after_write");
        if horizon >= self.purged_to_ms + 3_600_000 {
            self.purged_to_ms = horizon;
        }
        self.program_dirty = false;
        // Keep the visitor sets and stats rows of the last days only; older ones reload on
        // demand (late events are rare).
        let today = crate::ledger::day_of(self.checkpoint.watermark_ms);
        self.unique_days.retain(|d, _| *d + 1 >= today);
        self.stats.retain(|k, row| {
            row.1 = false;
            k.day + 2 >= today
        });
        Ok(())
    }

    /// Without a database the overlay is the storage: drop clicks past the expiry horizon
    /// (lookups already ignore them) once the horizon has moved a day, so a replay's memory
    /// follows the clicks inside the longest window, not the whole log.
    fn purge_in_memory(&mut self) {
        let horizon = self.checkpoint.horizon_ms;
        if horizon < self.purged_to_ms + crate::ledger::DAY_MS {
            return;
        }
        let old_day = crate::ledger::day_of(horizon);
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
            for item in db.iterator_cf(cf, IteratorMode::From(&lo.key(), Direction::Forward)) {
                let (k, v) = item.map_err(db_err)?;
                let id = EntryId::from_key(&k).ok_or_else(|| AttributionError::Corrupt("ledger key".into()))?;
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
                    .map(|(k, (v, _))| (k.clone(), v.clone()))
                    .collect();
                rows.sort_by_cached_key(|r| r.0.encode());
                Box::new(rows.into_iter().map(Ok))
            }
            Some(db) => match cf(db, CF_STATS) {
                Err(e) => Box::new(std::iter::once(Err(e))),
                Ok(cf) => {
                    let start = from.to_be_bytes();
                    Box::new(
                        db.iterator_cf(cf, IteratorMode::From(&start, Direction::Forward))
                            .map(|item| {
                                let (k, v) = item.map_err(db_err)?;
                                let key = StatsKey::decode(&k)
                                    .ok_or_else(|| AttributionError::Corrupt("stats key".into()))?;
                                Ok((key, decode("stats row", &v)?))
                            })
                            .take_while(move |r| r.as_ref().map_or(true, |(k, _)| k.day <= to)),
                    )
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
            h.update(&e.id.key());
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
            Some(e) => db.put_cf(cf, id.key(), encode(e)),
            None => db.delete_cf(cf, id.key()),
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

fn cf<'a>(db: &'a DB, name: &str) -> Result<&'a rocksdb::ColumnFamily, AttributionError> {
    db.cf_handle(name).ok_or_else(|| AttributionError::Store(format!("column family {name} missing")))
}
