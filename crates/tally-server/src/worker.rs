//! The attribution worker's homes: a thread inside the server ([`InProcess`]), or its own
//! process ([`Standalone`], `tally attribute`) following either the server's log through a
//! secondary instance or, on the attribution tier of a cluster, the merged log its bus
//! consumer writes. Either way the worker is `tally_attribution::Worker`; this module only
//! starts, stops and exposes it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tally_attribution::deliveries::DeliveryStore;
use tally_attribution::{AttributionConfig, AttributionError, AttributionMetrics, Worker};
use tally_bus::{BusMetrics, Consumer, DeliveryFeed, Lease};
use tally_delivery::{DeliveryConfig, DeliveryMetrics, SecretLookup, Tier};
use tally_edge::AdminHooks;
use tally_log::{Log, LogMetrics, LogReader};

use crate::{AppError, Config};

/// Opens the worker's state in `data_dir`.
pub fn open_worker(
    data_dir: &Path,
    config: &AttributionConfig,
    metrics: AttributionMetrics,
) -> Result<Worker, AppError> {
    let dir = tally_attribution::state_dir(data_dir);
    Worker::open(&dir, config.worker_options(data_dir), metrics).map_err(|source| AppError::Attribution { dir, source })
}

/// The in-process worker: a thread following the log until stopped.
#[derive(Debug)]
pub struct InProcess {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl InProcess {
    pub fn start(mut worker: Worker, reader: LogReader) -> Result<InProcess, AppError> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("tally-attribution".into())
            .spawn(move || {
                if let Err(e) = worker.run(reader, &flag) {
                    tracing::error!(error = %e, "attribution stopped; restart to resume from its checkpoint");
                }
            })
            .map_err(|e| AppError::io("cannot start the attribution thread", e))?;
        Ok(InProcess { stop, thread })
    }

    /// Stops after the worker's current batch and its commit.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

/// `tally attribute`: the worker in its own process, with an optional `/metrics` listener
/// of its own. On a single node it reads the server's log through a secondary instance; on
/// the attribution tier of a cluster (`[bus]`) it owns the merged log, which its bus consumer
/// writes and it follows.
#[derive(Debug)]
pub struct Standalone {
    worker: Worker,
    reader: LogReader,
    metrics: AttributionMetrics,
    data_dir: PathBuf,
    merging: Option<Merging>,
    deliveries: Option<Dispatch>,
}

/// The attribution tier's merged log and the consumer that writes it.
#[derive(Debug)]
struct Merging {
    log: Log,
    log_metrics: LogMetrics,
    bus_metrics: BusMetrics,
    consumer: Option<Consumer>,
    lease: Option<Lease>,
    feed: Option<DeliveryFeed>,
}

/// Outgoing postbacks and webhooks, sent where the worker writes the outbox: here, when the
/// worker runs out of the server. On a cluster's tier, only by the lease holder ([`Tier`]).
struct Dispatch {
    store: Arc<DeliveryStore>,
    config: DeliveryConfig,
    secrets: SecretLookup,
    metrics: DeliveryMetrics,
    tier: Option<Tier>,
}

impl std::fmt::Debug for Dispatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatch").field("tier", &self.tier).finish_non_exhaustive()
    }
}

/// How long the tier's delivery feed keeps a delivery's state: well past the retries, so a
/// standby learns the end of every delivery the active process could still be making.
fn feed_retention(config: &DeliveryConfig) -> std::time::Duration {
    (config.retry_for * 2).max(std::time::Duration::from_secs(7 * 24 * 3600))
}

impl Drop for Merging {
    /// The consumer stops after its write in progress; the log then closes. What it has not
    /// merged it merges at the next start, from the merged log's checkpoint.
    fn drop(&mut self) {
        if let Some(l) = self.lease.take() {
            l.stop();
        }
        if let Some(f) = self.feed.take() {
            f.stop();
        }
        if let Some(c) = self.consumer.take() {
            c.stop();
        }
        self.log.close();
    }
}

