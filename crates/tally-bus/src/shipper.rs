//! The shipper: publishes an edge's committed events to the stream, in order, and records
//! how far the bus has acknowledged them in the edge's own log.
//!
//! One message is in flight at a time, and the next is read only once it is acknowledged:
//! a node's messages then reach the stream in sequence order, which is what lets the
//! consumer treat any hole as missing data rather than as a message still on its way. A
//! message carries up to `max_records` records, so a backlog drains at one round trip per
//! few thousand events. A publish that fails or is not acknowledged in time is sent again,
//! with the same `Nats-Msg-Id`, until it is; meanwhile the edge goes on committing and
//! answering: its log is the buffer.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use tally_log::{Log, LogError, Tail};

use crate::config::BusConfig;
use crate::envelope::Message;
use crate::metrics::BusMetrics;
use crate::nats;
use crate::task::{pause, Background};

/// How long a read of the log waits for new events, and so how often the lag gauges move
/// while nothing is committed.
const POLL: Duration = Duration::from_millis(200);
/// The pause after a failed publish, doubled up to `MAX_BACKOFF`.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// The most chain entry bytes one record can add to a message (see the cut in `run`).
const CHAIN_BYTES_PER_RECORD: usize = 45 + 8 + 4;
/// Room left for the message's NATS headers: `max_payload` counts them too.
const HEADERS_ROOM: usize = 512;

/// A running shipper.
#[derive(Debug)]
pub struct Shipper(Background);

impl Shipper {
    /// Starts shipping `log`, the log of edge `node`, from its stored shipped position.
    pub fn start(log: Log, node: u16, config: BusConfig, metrics: BusMetrics) -> io::Result<Shipper> {
        Background::spawn("tally-shipper", move |stop| async move {
            if let Err(e) = run(log, node, config, metrics, stop).await {
                tracing::error!(error = %e, "shipping stopped; restart to resume from the shipped position");
            }
        })
        .map(Shipper)
    }

    /// Stops after the message in flight (without waiting for a bus that is away).
    pub fn stop(self) {
        self.0.stop();
    }
}

async fn run(
    log: Log,
    node: u16,
    config: BusConfig,
    metrics: BusMetrics,
    stop: Arc<AtomicBool>,
) -> Result<(), LogError> {
    let js = nats::connect(&config, &format!("tally-edge-{node}"), &metrics).await.js;
    let subject = config.events_subject(node);
    let mut shipped = log.shipped()?;
    metrics.shipped_position.set(i64::try_from(shipped).unwrap_or(i64::MAX));
    tracing::info!(node, shipped, stream = %config.stream, "shipping to the bus");
    let mut stream_ready = false;
    let mut tail = Some(log.reader().tail(shipped + 1));
    let mut lag = Lag { log: log.clone(), metrics: metrics.clone(), seen: Default::default() };
    // Messages sent by this process (for the test switch that drops some).
    #[cfg(feature = "test-util")]
    let mut sent = 0u64;
    while !stop.load(Ordering::Relaxed) {
        lag.update(shipped);
        if !stream_ready {
            match prepare(&js, &config, &subject, &log).await {
                Ok(()) => stream_ready = true,
                Err(e) => {
                    metrics.publish_errors.inc();
                    tally_telemetry::warn_limited!(error = %e, stream = %config.stream, "not shipping; events wait in the log");
                    pause(MAX_BACKOFF, &stop).await;
                    continue;
                }
            }
        }
        let Some(current) = tail.take() else { return Err(LogError::Closed) };
        let max = config.max_records;
        let (current, batch) = tokio::task::spawn_blocking(move || {
            let mut current = current;
            let batch = current.next_batch(max, POLL);
            (current, batch)
        })
        .await
        .map_err(|e| LogError::Read(format!("the shipper's log reader failed: {e}")))?;
        let mut current: Tail = current;
        let mut records = batch?;
        if records.is_empty() {
            tail = Some(current);
            continue;
        }
        // A short run waits `linger` for more: under load a message per commit batch cost
        // the shipper and NATS more CPU per event than the redirect itself.
        if records.len() < max && !config.linger.is_zero() {
            pause(config.linger, &stop).await;
            records.extend(current.next_batch(max - records.len(), Duration::ZERO)?);
        }
        // Cut the run to the message size; what is left is read again next time. Each record
        // is counted with the most chain entry bytes it can bring (a batch of its own: the
        // entry's 45 fixed bytes, its 8-byte leaf, a 4-byte length), so a message never
        // outgrows the limit (headers included), which NATS's max_payload would refuse
        // forever.
        let mut bytes = 0;
        let keep = records
            .iter()
            .position(|(_, r)| {
                bytes += r.len() + 4 + CHAIN_BYTES_PER_RECORD;
                Message::encoded_len(0, bytes) + HEADERS_ROOM > config.max_message_bytes
            })
            .unwrap_or(records.len())
            .max(1);
        records.truncate(keep);
        let first = records[0].0;
        let last = first + records.len() as u64 - 1;
        current.seek(last + 1);
        tail = Some(current);
        let chain = log.reader().chain_entries(first, last)?.into_iter().map(|(_, e)| e).collect();
        let message = Message { node, first, records: records.into_iter().map(|(_, r)| r).collect(), chain };
        #[cfg(feature = "test-util")]
        let dropped = {
            sent += 1;
            crate::testing::skip(sent)
        };
        #[cfg(not(feature = "test-util"))]
        let dropped = false;
        if !dropped && !publish(&js, &subject, &config, &message, &mut lag, shipped, &stop).await {
            return Ok(());
        }
        log.set_shipped(last)?;
        shipped = last;
        metrics.shipped_position.set(i64::try_from(shipped).unwrap_or(i64::MAX));
        metrics.shipped_events.inc_by(message.records.len() as u64);
        metrics.shipped_messages.inc();
    }
    Ok(())
}

