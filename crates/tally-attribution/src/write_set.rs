//! The write set: everything the events applied since the last commit changed, in memory.
//! Reads look here before the store; a commit turns it into one `WriteBatch`
//! ([`crate::store::Store::write`]). Pure: no RocksDB, no I/O. Without a store the write set
//! is the whole state (tests, replays), and a commit only trims expired days from it.

use std::collections::BTreeMap;

use tally_model::ClickId;

use crate::clicks::{ClickFactsRef, DayClicks, FastMap};
use crate::ledger::{Entry, EntryId, StatsKey, StatsKeyRef};
use crate::stats::RowDelta;

/// The stats rows: hashbrown's raw entry API looks a row up by a borrowed key
/// ([`StatsKeyRef`]) and inserts the owned one only when the row is new.
pub(crate) type StatsMap = hashbrown::HashMap<StatsKey, RowDelta>;

#[derive(Default)]
pub(crate) struct WriteSet {
    /// Clicks by the UTC day of their ID's timestamp.
    pub(crate) clicks: BTreeMap<u32, DayClicks>,
    pub(crate) dedup: FastMap<Vec<u8>, EntryId>,
    pub(crate) entries: BTreeMap<EntryId, Entry>,
    pub(crate) counters: FastMap<Vec<u8>, i64>,
    /// New visitor keys, by day. Only a state that commits keeps them apart (see
    /// [`crate::State`]'s visitor sets).
    pub(crate) unique: Vec<(u32, u128)>,
    /// Holds added (true) or released (false).
    pub(crate) holds: BTreeMap<(u64, EntryId), bool>,
    /// What the events applied changed in each stats row; a commit hands the rows to
    /// RocksDB's merge operator. Without a store, the deltas since the start, which are the
    /// rows themselves.
    pub(crate) stats: StatsMap,
    /// Emptied days, reused: growing a fresh index and arena every commit was a tenth of the
    /// apply thread (rehashing, page faults).
    spare_days: Vec<DayClicks>,
    /// Whether clicks keep their order for a commit.
    ordered: bool,
    /// Notifications made since the last commit: outbox key and JSON.
    pub(crate) outbox: Vec<(Vec<u8>, String)>,
}

impl WriteSet {
    /// `ordered`: the state commits, so clicks are kept in applied order for the commit's sort.
    pub(crate) fn new(ordered: bool) -> WriteSet {
        WriteSet { ordered, ..WriteSet::default() }
    }

    pub(crate) fn click(&self, id: &ClickId) -> Option<&[u8]> {
        self.clicks.get(&tally_model::time::day_of(id.timestamp_ms()))?.get(id)
    }

    pub(crate) fn put_click(&mut self, id: ClickId, facts: &ClickFactsRef<'_>) {
        let spare = &mut self.spare_days;
        let day = self
            .clicks
            .entry(tally_model::time::day_of(id.timestamp_ms()))
            .or_insert_with(|| spare.pop().unwrap_or_default());
        day.put(id, facts, self.ordered);
    }

    /// The changes to the stats row `key`, to add to. Nothing is read: the row's stored value
    /// is never needed (see [`crate::stats`]).
    pub(crate) fn stats_mut(&mut self, key: StatsKeyRef<'_>) -> &mut RowDelta {
        self.stats.raw_entry_mut().from_key(&key).or_insert_with(|| (key.to_owned_key(), RowDelta::default())).1
    }

    /// Empties it after a commit, handing the committed counters to `committed`. Stats rows
    /// and two click days keep their allocations for the next commit.
    pub(crate) fn committed(&mut self, committed: &mut FastMap<Vec<u8>, i64>) {
        committed.extend(self.counters.drain());
        self.stats.clear();
        for mut day in std::mem::take(&mut self.clicks).into_values() {
            if self.spare_days.len() < 2 {
                day.clear();
                self.spare_days.push(day);
            }
        }
        self.dedup = FastMap::default();
        self.entries = BTreeMap::new();
        self.unique = Vec::new();
        self.holds = BTreeMap::new();
        self.outbox = Vec::new();
    }

    /// Drops whole days before `day` (a state without a store, once they expired).
    pub(crate) fn drop_days_before(&mut self, day: u32) {
        self.clicks.retain(|d, _| *d >= day);
        self.unique.retain(|(d, _)| *d + 1 >= day);
    }
}
