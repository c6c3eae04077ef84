//! Logs in a cluster ([decision 0045](../../../docs/decisions/0045-scale-out-on-jetstream.md)).
//! An edge's log remembers how far its shipper has got; the attribution tier's **merged log**
//! holds every edge's records byte for byte, each with its origin (node, sequence number on
//! that node), the edges' own chain entries, and the consumer's checkpoint, all written in the
//! same `WriteBatch` as the records they describe. Nothing here knows about NATS.
//!
//! The `bus` column family:
//!
//! | key                                  | value                                              |
//! |--------------------------------------|----------------------------------------------------|
//! | `s`                                  | an edge's shipped position: last seq the bus acked |
//! | `t`                                  | a merged log's stream position: last one consumed  |
//! | `h` ‖ node u16 BE                    | the node's high-water mark: its last seq merged    |
//! | `n` ‖ node u16 BE ‖ seq u64 BE       | the merged log's seq of the node's record `seq`    |
//! | `c` ‖ node u16 BE ‖ last seq u64 BE  | the node's chain entry of the batch ending there   |
//!
//! The `n` and `c` rows let [`LogReader::verify_origins`] recompute each edge's chain heads
//! from the merged records: equal heads prove the merged log holds exactly the edge's events.

use std::collections::BTreeMap;

use rocksdb::{Direction, IteratorMode, WriteBatch};

use crate::chain::{BatchHasher, ChainEntry, GENESIS};
use crate::db::{cf, Db};
use crate::keys::{self, CF_BUS, CF_EVENTS};
use crate::{Log, LogError, LogReader};

const SHIPPED: &[u8] = b"s";
const STREAM: &[u8] = b"t";
const HIGH_WATER: u8 = b'h';
const ORIGIN: u8 = b'n';
const CHAIN: u8 = b'c';

fn node_key(tag: u8, node: u16) -> [u8; 3] {
    let [a, b] = node.to_be_bytes();
    [tag, a, b]
}

fn node_seq_key(tag: u8, node: u16, seq: u64) -> [u8; 11] {
    let mut k = [0; 11];
    k[..3].copy_from_slice(&node_key(tag, node));
    k[3..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn parse_u64(v: &[u8]) -> Result<u64, LogError> {
    keys::parse_seq_key(v).ok_or_else(|| LogError::Corrupt("bad value in the bus column family".into()))
}

fn read_err(e: rocksdb::Error) -> LogError {
    LogError::Read(e.to_string())
}

fn get_u64(db: &Db, key: &[u8]) -> Result<Option<u64>, LogError> {
    let Some(bus) = db.cf_handle(CF_BUS) else { return Ok(None) };
    db.get_cf(bus, key).map_err(read_err)?.map(|v| parse_u64(&v)).transpose()
}

/// One record shipped by an edge, as the consumer hands it to [`Log::merge`].
#[derive(Debug, Clone, Copy)]
pub struct Shipped<'a> {
    pub node: u16,
    /// Its sequence number in the edge's own log.
    pub seq: u64,
    /// The stored value, exactly as the edge's log holds it.
    pub record: &'a [u8],
}

/// Where a merged log's consumer stands: the last stream sequence consumed and, per node,
/// the last of its sequence numbers merged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MergeCheckpoint {
    pub stream: u64,
    pub high_water: BTreeMap<u16, u64>,
}

fn read_checkpoint(db: &Db) -> Result<MergeCheckpoint, LogError> {
    let mut checkpoint = MergeCheckpoint { stream: get_u64(db, STREAM)?.unwrap_or(0), ..Default::default() };
    let Some(bus) = db.cf_handle(CF_BUS) else { return Ok(checkpoint) };
    for item in db.iterator_cf(bus, IteratorMode::From(&[HIGH_WATER], Direction::Forward)) {
        let (k, v) = item.map_err(read_err)?;
        if k.first() != Some(&HIGH_WATER) {
            break;
        }
        let node = <[u8; 2]>::try_from(&k[1..]).map_err(|_| LogError::Corrupt("bad high-water key".into()))?;
        checkpoint.high_water.insert(u16::from_be_bytes(node), parse_u64(&v)?);
    }
    Ok(checkpoint)
}

