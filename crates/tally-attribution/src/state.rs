//! The attribution state the engine reads and writes: the write set ([`WriteSet`]) in front
//! of the store ([`Store`], the state's RocksDB), the caches that spare the store reads, and
//! the worker's checkpoint.
//!
//! Writes made while applying events go to the write set; reads look there first. A commit
//! writes the write set and the checkpoint as one `WriteBatch`, so outputs and position are
//! durable together or not at all: a worker killed between commits restarts from the last
//! checkpoint, re-applies the same events to the same state and produces the same bytes.
//! Without a store ([`State::in_memory`]) the write set is the whole state; tests and the
//! benchmark's reference runs use that. What a state may do follows from how its store was
//! opened ([`Access`]): only the worker's commits.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use tally_model::{ClickId, Managed, Program};

use crate::clicks::{self, ClickFacts, ClickFactsRef, FastMap};
use crate::keys;
use crate::ledger::{Entry, EntryId, StatsKey, StatsKeyRef};
use crate::stats::{Counters, RowDelta};
use crate::store::{self, Access, Commit, Store};
use crate::write_set::WriteSet;
use crate::AttributionError;

pub use crate::store::{Checkpoint, FORMAT};

/// Most counters [`State`] keeps in memory: a few MiB (counters are per offer, goal and
/// affiliate by day or month, so this is many days of a large program).
const COUNTER_CACHE_MAX: usize = 100_000;

/// The state the engine reads and writes; see the module docs.
pub struct State {
    /// `None`: everything stays in the write set.
    store: Option<Store>,
    writes: WriteSet,
    pub(crate) checkpoint: Checkpoint,
    pub(crate) program: Option<Arc<Program>>,
    /// The program's managed entities: the fold of every program edit applied, composed on
    /// each new base (`tally_model::managed`).
    pub(crate) managed: Arc<Managed>,
    /// What program edits put since the last commit, as the store keeps it.
    managed_pending: Vec<(u8, String, String)>,
    /// How far behind the watermark clicks stay live under `program`: its longest window
    /// and a day. Kept here because every event needs it.
    pub(crate) reach_ms: Option<u64>,
    program_dirty: bool,
    /// Every pending hold, by due time: small (conversions within their hold period).
    pub(crate) holds: BTreeSet<(u64, EntryId)>,
    /// Unique-visitor keys of the days loaded, complete for each day present.
    unique_days: BTreeMap<u32, hashbrown::HashSet<u128>>,
    /// The greatest click ID stored (an upper bound once expiry deleted runs): new clicks
    /// above it become new runs, the others are inserted into stored ones.
    clicks_last: Option<ClickId>,
    /// The last commit's batch size, to allocate the next one at once.
    batch_bytes: usize,
    /// Committed counter values read or written, so a conversion's caps, tiers and
    /// milestones are not read back from RocksDB at every commit (a read each was a fifth
    /// of a conversion's time). Only this state writes counters, so the cache never goes
    /// stale; it holds nothing uncommitted, and is emptied when it grows past
    /// [`COUNTER_CACHE_MAX`].
    counter_cache: FastMap<Vec<u8>, i64>,
    /// Horizon up to which expired clicks were physically deleted.
    purged_to_ms: u64,
    /// Counts stats (rows and unique visitors) by the days of this calendar instead of the
    /// program's: for a report in another time zone. Caps, tiers and the ledger still follow
    /// the program's calendar.
    pub(crate) stats_calendar: Option<tally_model::time::Calendar>,
    /// Counts no stats (rows, unique visitors): see [`State::ledger_only`].
    ledger_only: bool,
    /// What a stats update writes to when stats are not counted.
    scratch_row: RowDelta,
    /// Whether the program in force (by digest) has receivers, worked out once per program.
    notifies: Option<(String, bool)>,
    /// The event whose notifications are being numbered, and how many it has made.
    outbox_at: (u64, u32),
}

/// A day's grace past the longest window, so a click just outside its window is reported
/// as that rather than as expired.
fn reach_ms(program: &Program) -> u64 {
    (u64::from(program.max_window_days()) + 1) * tally_model::time::DAY_MS
}

impl State {
    /// A state with no database: everything stays in memory.
    pub fn in_memory() -> State {
        State::with_store(None)
    }

