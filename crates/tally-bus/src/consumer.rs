//! The consumer: reads the stream in stream order from the merged log's checkpoint and merges
//! what is new into the merged log, which the attribution worker follows as it follows a
//! single node's log.
//!
//! It keeps no state in NATS: an ordered consumer (ephemeral, no acks) starts from the stream
//! position stored with the merged log, so a crash, a restart or a second process (the hot
//! standby) all resume from what their own merged log holds. A failure (the bus away, a
//! message that does not decode, a failed write) drops the NATS consumer and starts again
//! from the stored checkpoint.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use futures_util::{FutureExt, StreamExt};
use tally_log::{Log, Shipped};

use crate::config::BusConfig;
use crate::envelope::Message;
use crate::merger::{Admit, Merger};
use crate::metrics::BusMetrics;
use crate::nats::{self, Ended};
use crate::task::{pause, Background};

/// Message bytes merged in one write at most: messages ready at once are merged together.
const MERGE_BYTES: usize = 8 << 20;
const RETRY: Duration = Duration::from_secs(1);

/// A running consumer.
#[derive(Debug)]
pub struct Consumer(Background);

impl Consumer {
    /// Starts merging the stream into `log`, the merged log (no other writer may use it).
    pub fn start(log: Log, config: BusConfig, name: String, metrics: BusMetrics) -> io::Result<Consumer> {
        Background::spawn("tally-consumer", move |stop| async move {
            let mut bus = nats::connect(&config, &name, &metrics).await;
            loop {
                match consume(&mut bus, &log, &config, &metrics, &stop).await {
                    Ok(Ended::Stopped) => break,
                    Ok(Ended::Reconnected) => {}
                    Err(e) => {
                        metrics.consume_errors.inc();
                        tally_telemetry::warn_limited!(error = %e, "merging from the bus stopped; resuming from the checkpoint");
                        pause(RETRY, &stop).await;
                    }
                }
            }
        })
        .map(Consumer)
    }

    /// Stops after the write in progress.
    pub fn stop(self) {
        self.0.stop();
    }
}

/// Merges from the stored checkpoint until stopped or reconnected (`Ok`), or something fails.
async fn consume(
    bus: &mut nats::Bus,
    log: &Log,
    config: &BusConfig,
    metrics: &BusMetrics,
    stop: &AtomicBool,
) -> Result<Ended, async_nats::Error> {
    let checkpoint = log.merge_checkpoint()?;
    let mut merger = Merger::new(checkpoint.high_water);
    metrics.stream_position.set(i64::try_from(checkpoint.stream).unwrap_or(i64::MAX));
    bus.connections.borrow_and_update();
    let stream = nats::events_stream(&bus.js, config).await?;
    let deliver_policy = match checkpoint.stream {
        0 => DeliverPolicy::All,
        s => DeliverPolicy::ByStartSequence { start_sequence: s + 1 },
    };
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: config.events_subjects(),
            deliver_policy,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    tracing::info!(stream = %config.stream, from = checkpoint.stream + 1, "merging from the bus");
    while !stop.load(Ordering::Relaxed) {
        // Wait for one message (briefly, to see `stop`), then take whatever else is ready.
        if bus.connections.has_changed().unwrap_or(false) {
            return Ok(Ended::Reconnected);
        }
        let first = match tokio::time::timeout(Duration::from_millis(200), messages.next()).await {
            Err(_) => continue,
            Ok(None) => return Err("the bus closed the consumer".into()),
            Ok(Some(m)) => m?,
        };
        let mut batch = vec![first];
        let mut bytes = batch[0].payload.len();
        while bytes < MERGE_BYTES {
            match messages.next().now_or_never() {
                Some(Some(m)) => {
                    let m = m?;
                    bytes += m.payload.len();
                    batch.push(m);
                }
                Some(None) => return Err("the bus closed the consumer".into()),
                None => break,
            }
        }
        let mut decoded = Vec::with_capacity(batch.len());
        let mut position = 0;
        for m in &batch {
            position = m.info()?.stream_sequence;
            let message = Message::decode(&m.payload)
                .map_err(|e| format!("stream message {position} is not a Tally message this build reads: {e}"))?;
            let admit = merger.admit(&message);
            decoded.push((message, admit));
        }
        let mut shipped = Vec::new();
        let mut chain = Vec::new();
        for (message, admit) in &decoded {
            match admit {
                Admit::New { range, chain: entries } => {
                    let skipped = range.start as u64;
                    metrics.duplicate_events.inc_by(skipped);
                    for i in range.clone() {
                        let seq = message.first + i as u64;
                        shipped.push(Shipped { node: message.node, seq, record: &message.records[i] });
                    }
                    chain.extend(entries.iter().map(|&i| (message.node, message.chain[i].as_slice())));
                }
                Admit::Duplicate => {
                    metrics.duplicate_events.inc_by(message.records.len() as u64);
                }
                Admit::Gap { expected, got } => {
                    metrics.gaps.inc();
                    tally_telemetry::error_limited!(
                        node = message.node,
                        expected,
                        got,
                        "events missing from the stream; this node's later events wait until they are shipped again"
                    );
                }
            }
        }
        log.merge(position, &shipped, &chain)?;
        metrics.merged_events.inc_by(shipped.len() as u64);
        metrics.stream_position.set(i64::try_from(position).unwrap_or(i64::MAX));
    }
    Ok(Ended::Stopped)
}
