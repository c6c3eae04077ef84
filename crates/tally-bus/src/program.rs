//! One program for the cluster. The program an edge puts in force from its own file or admin
//! API is published to a stream that keeps only the latest (`{stream}_PROGRAM`, subject
//! `{prefix}.program`); every edge follows that stream and adopts each program in stream order,
//! its own included, so all edges end on the last one published. An edge logs each program
//! it puts in force as a `ProgramChange`, as a single node does, so attribution applies the
//! rules in force at each event in the merged log's order, and replay still can. An edge that
//! starts reads the current program before it serves ([`fetch_program`]).

use std::io;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use async_nats::jetstream::{self, stream};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::config::BusConfig;
use crate::metrics::BusMetrics;
use crate::nats::{self, Ended};
use crate::task::{pause, Background};

fn stream_config(config: &BusConfig) -> stream::Config {
    stream::Config {
        name: format!("{}_PROGRAM", config.stream),
        subjects: vec![config.program_subject()],
        storage: stream::StorageType::File,
        num_replicas: config.replicas,
        max_messages_per_subject: 1,
        ..Default::default()
    }
}

/// The program the cluster runs now (`None` if none was ever published). Blocking; fails if
/// the bus does not answer within `timeout`.
pub fn fetch_program(config: &BusConfig, timeout: Duration) -> Result<Option<String>, String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let fetched = tokio::time::timeout(timeout, async {
            let client = nats::options(config)
                .connection_timeout(timeout)
                .connect(config.urls.as_slice())
                .await
                .map_err(|e| e.to_string())?;
            let mut js = jetstream::new(client);
            js.set_timeout(timeout);
            let stream = js.get_or_create_stream(stream_config(config)).await.map_err(|e| e.to_string())?;
            match stream.get_last_raw_message_by_subject(&config.program_subject()).await {
                Ok(m) => String::from_utf8(m.payload.to_vec()).map(Some).map_err(|e| e.to_string()),
                Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
                Err(e) => Err(e.to_string()),
            }
        })
        .await;
        fetched.unwrap_or_else(|_| Err(format!("the bus did not answer within {timeout:?}")))
    })
}

/// A running program channel: publishes this edge's programs, hands the cluster's to it.
#[derive(Debug)]
pub struct ProgramChannel {
    task: Background,
    publish: mpsc::UnboundedSender<String>,
}

impl ProgramChannel {
    /// Starts following the cluster's program; returns the channel and the receiver of
    /// programs to adopt (each program's TOML source, in stream order).
    pub fn start(
        config: BusConfig,
        node: u16,
        metrics: BusMetrics,
    ) -> io::Result<(ProgramChannel, mpsc::UnboundedReceiver<String>)> {
        let (publish, mut to_publish) = mpsc::unbounded_channel::<String>();
        let (adopt, programs) = mpsc::unbounded_channel();
        let task = Background::spawn("tally-program", move |stop| async move {
            let mut bus = nats::connect(&config, &format!("tally-program-{node}"), &metrics).await;
            let mut pending: Option<String> = None;
            loop {
                match follow(&mut bus, &config, node, &adopt, &mut to_publish, &mut pending, &stop).await {
                    Ok(Ended::Stopped) => break,
                    Ok(Ended::Reconnected) => {}
                    Err(e) => {
                        metrics.publish_errors.inc();
                        tally_telemetry::warn_limited!(error = %e, "the cluster's program channel failed; retrying");
                        pause(Duration::from_secs(1), &stop).await;
                    }
                }
            }
        })?;
        Ok((ProgramChannel { task, publish }, programs))
    }

    /// Publishes `source` as the cluster's program (queued; sent as soon as the bus answers).
    pub fn publish(&self, source: &str) {
        let _ = self.publish.send(source.to_owned());
    }

    /// A function that publishes, for [`ProgramChannel::publish`]'s callers that cannot
    /// hold the channel.
    pub fn publisher(&self) -> impl Fn(&str) + Send + Sync + 'static {
        let tx = self.publish.clone();
        move |source| {
            let _ = tx.send(source.to_owned());
        }
    }

    pub fn stop(self) {
        self.task.stop();
    }
}

/// Follows the program stream until stopped (or the channel dropped), reconnected, or
/// something fails; publishes meanwhile.
async fn follow(
    bus: &mut nats::Bus,
    config: &BusConfig,
    node: u16,
    adopt: &mpsc::UnboundedSender<String>,
    to_publish: &mut mpsc::UnboundedReceiver<String>,
    pending: &mut Option<String>,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<Ended, async_nats::Error> {
    bus.connections.borrow_and_update();
    let js = &bus.js;
    let stream = js.get_or_create_stream(stream_config(config)).await?;
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: config.program_subject(),
            deliver_policy: DeliverPolicy::LastPerSubject,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        // A program to publish that failed last time goes first.
        if let Some(source) = pending.take() {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Tally-Node", node.to_string().as_str());
            let sent = js.publish_with_headers(config.program_subject(), headers, source.clone().into()).await;
            if let Err(e) = async { sent?.await.map_err(async_nats::Error::from) }.await {
                *pending = Some(source);
                return Err(e);
            }
            continue;
        }
        tokio::select! {
            m = messages.next() => match m {
                Some(m) => {
                    let source = String::from_utf8(m?.payload.to_vec())?;
                    let _ = adopt.send(source);
                }
                None => return Err("the bus closed the program consumer".into()),
            },
            source = to_publish.recv() => match source {
                Some(source) => *pending = Some(source),
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
