//! Tally's application: the one composition root. It turns a validated [`Config`] into a
//! running tracker — the log, the program, the edge, the in-process attribution worker, the
//! metrics registry and the admin wiring — and serves it.
//!
//! ```text
//! Config::load(path) ─▶ App::open(config) ─▶ app.bind() ─▶ app.run(listeners, shutdown)
//!                         │ log, program change,          │ runtime (+ park hook),
//!                         │ worker thread, edge,          │ public + admin listeners,
//!                         │ metrics, admin hooks          │ drain, stop worker, close log
//! ```
//!
//! The `tally` binary calls exactly this; so do the integration tests, in-process on
//! `127.0.0.1:0` (`tally-testkit`). Only tests that must kill a process spawn the binary.
//!
//! **API Boundary:** this crate parses no flags and prints nothing to stdout; the binary
//! does both. It owns no storage format and no rule: it wires the libraries together.

pub mod config;
mod deliveries_view;
mod ledger_view;
pub mod notify;
pub mod process_metrics;
mod stats;
pub mod telemetry;
pub mod worker;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tally_attribution::AttributionMetrics;
use tally_bus::{BusMetrics, ProgramChannel, Shipper};
use tally_edge::{AdminHooks, Edge};
use tally_log::{Log, LogMetrics};

pub use config::{Config, ConfigError};
pub use ledger_view::StateLedger;
pub use stats::stats_hook;
pub use worker::InProcess;

/// Why the application could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Program(#[from] tally_edge::ReloadError),
    #[error(transparent)]
    Log(#[from] tally_log::LogError),
    #[error("cannot record the program in the log: {0}")]
    ProgramChange(String),
    #[error(
        "cannot start attribution on {} (is another worker running on it? `tally serve` runs one unless attribution.in_process = false): {source}",
        .dir.display()
    )]
    Attribution { dir: PathBuf, source: tally_attribution::AttributionError },
    #[error("attribution stopped: {0}")]
    Worker(#[from] tally_attribution::AttributionError),
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
}

impl AppError {
    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> AppError {
        AppError::Io { what: what.into(), source }
    }
}

/// The server's sockets, bound before it runs so that the caller can learn `:0` ports.
#[derive(Debug)]
pub struct Listeners {
    pub public: std::net::TcpListener,
    /// `None` when `admin.listen` is empty.
    pub admin: Option<std::net::TcpListener>,
}

impl Listeners {
    pub fn public_addr(&self) -> io::Result<SocketAddr> {
        self.public.local_addr()
    }

    pub fn admin_addr(&self) -> io::Result<Option<SocketAddr>> {
        self.admin.as_ref().map(|a| a.local_addr()).transpose()
    }
}

/// A tracker ready to serve: its log open, its program logged, its worker running.
#[derive(Debug)]
pub struct App {
    config: Config,
    log: Log,
    edge: Arc<Edge>,
    hooks: AdminHooks,
    worker: Option<InProcess>,
    /// In a cluster: publishes the log's events to the bus.
    shipper: Option<Shipper>,
    /// In a cluster: the cluster's program, and the programs to adopt from it.
    programs: Option<(ProgramChannel, tokio::sync::mpsc::UnboundedReceiver<String>)>,
    /// The delivery log and its metrics, where this process delivers the outbox (with its
    /// worker).
    deliveries: Option<(Arc<tally_attribution::deliveries::DeliveryStore>, tally_delivery::DeliveryMetrics)>,
}

