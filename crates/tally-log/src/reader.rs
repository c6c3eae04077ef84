//! Reading the log: ranges, tailing, stats, verification. Readers sit on the database layer
//! ([`crate::db`]) only: they never go through the writer.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rocksdb::{Direction, IteratorMode};
use tally_model::{EventKind, Personal};

use crate::chain::{self, ChainEntry, GENESIS};
use crate::db::{cf, db_options, open_error, reader_descriptors, Committed, Db, ScratchDir};
use crate::keys::{self, CF_CHAIN, CF_EVENTS};
use crate::LogError;

fn read_err(e: rocksdb::Error) -> LogError {
    LogError::Read(e.to_string())
}

/// Read access to a log: either this process's open log ([`crate::Log::reader`]) or, from
/// another process, a RocksDB secondary instance that follows the primary's files.
pub struct LogReader {
    db: Db,
    committed: Option<Arc<Committed>>,
    /// A secondary instance's own directory; after `db`, so it goes once the database closed.
    secondary_dir: Option<ScratchDir>,
}

impl std::fmt::Debug for LogReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogReader").field("secondary_dir", &self.secondary_dir).finish_non_exhaustive()
    }
}

/// Counts and sizes for `tally log stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogStats {
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub events_by_kind: BTreeMap<&'static str, u64>,
    pub unreadable: u64,
    pub bytes_on_disk: u64,
}

/// The outcome of [`LogReader::verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub records: u64,
    pub batches: u64,
    /// The chain head after the last good batch, and its sequence number.
    pub head: [u8; 32],
    pub head_seq: u64,
    /// The first sequence number that fails, and why.
    pub first_bad: Option<(u64, String)>,
    /// Format-3 records read with their personal fields, and with them erased.
    pub personal: PersonalCounts,
}

/// Records by what they hold of personal fields (see `tally_model::record::Personal`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PersonalCounts {
    pub present: u64,
    pub erased: u64,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.first_bad.is_none()
    }
}

/// A published chain head: `SEQ:HEX` as `tally verify` prints it, where `SEQ` is the last
/// sequence number of a batch and `HEX` the 64-digit chain head after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Anchor {
    pub seq: u64,
    pub head: [u8; 32],
}

impl std::str::FromStr for Anchor {
    type Err = String;

    fn from_str(s: &str) -> Result<Anchor, String> {
        let (seq, hex) = s.split_once(':').ok_or_else(|| format!("\"{s}\" is not SEQ:HEAD (no colon)"))?;
        let seq: u64 = match seq.parse() {
            Ok(n) if n > 0 && seq.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Err(format!("\"{s}\": sequence \"{seq}\" is not a positive integer")),
        };
        if hex.len() != 64 {
            return Err(format!("\"{s}\": head must be 64 hex digits, got {}", hex.len()));
        }
        let mut head = [0u8; 32];
        for (i, pair) in hex.as_bytes().chunks_exact(2).enumerate() {
            let digit = |b: u8| (b as char).to_digit(16);
            match (digit(pair[0]), digit(pair[1])) {
                (Some(hi), Some(lo)) => head[i] = (hi * 16 + lo) as u8,
                _ => return Err(format!("\"{s}\": head is not hexadecimal")),
            }
        }
        Ok(Anchor { seq, head })
    }
}

impl std::fmt::Display for Anchor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:", self.seq)?;
        self.head.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// What [`LogReader::verify_anchor`] found at the anchor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnchorCheck {
    /// The head recomputed from the records equals the anchor: nothing up to it changed.
    Matches,
    /// The records up to the anchor do not hash to it: something there changed.
    Differs { recomputed: [u8; 32] },
    /// No batch ends at the anchor's sequence; the nearest boundaries on either side.
    NotABatchBoundary { before: Option<u64>, after: Option<u64> },
    /// The log ends before the anchor's sequence.
    BeyondHead { head_seq: u64 },
    /// Verification failed at `failed_at`, before any batch ending at the anchor.
    Unreached { failed_at: u64 },
}

impl LogReader {
    pub(crate) fn from_primary(db: Db, committed: Arc<Committed>) -> LogReader {
        LogReader { db, committed: Some(committed), secondary_dir: None }
    }

    /// Opens the log in `dir` as a RocksDB secondary instance: safe while a server has the
    /// log open (and also when none does). Call [`LogReader::catch_up`] to see newer commits.
    pub fn open_secondary(dir: &Path) -> Result<LogReader, LogError> {
        if !dir.join("CURRENT").exists() {
            return Err(open_error(dir, "no Tally log here (no RocksDB CURRENT file)"));
        }
        let secondary = ScratchDir::create("tally-secondary").map_err(|e| open_error(&std::env::temp_dir(), e))?;
        let mut opts = db_options();
        // A secondary must keep every file open: the primary may delete ones it compacts away.
        opts.set_max_open_files(-1);
        let db = rocksdb::DB::open_cf_descriptors_as_secondary(&opts, dir, secondary.path(), reader_descriptors(dir))
            .map_err(|e| open_error(dir, e))?;
        Ok(LogReader { db: Arc::new(db), committed: None, secondary_dir: Some(secondary) })
    }