impl Log {
    /// An edge's shipped position: the last sequence number the bus acknowledged (0 before
    /// the first).
    pub fn shipped(&self) -> Result<u64, LogError> {
        Ok(get_u64(self.db(), SHIPPED)?.unwrap_or(0))
    }

    /// Records the shipped position. Not synced: a position lost to a power cut only makes
    /// the shipper send a suffix again, which the consumer drops by its high-water marks.
    pub fn set_shipped(&self, seq: u64) -> Result<(), LogError> {
        let db = self.db();
        db.put_cf(cf(db, CF_BUS)?, SHIPPED, keys::seq_key(seq)).map_err(|e| LogError::Write(e.to_string()))
    }

    /// A merged log's checkpoint, as its consumer resumes from it.
    pub fn merge_checkpoint(&self) -> Result<MergeCheckpoint, LogError> {
        read_checkpoint(self.db())
    }

    /// Appends `records` (already filtered by the caller against the high-water marks, in
    /// stream order) as one batch, with their origins, the edges' chain entries `chain`
    /// (node, entry as the edge stored it), the nodes' new high-water marks and `stream`,
    /// the stream position, all in one `WriteBatch`: after a crash the merged log and its
    /// checkpoint agree. With no records, moves the stream position only. Blocking; for the
    /// merged log's one writer.
    pub fn merge(&self, stream: u64, records: &[Shipped<'_>], chain: &[(u16, &[u8])]) -> Result<(), LogError> {
        for (node, entry) in chain {
            let e = ChainEntry::decode(entry)
                .ok_or_else(|| LogError::Corrupt(format!("node {node} shipped a chain entry that does not decode")))?;
            if e.count == 0 {
                return Err(LogError::Corrupt(format!("node {node} shipped an empty chain entry")));
            }
        }
        let values: Vec<&[u8]> = records.iter().map(|r| r.record).collect();
        let db = self.db().clone();
        self.core().commit_with(&values, |wb: &mut WriteBatch, first| {
            let bus = cf(&db, CF_BUS)?;
            let mut high_water: BTreeMap<u16, u64> = BTreeMap::new();
            for (i, r) in records.iter().enumerate() {
                wb.put_cf(bus, node_seq_key(ORIGIN, r.node, r.seq), keys::seq_key(first + i as u64));
                let hw = high_water.entry(r.node).or_default();
                *hw = (*hw).max(r.seq);
            }
            for (node, seq) in high_water {
                wb.put_cf(bus, node_key(HIGH_WATER, node), keys::seq_key(seq));
            }
            for (node, entry) in chain {
                // Decoded above; the key is the batch's last sequence number, as in `chain`.
                if let Some(e) = ChainEntry::decode(entry) {
                    wb.put_cf(bus, node_seq_key(CHAIN, *node, e.last()), entry);
                }
            }
            wb.put_cf(bus, STREAM, keys::seq_key(stream));
            Ok(())
        })?;
        Ok(())
    }
}

/// What [`LogReader::verify_origins`] found for one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginReport {
    pub node: u16,
    /// Records of this node in the merged log, and the highest of its sequence numbers.
    pub records: u64,
    pub last_seq: u64,
    /// The node's batches recomputed, and the head after the last good one (what the edge's
    /// own `verify` prints for its log up to `head_seq`).
    pub batches: u64,
    pub head: [u8; 32],
    pub head_seq: u64,
    /// Records after the node's last shipped chain entry (a message ended inside a batch; the
    /// rest of the batch, with its entry, is still to come).
    pub unchained: u64,
    /// The first of the node's sequence numbers that fails, and why.
    pub first_bad: Option<(u64, String)>,
}

