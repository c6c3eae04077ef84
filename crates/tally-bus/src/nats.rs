//! The NATS side both halves share: the connection and the events stream.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use tokio::sync::watch;

use crate::config::{Auth, BusConfig};
use crate::metrics::BusMetrics;

/// JetStream's duplicate window. A fast path only: the consumer's high-water marks, not this,
/// make delivery exactly once.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Why a follower of a stream returned without an error.
pub(crate) enum Ended {
    /// Asked to stop.
    Stopped,
    /// The client reconnected: start a new consumer from the stored position.
    Reconnected,
}

/// A connection to the bus: JetStream, and the count of (re)connections so far.
pub(crate) struct Bus {
    pub(crate) js: jetstream::Context,
    /// Bumped on every connection. An ordered consumer lives in the server's memory: after
    /// a server restart it is gone, and the client noticed only ~15 s later (missed
    /// heartbeats); its owners start a new one on every reconnection instead.
    pub(crate) connections: watch::Receiver<u64>,
}

/// A client that connects in the background and reconnects forever: an edge starts and
/// serves whether or not NATS is up.
pub(crate) async fn connect(config: &BusConfig, name: &str, metrics: &BusMetrics) -> Bus {
    let events = metrics.clone();
    let (connected, connections) = watch::channel(0u64);
    let connected = std::sync::Arc::new(connected);
    let options = options(config)
        .name(name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .event_callback(move |event| {
            let events = events.clone();
            let connected = std::sync::Arc::clone(&connected);
            async move {
                match event {
                    async_nats::Event::Connected => {
                        events.connected.set(1);
                        connected.send_modify(|n| *n += 1);
                    }
                    async_nats::Event::Disconnected => {
                        events.connected.set(0);
                    }
                    other => tally_telemetry::warn_limited!(event = %other, "NATS client event"),
                }
            }
        });
    // With retry_on_initial_connect, connect fails only on addresses that do not parse,
    // which the config's validation refused; retried in case it ever does otherwise.
    loop {
        match options.clone().connect(config.urls.as_slice()).await {
            Ok(client) => {
                let mut js = jetstream::new(client);
                js.set_timeout(config.ack_timeout);
                return Bus { js, connections };
            }
            Err(e) => {
                tally_telemetry::error_limited!(error = %e, "cannot set up the NATS client");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// The connection options `config` asks for: its credentials and TLS.
pub(crate) fn options(config: &BusConfig) -> async_nats::ConnectOptions {
    let secret = config.credential.as_ref().map(|c| c.0.clone()).unwrap_or_default();
    let mut options = match &config.auth {
        Auth::None => async_nats::ConnectOptions::new(),
        Auth::Token { .. } => async_nats::ConnectOptions::with_token(secret),
        Auth::User { user, .. } => async_nats::ConnectOptions::with_user_and_password(user.clone(), secret),
    };
    if let Some(ca) = &config.tls.ca {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let Some((cert, key)) = &config.tls.client {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    options
}

/// The events stream as the config describes it, created if it does not exist.
pub(crate) async fn events_stream(
    js: &jetstream::Context,
    config: &BusConfig,
) -> Result<stream::Stream, async_nats::Error> {
    let wanted = stream::Config {
        name: config.stream.clone(),
        subjects: vec![config.events_subjects()],
        storage: stream::StorageType::File,
        num_replicas: config.replicas,
        duplicate_window: DUPLICATE_WINDOW,
        max_age: config.retention.unwrap_or_default(),
        ..Default::default()
    };
    match js.get_or_create_stream(wanted).await {
        Ok(s) => Ok(s),
        // Two processes starting together (an edge's shipper, the tier's consumer) may both
        // find no stream and both create it: the one that loses finds it there.
        Err(e) => js.get_stream(&config.stream).await.map_err(|_| e.into()),
    }
}