    pub(crate) fn db(&self) -> &Db {
        &self.db
    }

    /// Every program edit in the log, in order, as stored (`seq`, record): the `program`
    /// index's entries, so this reads no click. Empty for a log without the index (written
    /// before program edits existed, so holding none).
    pub fn program_edits(&self) -> Result<Vec<(u64, Vec<u8>)>, LogError> {
        let db = self.db();
        let Some(index) = db.cf_handle(crate::keys::CF_PROGRAM) else { return Ok(Vec::new()) };
        let events = crate::db::cf(db, crate::keys::CF_EVENTS)?;
        let mut out = Vec::new();
        for item in db.iterator_cf(index, rocksdb::IteratorMode::Start) {
            let (k, _) = item.map_err(|e| LogError::Read(e.to_string()))?;
            let seq =
                crate::keys::parse_seq_key(&k).ok_or_else(|| LogError::Corrupt("bad program index key".into()))?;
            let record = db
                .get_cf(events, k)
                .map_err(|e| LogError::Read(e.to_string()))?
                .ok_or_else(|| LogError::Corrupt(format!("the program index names event {seq}, which is missing")))?;
            out.push((seq, record));
        }
        Ok(out)
    }

    /// The chain entries of the batches whose last sequence number is in `from..=to`, in
    /// order, as stored (a shipper sends them with the records they cover).
    pub fn chain_entries(&self, from: u64, to: u64) -> Result<Vec<(u64, Vec<u8>)>, LogError> {
        let chain = cf(&self.db, CF_CHAIN)?;
        let mut out = Vec::new();
        for item in self.db.iterator_cf(chain, IteratorMode::From(&keys::seq_key(from), Direction::Forward)) {
            let (k, v) = item.map_err(read_err)?;
            let last = keys::parse_seq_key(&k).ok_or_else(|| LogError::Corrupt("bad chain key".into()))?;
            if last > to {
                break;
            }
            out.push((last, v.into_vec()));
        }
        Ok(out)
    }

    /// A secondary instance's own directory (removed when the reader is dropped).
    pub fn scratch_dir(&self) -> Option<&Path> {
        self.secondary_dir.as_ref().map(ScratchDir::path)
    }

    /// For a secondary instance, pulls in what the primary has committed since; a no-op for
    /// an in-process reader, which always sees the latest commit.
    pub fn catch_up(&self) -> Result<(), LogError> {
        if self.secondary_dir.is_some() {
            self.db.try_catch_up_with_primary().map_err(read_err)?;
        }
        Ok(())
    }

    /// Events with `from <= seq`, in order, at most `limit` of them.
    pub fn read_range(&self, from: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, LogError> {
        self.iter_from(from).take(limit).collect()
    }

    /// Iterates events from `from` on; the iterator sees a consistent snapshot.
    pub fn iter_from(&self, from: u64) -> impl Iterator<Item = Result<(u64, Vec<u8>), LogError>> + '_ {
        let start = keys::seq_key(from);
        let iter =
            cf(&self.db, CF_EVENTS).map(|cf| self.db.iterator_cf(cf, IteratorMode::From(&start, Direction::Forward)));
        let (iter, err) = match iter {
            Ok(it) => (Some(it), None),
            Err(e) => (None, Some(e)),
        };
        err.map(Err).into_iter().chain(iter.into_iter().flatten().map(|item| {
            let (k, v) = item.map_err(read_err)?;
            let seq = keys::parse_seq_key(&k).ok_or_else(|| LogError::Corrupt("bad event key".into()))?;
            Ok((seq, v.into_vec()))
        }))
    }

    pub fn first_seq(&self) -> Result<Option<u64>, LogError> {
        self.edge_seq(IteratorMode::Start)
    }

    pub fn last_seq(&self) -> Result<Option<u64>, LogError> {
        self.edge_seq(IteratorMode::End)
    }

    fn edge_seq(&self, mode: IteratorMode) -> Result<Option<u64>, LogError> {
        let cf = cf(&self.db, CF_EVENTS)?;
        match self.db.iterator_cf(cf, mode).next() {
            None => Ok(None),
            Some(item) => {
                let (k, _) = item.map_err(read_err)?;
                Ok(keys::parse_seq_key(&k))
            }
        }
    }