    fn with_store(store: Option<Store>) -> State {
        let commits = store.as_ref().is_some_and(|s| matches!(s.access(), Access::Primary { .. }));
        State {
            store,
            writes: WriteSet::new(commits),
            checkpoint: Checkpoint::default(),
            program: None,
            managed: Arc::new(Managed::default()),
            managed_pending: Vec::new(),
            reach_ms: None,
            program_dirty: false,
            holds: BTreeSet::new(),
            unique_days: BTreeMap::new(),
            clicks_last: None,
            batch_bytes: 0,
            counter_cache: FastMap::default(),
            purged_to_ms: 0,
            stats_calendar: None,
            ledger_only: false,
            scratch_row: RowDelta::default(),
            notifies: None,
            outbox_at: (0, 0),
        }
    }

    /// Keeps the ledger only from now on: no stats rows, no unique visitors. Nothing in the
    /// ledger depends on them, and a replay, which compares ledgers, kept them all in memory:
    /// with 100,000 affiliates, 3 GiB of a 4.9 GiB peak, and a fifth of its time.
    pub fn ledger_only(&mut self) {
        self.ledger_only = true;
        self.writes.stats.clear();
        self.unique_days.clear();
    }

    /// Counts stats by the days of `calendar` from now on (see `stats_calendar`): the
    /// ledger is unaffected, only which day a stats row is.
    pub fn count_stats_in(&mut self, calendar: tally_model::time::Calendar) {
        self.stats_calendar = Some(calendar);
    }

    /// Opens (creating if needed) the state in `dir` for a worker. Only one process may.
    pub fn open(dir: &Path, sync: bool) -> Result<State, AttributionError> {
        State::loaded(Store::open_primary(dir, sync)?)
    }

    /// Opens the state in `dir` read-only, safe while a worker runs (a RocksDB secondary).
    /// Outside this crate, through [`crate::LedgerReader`], which cannot change it.
    pub(crate) fn open_reader(dir: &Path) -> Result<State, AttributionError> {
        State::loaded(Store::open_secondary(dir)?)
    }

    /// Opens a snapshot written by [`State::snapshot_to`] as the starting point of a
    /// replay: the snapshot is only read; everything applied stays in memory (the write
    /// set) and [`State::commit`] is refused.
    pub fn open_snapshot(dir: &Path) -> Result<State, AttributionError> {
        State::loaded(Store::open_snapshot(dir)?)
    }

    fn loaded(store: Store) -> Result<State, AttributionError> {
        let mut state = State::with_store(Some(store));
        state.load()?;
        Ok(state)
    }

    /// Writes a consistent copy of the committed state to `dir` (which must not exist): a
    /// RocksDB checkpoint, hard-linking the table files, so it costs little disk and time.
    pub fn snapshot_to(&self, dir: &Path) -> Result<(), AttributionError> {
        match &self.store {
            Some(store) => store.snapshot_to(dir),
            None => Err(AttributionError::Store("an in-memory state has nothing to snapshot".into())),
        }
    }

    /// Forgets everything applied since the last commit and reads the committed state back,
    /// as a restart would: after a failed commit (a full disk, say) the in-memory state is
    /// ahead of the database, and the worker re-applies from the checkpoint instead.
    pub fn reload(&mut self) -> Result<(), AttributionError> {
        match self.store.take() {
            Some(store) if matches!(store.access(), Access::Primary { .. }) => {
                *self = State::with_store(Some(store));
                self.load()
            }
            store => {
                self.store = store;
                Err(AttributionError::Store("only a worker's state can be reloaded".into()))
            }
        }
    }

    fn load(&mut self) -> Result<(), AttributionError> {
        let Some(store) = &self.store else { return Ok(()) };
        let loaded = store.load()?;
        if let Some(checkpoint) = loaded.checkpoint {
            self.checkpoint = checkpoint;
        }
        self.managed = Arc::new(loaded.managed);
        if let Some(source) = loaded.program {
            let program = Program::compose(&source, self.managed.clone())
                .map_err(|e| AttributionError::Corrupt(format!("stored program no longer parses: {e}")))?;
            self.reach_ms = Some(reach_ms(&program));
            self.program = Some(Arc::new(program));
        }
        self.holds = loaded.holds;
        self.clicks_last = loaded.clicks_last;
        self.purged_to_ms = self.checkpoint.horizon_ms;
        Ok(())
    }

    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    pub fn program(&self) -> Option<&Arc<Program>> {
        self.program.as_ref()
    }