impl Standalone {
    pub fn open(config: &Config) -> Result<Standalone, AppError> {
        let data_dir = config.data_dir();
        let metrics = AttributionMetrics::default();
        let worker = open_worker(data_dir, &config.attribution, metrics.clone())?;
        let deliveries = match config.deliveries.enabled {
            true => {
                let dir = tally_attribution::deliveries_dir(data_dir);
                let store = DeliveryStore::open(&dir).map_err(|source| AppError::Attribution { dir, source })?;
                Some(Dispatch {
                    store: Arc::new(store),
                    config: config.deliveries.delivery.clone(),
                    secrets: crate::secret_lookup(config),
                    metrics: DeliveryMetrics::default(),
                    tier: None,
                })
            }
            false => None,
        };
        let Some(bus) = &config.bus_with_credential()? else {
            let reader = LogReader::open_secondary(data_dir)?;
            return Ok(Standalone {
                worker,
                reader,
                metrics,
                data_dir: data_dir.to_owned(),
                merging: None,
                deliveries,
            });
        };
        let log_metrics = LogMetrics::default();
        let log = Log::open(data_dir, config.log.clone(), log_metrics.clone())?;
        let bus_metrics = BusMetrics::default();
        // Host and process: what the lease and the NATS server's connection list show.
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let name = format!("{}-{}", host.trim(), std::process::id());
        let consumer =
            Consumer::start(log.clone(), bus.clone(), format!("tally-attribution-{name}"), bus_metrics.clone())
                .map_err(|e| AppError::io("cannot start the bus consumer", e))?;
        let lease = Lease::start(bus.clone(), name.clone(), bus_metrics.clone())
            .map_err(|e| AppError::io("cannot start competing for the attribution lease", e))?;
        let mut merging =
            Merging { log: log.clone(), log_metrics, bus_metrics, consumer: Some(consumer), lease: None, feed: None };
        let mut deliveries = deliveries;
        if let Some(d) = &mut deliveries {
            let active: Arc<dyn Fn() -> bool + Send + Sync> = Arc::new(lease.held_fn());
            let (store, is_active) = (Arc::clone(&d.store), Arc::clone(&active));
            let retention = feed_retention(&d.config);
            let apply: tally_bus::Apply =
                Box::new(move |key, bytes| tally_delivery::apply_from_feed(&store, is_active(), key, bytes));
            let feed = DeliveryFeed::start(bus.clone(), name, retention, merging.bus_metrics.clone(), apply)
                .map_err(|e| AppError::io("cannot start the delivery feed", e))?;
            d.tier = Some(Tier { active, publish: Arc::new(feed.publisher()), retention });
            merging.feed = Some(feed);
        }
        merging.lease = Some(lease);
        Ok(Standalone {
            worker,
            reader: log.reader(),
            metrics,
            data_dir: data_dir.to_owned(),
            merging: Some(merging),
            deliveries,
        })
    }

    /// The last event attributed and committed.
    pub fn position(&self) -> u64 {
        self.worker.position()
    }

    /// Attributes what the log holds now; returns how many events that was.
    pub fn catch_up(&mut self, progress: impl FnMut(u64)) -> Result<u64, AttributionError> {
        self.worker.catch_up_progress(&self.reader, None, progress)
    }

    /// Binds the worker's `/metrics` listener (an `:0` port is chosen here, so the caller
    /// can print it before [`Standalone::run`]).
    pub fn bind_metrics(&self, addr: SocketAddr) -> Result<std::net::TcpListener, AppError> {
        let l = std::net::TcpListener::bind(addr)
            .map_err(|e| AppError::io(format!("cannot listen on {addr} for metrics"), e))?;
        l.set_nonblocking(true).map_err(|e| AppError::io("cannot set up the metrics listener", e))?;
        Ok(l)
    }

