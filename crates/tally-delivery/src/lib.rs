//! Outgoing notifications: the dispatcher that takes the attribution state's outbox
//! (`tally_attribution::State::outbox_after`) into the delivery log
//! (`tally_attribution::deliveries`) and delivers each item at least once: postbacks as `GET`,
//! webhooks as `POST` signed in the Standard Webhooks format, with an `Idempotency-Key` (the
//! item's key, the same for every attempt and every replay of the log) so receivers drop
//! repeats.
//!
//! - Retries back off exponentially (with jitter) from `first_retry` to `max_retry`, for
//!   `retry_for` (26 hours by default), then the delivery is `failed` (redeliverable).
//! - A receiver (host and port) gets at most `per_host` requests at once; after 5 failures in
//!   a row its circuit opens for a minute (its deliveries wait, no attempt is spent).
//! - Every attempt has `timeout` for connecting, sending and the answer's first 64 KiB.
//! - It looks at the outbox and the due deliveries every `poll`, and again within
//!   milliseconds while a look finds work, so a prompt receiver is fed as fast as it answers.
//! - Receivers on private, loopback or link-local addresses are refused ([`guard`]) unless
//!   `allow_private`.
//!
//! The dispatcher only reads the attribution state, and writes only its own log: it never
//! holds up ingest or attribution.

pub mod config;
pub mod guard;
pub mod metrics;

pub use metrics::DeliveryMetrics;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tally_attribution::deliveries::{Delivery, DeliveryStatus, DeliveryStore};
use tally_attribution::LedgerReader;
use tally_model::delivery::{webhook_signature, Target};

/// How deliveries are made.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    pub allow_private: bool,
    pub timeout: Duration,
    pub first_retry: Duration,
    pub max_retry: Duration,
    pub retry_for: Duration,
    pub per_host: usize,
    /// How often the outbox and the due deliveries are looked at.
    pub poll: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            allow_private: false,
            timeout: Duration::from_secs(10),
            first_retry: Duration::from_secs(10),
            max_retry: Duration::from_secs(3600),
            retry_for: Duration::from_secs(26 * 3600),
            per_host: 4,
            poll: Duration::from_millis(250),
        }
    }
}

/// Failures in a row that open a host's circuit, and for how long.
const BREAKER_FAILURES: u32 = 5;
const BREAKER_OPEN: Duration = Duration::from_secs(60);
/// Outbox items taken per look.
const TAKE: usize = 1000;
/// Deliveries started per look at most, and due ones looked at.
const START: usize = 1024;
const SCAN: usize = 10_000;
/// Deliveries to one receiver in flight or waiting for a turn at most: past it, the rest stay
/// in the delivery log (on disk) until there is room, so a slow receiver holds no more memory
/// than this, and cannot take the turns of others.
const QUEUE_PER_RECEIVER: usize = 256;
/// Most of an answer read.
const MAX_ANSWER: usize = 64 * 1024;
/// After a look that started deliveries (or took a full batch of the outbox), the next comes
/// this soon, not after `poll`: a receiver that answers at once is fed as fast as it answers,
/// not `QUEUE_PER_RECEIVER` per `poll` (64 per 250 ms, 256 a second, before).
const SOON: Duration = Duration::from_millis(10);
/// ... but no sooner than this many times the last look's duration, so a long backlog of due
/// deliveries (each look goes through up to `SCAN` of them) keeps a look to a quarter of the
/// dispatcher's time at most.
const LOOK_SHARE: u32 = 4;

/// Looks a secret's value up by name (the secrets store).
pub type SecretLookup = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Publishes a delivery's state: its key and bytes.
pub type Publish = Arc<dyn Fn(&str, Vec<u8>) + Send + Sync>;