    /// Puts `edit`'s entities on the managed ones (the next commit stores them).
    pub(crate) fn apply_edit(&mut self, edit: &tally_model::Edit) {
        Arc::make_mut(&mut self.managed).apply(edit);
        if self.store.is_some() {
            self.managed_pending.extend(edit.keyed());
        }
    }

    pub(crate) fn set_program(&mut self, program: Arc<Program>) {
        self.checkpoint.program = program.digest.clone();
        self.reach_ms = Some(reach_ms(&program));
        self.program = Some(program);
        self.program_dirty = true;
    }

    /// Whether this state commits (the worker's): only it keeps new visitors and click
    /// order apart for the next commit.
    fn commits(&self) -> bool {
        self.store.as_ref().is_some_and(|s| matches!(s.access(), Access::Primary { .. }))
    }

    // ---- reads and writes used by the engine ------------------------------------------------

    pub(crate) fn click(&self, id: &ClickId) -> Result<Option<ClickFacts>, AttributionError> {
        if let Some(c) = self.writes.click(id) {
            return Ok(Some(clicks::decode_facts(c)?));
        }
        match &self.store {
            Some(store) => store.click(id),
            None => Ok(None),
        }
    }

    pub(crate) fn put_click(&mut self, id: ClickId, facts: &ClickFactsRef<'_>) {
        self.writes.put_click(id, facts);
    }

    pub(crate) fn dedup(&self, key: &[u8]) -> Result<Option<EntryId>, AttributionError> {
        if let Some(id) = self.writes.dedup.get(key) {
            return Ok(Some(*id));
        }
        match &self.store {
            Some(store) => store.dedup(key),
            None => Ok(None),
        }
    }

    pub(crate) fn put_dedup(&mut self, key: Vec<u8>, id: EntryId) {
        self.writes.dedup.insert(key, id);
    }

    pub fn entry(&self, id: EntryId) -> Result<Option<Entry>, AttributionError> {
        if let Some(e) = self.writes.entries.get(&id) {
            return Ok(Some(e.clone()));
        }
        match &self.store {
            Some(store) => store.entry(id),
            None => Ok(None),
        }
    }

    /// Puts an entry, created or changed by the event being applied, and the notifications
    /// its change makes ([`crate::notify`]) into the same commit.
    pub(crate) fn put_entry(&mut self, entry: Entry) {
        if self.notifying() {
            if let Some(program) = self.program.clone() {
                let seq = self.checkpoint.position + 1;
                // A read that fails tells of a change all the same.
                let old = self.entry(entry.id).unwrap_or(None);
                let ts = self.checkpoint.watermark_ms.max(entry.ts_ms);
                for mut n in crate::notify::notifications(&program, ts, old.as_ref(), &entry) {
                    // Numbered within the event, in the order changes happen: the same log
                    // numbers them the same, however events are grouped into commits.
                    if self.outbox_at.0 != seq {
                        self.outbox_at = (seq, 0);
                    }
                    let number = self.outbox_at.1;
                    self.outbox_at.1 += 1;
                    n.key = format!("tally-{seq}-{number}");
                    self.writes.outbox.push((keys::outbox(seq, number), n.to_json()));
                }
            }
        }
        self.writes.entries.insert(entry.id, entry);
    }

    fn notifying(&mut self) -> bool {
        if self.ledger_only {
            return false;
        }
        let Some(program) = &self.program else { return false };
        match &self.notifies {
            Some((digest, yes)) if *digest == program.digest => *yes,
            _ => {
                let yes = program.notifies();
                self.notifies = Some((program.digest.clone(), yes));
                yes
            }
        }
    }