    /// Follows the log until SIGTERM or SIGINT, serving `metrics` meanwhile (with, on a
    /// cluster's attribution tier, `GET /admin/stats` behind `admin_token`).
    pub fn run(mut self, metrics: Option<std::net::TcpListener>, admin_token: Option<String>) -> Result<u64, AppError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| AppError::io("cannot start the runtime", e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let registry = {
            let mut registry = prometheus_client::registry::Registry::default();
            crate::process_metrics::register(&mut registry, &self.data_dir);
            self.metrics.register(&mut registry);
            if let Some(m) = &self.merging {
                m.log_metrics.register(&mut registry);
                m.bus_metrics.register(&mut registry);
            }
            if let Some(d) = &self.deliveries {
                d.metrics.register(&mut registry);
            }
            Arc::new(registry)
        };
        // The tier's ledger is this process's: its stats are served here, as an edge's
        // admin API serves a single node's; and so is the delivery log, where this process
        // delivers.
        let deliveries_view = self.deliveries.as_ref().map(|d| {
            Arc::new(crate::deliveries_view::Deliveries::new(Arc::clone(&d.store), d.tier.clone()))
                as Arc<dyn tally_edge::admin::DeliveriesView>
        });
        let admin = (self.merging.is_some() || deliveries_view.is_some()).then(|| {
            let hooks = AdminHooks {
                stats: self.merging.as_ref().map(|_| crate::stats_hook(self.data_dir.clone())),
                log_level: None,
                ledger: None,
                deliveries: deliveries_view,
            };
            Arc::new((hooks, admin_token))
        });
        let dispatch = self.deliveries.take();
        let data_dir = self.data_dir.clone();
        let background = std::thread::Builder::new()
            .name("tally-signals".into())
            .spawn(move || {
                rt.block_on(async move {
                    use tokio::signal::unix::{signal, SignalKind};
                    let (Ok(mut term), Ok(mut int)) =
                        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
                    else {
                        return;
                    };
                    if let Some(l) = metrics.and_then(|l| tokio::net::TcpListener::from_std(l).ok()) {
                        tokio::spawn(serve_metrics(l, registry, admin));
                    }
                    let (stop_deliveries, mut deliveries_stopped) = tokio::sync::watch::channel(false);
                    let dispatcher = dispatch.map(|d| {
                        tokio::spawn(tally_delivery::run(
                            data_dir,
                            d.config,
                            d.secrets,
                            d.store,
                            d.metrics,
                            d.tier,
                            async move {
                                let _ = deliveries_stopped.wait_for(|stop| *stop).await;
                            },
                        ))
                    });
                    // The worker is open and follows the log from here; the metrics listener
                    // is bound and a SIGTERM now stops it cleanly.
                    crate::notify::ready();
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                    crate::notify::stopping();
                    flag.store(true, Ordering::Relaxed);
                    let _ = stop_deliveries.send(true);
                    if let Some(d) = dispatcher {
                        match d.await {
                            Ok(Err(e)) => tracing::error!(error = %e, "deliveries stopped"),
                            Err(e) => tracing::error!(error = %e, "deliveries stopped"),
                            Ok(Ok(())) => {}
                        }
                    }
                })
            })
            .map_err(|e| AppError::io("cannot start the signal thread", e))?;
        let result = self.worker.run(self.reader, &stop);
        drop(background);
        drop(self.merging.take());
        result?;
        tracing::info!(position = self.worker.position(), "attribution stopped cleanly");
        Ok(self.worker.position())
    }
}

/// `/metrics` for the separate worker process, and `/admin/stats` and `/admin/deliveries`
/// where it has them, behind the admin token.
async fn serve_metrics(
    listener: tokio::net::TcpListener,
    registry: Arc<prometheus_client::registry::Registry>,
    admin: Option<Arc<(AdminHooks, Option<String>)>>,
) {
    use http_body_util::Full;
    use hyper::body::Bytes;
    use hyper::{Response, StatusCode};
    loop {
        let Ok((sock, _)) = listener.accept().await else { continue };
        let registry = Arc::clone(&registry);
        let admin = admin.clone();
        let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let registry = Arc::clone(&registry);
            let admin = admin.clone();
            async move {
                let path = req.uri().path().trim_end_matches('/');
                if let Some(a) = admin.as_ref().filter(|_| path == "/admin/stats") {
                    let (hooks, token) = &**a;
                    return Ok(tally_edge::admin::stats_endpoint(token.as_deref(), hooks, req).await);
                }
                if let Some(a) =
                    admin.as_ref().filter(|_| path == "/admin/deliveries" || path.starts_with("/admin/deliveries/"))
                {
                    let (hooks, token) = &**a;
                    return Ok(tally_edge::admin::deliveries_endpoint(token.as_deref(), hooks, req).await);
                }
                let mut body = String::new();
                if req.uri().path() == "/metrics"
                    && prometheus_client::encoding::text::encode(&mut body, &registry).is_ok()
                {
                    Response::builder()
                        .header("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")
                        .body(Full::new(Bytes::from(body)))
                } else {
                    Response::builder()
                        .status(StatusCode::NOT_FOUND)
                        .body(Full::new(Bytes::from_static(b"not found\n")))
                }
            }
        });
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(sock);
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
        });
    }
}