/// The dispatcher's place on a cluster's attribution tier, where every process has the same
/// outbox and only the active one (the lease holder) sends it. Each process takes the outbox
/// into its delivery log; the active one also attempts what is due and publishes each
/// delivery's new state, and the others take those states from the feed ([`apply_from_feed`]),
/// so the one that takes over sends only what was not finished.
#[derive(Clone)]
pub struct Tier {
    /// True while this process is the active one.
    pub active: Arc<dyn Fn() -> bool + Send + Sync>,
    /// Publishes a delivery's new state (its key, as receivers see it, and its JSON).
    pub publish: Publish,
    /// How long the feed keeps a state: notifications older than this when taken are
    /// recorded failed rather than sent, since the feed can no longer say they were sent.
    pub retention: Duration,
}

impl std::fmt::Debug for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tier").field("retention", &self.retention).finish_non_exhaustive()
    }
}

impl Tier {
    /// Publishes `d` as the state of its delivery.
    pub fn publish(&self, d: &Delivery) {
        (self.publish)(&d.notification.key, d.to_bytes());
    }
}

/// Takes a delivery state from the tier's feed into `store`, unless this process is the
/// active one (whose own states these are, or an earlier holder's it has superseded).
pub fn apply_from_feed(store: &DeliveryStore, tier_active: bool, name: &str, bytes: &[u8]) {
    if tier_active {
        return;
    }
    let Some(key) = tally_attribution::deliveries::outbox_key(name) else {
        tracing::warn!(key = name, "the delivery feed carries a key that is not a delivery's; ignored");
        return;
    };
    match Delivery::from_bytes(bytes) {
        Ok(d) => {
            if let Err(e) = store.apply(&key, &d) {
                tracing::warn!(error = %e, key = name, "cannot record a delivery state from the feed");
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, key = name, "the delivery feed carries a state that does not parse; ignored")
        }
    }
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector<guard::GuardedResolver>>, Full<Bytes>>;

#[derive(Debug, Default)]
struct Host {
    sem: Option<Arc<tokio::sync::Semaphore>>,
    failures: u32,
    open_until: Option<Instant>,
    /// Deliveries started and not finished.
    queued: usize,
}

/// The receiver (host and port) a notification goes to: what limits and the circuit are per.
/// The delivery log's due index keeps the same string, so a look passes over a full
/// receiver's deliveries without reading them.
fn receiver_of(n: &tally_model::delivery::Notification) -> String {
    n.host().to_owned()
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The client: hyper-util's, TLS by rustls with the system's root certificates (none on a
/// machine without them: https receivers then fail, and say why), names resolved through
/// the SSRF guard.
fn client(config: &DeliveryConfig) -> Result<HttpsClient, String> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        tracing::warn!(
            "no system root certificates: deliveries to https receivers will fail (install ca-certificates)"
        );
    }
    // ring, as the NATS client uses: aws-lc-rs (post-quantum key exchange) would add a C and
    // CMake build to every fresh machine.
    #[allow(deprecated)]
    let provider = rustls::crypto::ring::default_provider();
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new_with_resolver(guard::GuardedResolver { allow_private: config.allow_private });
    http.enforce_http(false);
    http.set_connect_timeout(Some(config.timeout));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).pool_max_idle_per_host(config.per_host).build(https))
}