impl App {
    /// Opens the log, records the program in force, starts the in-process attribution
    /// worker (unless `attribution.in_process` is off, or the node is an edge of a cluster)
    /// or, in a cluster, the shipper, and builds the edge.
    pub fn open(config: Config) -> Result<App, AppError> {
        if config.bus.is_some() && config.edge.node_id == 0 {
            return Err(ConfigError::Invalid(vec![
                "server.node_id: each edge of a cluster ([bus]) needs a node ID of its own, 1-65535".into(),
            ])
            .into());
        }
        let data_dir = config.data_dir().to_owned();
        let log_metrics = LogMetrics::default();
        let log = Log::open(&data_dir, config.log.clone(), log_metrics.clone())?;
        // The program file, with the entities the admin API put (the log's program edits) on
        // top; in a cluster, the cluster's program if it has one.
        let managed = tally_edge::managed_in_log(&log.reader())?;
        let mut program = tally_edge::load_for(&config.edge, Arc::new(managed))?;
        let mut catch_up = tally_model::Edit::default();
        let mut seed_cluster = false;
        let bus = config.bus_with_credential()?;
        if let Some(bus) = &bus {
            match tally_bus::fetch_program(bus, Duration::from_secs(5))
                .map(|d| d.map(|d| tally_edge::parse_program_doc(&d)))
            {
                Ok(Some(Ok((base, theirs)))) => {
                    let edit = program.program.managed.diff(&theirs);
                    let mut managed = (*program.program.managed).clone();
                    managed.apply(&edit);
                    match tally_edge::serving_composed(&base, Arc::new(managed), &config.edge.secrets) {
                        Ok(p) if p.digest == program.program.digest => {}
                        Ok(p) => {
                            tracing::info!(digest = %p.digest, "serving the cluster's program, not this node's file");
                            program = tally_edge::Loaded { base, program: p };
                            catch_up = edit;
                        }
                        Err(e) => tracing::error!(
                            error = %e,
                            "cannot serve the cluster's program; serving this node's file until the next program"
                        ),
                    }
                }
                Ok(Some(Err(e))) => tracing::error!(
                    error = %e,
                    "cannot read the cluster's program; serving this node's file until the next program"
                ),
                Ok(None) => seed_cluster = true,
                Err(e) => tracing::warn!(
                    error = %e,
                    "cannot read the cluster's program; serving this node's file and adopting the cluster's once the bus answers"
                ),
            }
        }
        // Every start records the program in force, so a replay judges what follows by it:
        // the base, then the cluster's entities this node lacked.
        let mut records =
            vec![tally_edge::program_change_record(&program.program)
                .map_err(|e| AppError::ProgramChange(e.to_string()))?];
        if !catch_up.is_empty() {
            records.push(
                tally_edge::program_edit_record("cluster", &catch_up, &program.program)
                    .map_err(|e| AppError::ProgramChange(e.to_string()))?,
            );
        }
        for record in records {
            log.submit(record)
                .and_then(tally_log::Pending::wait)
                .map_err(|e| AppError::ProgramChange(e.to_string()))?;
        }
        // The process's one metrics registry: build, process and disk; the log's, the
        // worker's and (added by the edge) the edge's, served by the admin listener.
        let mut registry = prometheus_client::registry::Registry::default();
        process_metrics::register(&mut registry, &data_dir);
        log_metrics.register(&mut registry);
        // An edge of a cluster sees only its own events: attribution runs on the attribution
        // tier (`tally attribute` with [bus]), over every edge's.
        let worker = if config.attribution.in_process && config.bus.is_none() {
            let attribution_metrics = AttributionMetrics::default();
            let worker = worker::open_worker(&data_dir, &config.attribution, attribution_metrics.clone())?;
            attribution_metrics.register(&mut registry);
            Some(InProcess::start(worker, log.reader())?)
        } else {
            // `tally attribute` exports the worker's metrics; a never-running copy here would
            // report `tally_attribution_up 0` and raise TallyAttributionDown.
            None
        };
        // Notifications are delivered where the outbox is written: beside the worker.
        let deliveries = match (&worker, config.deliveries.enabled) {
            (Some(_), true) => {
                let dir = tally_attribution::deliveries_dir(&data_dir);
                let store = tally_attribution::deliveries::DeliveryStore::open(&dir)
                    .map_err(|e| AppError::Attribution { dir, source: e })?;
                let metrics = tally_delivery::DeliveryMetrics::default();
                metrics.register(&mut registry);
                Some((Arc::new(store), metrics))
            }
            _ => None,
        };
        let (shipper, programs) = match &bus {
            Some(bus) => {
                let metrics = BusMetrics::default();
                metrics.register(&mut registry);
                let node = config.edge.node_id;
                let shipper = Shipper::start(log.clone(), node, bus.clone(), metrics.clone())
                    .map_err(|e| AppError::io("cannot start the shipper", e))?;
                let programs = ProgramChannel::start(bus.clone(), node, metrics)
                    .map_err(|e| AppError::io("cannot start the program channel", e))?;
                (Some(shipper), Some(programs))
            }
            None => (None, None),
        };
        let doc = tally_edge::program_doc(&program.program);
        let edge = Edge::new(config.edge.clone(), program, log.clone(), registry)?;
        if config.bus.is_some() && !customer_key_configured(&config.edge.secrets) {
            tracing::warn!(
                "no customer-key secret: this edge hashes customer IDs with its own log's key, so a customer \
                 who buys through another edge is a new customer to recurring commissions; give every edge \
                 the same TALLY_SECRET_CUSTOMER_KEY"
            );
        }
        if let Some((channel, _)) = &programs {
            let publish = channel.publisher();
            edge.set_program_hook(Box::new(move |p| publish(&tally_edge::program_doc(p))));
            if seed_cluster {
                channel.publish(&doc);
            }
        }
        let stats = if config.bus.is_some() {
            // An edge of a cluster keeps no ledger: its stats are the tier's.
            let to_tier: Arc<tally_edge::admin::StatsFn> = Arc::new(|_: Option<&str>, _: Option<&str>| {
                Err(tally_edge::admin::HookError::new(
                    404,
                    "an edge of a cluster keeps no ledger: ask the attribution tier (GET /admin/stats on tally attribute's --metrics-listen)",
                ))
            });
            to_tier
        } else {
            stats_hook(data_dir.clone())
        };
        // An edge of a cluster keeps no ledger; a single node's is its worker's state.
        let ledger: Option<Arc<dyn tally_edge::LedgerView>> = match config.bus {
            Some(_) => None,
            None => Some(Arc::new(ledger_view::StateLedger::new(&data_dir))),
        };
        // The affiliate API reads the same ledger and stats, scoped to the token's affiliate.
        if config.bus.is_none() {
            edge.set_portal_hooks(tally_edge::portal::PortalHooks {
                ledger: ledger.clone(),
                stats: Some(Arc::clone(&stats)),
            });
        }
        let hooks = AdminHooks {
            stats: Some(stats),
            log_level: Some(Arc::new(telemetry::RuntimeLevel)),
            ledger,
            deliveries: deliveries.clone().map(|(s, _)| Arc::new(deliveries_view::Deliveries::new(s, None)) as _),
        };
        Ok(App { config, log, edge, hooks, worker, shipper, programs, deliveries })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The edge: its program (and reloads), metrics and log.
    pub fn edge(&self) -> &Arc<Edge> {
        &self.edge
    }

    /// Binds `server.listen` and `admin.listen`.
    pub fn bind(&self) -> Result<Listeners, AppError> {
        let bind = |addr: SocketAddr, what: &str| {
            let l = std::net::TcpListener::bind(addr)
                .map_err(|e| AppError::io(format!("cannot listen on {addr}{what}"), e))?;
            l.set_nonblocking(true).map_err(|e| AppError::io(format!("cannot set up {addr}"), e))?;
            Ok::<_, AppError>(l)
        };
        let public = bind(self.config.edge.listen, "")?;
        let admin = match self.config.edge.admin.listen {
            Some(a) => Some(bind(a, " for the admin API (admin.listen; \"\" turns it off)")?),
            None => None,
        };
        Ok(Listeners { public, admin })
    }

    /// The runtime the server runs on: one worker thread runs a current-thread runtime, which
    /// skips work stealing and its atomics and measurably raises clicks per second on small
    /// machines (see `benches/load.sh`); with `log.commit_on_park`, a runtime thread out of
    /// work commits the clicks it staged before it sleeps, rather than waking the log writer
    /// and sleeping until the writer wakes it back (see `Log::park_hook`).
    pub fn runtime(&self) -> io::Result<tokio::runtime::Runtime> {
        let mut rt = match self.config.edge.worker_threads {
            1 => tokio::runtime::Builder::new_current_thread(),
            n => {
                let mut b = tokio::runtime::Builder::new_multi_thread();
                if n > 0 {
                    b.worker_threads(n);
                }
                b
            }
        };
        if self.config.log.commit_on_park {
            rt.on_thread_park(self.log.park_hook());
        }
        rt.enable_all().build()
    }

    /// Serves until the future `shutdown` builds resolves (it is built on the runtime, with
    /// the edge, so it may install signal handlers or reload the program), then drains, stops
    /// the worker after its current commit and closes the log, committing what is queued.
    pub fn run<F, S>(self, listeners: Listeners, shutdown: S) -> Result<(), AppError>
    where
        S: FnOnce(Arc<Edge>) -> io::Result<F>,
        F: Future<Output = ()>,
    {
        let rt = self.runtime().map_err(|e| AppError::io("cannot start the runtime", e))?;
        let App { config, log, edge, hooks, worker, shipper, programs, deliveries } = self;
        let (channel, mut adopt) = programs.unzip();
        let served = rt.block_on(async {
            let public = tokio::net::TcpListener::from_std(listeners.public)
                .map_err(|e| AppError::io("cannot use the public listener", e))?;
            let admin = listeners
                .admin
                .map(tokio::net::TcpListener::from_std)
                .transpose()
                .map_err(|e| AppError::io("cannot use the admin listener", e))?;
            if let Ok(local) = public.local_addr() {
                tracing::info!(%local, data_dir = %config.data_dir().display(), sync = config.log.sync.as_str(), "serving");
            }
            let shutdown = shutdown(Arc::clone(&edge)).map_err(|e| AppError::io("cannot install the shutdown signal", e))?;
            let (stop_deliveries, mut deliveries_stopped) = tokio::sync::watch::channel(false);
            if let Some((store, metrics)) = deliveries {
                let lookup = secret_lookup(&config);
                let dispatcher = tally_delivery::run(
                    config.data_dir().to_path_buf(),
                    config.deliveries.delivery.clone(),
                    lookup,
                    store,
                    metrics,
                    None,
                    async move {
                        let _ = deliveries_stopped.wait_for(|stop| *stop).await;
                    },
                );
                tokio::spawn(async move {
                    if let Err(e) = dispatcher.await {
                        tracing::error!(error = %e, "deliveries stopped");
                    }
                });
            }
            let shutdown = async move {
                shutdown.await;
                let _ = stop_deliveries.send(true);
            };
            // The cluster's programs, put in force in the order the bus holds them.
            if let Some(mut programs) = adopt.take() {
                let edge = Arc::clone(&edge);
                tokio::spawn(async move {
                    while let Some(source) = programs.recv().await {
                        match edge.adopt(source).await {
                            Ok(true) => tracing::info!(digest = %edge.program().digest, "adopted the cluster's program"),
                            Ok(false) => {}
                            Err(e) => tracing::error!(error = %e, "cannot adopt the cluster's program; keeping this one"),
                        }
                    }
                });
            }
            // Ready once the log is open, the listeners bound (connections already queue) and
            // the signal handlers in place, so systemd's first SIGTERM drains rather than kills.
            notify::ready();
            let shutdown = async {
                shutdown.await;
                notify::stopping();
            };
            serve(Arc::clone(&edge), hooks, public, admin, shutdown).await.map_err(|e| AppError::io("serving failed", e))
        });
        // The worker stops after its current commit; whatever it has not reached it attributes
        // at the next start, from its checkpoint.
        if let Some(worker) = worker {
            worker.stop();
        }
        // What it has not shipped it ships at the next start, from the shipped position.
        if let Some(shipper) = shipper {
            shipper.stop();
        }
        if let Some(channel) = channel {
            channel.stop();
        }
        // Commit whatever is still queued before returning, even if serving failed.
        drop(edge);
        log.close();
        rt.shutdown_timeout(Duration::from_secs(1));
        served
    }
}

/// Serves the public listener (clicks, pixel, postbacks, health) and the admin listener
/// (metrics, health, `/admin/`) until `shutdown` resolves. Health and metrics stay up while
/// the public listener drains.
pub async fn serve(
    edge: Arc<Edge>,
    hooks: AdminHooks,
    public: tokio::net::TcpListener,
    admin: Option<tokio::net::TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // Day keys of visitor pseudonyms, and retention: for the server's life.
    let privacy = tokio::spawn(Arc::clone(&edge).privacy_task());
    let admin_task = admin.map(|a| {
        let mut rx = stop_rx.clone();
        tokio::spawn(tally_edge::serve_admin(Arc::clone(&edge), a, hooks, async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }))
    });
    let served = tally_edge::serve(edge, public, shutdown).await;
    privacy.abort();
    let _ = stop_tx.send(true);
    if let Some(t) = admin_task {
        let _ = t.await;
    }
    served
}