impl OriginReport {
    pub fn is_ok(&self) -> bool {
        self.first_bad.is_none()
    }
}

impl LogReader {
    /// A merged log's checkpoint, as this reader sees it (`None` for a log that was never
    /// merged into).
    pub fn merge_checkpoint(&self) -> Result<Option<MergeCheckpoint>, LogError> {
        let checkpoint = read_checkpoint(self.db())?;
        Ok((checkpoint != MergeCheckpoint::default()).then_some(checkpoint))
    }

    /// An edge's shipped position (`None` if it never shipped).
    pub fn shipped(&self) -> Result<Option<u64>, LogError> {
        get_u64(self.db(), SHIPPED)
    }

    /// Recomputes, for every node that shipped into this merged log, its chain from the
    /// merged records: every batch's head must equal the head the edge stored, chained from
    /// the previous one, and the node's records must be exactly 1..=last, each once.
    pub fn verify_origins(&self) -> Result<Vec<OriginReport>, LogError> {
        let db = self.db();
        let Some(bus) = db.cf_handle(CF_BUS) else { return Ok(Vec::new()) };
        let events = cf(db, CF_EVENTS)?;
        let nodes: Vec<u16> = read_checkpoint(db)?.high_water.into_keys().collect();
        let mut reports = Vec::new();
        for node in nodes {
            let mut report = OriginReport {
                node,
                records: 0,
                last_seq: 0,
                batches: 0,
                head: GENESIS,
                head_seq: 0,
                unchained: 0,
                first_bad: None,
            };
            let prefix = node_key(ORIGIN, node);
            let mut origins = db
                .iterator_cf(bus, IteratorMode::From(&prefix, Direction::Forward))
                .map(|item| item.map_err(read_err))
                .take_while(|item| item.as_ref().map_or(true, |(k, _)| k.starts_with(&prefix)))
                .map(|item| {
                    let (k, v) = item?;
                    Ok::<_, LogError>((parse_u64(&k[3..])?, parse_u64(&v)?))
                });
            let chain_prefix = node_key(CHAIN, node);
            let entries = db
                .iterator_cf(bus, IteratorMode::From(&chain_prefix, Direction::Forward))
                .map(|item| item.map_err(read_err))
                .take_while(|item| item.as_ref().map_or(true, |(k, _)| k.starts_with(&chain_prefix)));
            let mut expected = 1;
            'entries: for item in entries {
                let (_, v) = item?;
                let Some(entry) = ChainEntry::decode(&v) else {
                    report.first_bad = Some((expected, "its chain entry does not decode".into()));
                    break;
                };
                if entry.first != expected {
                    report.first_bad = Some((expected, format!("the next chain entry starts at {}", entry.first)));
                    break;
                }
                let mut hasher = BatchHasher::new(&report.head, entry.first);
                for seq in entry.first..=entry.last() {
                    let merged = match origins.next().transpose()? {
                        Some((s, merged)) if s == seq => merged,
                        Some((s, _)) => {
                            report.first_bad = Some((seq, format!("missing (the merged log has {s} next)")));
                            break 'entries;
                        }
                        None => {
                            report.first_bad = Some((seq, "missing from the merged log".into()));
                            break 'entries;
                        }
                    };
                    let Some(record) = db.get_cf(events, keys::seq_key(merged)).map_err(read_err)? else {
                        report.first_bad = Some((seq, format!("its merged record {merged} is missing")));
                        break 'entries;
                    };
                    hasher.add(seq, &record[..tally_model::record::chained_len(&record)]);
                    report.records += 1;
                    report.last_seq = seq;
                }
                let (head, _) = hasher.finish();
                if head != entry.head {
                    report.first_bad = Some((
                        entry.first,
                        format!("batch {}..={} differs from the edge's", entry.first, entry.last()),
                    ));
                    break;
                }
                report.head = head;
                report.head_seq = entry.last();
                report.batches += 1;
                expected = entry.last() + 1;
            }
            if report.first_bad.is_none() {
                for item in origins {
                    let (seq, _) = item?;
                    if seq != expected {
                        report.first_bad = Some((expected, format!("missing (the merged log has {seq} next)")));
                        break;
                    }
                    report.unchained += 1;
                    report.records += 1;
                    report.last_seq = seq;
                    expected += 1;
                }
            }
            reports.push(report);
        }
        Ok(reports)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::{LogMetrics, LogOptions};