/// The lag gauges: committed events not yet acknowledged, and the age of the oldest of them.
/// The age is read off when the shipper first saw the log reach past the shipped position
/// (it looks at every message and every retry), so it is late by at most one of those.
struct Lag {
    log: Log,
    metrics: BusMetrics,
    /// The log's head as seen, and when: one entry per head seen that is not shipped yet.
    seen: std::collections::VecDeque<(u64, Instant)>,
}

impl Lag {
    fn update(&mut self, shipped: u64) {
        let committed = self.log.last_committed();
        if self.seen.back().is_none_or(|(seq, _)| committed > *seq) {
            self.seen.push_back((committed, Instant::now()));
        }
        while self.seen.front().is_some_and(|(seq, _)| *seq <= shipped) {
            self.seen.pop_front();
        }
        let lag = committed.saturating_sub(shipped);
        self.metrics.ship_lag_events.set(i64::try_from(lag).unwrap_or(i64::MAX));
        let age = self.seen.front().map_or(0.0, |(_, at)| at.elapsed().as_secs_f64());
        self.metrics.ship_lag_seconds.set(age);
    }
}

/// Makes sure the stream exists and that this log may ship to `subject`: a stream that
/// already holds this node's events past the end of this log means another edge uses the
/// same node ID, or this data directory was replaced (restored from a backup, or lost):
/// events shipped from here would carry sequence numbers the tier has already merged, and
/// be dropped as repeats. Such a log is refused until the node ID is changed.
async fn prepare(js: &jetstream::Context, config: &BusConfig, subject: &str, log: &Log) -> Result<(), String> {
    let stream = nats::events_stream(js, config).await.map_err(|e| e.to_string())?;
    let last = match stream.get_last_raw_message_by_subject(subject).await {
        Ok(m) => Message::decode(&m.payload).map(|m| m.last()).map_err(|e| e.to_string())?,
        Err(e) if e.kind() == async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound => 0,
        Err(e) => return Err(e.to_string()),
    };
    let here = log.last_committed();
    if last > here {
        return Err(format!(
            "the stream holds this node's events up to {last} but this log ends at {here}: another edge has this \
             server.node_id, or this data directory was replaced; give this edge a node ID of its own"
        ));
    }
    Ok(())
}

/// Publishes `message` until JetStream acknowledges it; false if stopped first.
async fn publish(
    js: &jetstream::Context,
    subject: &str,
    config: &BusConfig,
    message: &Message,
    lag: &mut Lag,
    shipped: u64,
    stop: &AtomicBool,
) -> bool {
    let metrics = lag.metrics.clone();
    let payload = bytes::Bytes::from(message.encode());
    let id = message.id();
    let mut backoff = MIN_BACKOFF;
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
        // A message for another stream is refused rather than stored there.
        headers.insert(async_nats::header::NATS_EXPECTED_STREAM, config.stream.as_str());
        headers.insert("Tally-Node", message.node.to_string().as_str());
        headers.insert("Tally-Seq", format!("{}-{}", message.first, message.last()).as_str());
        let acked = async {
            js.publish_with_headers(subject.to_owned(), headers, payload.clone())
                .await?
                .await
                .map_err(async_nats::Error::from)
        };
        match acked.await {
            Ok(_) => return true,
            Err(e) => {
                metrics.publish_errors.inc();
                tally_telemetry::warn_limited!(error = %e, message = %id, "publish not acknowledged; sending it again");
                // The log keeps growing while the bus is away: the gauges say so.
                lag.update(shipped);
                pause(backoff, stop).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}
