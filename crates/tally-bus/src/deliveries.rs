//! What the attribution tier has delivered (issue 26). Every attribution process attributes
//! the merged log, so each has the same outbox; only the lease holder sends it. The holder
//! publishes each delivery's state as it changes (pending with its next attempt, delivered,
//! failed) to a stream that keeps the latest per delivery (`{stream}_DELIVERIES`, subject
//! `{prefix}.delivery.{key}`, `max_age` the feed's retention); every process follows that
//! stream and hands each state to its own delivery log. A standby that takes over therefore
//! sends only what the old holder had not finished: at least once, never from the start.
//!
//! The bus knows nothing of what a delivery is: keys and bytes. Publishing never blocks the
//! dispatcher: a bounded queue, and a state that does not fit is dropped and counted (a
//! standby taking over would then send that delivery once more, which its idempotency key
//! lets the receiver drop).

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use async_nats::jetstream::stream;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::config::BusConfig;
use crate::metrics::BusMetrics;
use crate::nats::{self, Ended};
use crate::task::{pause, Background};

/// States waiting to be published; past this, new ones are dropped (and counted).
const QUEUE: usize = 10_000;

fn stream_config(config: &BusConfig, retention: Duration) -> stream::Config {
    stream::Config {
        name: format!("{}_DELIVERIES", config.stream),
        subjects: vec![format!("{}.>", subject_prefix(config))],
        storage: stream::StorageType::File,
        num_replicas: config.replicas,
        max_messages_per_subject: 1,
        max_age: retention,
        ..Default::default()
    }
}

fn subject_prefix(config: &BusConfig) -> String {
    format!("{}.delivery", config.subject_prefix)
}

/// A function that takes each delivery state the feed carries: the delivery's key and its
/// state's bytes, in stream order.
pub type Apply = Box<dyn Fn(&str, &[u8]) + Send + 'static>;

/// A running delivery feed: publishes this process's delivery states, hands everyone's
/// (its own included) to `apply`.
#[derive(Debug)]
pub struct DeliveryFeed {
    task: Background,
    publish: mpsc::Sender<(String, Vec<u8>)>,
    metrics: BusMetrics,
}

impl DeliveryFeed {
    /// Starts following the feed; the stream keeps each delivery's latest state for
    /// `retention`.
    pub fn start(
        config: BusConfig,
        name: String,
        retention: Duration,
        metrics: BusMetrics,
        apply: Apply,
    ) -> io::Result<DeliveryFeed> {
        let (publish, mut to_publish) = mpsc::channel::<(String, Vec<u8>)>(QUEUE);
        let m = metrics.clone();
        let task = Background::spawn("tally-deliveries-feed", move |stop| async move {
            let mut bus = nats::connect(&config, &format!("tally-deliveries-{name}"), &m).await;
            let mut pending = None;
            loop {
                match follow(&mut bus, &config, retention, &m, &apply, &mut to_publish, &mut pending, &stop).await {
                    Ok(Ended::Stopped) => break,
                    Ok(Ended::Reconnected) => {}
                    Err(e) => {
                        m.consume_errors.inc();
                        tally_telemetry::warn_limited!(error = %e, "the delivery feed failed; retrying");
                        pause(Duration::from_secs(1), &stop).await;
                    }
                }
            }
        })?;
        Ok(DeliveryFeed { task, publish, metrics })
    }

    /// Publishes the state `bytes` of delivery `key` (queued; dropped and counted if the
    /// queue is full).
    pub fn publisher(&self) -> impl Fn(&str, Vec<u8>) + Send + Sync + 'static {
        let (tx, metrics) = (self.publish.clone(), self.metrics.clone());
        move |key, bytes| {
            if tx.try_send((key.to_owned(), bytes)).is_err() {
                metrics.delivery_feed_dropped.inc();
            }
        }
    }

    pub fn stop(self) {
        self.task.stop();
    }
}

/// Follows the feed until stopped, reconnected, or something fails; publishes meanwhile.
#[allow(clippy::too_many_arguments)]
async fn follow(
    bus: &mut nats::Bus,
    config: &BusConfig,
    retention: Duration,
    metrics: &BusMetrics,
    apply: &Apply,
    to_publish: &mut mpsc::Receiver<(String, Vec<u8>)>,
    pending: &mut Option<(String, Vec<u8>)>,
    stop: &AtomicBool,
) -> Result<Ended, async_nats::Error> {
    bus.connections.borrow_and_update();
    let js = &bus.js;
    let stream = js.get_or_create_stream(stream_config(config, retention)).await?;
    let prefix = subject_prefix(config);
    // The latest state of every delivery the stream still holds, then each new one.
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: format!("{prefix}.>"),
            deliver_policy: DeliverPolicy::LastPerSubject,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    while !stop.load(Ordering::Relaxed) {
        // A state that failed to publish last time goes first.
        if let Some((key, bytes)) = pending.take() {
            let sent = js.publish(format!("{prefix}.{key}"), bytes.clone().into()).await;
            if let Err(e) = async { sent?.await.map_err(async_nats::Error::from) }.await {
                metrics.publish_errors.inc();
                *pending = Some((key, bytes));
                return Err(e);
            }
            metrics.delivery_feed_published.inc();
            continue;
        }
        tokio::select! {
            m = messages.next() => match m {
                Some(m) => {
                    let m = m?;
                    if let Some(key) = m.subject.as_str().strip_prefix(&prefix).and_then(|k| k.strip_prefix('.')) {
                        apply(key, &m.payload);
                        metrics.delivery_feed_applied.inc();
                    }
                }
                None => return Err("the bus closed the delivery feed's consumer".into()),
            },
            item = to_publish.recv() => match item {
                Some(item) => *pending = Some(item),
                None => return Ok(Ended::Stopped),
            },
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        if bus.connections.has_changed().unwrap_or(false) {
            return Ok(Ended::Reconnected);
        }
    }
    Ok(Ended::Stopped)
}