    /// Up to `limit` outbox items after the outbox key `after` (`None`: from the first), in
    /// order: what is committed, then (for a state without a store) what is applied.
    pub fn outbox_after(
        &self,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, tally_model::delivery::Notification)>, AttributionError> {
        let raw = match &self.store {
            Some(store) => store.outbox_after(after, limit)?,
            None => {
                let mut all: Vec<(Vec<u8>, String)> = self
                    .writes
                    .outbox
                    .iter()
                    .filter(|(k, _)| after.is_none_or(|a| k.as_slice() > a))
                    .cloned()
                    .collect();
                all.sort_by(|a, b| a.0.cmp(&b.0));
                all.truncate(limit);
                all
            }
        };
        raw.into_iter()
            .map(|(k, json)| {
                let n = tally_model::delivery::Notification::from_json(&json)
                    .map_err(|e| AttributionError::Corrupt(format!("outbox item: {e}")))?;
                Ok((k, n))
            })
            .collect()
    }

    pub(crate) fn counter(&mut self, key: &[u8]) -> Result<i64, AttributionError> {
        if let Some(v) = self.writes.counters.get(key).or_else(|| self.counter_cache.get(key)) {
            return Ok(*v);
        }
        let Some(store) = &self.store else { return Ok(0) };
        let v = store.counter(key)?;
        self.counter_cache.insert(key.to_vec(), v);
        Ok(v)
    }

    pub(crate) fn add_counter(&mut self, key: &[u8], delta: i64) -> Result<i64, AttributionError> {
        let v = self.counter(key)?.saturating_add(delta);
        self.writes.counters.insert(key.to_vec(), v);
        Ok(v)
    }

    /// The changes to the stats row `key` since the last commit, to add to.
    pub(crate) fn stats_mut(&mut self, key: StatsKeyRef<'_>) -> &mut RowDelta {
        if self.ledger_only {
            self.scratch_row = RowDelta::default();
            return &mut self.scratch_row;
        }
        self.writes.stats_mut(key)
    }

