//! The click index: what attribution remembers about each click, the clicks applied since
//! the last commit (one arena per UTC day), and how a commit folds them into the sorted runs
//! stored on disk ([`runs`]). Pure: the stored runs are reached through [`RunCursor`], which
//! the store implements over RocksDB.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tally_model::ClickId;

use crate::runs::{self, Run};
use crate::AttributionError;

/// Maps on the hot path (several operations per click) use hashbrown with foldhash: a third
/// of the cost of SipHash, and xxh3's streaming state was slower still for short keys.
/// Nothing iterates them in an order that reaches the output.
pub(crate) type FastMap<K, V> = hashbrown::HashMap<K, V>;

/// What attribution remembers about a click.
///
/// Stored with postcard (day arenas, sorted runs), so the field order is the format. Fields
/// added later go last: facts stored before one existed end where it would start, which
/// postcard reports as the input's end, and [`decode_facts`] then reads them in the older
/// shape ([`ClickFactsBeforeLink`]) with the new field empty. No store rebuild is needed.
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
    /// The code of the link clicked, for the link's own postback URL. Empty for clicks
    /// indexed before links were kept: their commissions notify the affiliate's URL.
    pub link: String,
}

/// [`ClickFacts`] as stored before `link` existed.
#[derive(Debug, Serialize, Deserialize)]
struct ClickFactsBeforeLink {
    ts_ms: u64,
    offer: String,
    affiliate: String,
    sub1: String,
    human: bool,
    first: Option<FirstClick>,
}

/// [`ClickFacts`] borrowed from the click being applied, for storing: the same encoding
/// (postcard writes `&str` as it writes `String`), without copying four strings per click.
#[derive(Debug, Serialize)]
pub(crate) struct ClickFactsRef<'a> {
    pub ts_ms: u64,
    pub offer: &'a str,
    pub affiliate: &'a str,
    pub sub1: &'a str,
    pub human: bool,
    pub first: Option<&'a FirstClick>,
    pub link: &'a str,
}

