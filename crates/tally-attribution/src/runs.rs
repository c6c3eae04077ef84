//! The click index on disk: clicks in sorted runs of up to a few hundred, one RocksDB value
//! each, keyed by the run's first click ID.
//!
//! One key per click cost more than everything else attribution does (ten million memtable
//! inserts, flushes and compactions for ten million clicks, against a few conversions that
//! ever look one up). A commit instead sorts its new clicks and writes them as runs.
//!
//! Invariants, which make a lookup one `seek_for_prev` and a binary search:
//! - runs partition the ID space: a click lives in the run with the greatest first ID not
//!   above it, so runs never overlap;
//! - a run holds clicks of one hour of click time ([`BUCKET_MS`]) only, so expiry deletes
//!   whole runs by key range, and a lookup that lands in another hour's run stops there.
//!
//! Clicks come in nearly in ID order (IDs start with the time they were minted), so nearly
//! every commit's clicks sort after everything stored and become new runs. The few that do
//! not ("late": a skewed clock, another node's ID) are inserted into the run that owns them,
//! read back and rewritten in the same commit.
//!
//! Value layout (little-endian): version byte, count `u32`, `count` sorted 16-byte IDs,
//! `count` `u32` end offsets into the arena, then the arena of encoded click facts.

use tally_model::ClickId;

/// Most clicks a commit puts in one new run: a lookup reads and decompresses one run, so a
/// run stays near one table block (4 KiB); 256 made lookups a tenth of attribution's time.
pub(crate) const RUN_MAX: usize = 64;

/// Runs never span two hours of click time.
pub(crate) const BUCKET_MS: u64 = 3_600_000;

const VERSION: u8 = 1;
const HEADER: usize = 5;

pub(crate) fn bucket(id: &ClickId) -> u64 {
    id.timestamp_ms() / BUCKET_MS
}

/// The first click ID of the hour holding `ts_ms`: the bound of an expiry range.
pub(crate) fn bucket_start(ts_ms: u64) -> ClickId {
    ClickId::new(ts_ms / BUCKET_MS * BUCKET_MS, 0, 0)
}

/// Encodes clicks sorted by ID (no repeats) as one run.
pub(crate) fn encode<F: AsRef<[u8]>>(clicks: &[(ClickId, F)]) -> Vec<u8> {
    let arena: usize = clicks.iter().map(|(_, f)| f.as_ref().len()).sum();
    let mut out = Vec::with_capacity(HEADER + clicks.len() * 20 + arena);
    out.push(VERSION);
    // A run holds at most a few hundred clicks of a few dozen bytes each.
    out.extend_from_slice(&(clicks.len() as u32).to_le_bytes());
    for (id, _) in clicks {
        out.extend_from_slice(id.as_bytes());
    }
    let mut end = 0u32;
    for (_, f) in clicks {
        end = end.saturating_add(f.as_ref().len() as u32);
        out.extend_from_slice(&end.to_le_bytes());
    }
    for (_, f) in clicks {
        out.extend_from_slice(f.as_ref());
    }
    out
}

/// A stored run, read in place.
pub(crate) struct Run<'a> {
    count: usize,
    ids: &'a [u8],
    ends: &'a [u8],
    arena: &'a [u8],
}

impl<'a> Run<'a> {
    /// `None` when the bytes are not a run of this version.
    pub(crate) fn parse(bytes: &'a [u8]) -> Option<Run<'a>> {
        if *bytes.first()? != VERSION {
            return None;
        }
        let count = u32::from_le_bytes(bytes.get(1..HEADER)?.try_into().ok()?) as usize;
        let ids_end = HEADER.checked_add(count.checked_mul(16)?)?;
        let ends_end = ids_end.checked_add(count.checked_mul(4)?)?;
        let run = Run {
            count,
            ids: bytes.get(HEADER..ids_end)?,
            ends: bytes.get(ids_end..ends_end)?,
            arena: bytes.get(ends_end..)?,
        };
        // The last end offset is the arena's length: checked once here, each lookup then
        // only checks its own slice.
        if count > 0 && run.end(count - 1)? != run.arena.len() {
            return None;
        }
        Some(run)
    }

    pub(crate) fn len(&self) -> usize {
        self.count
    }

    pub(crate) fn id(&self, i: usize) -> Option<ClickId> {
        Some(ClickId::from_bytes(self.ids.get(i * 16..i * 16 + 16)?.try_into().ok()?))
    }

    fn end(&self, i: usize) -> Option<usize> {
        Some(u32::from_le_bytes(self.ends.get(i * 4..i * 4 + 4)?.try_into().ok()?) as usize)
    }

    /// The encoded facts of the `i`th click.
    pub(crate) fn facts(&self, i: usize) -> Option<&'a [u8]> {
        let start = if i == 0 { 0 } else { self.end(i - 1)? };
        self.arena.get(start..self.end(i)?)
    }