    /// Records a visitor key for `day`; true if it was new.
    pub(crate) fn first_visit(&mut self, day: u32, key: u128) -> Result<bool, AttributionError> {
        if self.ledger_only {
            return Ok(false);
        }
        let commits = self.commits();
        let set = match self.unique_days.entry(day) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                let mut set = hashbrown::HashSet::new();
                if let Some(store) = &self.store {
                    store.visitors(day, &mut set)?;
                }
                set.extend(self.writes.unique.iter().filter(|(d, _)| *d == day).map(|(_, h)| *h));
                e.insert(set)
            }
        };
        let new = set.insert(key);
        // Only a state that commits needs the new keys apart: without a database (or
        // read-only) the day's set in memory is all there is, and it is never trimmed.
        if new && commits {
            self.writes.unique.push((day, key));
        }
        Ok(new)
    }

    pub(crate) fn add_hold(&mut self, at: u64, id: EntryId) {
        self.holds.insert((at, id));
        self.writes.holds.insert((at, id), true);
    }

    pub(crate) fn remove_hold(&mut self, at: u64, id: EntryId) {
        self.holds.remove(&(at, id));
        self.writes.holds.insert((at, id), false);
    }

    // ---- commit -------------------------------------------------------------------------------

    /// Makes everything applied so far durable, with the checkpoint, in one write. For an
    /// in-memory state (the write set is its storage) it only drops expired days.
    pub fn commit(&mut self) -> Result<(), AttributionError> {
        let Some(store) = &mut self.store else {
            self.purge_in_memory();
            return Ok(());
        };
        let program = self.program.as_ref().filter(|_| self.program_dirty).map(|p| p.source.as_str());
        let commit = Commit {
            checkpoint: &self.checkpoint,
            program,
            managed: &self.managed_pending,
            clicks_last: self.clicks_last,
            batch_hint: self.batch_bytes,
        };
        let written = store.write(&self.writes, commit)?;
        self.batch_bytes = written.batch_bytes;
        let horizon = self.checkpoint.horizon_ms;
        if horizon >= self.purged_to_ms + 3_600_000 {
            self.purged_to_ms = horizon;
            store.drop_expired(horizon)?;
        }
        if written.clicks_last.is_some() {
            self.clicks_last = written.clicks_last;
        }
        if self.counter_cache.len() + self.writes.counters.len() > COUNTER_CACHE_MAX {
            self.counter_cache.clear();
        }
        self.writes.committed(&mut self.counter_cache);
        self.program_dirty = false;
        self.managed_pending.clear();
        // Keep the visitor sets of the last days only; older ones reload on demand (late
        // events are rare).
        let today = tally_model::time::day_of(self.checkpoint.watermark_ms);
        self.unique_days.retain(|d, _| *d + 1 >= today);
        Ok(())
    }

    /// Without a database the write set is the storage: drop clicks past the expiry horizon
    /// (lookups already ignore them) once the horizon has moved a day, so a replay's memory
    /// follows the clicks inside the longest window, not the whole log.
    fn purge_in_memory(&mut self) {
        let horizon = self.checkpoint.horizon_ms;
        if horizon < self.purged_to_ms + tally_model::time::DAY_MS {
            return;
        }
        let old_day = tally_model::time::day_of(horizon);
        // Whole days before the horizon's; lookups ignore the rest of the expired clicks.
        // Visitor sets are by the program's local day, up to a day behind the UTC one: one
        // more day of them stays, so a live local day's set is never dropped.
        self.writes.drop_days_before(old_day);
        let visitors_from = old_day.saturating_sub(1);
        self.unique_days.retain(|d, _| *d >= visitors_from);
        self.purged_to_ms = horizon;
    }

    /// Pulls in what the worker has committed since (secondary instances only).
    pub fn refresh(&mut self) -> Result<(), AttributionError> {
        if let Some(store) = &self.store {
            if matches!(store.access(), Access::Secondary) {
                store.catch_up()?;
                self.holds.clear();
                self.counter_cache.clear();
                self.load()?;
            }
        }
        Ok(())
    }

    /// [`State::refresh`] for a reader of the ledger only: pulls in what the worker has
    /// committed and the checkpoint, and leaves the program and the holds as they were
    /// loaded (composing a program of 100,000 affiliates again costs a second).
    pub(crate) fn refresh_ledger(&mut self) -> Result<(), AttributionError> {
        if let Some(store) = &self.store {
            if matches!(store.access(), Access::Secondary) {
                store.catch_up()?;
                if let Some(checkpoint) = store.checkpoint()? {
                    self.checkpoint = checkpoint;
                }
            }
        }
        Ok(())
    }

    // ---- reading the results ------------------------------------------------------------------

    /// Every ledger entry in id order. For a database-backed state this reads what is
    /// committed; commit first.
    pub fn entries(&self) -> Box<dyn Iterator<Item = Result<Entry, AttributionError>> + '_> {
        match &self.store {
            None => Box::new(self.writes.entries.values().cloned().map(Ok)),
            Some(store) => store.entries(),
        }
    }

    /// Calls `f` with every ledger entry, committed or not (what is applied wins over what
    /// is stored), in no promised order: for the rare decisions that read the whole ledger
    /// (payout runs and their voids).
    pub(crate) fn for_each_entry(&self, mut f: impl FnMut(&Entry)) -> Result<(), AttributionError> {
        if let Some(store) = &self.store {
            for e in store.entries() {
                let e = e?;
                if !self.writes.entries.contains_key(&e.id) {
                    f(&e);
                }
            }
        }
        self.writes.entries.values().for_each(f);
        Ok(())
    }

    /// Ledger entries created by events `from..=to`, in id order, including what is applied
    /// but not committed (a replay never commits).
    pub fn entries_range(&self, from: u64, to: u64) -> Result<Vec<Entry>, AttributionError> {
        let lo = EntryId::of_event(from);
        let mut out: BTreeMap<EntryId, Entry> = BTreeMap::new();
        if let Some(store) = &self.store {
            store.entries_range(lo, to, &mut out)?;
        }
        for (id, e) in self.writes.entries.range(lo..) {
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
        match &self.store {
            None => {
                let mut rows: Vec<(StatsKey, Counters)> = self
                    .writes
                    .stats
                    .iter()
                    .filter(|(k, _)| k.day >= from && k.day <= to)
                    .map(|(k, d)| (k.to_owned_key(), d.counters()))
                    .collect();
                rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                Box::new(rows.into_iter().map(Ok))
            }
            Some(store) => store.stats(from, to),
        }
    }

    /// BLAKE3 over every ledger entry's id and stored bytes, in order: two ledgers are the
    /// same if and only if (barring a hash collision) their digests are.
    pub fn ledger_digest(&self) -> Result<String, AttributionError> {
        let mut h = blake3::Hasher::new();
        for e in self.entries() {
            let e = e?;
            let bytes = store::encode(&e);
            h.update(&keys::entry(e.id));
            h.update(&(bytes.len() as u64).to_be_bytes());
            h.update(&bytes);
        }
        Ok(h.finalize().to_hex().to_string())
    }

    #[cfg(feature = "test-util")]
    pub(crate) fn overwrite_entry_raw(&self, id: EntryId, entry: Option<&Entry>) -> Result<(), AttributionError> {
        match &self.store {
            Some(store) => store.overwrite_entry_raw(id, entry),
            None => Err(AttributionError::Store("in-memory state".into())),
        }
    }

    #[cfg(feature = "test-util")]
    pub(crate) fn fail_next_commits(&mut self, n: u32) {
        if let Some(store) = &mut self.store {
            store.fail_commits = n;
        }
    }

    /// Number of pending holds (for metrics and tests).
    pub fn pending_holds(&self) -> usize {
        self.holds.len()
    }
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("store", &self.store)
            .field("checkpoint", &self.checkpoint)
            .field("pending_holds", &self.holds.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::clicks::FirstClick;
    use crate::runs::BUCKET_MS;
    use crate::store::encode;
    use proptest::prelude::*;

    fn facts(ts_ms: u64, tag: u32) -> ClickFacts {
        ClickFacts {
            ts_ms,
            offer: "o".into(),
            affiliate: format!("a{tag}"),
            sub1: String::new(),
            human: true,
            first: None,
            link: format!("l{tag}"),
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
        state.store.as_ref().unwrap().flush_and_compact_clicks(true);
        put(&mut state, &live, 2);
        state.store.as_ref().unwrap().flush_and_compact_clicks(false);

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
            // Parts holding zero bytes, which order differently joined than apart (the
            // commit's fast sort), among ordinary ones.
            let (affiliate, sub1) =
                [("a", "b\0c"), ("a\0b", "c"), ("a", "s1"), ("a\0", "x"), ("a", ""), ("b", "s1"), ("a", "b")]
                    [i as usize % 7];
            for state in [&mut db, &mut mem] {
                let row = state.stats_mut(StatsKeyRef { day: i % 3, offer: "o", affiliate, sub1 });
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

    /// Flushes fold many small operands (a live worker's commits) and keep a few large ones
    /// (a catch-up's) for the compaction: the rows read the same after each step.
    #[test]
    fn stats_rows_read_the_same_after_flushes_and_compactions() {
        for (commits, per_commit) in [(200u32, 3u32), (5, 400)] {
            let dir = tempfile::tempdir().unwrap();
            let mut db = State::open(dir.path(), false).unwrap();
            let mut mem = State::in_memory();
            let rows = |s: &State| s.stats(0, 9).collect::<Result<Vec<_>, _>>().unwrap();
            let flush = |s: &State, compact| s.store.as_ref().unwrap().flush_and_compact_stats(compact);
            for c in 0..commits {
                for i in 0..per_commit {
                    let n = c * per_commit + i;
                    let affiliate = format!("a{}", n % 11);
                    for state in [&mut db, &mut mem] {
                        let row =
                            state.stats_mut(StatsKeyRef { day: n % 2, offer: "o", affiliate: &affiliate, sub1: "" });
                        row.clicks += 1;
                        row.revenue += i64::from(n);
                    }
                }
                commit_at(&mut db, u64::from(c) + 1);
                if c == commits / 2 {
                    flush(&db, false);
                }
            }
            assert_eq!(rows(&db), rows(&mem), "{commits} commits, before a flush");
            flush(&db, false);
            assert_eq!(rows(&db), rows(&mem), "{commits} commits, flushed");
            flush(&db, true);
            assert_eq!(rows(&db), rows(&mem), "{commits} commits, compacted");
            assert_eq!(rows(&db).len(), 22);
        }
    }

    #[test]
    fn a_state_in_another_layout_is_rebuilt_by_the_worker_and_refused_by_readers() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = State::open(dir.path(), false).unwrap();
        let id = ClickId::new(1_000, 1, 1);
        state.put_click(id, &facts(1_000, 1).borrowed());
        commit_at(&mut state, 7);
        // What a layout-1 state looks like: a checkpoint and no format key.
        state.store.as_ref().unwrap().forget_format().unwrap();
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
