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
    /// them, in one write.
    pub fn take(&self, items: &[(Vec<u8>, Notification)], now_ms: u64) -> Result<(), AttributionError> {
        let Some((last, _)) = items.last() else { return Ok(()) };
        let mut batch = WriteBatch::default();
        for (key, n) in items {
            let d = Delivery {
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
            batch.put(record_key(key), serde_json::to_vec(&d).unwrap_or_default());
            batch.put(due_key(now_ms, key), []);
        }
        batch.put(FLOOR, last);
        self.db.write(batch).map_err(db_err)
    }

    /// Up to `limit` deliveries due at `now_ms` that `take` (given the outbox key and the
    /// delivery) accepts, earliest first. At most `scan` due entries are looked at.
    pub fn due(
        &self,
        now_ms: u64,
        limit: usize,
        scan: usize,
        mut take: impl FnMut(&[u8], &Delivery) -> bool,
    ) -> Result<Vec<(Vec<u8>, Delivery)>, AttributionError> {
        let mut out = Vec::new();
        for (looked, item) in self.db.iterator(IteratorMode::From(DUE, Direction::Forward)).enumerate() {
            let (k, _) = item.map_err(db_err)?;
            let Some(rest) = k.strip_prefix(DUE) else { break };
            if rest.len() < 8 || out.len() == limit || looked == scan {
                break;
            }
            let at = u64::from_be_bytes(rest[..8].try_into().unwrap_or([0xff; 8]));
            if at > now_ms {
                break;
            }
            let key = rest[8..].to_vec();
            if let Some(d) = self.get(&key)?.filter(|d| take(&key, d)) {
                out.push((key, d));
            }
        }
        Ok(out)
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Delivery>, AttributionError> {
        match self.db.get(record_key(key)).map_err(db_err)? {
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| AttributionError::Corrupt(format!("delivery record: {e}"))),
            None => Ok(None),
        }
    }

    /// Records `d`, which was due at `was_due` (if it was), as its new state: the due index
    /// follows `d.next_at_ms`.
    pub fn put(&self, key: &[u8], was_due: Option<u64>, d: &Delivery) -> Result<(), AttributionError> {
        let mut batch = WriteBatch::default();
        if let Some(at) = was_due {
            batch.delete(due_key(at, key));
        }
        if let (DeliveryStatus::Pending, Some(at)) = (d.status, d.next_at_ms) {
            batch.put(due_key(at, key), []);
        }
        batch.put(record_key(key), serde_json::to_vec(d).unwrap_or_default());
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
            let d: Delivery =
                serde_json::from_slice(&v).map_err(|e| AttributionError::Corrupt(format!("delivery record: {e}")))?;
            if keep(&d) {
                out.push((key.to_vec(), d));
            }
        }
        Ok(out)
    }
}