    fn open(dir: &std::path::Path) -> Log {
        Log::open(dir, LogOptions::default(), LogMetrics::default()).unwrap()
    }

    fn record(n: u64) -> Vec<u8> {
        let click = tally_model::Click {
            click_id: tally_model::ClickId::new(1_700_000_000_000 + n, 1, n),
            ts_ms: 1_700_000_000_000 + n,
            link: "demo".into(),
            offer: "shoes".into(),
            affiliate: "aff1".into(),
            subs: Default::default(),
            source: String::new(),
            deep_link: String::new(),
            user_agent: "test".into(),
            referrer: String::new(),
            ip: "192.0.2.1".into(),
            flags: 0,
            prior_click: None,
            visitor: n,
            signals: Default::default(),
        };
        tally_model::encode(&tally_model::Event::Click(click)).unwrap()
    }

    /// An edge's log, its records and its chain entries.
    type Edge = (Log, Vec<(u64, Vec<u8>)>, Vec<Vec<u8>>);

    /// An edge log with `batches` committed batches of the given sizes; returns its records
    /// and chain entries as a shipper reads them.
    fn edge(dir: &std::path::Path, sizes: &[usize]) -> Edge {
        let log = open(dir);
        let mut n = 0;
        for &size in sizes {
            let pending: Vec<_> = (0..size)
                .map(|_| {
                    n += 1;
                    log.submit(record(n)).unwrap()
                })
                .collect();
            for p in pending {
                p.wait().unwrap();
            }
        }
        let reader = log.reader();
        let records = reader.read_range(1, usize::MAX).unwrap();
        let entries = reader.chain_entries(1, u64::MAX).unwrap().into_iter().map(|(_, e)| e).collect();
        (log, records, entries)
    }

