//! The write set: everything the events applied since the last commit changed, in memory.
//! Reads look here before the store; a commit turns it into one `WriteBatch`
//! ([`crate::store::Store::write`]). Pure: no RocksDB, no I/O. Without a store the write set
//! is the whole state (tests, replays), and a commit only trims expired days from it.

use std::collections::BTreeMap;
use std::hash::BuildHasher;

use tally_model::ClickId;

use crate::clicks::{ClickFactsRef, DayClicks, FastMap};
use crate::ledger::{Entry, EntryId, StatsKeyRef};
use crate::stats::RowDelta;

/// The stats rows changed since the last commit. A row is looked up by a borrowed key
/// ([`StatsKeyRef`]); a new row's strings are appended to one arena, cleared with the rows,
/// rather than allocated as three strings per row (with 100,000 affiliates nearly every
/// click is a new row of its commit, and those allocations and frees were a tenth of the
/// apply thread).
#[derive(Default)]
pub(crate) struct StatsRows {
    arena: String,
    rows: hashbrown::HashTable<(Slot, RowDelta)>,
    hasher: hashbrown::DefaultHashBuilder,
}

/// Where a row's key is in the arena: offer, affiliate and sub1, each followed by a zero
/// byte, so the three compare as one string (see [`StatsRows::sorted`]).
#[derive(Clone, Copy)]
struct Slot {
    day: u32,
    at: usize,
    lens: [u32; 3],
}

impl Slot {
    fn key<'a>(&self, arena: &'a str) -> StatsKeyRef<'a> {
        let [o, a, s] = self.lens.map(|l| l as usize);
        let (offer, affiliate, sub1) = (self.at, self.at + o + 1, self.at + o + a + 2);
        StatsKeyRef {
            day: self.day,
            offer: arena.get(offer..offer + o).unwrap_or_default(),
            affiliate: arena.get(affiliate..affiliate + a).unwrap_or_default(),
            sub1: arena.get(sub1..sub1 + s).unwrap_or_default(),
        }
    }

    /// The three parts with their separators.
    fn joined<'a>(&self, arena: &'a str) -> &'a [u8] {
        let len = self.lens.iter().map(|l| *l as usize + 1).sum::<usize>();
        arena.as_bytes().get(self.at..self.at + len).unwrap_or_default()
    }
}

impl StatsRows {
    /// The changes to the row `key`, a new (empty) one if it has none.
    pub(crate) fn get_mut(&mut self, key: StatsKeyRef<'_>) -> &mut RowDelta {
        let hash = self.hasher.hash_one(key);
        let arena = &mut self.arena;
        let hasher = &self.hasher;
        let entry =
            self.rows.entry(hash, |(slot, _)| slot.key(arena) == key, |(slot, _)| hasher.hash_one(slot.key(arena)));
        let entry = match entry {
            hashbrown::hash_table::Entry::Occupied(e) => e.into_mut(),
            hashbrown::hash_table::Entry::Vacant(e) => {
                let at = arena.len();
                let lens = [key.offer, key.affiliate, key.sub1].map(|s| {
                    arena.push_str(s);
                    arena.push('\0');
                    s.len() as u32
                });
                e.insert((Slot { day: key.day, at, lens }, RowDelta::default())).into_mut()
            }
        };
        &mut entry.1
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (StatsKeyRef<'_>, &RowDelta)> {
        self.rows.iter().map(|(slot, d)| (slot.key(&self.arena), d))
    }

    /// The rows by day, then offer, affiliate and sub1, as the stats tables keep them.
    ///
    /// One comparison of the joined parts instead of up to three: with a zero byte after
    /// each part, the joined bytes order as the parts do unless a part itself holds a zero
    /// byte; then the order may differ, and the merge operator sorts that table itself.
    ///
    /// Most comparisons are of integers: the day and the joined bytes' first 16, zero-padded
    /// (which order as the bytes do); only rows alike that far compare their bytes. Sorting
    /// by the bytes alone was a twentieth of attribution's time with 100,000 affiliates.
    pub(crate) fn sorted(&self) -> Vec<(StatsKeyRef<'_>, &RowDelta)> {
        let arena = &self.arena;
        let prefix = |slot: &Slot| {
            let mut b = [0u8; 16];
            let joined = slot.joined(arena);
            let n = joined.len().min(16);
            b[..n].copy_from_slice(&joined[..n]);
            u128::from_be_bytes(b)
        };
        let mut order: Vec<(u32, u128, &(Slot, RowDelta))> =
            self.rows.iter().map(|row| (row.0.day, prefix(&row.0), row)).collect();
        order.sort_unstable_by(|a, b| {
            (a.0, a.1).cmp(&(b.0, b.1)).then_with(|| a.2 .0.joined(arena).cmp(b.2 .0.joined(arena)))
        });
        order.into_iter().map(|(_, _, (slot, d))| (slot.key(arena), d)).collect()
    }

    /// Empties it, keeping its allocations for the next commit.
    pub(crate) fn clear(&mut self) {
        self.arena.clear();
        self.rows.clear();
    }
}

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
    pub(crate) stats: StatsRows,
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
        self.stats.get_mut(key)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn key<'a>(day: u32, offer: &'a str, affiliate: &'a str, sub1: &'a str) -> StatsKeyRef<'a> {
        StatsKeyRef { day, offer, affiliate, sub1 }
    }

    #[test]
    fn stats_rows_sum_by_key_and_sort_as_their_parts_do() {
        let mut rows = StatsRows::default();
        // Parts that are prefixes of one another, where joining without a separator would
        // order ("a", "bc") after ("ab", "c").
        let keys = [
            key(2, "ab", "c", ""),
            key(2, "a", "bc", ""),
            key(1, "b", "", "x"),
            key(2, "a", "b", "c"),
            key(2, "a", "b", ""),
            key(1, "a", "zz", "x"),
        ];
        for (n, k) in keys.iter().enumerate() {
            rows.get_mut(*k).clicks += n as u64 + 1;
        }
        rows.get_mut(key(2, "a", "bc", "")).clicks += 10;
        let sorted: Vec<_> = rows.sorted().into_iter().map(|(k, d)| (k, d.clicks)).collect();
        let mut want: Vec<_> = keys.iter().enumerate().map(|(n, k)| (*k, n as u64 + 1)).collect();
        want[1].1 += 10;
        want.sort_by(|a, b| {
            (a.0.day, a.0.offer, a.0.affiliate, a.0.sub1).cmp(&(b.0.day, b.0.offer, b.0.affiliate, b.0.sub1))
        });
        assert_eq!(sorted, want);
        assert_eq!(rows.iter().count(), keys.len());

        rows.clear();
        assert_eq!(rows.iter().count(), 0);
        assert_eq!(rows.get_mut(key(2, "a", "bc", "")).clicks, 0, "cleared rows start again from zero");
    }
}
