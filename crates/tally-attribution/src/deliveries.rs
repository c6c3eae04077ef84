//! The delivery log: what became of each notification of the outbox (`crate::State`'s
//! outbox, `tally_model::delivery`), kept by the dispatcher in its own small RocksDB beside
//! the attribution state (`{data_dir}/deliveries`). Apart from the state on purpose: the
//! state is derived from the log and may be rebuilt, which must not forget what was
//! delivered; `floor`, the last outbox key taken, keeps a rebuilt outbox from being sent again.
//!
//! | key | value |
//! |---|---|
//! | `floor` | the last outbox key handed to the dispatcher |
//! | `d/` + outbox key | a [`Delivery`] as JSON |
//! | `due/` + next attempt (ms, u64 BE) + outbox key | empty: the deliveries waiting for an attempt |

use std::path::Path;

use rocksdb::{Direction, IteratorMode, Options, WriteBatch, DB};
use serde::{Deserialize, Serialize};
use tally_model::delivery::Notification;

use crate::AttributionError;

const FLOOR: &[u8] = b"floor";
const RECORD: &[u8] = b"d/";
const DUE: &[u8] = b"due/";

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Waiting for its next attempt.
    Pending,
    /// The receiver answered 2xx.
    Delivered,
    /// Out of attempts (or refused for good: a private address, a bad URL); redeliverable.
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
        }
    }
}

/// One notification's delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub notification: Notification,
    pub status: DeliveryStatus,
    pub attempts: u32,
    /// When it was taken from the outbox (wall clock, ms).
    pub created_ms: u64,
    /// When the next attempt is due (pending only).
    pub next_at_ms: Option<u64>,
    pub delivered_ms: Option<u64>,
    /// The last attempt's HTTP status, if it got one.
    pub last_status: Option<u16>,
    /// The last attempt's failure, in words.
    pub last_error: String,
    pub last_latency_ms: Option<u64>,
}

impl Delivery {
    /// Its stored form (JSON), also what an attribution tier's delivery feed carries.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising strings and integers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Delivery, AttributionError> {
        serde_json::from_slice(bytes).map_err(|e| AttributionError::Corrupt(format!("delivery record: {e}")))
    }
}

/// The delivery log.
pub struct DeliveryStore {
    db: DB,
}

impl std::fmt::Debug for DeliveryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveryStore").finish_non_exhaustive()
    }
}

fn db_err(e: rocksdb::Error) -> AttributionError {
    AttributionError::Store(e.to_string())
}

fn due_key(at_ms: u64, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(DUE.len() + 8 + key.len());
    k.extend_from_slice(DUE);
    k.extend_from_slice(&at_ms.to_be_bytes());
    k.extend_from_slice(key);
    k
}

/// The outbox key of the notification named `name` (`tally-SEQ-N`, its key as receivers see
/// it); `None` for anything else.
pub fn outbox_key(name: &str) -> Option<Vec<u8>> {
    let (seq, n) = name.strip_prefix("tally-")?.split_once('-')?;
    Some(crate::keys::outbox(seq.parse().ok()?, n.parse().ok()?))
}

fn record_key(key: &[u8]) -> Vec<u8> {
    [RECORD, key].concat()
}