/// Runs the dispatcher for the data directory until `shutdown`.
pub async fn run(
    data_dir: PathBuf,
    config: DeliveryConfig,
    secrets: SecretLookup,
    store: Arc<DeliveryStore>,
    metrics: DeliveryMetrics,
    tier: Option<Tier>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), String> {
    let client = client(&config)?;
    let state_dir = tally_attribution::state_dir(&data_dir);
    let reader: Arc<Mutex<Option<LedgerReader>>> = Arc::new(Mutex::new(None));
    let in_flight: Arc<Mutex<HashSet<Vec<u8>>>> = Arc::default();
    let hosts: Arc<Mutex<HashMap<String, Host>>> = Arc::default();
    tokio::pin!(shutdown);
    // The first look at once: what a restart left due goes now, not after a `poll`.
    let mut wait = Duration::ZERO;
    loop {
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            () = tokio::time::sleep(wait) => {}
        }
        let look = Instant::now();
        let soon = |busy: bool| match busy {
            true => (look.elapsed() * LOOK_SHARE).clamp(SOON.min(config.poll), config.poll),
            false => config.poll,
        };
        let (r, s, dir) = (Arc::clone(&reader), Arc::clone(&store), state_dir.clone());
        let expire_before = tier.as_ref().map(|t| now_ms().saturating_sub(t.retention.as_millis() as u64));
        let taken = tokio::task::spawn_blocking(move || take_new(&r, &s, &dir, expire_before)).await;
        let taken = match taken {
            Ok(Ok(n)) => {
                metrics.taken.inc_by(n as u64);
                n
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "outbox not read");
                0
            }
            Err(_) => 0,
        };
        wait = soon(taken == TAKE);
        // A standby keeps its delivery log, and sends nothing.
        if tier.as_ref().is_some_and(|t| !(t.active)()) {
            continue;
        }
        let s = Arc::clone(&store);
        let flying = in_flight.lock().map(|f| f.clone()).unwrap_or_default();
        // Each receiver's deliveries already started: a look starts no more than its room.
        let queued: HashMap<String, usize> =
            hosts.lock().map(|h| h.iter().map(|(k, h)| (k.clone(), h.queued)).collect()).unwrap_or_default();
        let due = tokio::task::spawn_blocking(move || {
            // Both closures count by receiver: `skip` passes over the entries of one already
            // full by the host the due index names (without reading them), `take` counts
            // what it accepts.
            let queued = std::cell::RefCell::new(queued);
            s.due(
                now_ms(),
                START,
                SCAN,
                |key, host| {
                    flying.contains(key)
                        || queued.borrow().get(host).is_some_and(|n| !host.is_empty() && *n >= QUEUE_PER_RECEIVER)
                },
                |_, d| {
                    let mut queued = queued.borrow_mut();
                    let n = queued.entry(receiver_of(&d.notification)).or_default();
                    *n += 1;
                    *n <= QUEUE_PER_RECEIVER
                },
            )
        });
        let due = match due.await {
            Ok(Ok(due)) => due,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "delivery log not read");
                continue;
            }
            Err(_) => continue,
        };
        let mut started = 0;
        for (key, d) in due {
            let Ok(mut flying) = in_flight.lock() else { continue };
            if !flying.insert(key.clone()) {
                continue;
            }
            drop(flying);
            started += 1;
            if let Ok(mut h) = hosts.lock() {
                h.entry(receiver_of(&d.notification)).or_default().queued += 1;
            }
            let job = Attempt {
                key,
                delivery: d,
                client: client.clone(),
                config: config.clone(),
                secrets: Arc::clone(&secrets),
                store: Arc::clone(&store),
                hosts: Arc::clone(&hosts),
                in_flight: Arc::clone(&in_flight),
                metrics: metrics.clone(),
                tier: tier.clone(),
            };
            tokio::spawn(job.run());
        }
        wait = soon(taken == TAKE || started > 0);
    }
}

/// Takes new outbox items into the delivery log.
fn take_new(
    reader: &Mutex<Option<LedgerReader>>,
    store: &DeliveryStore,
    dir: &std::path::Path,
    expire_before: Option<u64>,
) -> Result<usize, String> {
    let mut guard = reader.lock().map_err(|_| "reader poisoned".to_owned())?;
    let caught_up = guard.take().and_then(|mut r| r.refresh_ledger().is_ok().then_some(r));
    let r = match caught_up {
        Some(r) => r,
        None => LedgerReader::open(dir).map_err(|e| e.to_string())?,
    };
    let r = guard.insert(r);
    let floor = store.floor().map_err(|e| e.to_string())?;
    let items = r.outbox_after(floor.as_deref(), TAKE).map_err(|e| e.to_string())?;
    store.take(&items, now_ms(), expire_before).map_err(|e| e.to_string())?;
    Ok(items.len())
}

