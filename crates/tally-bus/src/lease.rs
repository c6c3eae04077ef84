//! Which attribution process is active: a lease in JetStream's key-value store.
//!
//! Every attribution process merges the stream into its own log and attributes it (so a
//! standby is hot: its ledger is the active's, being a function of the same stream); the
//! lease only says which one is active, the one that will fire side effects (outgoing
//! postbacks, issue 26) and that dashboards show. Key `attribution` of bucket
//! `{stream}_LEASE` holds the holder's name; the holder renews it every third of the TTL with
//! a compare-and-set on its revision, the bucket's `max_age` (the TTL) removes a dead
//! holder's entry, and a standby takes it with a create-if-absent. A holder that could not
//! renew within the TTL stops calling itself active before anyone else can take over.
//!
//! async-nats 0.52 cannot create a bucket on NATS 2.9 (it reads `$JS.API.INFO`, whose 2.9
//! answer it does not parse), so the bucket's stream is created here with the settings a KV
//! bucket has, and then opened as a bucket.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv, stream};

use crate::config::BusConfig;
use crate::metrics::BusMetrics;
use crate::nats;
use crate::task::{pause, Background};

const KEY: &str = "attribution";

fn bucket(config: &BusConfig) -> String {
    format!("{}_LEASE", config.stream)
}

async fn open_bucket(js: &jetstream::Context, config: &BusConfig) -> Result<kv::Store, async_nats::Error> {
    let name = bucket(config);
    js.get_or_create_stream(stream::Config {
        name: format!("KV_{name}"),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        max_age: config.lease_ttl,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        num_replicas: config.replicas,
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await?;
    Ok(js.get_key_value(name).await?)
}

/// A running lease: held or waiting to be.
#[derive(Debug)]
pub struct Lease {
    task: Background,
    held: Arc<AtomicBool>,
}

impl Lease {
    /// Starts competing for the lease as `holder` (a name people can read: host and pid).
    pub fn start(config: BusConfig, holder: String, metrics: BusMetrics) -> io::Result<Lease> {
        let held = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&held);
        let task = Background::spawn("tally-lease", move |stop| async move {
            let js = nats::connect(&config, &format!("tally-lease-{holder}"), &metrics).await.js;
            let mut state = State { revision: None, renewed: Instant::now(), held: flag, metrics };
            while !stop.load(Ordering::Relaxed) {
                if let Err(e) = compete(&js, &config, &holder, &mut state, &stop).await {
                    tally_telemetry::warn_limited!(error = %e, "the attribution lease is unreachable");
                    state.check(config.lease_ttl);
                    pause(config.lease_ttl / 3, &stop).await;
                }
            }
        })?;
        Ok(Lease { task, held })
    }

    /// True while this process holds the lease (renewed within the TTL).
    pub fn is_held(&self) -> bool {
        self.held.load(Ordering::Relaxed)
    }

    /// [`Lease::is_held`] for those that cannot hold the lease.
    pub fn held_fn(&self) -> impl Fn() -> bool + Send + Sync + 'static {
        let held = Arc::clone(&self.held);
        move || held.load(Ordering::Relaxed)
    }

    /// Stops competing; a holder gives the lease up, so a standby takes over at once.
    pub fn stop(self) {
        self.task.stop();
    }
}

struct State {
    /// The entry's revision while held.
    revision: Option<u64>,
    renewed: Instant,
    held: Arc<AtomicBool>,
    metrics: BusMetrics,
}

impl State {
    fn set(&mut self, revision: Option<u64>) {
        let was = self.held.load(Ordering::Relaxed);
        self.revision = revision;
        if revision.is_some() {
            self.renewed = Instant::now();
        }
        let now = revision.is_some();
        self.held.store(now, Ordering::Relaxed);
        self.metrics.lease_held.set(i64::from(now));
        if was != now {
            self.metrics.lease_changes.inc();
            if now {
                tracing::info!("holding the attribution lease: this process is the active one");
            } else {
                tracing::warn!("the attribution lease is lost: this process is a standby");
            }
        }
    }

    /// A holder that has not renewed within the TTL may have been replaced: it stops saying
    /// it is active.
    fn check(&mut self, ttl: Duration) {
        if self.revision.is_some() && self.renewed.elapsed() >= ttl {
            self.set(None);
        }
    }
}

async fn compete(
    js: &jetstream::Context,
    config: &BusConfig,
    holder: &str,
    state: &mut State,
    stop: &AtomicBool,
) -> Result<(), async_nats::Error> {
    let kv = open_bucket(js, config).await?;
    while !stop.load(Ordering::Relaxed) {
        match state.revision {
            Some(revision) => match kv.update(KEY, holder.to_owned().into(), revision).await {
                Ok(r) => state.set(Some(r)),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => state.set(None),
                Err(e) => {
                    state.check(config.lease_ttl);
                    return Err(e.into());
                }
            },
            None => match kv.create(KEY, holder.to_owned().into()).await {
                Ok(r) => state.set(Some(r)),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
                Err(e) => return Err(e.into()),
            },
        }
        pause(config.lease_ttl / 3, stop).await;
    }
    if let Some(revision) = state.revision {
        // Given up on a clean stop, so the standby need not wait for the entry to expire.
        let _ = kv.delete_expect_revision(KEY, Some(revision)).await;
        state.set(None);
    }
    Ok(())
}