    /// The encoded facts of click `id`: `Ok(None)` if the run does not hold it, `Err` if the
    /// run is damaged.
    pub(crate) fn get(&self, id: &ClickId) -> Result<Option<&'a [u8]>, ()> {
        let want = id.as_bytes().as_slice();
        let (mut lo, mut hi) = (0usize, self.count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let at = self.ids.get(mid * 16..mid * 16 + 16).ok_or(())?;
            match at.cmp(want) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return self.facts(mid).map(Some).ok_or(()),
            }
        }
        Ok(None)
    }

    /// The run's clicks, owned, for rewriting.
    pub(crate) fn to_vec(&self) -> Option<Vec<(ClickId, Vec<u8>)>> {
        (0..self.count).map(|i| Some((self.id(i)?, self.facts(i)?.to_vec()))).collect()
    }
}

/// Splits new clicks (sorted by ID, all after every stored click) into runs: at most
/// [`RUN_MAX`] clicks each, never crossing an hour. Returns the runs as index ranges.
pub(crate) fn chunk<F>(clicks: &[(ClickId, F)]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::with_capacity(clicks.len() / RUN_MAX + 1);
    let mut start = 0;
    while let Some((first, _)) = clicks.get(start) {
        let b = bucket(first);
        let window = &clicks[start..clicks.len().min(start + RUN_MAX)];
        let end = start + window.partition_point(|(id, _)| bucket(id) == b);
        out.push(start..end);
        start = end;
    }
    out
}

/// Splits a rewritten run that grew past twice [`RUN_MAX`] into runs of [`RUN_MAX`]; the
/// first keeps the run's key, the others are keyed by their first click.
pub(crate) fn split(run: &[(ClickId, Vec<u8>)]) -> Vec<&[(ClickId, Vec<u8>)]> {
    if run.len() <= 2 * RUN_MAX {
        vec![run]
    } else {
        run.chunks(RUN_MAX).collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn id(ts: u64, r: u64) -> ClickId {
        ClickId::new(ts, 1, r)
    }

    #[test]
    fn a_run_finds_each_of_its_clicks_and_nothing_else() {
        let clicks: Vec<(ClickId, Vec<u8>)> =
            (0..100).map(|i| (id(1_000 + i * 2, i), vec![i as u8; i as usize % 7])).collect();
        let bytes = encode(&clicks);
        let run = Run::parse(&bytes).unwrap();
        assert_eq!(run.len(), 100);
        for (k, f) in &clicks {
            assert_eq!(run.get(k).unwrap(), Some(f.as_slice()));
        }
        assert_eq!(run.get(&id(1_001, 0)).unwrap(), None);
        assert_eq!(run.get(&id(5, 0)).unwrap(), None);
        assert_eq!(run.get(&id(9_999, 0)).unwrap(), None);
        assert_eq!(run.to_vec().unwrap(), clicks);
        let empty = encode::<Vec<u8>>(&[]);
        assert_eq!(Run::parse(&empty).unwrap().get(&id(1, 1)).unwrap(), None);
    }

    #[test]
    fn damaged_runs_are_refused() {
        let bytes = encode(&[(id(1, 1), vec![1, 2, 3]), (id(2, 2), vec![4])]);
        assert!(Run::parse(&[]).is_none());
        assert!(Run::parse(&[9, 0, 0, 0, 0]).is_none(), "unknown version");
        assert!(Run::parse(&bytes[..bytes.len() - 1]).is_none(), "arena cut short");
        assert!(Run::parse(&bytes[..20]).is_none(), "table cut short");
        let mut huge = bytes.clone();
        huge[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Run::parse(&huge).is_none(), "count beyond the value");
        // End offsets that go backwards: the lookup reports damage instead of panicking.
        let mut back = bytes.clone();
        let ends = HEADER + 2 * 16;
        back[ends..ends + 4].copy_from_slice(&9u32.to_le_bytes());
        if let Some(run) = Run::parse(&back) {
            assert!(run.get(&id(2, 2)).is_err());
        }
    }

    #[test]
    fn new_clicks_are_chunked_by_size_and_never_across_an_hour() {
        let mut clicks: Vec<(ClickId, ())> = (0..600).map(|i| (id(10 + i, i), ())).collect();
        clicks.extend((0..10).map(|i| (id(BUCKET_MS + i, i), ())));
        let runs = chunk(&clicks);
        assert_eq!(
            runs,
            vec![
                0..64,
                64..128,
                128..192,
                192..256,
                256..320,
                320..384,
                384..448,
                448..512,
                512..576,
                576..600,
                600..610
            ]
        );
        assert!(chunk::<()>(&[]).is_empty());
        assert_eq!(bucket_start(BUCKET_MS + 5), ClickId::new(BUCKET_MS, 0, 0));
    }

    #[test]
    fn only_runs_grown_past_twice_the_size_are_split() {
        let run: Vec<(ClickId, Vec<u8>)> = (0..2 * RUN_MAX as u64).map(|i| (id(i, i), vec![])).collect();
        assert_eq!(split(&run).len(), 1);
        let run: Vec<(ClickId, Vec<u8>)> = (0..2 * RUN_MAX as u64 + 1).map(|i| (id(i, i), vec![])).collect();
        let parts = split(&run);
        assert_eq!(parts.iter().map(|p| p.len()).collect::<Vec<_>>(), vec![RUN_MAX, RUN_MAX, 1]);
    }
}