    #[test]
    fn shipped_position_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path());
        assert_eq!(log.shipped().unwrap(), 0);
        log.set_shipped(42).unwrap();
        assert_eq!(log.shipped().unwrap(), 42);
        assert_eq!(log.reader().shipped().unwrap(), Some(42));
    }

    #[test]
    fn merged_records_prove_each_edge_and_a_changed_one_is_named() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let m = tempfile::tempdir().unwrap();
        let (edge_a, rec_a, chain_a) = edge(a.path(), &[1, 3, 2]);
        let (_edge_b, rec_b, chain_b) = edge(b.path(), &[2, 2]);
        let merged = open(m.path());
        // Interleaved, in messages that cut through batches: a 1..=2, b 1..=4, a 3..=6.
        let ship = |node: u16, recs: &[(u64, Vec<u8>)]| -> Vec<(u16, u64, Vec<u8>)> {
            recs.iter().map(|(s, r)| (node, *s, r.clone())).collect()
        };
        let entries_in = |chain: &[Vec<u8>], node: u16, from: u64, to: u64| -> Vec<(u16, Vec<u8>)> {
            chain
                .iter()
                .filter(|e| (from..=to).contains(&ChainEntry::decode(e).unwrap().last()))
                .map(|e| (node, e.clone()))
                .collect()
        };
        let messages = [
            (ship(7, &rec_a[0..2]), entries_in(&chain_a, 7, 1, 2)),
            (ship(9, &rec_b[..]), entries_in(&chain_b, 9, 1, 4)),
            (ship(7, &rec_a[2..]), entries_in(&chain_a, 7, 3, 6)),
        ];
        for (i, (recs, chain)) in messages.iter().enumerate() {
            let shipped: Vec<Shipped> =
                recs.iter().map(|(node, seq, r)| Shipped { node: *node, seq: *seq, record: r }).collect();
            let chain: Vec<(u16, &[u8])> = chain.iter().map(|(n, e)| (*n, e.as_slice())).collect();
            merged.merge(i as u64 + 1, &shipped, &chain).unwrap();
        }
        let checkpoint = merged.merge_checkpoint().unwrap();
        assert_eq!(checkpoint.stream, 3);
        assert_eq!(checkpoint.high_water, BTreeMap::from([(7, 6), (9, 4)]));
        let reports = merged.reader().verify_origins().unwrap();
        let edge_head = edge_a.reader().verify().unwrap();
        assert!(edge_head.is_ok(), "{edge_head:?}");
        assert_eq!(reports.len(), 2);
        assert!(reports.iter().all(OriginReport::is_ok), "{reports:?}");
        assert_eq!((reports[0].node, reports[0].records, reports[0].batches), (7, 6, edge_head.batches));
        assert_eq!(reports[0].head, edge_head.head);
        assert_eq!(reports[1].records, 4);
        // The merged log is itself a chained log, as any other.
        assert!(merged.reader().verify().unwrap().is_ok());

        // A record altered in the merged log is caught against the edge's chain.
        drop(merged);
        crate::testing::overwrite_event(m.path(), 3, &record(99)).unwrap();
        let reports = LogReader::open_secondary(m.path()).unwrap().verify_origins().unwrap();
        let bad = reports.iter().find(|r| r.node == 9).unwrap();
        assert_eq!(bad.first_bad.as_ref().map(|(s, _)| *s), Some(1));
    }

    #[test]
    fn a_missing_record_and_a_trailing_partial_batch_are_reported() {
        let a = tempfile::tempdir().unwrap();
        let m = tempfile::tempdir().unwrap();
        // At least two batches (the writer may split them further under load).
        let (_edge, recs, chain) = edge(a.path(), &[2, 3]);
        let merged = open(m.path());
        let first = ChainEntry::decode(&chain[0]).unwrap().last();
        let ship = |range: std::ops::RangeInclusive<u64>| -> Vec<Shipped<'_>> {
            range.map(|s| Shipped { node: 1, seq: s, record: &recs[s as usize - 1].1 }).collect()
        };
        // The first batch with its entry, and one record of the next, whose entry has not come.
        merged.merge(1, &ship(1..=first + 1), &[(1, &chain[0])]).unwrap();
        let r = &merged.reader().verify_origins().unwrap()[0];
        assert!(r.is_ok(), "{r:?}");
        assert_eq!((r.records, r.unchained, r.head_seq), (first + 1, 1, first));
        // Record first + 2 never arrives; the rest and every entry do: the gap is named.
        let rest: Vec<(u16, &[u8])> = chain[1..].iter().map(|e| (1, e.as_slice())).collect();
        merged.merge(2, &ship(first + 3..=5), &rest).unwrap();
        let r = &merged.reader().verify_origins().unwrap()[0];
        assert_eq!(r.first_bad.as_ref().map(|(s, _)| *s), Some(first + 2), "{r:?}");
    }

    #[test]
    fn an_empty_merge_moves_only_the_stream_position_and_bad_entries_are_refused() {
        let m = tempfile::tempdir().unwrap();
        let merged = open(m.path());
        merged.merge(5, &[], &[]).unwrap();
        assert_eq!(merged.merge_checkpoint().unwrap().stream, 5);
        assert_eq!(merged.reader().last_seq().unwrap(), None);
        let err = merged.merge(6, &[], &[(3, b"junk")]).unwrap_err();
        assert!(err.to_string().contains("node 3"), "{err}");
        assert_eq!(merged.merge_checkpoint().unwrap().stream, 5);
    }
}