struct Attempt {
    key: Vec<u8>,
    delivery: Delivery,
    client: HttpsClient,
    config: DeliveryConfig,
    secrets: SecretLookup,
    store: Arc<DeliveryStore>,
    hosts: Arc<Mutex<HashMap<String, Host>>>,
    in_flight: Arc<Mutex<HashSet<Vec<u8>>>>,
    metrics: DeliveryMetrics,
    tier: Option<Tier>,
}

/// What one attempt got.
enum Outcome {
    Answered(u16),
    /// Worth another attempt (a timeout, a refused connection).
    Failed(String),
    /// Never worth another (a private address, a missing secret, a bad URL).
    Refused(String),
}

impl Attempt {
    async fn run(self) {
        let was_due = self.delivery.next_at_ms;
        let url = match &self.delivery.notification.target {
            Target::Postback { url } | Target::Webhook { url, .. } => url.clone(),
        };
        let uri = http::Uri::try_from(url.as_str()).ok();
        let host = uri.as_ref().and_then(|u| u.host().map(str::to_owned)).unwrap_or_default();
        // Limits and the circuit are per receiver: host and port.
        let receiver = uri.as_ref().and_then(|u| u.authority().map(|a| a.as_str().to_owned())).unwrap_or_default();
        // The receiver's circuit: open, the delivery waits without spending an attempt.
        let (sem, open_until) = {
            let Ok(mut hosts) = self.hosts.lock() else { return self.done() };
            let h = hosts.entry(receiver.clone()).or_default();
            let sem = Arc::clone(
                h.sem.get_or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(self.config.per_host.max(1)))),
            );
            (sem, h.open_until.filter(|t| *t > Instant::now()))
        };
        let mut d = self.delivery.clone();
        if let Some(until) = open_until {
            d.next_at_ms = Some(now_ms() + until.saturating_duration_since(Instant::now()).as_millis() as u64);
            d.last_error = format!("circuit open for {receiver}: waiting");
            self.save(was_due, &d).await;
            return self.done();
        }
        let Ok(_permit) = sem.acquire().await else { return self.done() };
        let started = Instant::now();
        let outcome = match tokio::time::timeout(self.config.timeout, self.send(&url, &host)).await {
            Ok(o) => o,
            Err(_) => Outcome::Failed(format!("no answer within {} ms", self.config.timeout.as_millis())),
        };
        d.attempts += 1;
        d.last_latency_ms = Some(started.elapsed().as_millis() as u64);
        let now = now_ms();
        let ok = matches!(outcome, Outcome::Answered(s) if (200..300).contains(&s));
        match outcome {
            Outcome::Answered(s) => {
                d.last_status = Some(s);
                d.last_error = if ok { String::new() } else { format!("answered {s}") };
            }
            Outcome::Failed(e) | Outcome::Refused(e) => {
                d.last_status = None;
                d.last_error = e;
            }
        }
        let refused = d.last_error.contains("public address") || d.last_error.starts_with("refused:");
        if let Ok(mut hosts) = self.hosts.lock() {
            let h = hosts.entry(receiver).or_default();
            if ok {
                h.failures = 0;
                h.open_until = None;
            } else if !refused {
                h.failures += 1;
                if h.failures >= BREAKER_FAILURES {
                    h.open_until = Some(Instant::now() + BREAKER_OPEN);
                }
            }
        }
        let kind = match &d.notification.target {
            Target::Postback { .. } => "postback",
            Target::Webhook { .. } => "webhook",
        };
        self.metrics.duration.get_or_create(&metrics::KindLabel { kind }).observe(started.elapsed().as_secs_f64());
        let outcome = if ok {
            d.status = DeliveryStatus::Delivered;
            d.delivered_ms = Some(now);
            d.next_at_ms = None;
            "delivered"
        } else if refused
            || d.last_status == Some(410)
            || now.saturating_sub(d.created_ms) >= self.config.retry_for.as_millis() as u64
        {
            d.status = DeliveryStatus::Failed;
            d.next_at_ms = None;
            if refused {
                "refused"
            } else {
                "failed"
            }
        } else {
            d.next_at_ms = Some(now + backoff(&self.config, d.attempts).as_millis() as u64);
            "retry"
        };
        self.metrics.attempts.get_or_create(&metrics::AttemptLabels { kind, outcome }).inc();
        self.save(was_due, &d).await;
        self.done();
    }

    async fn send(&self, url: &str, host: &str) -> Outcome {
        if let Err(e) = guard::check_literal(host, self.config.allow_private) {
            return Outcome::Refused(format!("refused: {e}"));
        }
        let n = &self.delivery.notification;
        let builder = http::Request::builder()
            .header("idempotency-key", &n.key)
            .header(http::header::USER_AGENT, concat!("tally/", env!("CARGO_PKG_VERSION")));
        let request = match &n.target {
            Target::Postback { .. } => builder.method(http::Method::GET).uri(url).body(Full::new(Bytes::new())),
            Target::Webhook { secret, body, .. } => {
                let Some(value) = (self.secrets)(secret) else {
                    return Outcome::Refused(format!("refused: secret \"{secret}\" is not in the secrets store"));
                };
                let ts = now_ms() / 1000;
                let signature = match webhook_signature(&value, &n.key, ts, body) {
                    Ok(s) => s,
                    Err(e) => return Outcome::Refused(format!("refused: secret \"{secret}\": {e}")),
                };
                builder
                    .method(http::Method::POST)
                    .uri(url)
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .header("webhook-id", &n.key)
                    .header("webhook-timestamp", ts.to_string())
                    .header("webhook-signature", signature)
                    .body(Full::new(Bytes::from(body.clone())))
            }
        };
        let request = match request {
            Ok(r) => r,
            Err(e) => return Outcome::Refused(format!("refused: not a request: {e}")),
        };
        match self.client.request(request).await {
            Ok(answer) => {
                let status = answer.status().as_u16();
                // Read (a bounded part of) the answer so the connection can be reused.
                let _ = Limited::new(answer.into_body(), MAX_ANSWER).collect().await;
                Outcome::Answered(status)
            }
            Err(e) => {
                let mut why = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    why = format!("{why}: {s}");
                    source = s.source();
                }
                Outcome::Failed(why)
            }
        }
    }

    async fn save(&self, was_due: Option<u64>, d: &Delivery) {
        let (store, key, d) = (Arc::clone(&self.store), self.key.clone(), d.clone());
        if let Some(tier) = &self.tier {
            tier.publish(&d);
        }
        match tokio::task::spawn_blocking(move || store.put(&key, was_due, &d)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "delivery not recorded: it will be attempted again"),
            Err(e) => tracing::warn!(error = %e, "delivery not recorded: it will be attempted again"),
        }
    }

    fn done(&self) {
        if let Ok(mut flying) = self.in_flight.lock() {
            flying.remove(&self.key);
        }
        if let Ok(mut hosts) = self.hosts.lock() {
            if let Some(h) = hosts.get_mut(&receiver_of(&self.delivery.notification)) {
                h.queued = h.queued.saturating_sub(1);
            }
        }
    }
}

/// The wait before attempt `attempts + 1`: `first_retry` doubled per attempt, at most
/// `max_retry`, with ±20% jitter so a receiver that comes back is not hit by every retry at once.
fn backoff(config: &DeliveryConfig, attempts: u32) -> Duration {
    let base = config.first_retry.saturating_mul(1u32 << attempts.saturating_sub(1).min(20)).min(config.max_retry);
    let jitter = rand::random_range(0.8..1.2);
    base.mul_f64(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_ceiling() {
        let c = DeliveryConfig::default();
        for (attempts, secs) in [(1, 10.0), (2, 20.0), (3, 40.0), (10, 3600.0), (40, 3600.0)] {
            let b = backoff(&c, attempts).as_secs_f64();
            assert!(b >= secs * 0.8 && b <= secs * 1.2, "{attempts}: {b}");
        }
    }
}