/// The shutdown of a server process: resolves on SIGTERM or SIGINT, and reloads the program
/// on every SIGHUP meanwhile. Call it on the runtime (as [`App::run`]'s `shutdown` does).
pub fn unix_signals(edge: Arc<Edge>) -> io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match edge.reload().await {
                Ok(true) => tracing::info!("program reloaded"),
                Ok(false) => tracing::info!("program unchanged"),
                Err(e) => tracing::error!(error = %e, "program reload failed; keeping the old program"),
            }
        }
    });
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: draining"),
            _ = int.recv() => tracing::info!("SIGINT: draining"),
        }
    })
}

/// The dispatcher's access to the secrets store: read at each use, so a rotated signing
/// secret takes effect at once.
pub(crate) fn secret_lookup(config: &Config) -> tally_delivery::SecretLookup {
    let secrets = config.edge.secrets.clone();
    Arc::new(move |name: &str| tally_edge::secrets::Secrets::load(&secrets).ok()?.get(name))
}

/// Whether the secrets store gives the customer key (a cluster's edges must share it).
fn customer_key_configured(secrets: &tally_edge::secrets::SecretsConfig) -> bool {
    tally_edge::secrets::Secrets::load(secrets).is_ok_and(|s| s.get(tally_edge::CUSTOMER_KEY_SECRET).is_some())
}