    /// Counts events by kind and measures the directory. Reads the whole log.
    pub fn stats(&self, dir: &Path) -> Result<LogStats, LogError> {
        let mut stats = LogStats::default();
        for kind in EventKind::ALL {
            stats.events_by_kind.insert(kind.as_str(), 0);
        }
        for item in self.iter_from(0) {
            let (seq, record) = item?;
            stats.first_seq.get_or_insert(seq);
            stats.last_seq = Some(seq);
            match tally_model::record::peek_kind(&record) {
                Ok(kind) => *stats.events_by_kind.entry(kind.as_str()).or_default() += 1,
                Err(_) => stats.unreadable += 1,
            }
        }
        stats.bytes_on_disk = dir_size(dir);
        Ok(stats)
    }

    /// Recomputes the hash chain from the first batch and reports the first sequence number
    /// that does not match: an edited, inserted or deleted record, or an edited chain entry.
    pub fn verify(&self) -> Result<VerifyReport, LogError> {
        self.verify_progress(|_| {})
    }

    /// [`LogReader::verify`], calling `progress(last_seq)` after each batch, for a caller
    /// that shows how far a long walk has got.
    pub fn verify_progress(&self, mut progress: impl FnMut(u64)) -> Result<VerifyReport, LogError> {
        self.verify_with(0, |last, _| progress(last))
    }

    /// [`LogReader::verify`], and checks `anchor` against the head *recomputed* from the raw
    /// records after the batch ending at `anchor.seq`. Stored heads are never trusted for the
    /// anchor: someone who edited a record and rewrote every later chain entry passes plain
    /// `verify`, but cannot make the recomputed head equal a head published before the edit.
    pub fn verify_anchor(&self, anchor: &Anchor) -> Result<(VerifyReport, AnchorCheck), LogError> {
        self.verify_anchor_progress(anchor, |_| {})
    }

    /// [`LogReader::verify_anchor`], calling `progress` as [`LogReader::verify_progress`] does.
    pub fn verify_anchor_progress(
        &self,
        anchor: &Anchor,
        mut progress: impl FnMut(u64),
    ) -> Result<(VerifyReport, AnchorCheck), LogError> {
        let mut at_anchor: Option<[u8; 32]> = None;
        let mut before: Option<u64> = None;
        let mut after: Option<u64> = None;
        let report = self.verify_with(anchor.seq, |last, head| {
            progress(last);
            if last == anchor.seq {
                at_anchor = Some(*head);
            } else if last < anchor.seq {
                before = Some(last);
            } else if after.is_none() {
                after = Some(last);
            }
        })?;
        let check = match at_anchor {
            Some(head) if head == anchor.head => AnchorCheck::Matches,
            Some(head) => AnchorCheck::Differs { recomputed: head },
            // The chain went past the anchor without a batch ending there.
            None if after.is_some() => AnchorCheck::NotABatchBoundary { before, after },
            None => match &report.first_bad {
                Some((seq, _)) if *seq <= anchor.seq => AnchorCheck::Unreached { failed_at: *seq },
                _ => AnchorCheck::BeyondHead { head_seq: report.head_seq },
            },
        };
        Ok((report, check))
    }