#[cfg(test)]
impl ClickFacts {
    pub(crate) fn borrowed(&self) -> ClickFactsRef<'_> {
        ClickFactsRef {
            ts_ms: self.ts_ms,
            offer: &self.offer,
            affiliate: &self.affiliate,
            sub1: &self.sub1,
            human: self.human,
            first: self.first.as_ref(),
            link: &self.link,
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

pub(crate) fn decode_facts(bytes: &[u8]) -> Result<ClickFacts, AttributionError> {
    let corrupt = |e: postcard::Error| AttributionError::Corrupt(format!("click: {e}"));
    match postcard::from_bytes(bytes) {
        Ok(facts) => Ok(facts),
        // Facts stored before `link` existed stop where it would start.
        Err(postcard::Error::DeserializeUnexpectedEnd) => {
            let old: ClickFactsBeforeLink = postcard::from_bytes(bytes).map_err(corrupt)?;
            Ok(ClickFacts {
                ts_ms: old.ts_ms,
                offer: old.offer,
                affiliate: old.affiliate,
                sub1: old.sub1,
                human: old.human,
                first: old.first,
                link: String::new(),
            })
        }
        Err(e) => Err(corrupt(e)),
    }
}

/// The clicks of one UTC day (by the time in their ID), encoded back to back in one arena.
/// Most clicks are never looked up, and a replay holds every click inside the horizon in
/// memory, so the compact form matters: no allocation per click, a small index entry, and
/// expiry drops whole days instead of sweeping one big map (whose growth would also copy
/// every click at once).
#[derive(Default)]
pub(crate) struct DayClicks {
    /// Click ID → (offset, length) of its encoded [`ClickFacts`] in `arena`.
    index: FastMap<ClickId, (u32, u32)>,
    arena: Vec<u8>,
    /// For a state that commits: click IDs and offsets in the order applied, which is nearly
    /// ID order, so the commit sorts them in about linear time (the index's order is random).
    order: Vec<(ClickId, u32)>,
}

impl DayClicks {
    pub(crate) fn get(&self, id: &ClickId) -> Option<&[u8]> {
        let &(at, len) = self.index.get(id)?;
        self.arena.get(at as usize..(at as usize).checked_add(len as usize)?)
    }

    /// Appends `facts` as the latest of click `id`; `ordered` keeps the order for a commit.
    pub(crate) fn put(&mut self, id: ClickId, facts: &ClickFactsRef<'_>, ordered: bool) {
        let at = self.arena.len();
        // Serialising our own struct into a Vec cannot fail; a day's arena stays far below
        // 4 GiB (that would be some 100 million clicks in one day).
        if postcard::to_io(facts, &mut self.arena).is_ok() {
            if let (Ok(at32), Ok(len)) = (u32::try_from(at), u32::try_from(self.arena.len() - at)) {
                self.index.insert(id, (at32, len));
                if ordered {
                    self.order.push((id, at32));
                }
            }
        }
    }

    /// The latest facts of each click, sorted by ID.
    pub(crate) fn sorted(&self) -> Vec<(ClickId, &[u8])> {
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
    pub(crate) fn clear(&mut self) {
        self.index.clear();
        self.arena.clear();
        self.order.clear();
    }
}

/// The stored runs, as a commit sees them.
pub(crate) trait RunCursor {
    /// Moves to the stored run with the greatest first ID not above `id`, and returns that
    /// first ID; `None` when there is none.
    fn seek(&mut self, id: &ClickId) -> Result<Option<ClickId>, AttributionError>;
    /// The clicks of the run the cursor is on.
    fn run(&self) -> Result<Vec<(ClickId, Vec<u8>)>, AttributionError>;
}

/// Folds the clicks applied since the last commit (`days`) into runs, handing each run to
/// write to `put` (its key: its first click ID): clicks after every stored one (`last`)
/// become new runs; the others go into the runs that own them, read back through `stored`
/// and rewritten. Returns the new greatest click ID, if it moved.
pub(crate) fn fold_into_runs(
    days: &BTreeMap<u32, DayClicks>,
    last: Option<ClickId>,
    stored: &mut dyn RunCursor,
    mut put: impl FnMut(&ClickId, Vec<u8>),
) -> Result<Option<ClickId>, AttributionError> {
    // Days in order, each sorted: all sorted.
    let new: Vec<(ClickId, &[u8])> = days.values().flat_map(DayClicks::sorted).collect();
    let split = last.map_or(0, |last| new.partition_point(|(id, _)| *id <= last));
    let (late, fresh) = new.split_at(split);

    // Runs to rewrite, by key (their first click).
    let mut dirty: BTreeMap<ClickId, Vec<(ClickId, Vec<u8>)>> = BTreeMap::new();
    for (id, facts) in late {
        let hour = runs::bucket(id);
        let in_dirty = dirty.range(..=*id).next_back().map(|(k, _)| *k).filter(|k| runs::bucket(k) == hour);
        let on_disk = stored.seek(id)?.filter(|k| runs::bucket(k) == hour);
        let owner = match (in_dirty, on_disk) {
            (Some(d), Some(s)) if s > d => Some(s),
            (Some(d), _) => Some(d),
            (None, s) => s,
        };
        let key = match owner {
            Some(k) => {
                if let std::collections::btree_map::Entry::Vacant(e) = dirty.entry(k) {
                    // Not in `dirty`, so `on_disk`: the run the cursor is on.
                    e.insert(stored.run()?);
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
    for (key, run) in &dirty {
        for (i, part) in runs::split(run).into_iter().enumerate() {
            let k = if i == 0 { Some(*key) } else { part.first().map(|(id, _)| *id) };
            if let Some(k) = k {
                put(&k, runs::encode(part));
            }
        }
    }
    for range in runs::chunk(fresh) {
        let run = &fresh[range];
        if let Some((first, _)) = run.first() {
            put(first, runs::encode(run));
        }
    }
    Ok(fresh.last().map(|(id, _)| *id))
}

/// The facts of `id` in a stored run whose key is `first`, if the run holds it.
pub(crate) fn find_in_run(first: &ClickId, run: &[u8], id: &ClickId) -> Result<Option<ClickFacts>, AttributionError> {
    // A run never spans two hours: one of another hour cannot hold the click.
    if runs::bucket(first) != runs::bucket(id) {
        return Ok(None);
    }
    let run = Run::parse(run).ok_or_else(|| AttributionError::Corrupt("click run".into()))?;
    match run.get(id) {
        Ok(Some(facts)) => Ok(Some(decode_facts(facts)?)),
        Ok(None) => Ok(None),
        Err(()) => Err(AttributionError::Corrupt("click run".into())),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Stored runs in a map, as RocksDB holds them: key = first click ID.
    struct MapRuns {
        runs: BTreeMap<ClickId, Vec<u8>>,
        at: Option<ClickId>,
    }

    impl RunCursor for MapRuns {
        fn seek(&mut self, id: &ClickId) -> Result<Option<ClickId>, AttributionError> {
            self.at = self.runs.range(..=*id).next_back().map(|(k, _)| *k);
            Ok(self.at)
        }

        fn run(&self) -> Result<Vec<(ClickId, Vec<u8>)>, AttributionError> {
            let bytes = self.at.and_then(|k| self.runs.get(&k)).unwrap();
            Ok(Run::parse(bytes).unwrap().to_vec().unwrap())
        }
    }

    fn facts(tag: &str) -> ClickFacts {
        ClickFacts {
            ts_ms: 0,
            offer: "o".into(),
            affiliate: tag.into(),
            sub1: String::new(),
            human: true,
            first: None,
            link: format!("l-{tag}"),
        }
    }

    fn days(clicks: &[(ClickId, &str)]) -> BTreeMap<u32, DayClicks> {
        let mut days: BTreeMap<u32, DayClicks> = BTreeMap::new();
        for (id, tag) in clicks {
            let f = facts(tag);
            days.entry(tally_model::time::day_of(id.timestamp_ms())).or_default().put(*id, &f.borrowed(), true);
        }
        days
    }

    fn commit(stored: &mut MapRuns, last: Option<ClickId>, clicks: &[(ClickId, &str)]) -> Option<ClickId> {
        let mut puts = Vec::new();
        let moved = fold_into_runs(&days(clicks), last, stored, |k, v| puts.push((*k, v))).unwrap();
        stored.runs.extend(puts);
        moved.or(last)
    }

    fn find(stored: &MapRuns, id: &ClickId) -> Option<String> {
        let (first, run) = stored.runs.range(..=*id).next_back()?;
        find_in_run(first, run, id).unwrap().map(|f| f.affiliate)
    }

    #[test]
    fn late_clicks_join_the_run_that_owns_them_or_start_one_of_their_hour() {
        let hour = runs::BUCKET_MS;
        let mut stored = MapRuns { runs: BTreeMap::new(), at: None };
        let (a, b, c) = (ClickId::new(hour + 10, 1, 1), ClickId::new(hour + 30, 1, 1), ClickId::new(2 * hour, 1, 1));
        let last = commit(&mut stored, None, &[(a, "a"), (b, "b"), (c, "c")]);
        assert_eq!(last, Some(c));
        assert_eq!(stored.runs.len(), 2, "one run per hour");

        // Late: one inside the first hour's run, one before every run of that hour, one
        // that replaces a stored click's facts.
        let (inside, before) = (ClickId::new(hour + 20, 1, 1), ClickId::new(hour + 5, 1, 1));
        let last = commit(&mut stored, last, &[(inside, "inside"), (before, "before"), (b, "b2")]);
        assert_eq!(last, Some(c), "no new greatest click");
        for (id, tag) in [(a, "a"), (b, "b2"), (c, "c"), (inside, "inside"), (before, "before")] {
            assert_eq!(find(&stored, &id).as_deref(), Some(tag));
        }
        assert_eq!(find(&stored, &ClickId::new(hour + 20, 2, 1)), None);
    }

    /// Facts stored before `link` existed (bytes of the struct as it was) decode with an
    /// empty link, in an arena and in a stored run; today's facts never take that path, and
    /// facts cut short anywhere else are still corrupt.
    #[test]
    fn facts_stored_before_the_link_still_decode() {
        let first = FirstClick { click_id: ClickId::new(5, 1, 1), ts_ms: 5, affiliate: "a0".into(), sub1: "s0".into() };
        for first in [None, Some(first)] {
            let old = ClickFactsBeforeLink {
                ts_ms: 1_234,
                offer: "o".into(),
                affiliate: "a".into(),
                sub1: "s".into(),
                human: false,
                first: first.clone(),
            };
            let bytes = postcard::to_stdvec(&old).unwrap();
            // The new shape cannot read them: the trailing link is missing, which is why the
            // fallback is taken (and taken only then).
            assert!(matches!(
                postcard::from_bytes::<ClickFacts>(&bytes),
                Err(postcard::Error::DeserializeUnexpectedEnd)
            ));
            let expected = ClickFacts {
                ts_ms: 1_234,
                offer: "o".into(),
                affiliate: "a".into(),
                sub1: "s".into(),
                human: false,
                first,
                link: String::new(),
            };
            assert_eq!(decode_facts(&bytes).unwrap(), expected);
            let id = ClickId::new(10, 1, 1);
            let run = runs::encode(&[(id, bytes.clone())]);
            assert_eq!(find_in_run(&id, &run, &id).unwrap(), Some(expected.clone()));

            let new = ClickFacts { link: "spring".into(), ..expected };
            let new_bytes = postcard::to_stdvec(&new.borrowed()).unwrap();
            assert_eq!(new_bytes, postcard::to_stdvec(&new).unwrap(), "borrowed facts encode as owned ones");
            assert_eq!(&new_bytes[..bytes.len()], &bytes[..], "the link is appended to the old shape");
            assert_eq!(decode_facts(&new_bytes).unwrap(), new);
            assert!(decode_facts(&bytes[..bytes.len() - 1]).is_err(), "cut inside the old fields");
        }
        assert!(decode_facts(&[]).is_err());
    }
}