impl DeliveryStore {
    /// Opens (creating) the delivery log in `dir`; only the dispatcher writes it.
    pub fn open(dir: &Path) -> Result<DeliveryStore, AttributionError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        let db = DB::open(&opts, dir)
            .map_err(|e| AttributionError::Open { dir: dir.to_path_buf(), reason: e.to_string() })?;
        Ok(DeliveryStore { db })
    }

    /// Opens the delivery log in `dir` read-only, beside a running dispatcher.
    pub fn open_read_only(dir: &Path) -> Result<DeliveryStore, AttributionError> {
        let db = DB::open_for_read_only(&Options::default(), dir, false)
            .map_err(|e| AttributionError::Open { dir: dir.to_path_buf(), reason: e.to_string() })?;
        Ok(DeliveryStore { db })
    }

    /// The last outbox key taken.
    pub fn floor(&self) -> Result<Option<Vec<u8>>, AttributionError> {
        self.db.get(FLOOR).map_err(db_err)
    }

    /// Takes outbox items: each becomes a pending delivery due now, and the floor moves past
    /// them, in one write. An item already recorded (an attribution tier's standby learns
    /// deliveries from the active process's feed, sometimes before its own state made them)
    /// keeps its record. An item whose change is older than `expire_before` (ms; event
    /// time) is recorded failed, not sent: on a tier, a process catching up a history longer
    /// than the feed keeps cannot know whether the active one delivered it.
    pub fn take(
        &self,
        items: &[(Vec<u8>, Notification)],
        now_ms: u64,
        expire_before: Option<u64>,
    ) -> Result<(), AttributionError> {
        let Some((last, _)) = items.last() else { return Ok(()) };
        let mut batch = WriteBatch::default();
        for (key, n) in items {
            if self.db.get_pinned(record_key(key)).map_err(db_err)?.is_some() {
                continue;
            }
            let mut d = Delivery {
                notification: n.clone(),
                status: DeliveryStatus::Pending,
                attempts: 0,
                created_ms: now_ms,
                next_at_ms: Some(now_ms),
                delivered_ms: None,
                last_status: None,
                last_error: String::new(),
                last_latency_ms: None,
            };
            if expire_before.is_some_and(|t| n.ts_ms < t) {
                d.status = DeliveryStatus::Failed;
                d.next_at_ms = None;
                d.last_error = "not sent: older than the delivery feed keeps when this process took it \
                                (redeliver to send it)"
                    .to_owned();
            } else {
                batch.put(due_key(now_ms, key), n.host());
            }
            batch.put(record_key(key), d.to_bytes());
        }
        batch.put(FLOOR, last);
        self.db.write(batch).map_err(db_err)
    }

    /// Records `d` as the delivery's state, as another process reported it (an attribution
    /// tier's delivery feed), replacing this log's: the due index follows.
    pub fn apply(&self, key: &[u8], d: &Delivery) -> Result<(), AttributionError> {
        let was_due = self.get(key)?.filter(|o| o.status == DeliveryStatus::Pending).and_then(|o| o.next_at_ms);
        self.put(key, was_due, d)
    }

    /// Up to `limit` deliveries due at `now_ms` that `take` (given the outbox key and the
    /// delivery) accepts, earliest first. At most `scan` due entries are looked at. `skip`
    /// (given the outbox key and the delivery's host, `""` in entries written before the
    /// due index kept it) passes over an entry without reading its delivery: reading and
    /// parsing thousands a look, behind one full receiver's backlog, was what held a look
    /// up.
    pub fn due(
        &self,
        now_ms: u64,
        limit: usize,
        scan: usize,
        mut skip: impl FnMut(&[u8], &str) -> bool,
        mut take: impl FnMut(&[u8], &Delivery) -> bool,
    ) -> Result<Vec<(Vec<u8>, Delivery)>, AttributionError> {
        let mut out = Vec::new();
        for (looked, item) in self.db.iterator(IteratorMode::From(DUE, Direction::Forward)).enumerate() {
            let (k, host) = item.map_err(db_err)?;
            let Some(rest) = k.strip_prefix(DUE) else { break };
            if rest.len() < 8 || out.len() == limit || looked == scan {
                break;
            }
            let at = u64::from_be_bytes(rest[..8].try_into().unwrap_or([0xff; 8]));
            if at > now_ms {
                break;
            }
            let key = rest[8..].to_vec();
            if skip(&key, std::str::from_utf8(&host).unwrap_or_default()) {
                continue;
            }
            if let Some(d) = self.get(&key)?.filter(|d| take(&key, d)) {
                out.push((key, d));
            }
        }
        Ok(out)
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Delivery>, AttributionError> {
        self.db.get_pinned(record_key(key)).map_err(db_err)?.map(|v| Delivery::from_bytes(&v)).transpose()
    }

    /// Records `d`, which was due at `was_due` (if it was), as its new state: the due index
    /// follows `d.next_at_ms`.
    pub fn put(&self, key: &[u8], was_due: Option<u64>, d: &Delivery) -> Result<(), AttributionError> {
        let mut batch = WriteBatch::default();
        if let Some(at) = was_due {
            batch.delete(due_key(at, key));
        }
        if let (DeliveryStatus::Pending, Some(at)) = (d.status, d.next_at_ms) {
            batch.put(due_key(at, key), d.notification.host());
        }
        batch.put(record_key(key), d.to_bytes());
        self.db.write(batch).map_err(db_err)
    }

    /// Makes the delivery under `key` due now, whatever its status (attempts are kept); the
    /// delivery as it now is, `None` if there is none.
    pub fn redeliver(&self, key: &[u8], now_ms: u64) -> Result<Option<Delivery>, AttributionError> {
        let Some(mut d) = self.get(key)? else { return Ok(None) };
        let was_due = d.next_at_ms.filter(|_| d.status == DeliveryStatus::Pending);
        d.status = DeliveryStatus::Pending;
        d.next_at_ms = Some(now_ms);
        d.created_ms = now_ms;
        self.put(key, was_due, &d)?;
        Ok(Some(d))
    }

    /// Deliveries in outbox order after `after` (an outbox key), up to `limit`, that `keep`
    /// accepts.
    pub fn list(
        &self,
        after: Option<&[u8]>,
        limit: usize,
        keep: impl Fn(&Delivery) -> bool,
    ) -> Result<Vec<(Vec<u8>, Delivery)>, AttributionError> {
        let from = after.map(record_key).unwrap_or_else(|| RECORD.to_vec());
        let mut out = Vec::new();
        for item in self.db.iterator(IteratorMode::From(&from, Direction::Forward)) {
            let (k, v) = item.map_err(db_err)?;
            let Some(key) = k.strip_prefix(RECORD) else { break };
            if after.is_some_and(|a| key == a) {
                continue;
            }
            if out.len() == limit {
                break;
            }
            let d = Delivery::from_bytes(&v)?;
            if keep(&d) {
                out.push((key.to_vec(), d));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tally_model::delivery::Target;

    fn item(seq: u64, ts_ms: u64) -> (Vec<u8>, Notification) {
        let n = Notification {
            key: format!("tally-{seq}-0"),
            event: "commission.created".into(),
            receiver: "aff1".into(),
            ts_ms,
            target: Target::Postback { url: "https://aff1.example/pb".into() },
        };
        (crate::keys::outbox(seq, 0), n)
    }

    #[test]
    fn a_state_from_the_feed_stands_when_the_outbox_item_arrives_later() {
        let dir = tempfile::tempdir().unwrap();
        let store = DeliveryStore::open(dir.path()).unwrap();
        let (key, n) = item(7, 1_000);
        // The active process delivered it before this standby's worker made it.
        let delivered = Delivery {
            notification: n.clone(),
            status: DeliveryStatus::Delivered,
            attempts: 1,
            created_ms: 900,
            next_at_ms: None,
            delivered_ms: Some(950),
            last_status: Some(200),
            last_error: String::new(),
            last_latency_ms: Some(3),
        };
        store.apply(&key, &delivered).unwrap();
        store.take(&[(key.clone(), n)], 2_000, None).unwrap();
        assert_eq!(store.get(&key).unwrap().unwrap(), delivered);
        assert!(store.due(u64::MAX, 10, 10, |_, _| false, |_, _| true).unwrap().is_empty(), "nothing to send");
        // A pending state moves the due index; a later delivered one empties it again.
        let pending = Delivery { status: DeliveryStatus::Pending, next_at_ms: Some(5_000), ..delivered.clone() };
        store.apply(&key, &pending).unwrap();
        assert_eq!(store.due(5_000, 10, 10, |_, _| false, |_, _| true).unwrap().len(), 1);
        store.apply(&key, &delivered).unwrap();
        assert!(store.due(u64::MAX, 10, 10, |_, _| false, |_, _| true).unwrap().is_empty());
    }

    #[test]
    fn items_older_than_the_feed_keeps_are_recorded_failed_not_sent() {
        let dir = tempfile::tempdir().unwrap();
        let store = DeliveryStore::open(dir.path()).unwrap();
        let (old, new) = (item(1, 1_000), item(2, 9_000));
        store.take(&[old.clone(), new.clone()], 10_000, Some(5_000)).unwrap();
        let d = store.get(&old.0).unwrap().unwrap();
        assert_eq!(d.status, DeliveryStatus::Failed);
        assert!(d.last_error.contains("redeliver"), "{}", d.last_error);
        let due = store.due(10_000, 10, 10, |_, _| false, |_, _| true).unwrap();
        assert_eq!(due.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(), vec![new.0]);
        assert_eq!(store.floor().unwrap(), Some(item(2, 0).0));
    }

    /// The due index names each delivery's host, so `skip` can pass over a full receiver's
    /// deliveries without reading them; an entry written before it did names none.
    #[test]
    fn the_due_index_names_hosts_for_skipping_unread() {
        let dir = tempfile::tempdir().unwrap();
        let store = DeliveryStore::open(dir.path()).unwrap();
        let (a, b) = (item(1, 1_000), item(2, 1_000));
        store.take(&[a.clone(), b.clone()], 2_000, None).unwrap();
        // As an older dispatcher wrote it: no host.
        let (c, n) = item(3, 1_000);
        store.take(&[(c.clone(), n)], 2_000, None).unwrap();
        store.db.put(due_key(2_000, &c), []).unwrap();
        let mut hosts = Vec::new();
        let mut read = Vec::new();
        let due = store
            .due(
                2_000,
                10,
                10,
                |key, host| {
                    hosts.push(host.to_owned());
                    key == a.0.as_slice()
                },
                |key, _| {
                    read.push(key.to_vec());
                    true
                },
            )
            .unwrap();
        assert_eq!(hosts, ["aff1.example", "aff1.example", ""]);
        assert_eq!(read, [b.0.clone(), c.clone()], "a skipped entry is not read");
        assert_eq!(due.into_iter().map(|(k, _)| k).collect::<Vec<_>>(), [b.0, c]);
    }
}