    /// The chain walk behind [`LogReader::verify`]. `on_batch(last_seq, recomputed_head)` is
    /// called for every batch whose records could all be read. After the first failure the
    /// walk goes on, chaining from recomputed heads, while batches end before `walk_to`: an
    /// anchor past an edited record must be judged by what the records hash to, not skipped.
    fn verify_with(&self, walk_to: u64, mut on_batch: impl FnMut(u64, &[u8; 32])) -> Result<VerifyReport, LogError> {
        let chain_cf = cf(&self.db, CF_CHAIN)?;
        let mut events = self.iter_from(0).peekable();
        let mut report = VerifyReport {
            records: 0,
            batches: 0,
            head: GENESIS,
            head_seq: 0,
            first_bad: None,
            personal: PersonalCounts::default(),
        };
        let personal = &mut report.personal;
        // Differs from `report.head` only after a failure: the head the records hash to.
        let mut recomputed = GENESIS;
        let mut expected_first = 1u64;
        let fail = |report: &mut VerifyReport, seq: u64, why: String| {
            report.first_bad.get_or_insert((seq, why));
        };
        for item in self.db.iterator_cf(chain_cf, IteratorMode::Start) {
            let (k, v) = item.map_err(read_err)?;
            let Some(entry) = ChainEntry::decode(&v).filter(|e| keys::parse_seq_key(&k) == Some(e.last())) else {
                let at = keys::parse_seq_key(&k).unwrap_or(expected_first);
                fail(&mut report, expected_first.min(at), "chain entry is malformed".into());
                return Ok(report);
            };
            if entry.first != expected_first {
                let why = format!("chain skips from {expected_first} to batch starting at {}", entry.first);
                fail(&mut report, expected_first, why);
                return Ok(report);
            }
            let mut hasher = chain::BatchHasher::new(&recomputed, entry.first);
            let mut bad_leaf: Option<(u64, String)> = None;
            for (i, want_leaf) in entry.leaves.iter().enumerate() {
                let seq = entry.first + i as u64;
                match events.next() {
                    Some(Ok((got, record))) if got == seq => {
                        let chained = &record[..tally_model::record::chained_len(&record)];
                        if bad_leaf.is_none() {
                            match tally_model::record::decode_personal(&record) {
                                Err(e) => bad_leaf = Some((seq, format!("record does not decode: {e}"))),
                                Ok(_) if chain::leaf(entry.version, seq, chained) != *want_leaf => {
                                    bad_leaf = Some((seq, "record differs from what was committed".into()));
                                }
                                Ok((_, Personal::Present)) => personal.present += 1,
                                Ok((_, Personal::Erased)) => personal.erased += 1,
                                Ok(_) => {}
                            }
                        }
                        hasher.add(seq, chained);
                    }
                    Some(Ok((got, _))) if got > seq => {
                        fail(&mut report, seq, "record is missing".into());
                        return Ok(report);
                    }
                    Some(Ok((got, _))) => {
                        fail(&mut report, got, "record is not covered by the chain".into());
                        return Ok(report);
                    }
                    Some(Err(e)) => return Err(e),
                    None => {
                        fail(&mut report, seq, "record is missing".into());
                        return Ok(report);
                    }
                }
            }
            let (head, _) = hasher.finish();
            on_batch(entry.last(), &head);
            recomputed = head;
            if report.first_bad.is_none() {
                if head != entry.head {
                    report.first_bad = Some(bad_leaf.unwrap_or((
                        entry.first,
                        format!("batch {}..={} does not match its chain hash", entry.first, entry.last()),
                    )));
                } else if let Some(bad) = bad_leaf {
                    // The head matches but a leaf does not: the chain entry itself was edited.
                    report.first_bad = Some(bad);
                } else {
                    report.head = head;
                    report.head_seq = entry.last();
                    report.records += u64::from(entry.count);
                    report.batches += 1;
                }
            }
            if report.first_bad.is_some() && entry.last() >= walk_to {
                return Ok(report);
            }
            expected_first = entry.last() + 1;
        }
        if let Some(extra) = events.next() {
            let (seq, _) = extra?;
            fail(&mut report, seq, "record is not covered by the chain".into());
        }
        Ok(report)
    }

    /// Follows the log from `from`, for a consumer in this process.
    pub fn tail(self, from: u64) -> Tail {
        Tail { reader: self, next: from.max(1) }
    }
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok).filter_map(|e| e.metadata().ok()).filter(|m| m.is_file()).map(|m| m.len()).sum()
        })
        .unwrap_or(0)
}

/// Follows the log's tail. In-process readers sleep on the writer's commit signal (no
/// polling); a secondary instance, which has no signal to wait on, catches up with the
/// primary at most every `timeout`.
#[derive(Debug)]
pub struct Tail {
    reader: LogReader,
    next: u64,
}

impl Tail {
    /// The reader this tail follows with, e.g. to look at the head.
    pub fn reader(&self) -> &LogReader {
        &self.reader
    }

    /// The next sequence number this tail will return.
    pub fn position(&self) -> u64 {
        self.next
    }

    /// Moves the tail to `from` (backwards too: a worker that lost uncommitted work
    /// re-reads from its checkpoint).
    pub fn seek(&mut self, from: u64) {
        self.next = from.max(1);
    }

    /// Returns up to `max` events from the current position, waiting up to `timeout` for at
    /// least one. An empty result means the timeout passed with nothing new.
    pub fn next_batch(&mut self, max: usize, timeout: Duration) -> Result<Vec<(u64, Vec<u8>)>, LogError> {
        match &self.reader.committed {
            Some(committed) => {
                let guard = committed.seq.lock().map_err(|_| LogError::Closed)?;
                let (_guard, _) = committed
                    .cond
                    .wait_timeout_while(guard, timeout, |seq| *seq < self.next)
                    .map_err(|_| LogError::Closed)?;
            }
            None => {
                self.reader.catch_up()?;
                if self.reader.last_seq()?.is_none_or(|s| s < self.next) {
                    std::thread::sleep(timeout);
                    self.reader.catch_up()?;
                }
            }
        }
        let batch = self.reader.read_range(self.next, max)?;
        if let Some((last, _)) = batch.last() {
            self.next = last + 1;
        }
        Ok(batch)
    }
}
