//! Tally's HTTP edge: click redirects, the conversion pixel, S2S postbacks, health and
//! metrics, on hyper 1.x and tokio (plain click requests on a fast path of their own).
//!
//! Architecture invariants:
//! - A pixel or postback is answered 2xx only after its event is committed to the log; when
//!   the log cannot take it the answer is 503 with `Retry-After`, never 2xx.
//! - A click always gets its redirect (a person is waiting). It waits for its commit, and
//!   when the log cannot take it the click is counted in `tally_clicks_unrecorded_total`.
//! - Nothing here blocks a tokio worker: appends go through the log's `Appender` (staged, then
//!   committed by the runtime's park hook or handed to the writer thread through a bounded
//!   queue) and the handler awaits a oneshot. Program reloads read the file on a blocking
//!   thread.
//! - Click requests are answered by the fast path (`fast`) or by hyper with the same bytes;
//!   everything the fast path does not take is hyper's, connection and buffered bytes included.
//! - Macro values and deep links are encoded or validated before they reach `Location`; no
//!   request data reaches a header unencoded, and no foreign host is ever redirected to.
//! - This crate computes no commissions.

pub mod admin;
mod click;
pub mod config;
mod conversion;
pub mod decisions;
pub mod deliveries;
mod fast;
mod handlers;
pub mod links;
mod manage;
pub mod metrics;
pub mod openapi;
pub mod payouts;
pub mod portal;
mod privacy;
mod respond;
pub mod secrets;
mod server;
pub mod tag;
mod timer;

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus_client::registry::Registry;
use tally_log::{Appender, Log};
use tally_model::event::ProgramEdit;
use tally_model::{Edit, Event, Managed, Program, ProgramChange};

pub use admin::{serve_admin, AdminHooks, LedgerQuery, LedgerView};
pub use config::Config;
pub use links::{Overlay, OverlayLink};
pub use privacy::CUSTOMER_KEY_SECRET;
pub use server::serve;

use metrics::{EdgeMetrics, ReloadOutcome};

/// The edge's shared state: configuration, the hot-swappable program, the log and metrics.
pub struct Edge {
    pub config: Config,
    program: ArcSwap<Program>,
    /// What clicks are classified by ([`tally_signals`]): swapped on reload like the program.
    classifier: ArcSwap<tally_signals::Classifier>,
    /// Serialises reloads, API edits and adoptions: each logs a program change or edit,
    /// then swaps the program in.
    changes: tokio::sync::Mutex<()>,
    log: Log,
    /// The request handlers' way into the log: per-turn staging and per-batch acks.
    appender: Appender,
    registry: Registry,
    pub metrics: EdgeMetrics,
    /// Day keys of visitor pseudonyms ([`privacy`]).
    day_keys: privacy::DayKeys,
    /// The key of customer pseudonyms on conversions ([`privacy::customer_secret`]).
    customer_secret: [u8; 32],
    /// Told of every program this edge puts in force from its own file or API (not of those
    /// it [`Edge::adopt`]s): a cluster publishes them to the other edges.
    on_program: std::sync::OnceLock<ProgramHook>,
    /// What the affiliate API reads beyond the program ([`portal`]).
    portal: std::sync::OnceLock<portal::PortalHooks>,
    portal_limiter: portal::Limiter,
}

/// What [`Edge::set_program_hook`] installs.
pub type ProgramHook = Box<dyn Fn(&Program) + Send + Sync>;

impl std::fmt::Debug for Edge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Edge").field("config", &self.config).finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("cannot read program {path}: {reason}")]
    Read { path: String, reason: String },
    #[error(transparent)]
    Program(#[from] tally_model::ProgramError),
    #[error("cannot log the program change: {0}")]
    Log(#[from] tally_log::LogError),
    #[error("cannot encode the program change: {0}")]
    Encode(#[from] tally_model::RecordError),
    #[error(transparent)]
    Overlay(#[from] links::OverlayError),
    #[error(transparent)]
    Secrets(#[from] secrets::SecretsError),
    #[error(transparent)]
    Signals(#[from] tally_signals::LoadError),
}

impl ReloadError {
    /// Every problem, one line each.
    pub fn problems(&self) -> Vec<String> {
        match self {
            ReloadError::Program(e) => e.problems(),
            ReloadError::Signals(e) => e.0.clone(),
            other => vec![other.to_string()],
        }
    }
}

/// A program as loaded from its file and the managed entities.
#[derive(Debug)]
pub struct Loaded {
    /// The program file's text (with the legacy link overlay composed in).
    pub base: String,
    /// The program in force: the base with the managed entities on top. Its `source` is
    /// the base, what a `ProgramChange` records.
    pub program: Program,
}

impl Edge {
    /// The edge of `log`, serving the program `loaded`. Its own metrics are added to
    /// `registry`, which the application fills with the rest of the process's (the log's,
    /// the attribution worker's) and which the admin listener serves on `/metrics`.
    ///
    /// Fails if the customer key cannot be had (see [`privacy::customer_secret`]) or the
    /// `[signals]` files cannot be loaded.
    pub fn new(config: Config, loaded: Loaded, log: Log, mut registry: Registry) -> Result<Arc<Edge>, ReloadError> {
        let Loaded { program, .. } = loaded;
        let classifier = tally_signals::Classifier::load(&config.signals)?;
        let customer_secret = privacy::customer_secret(&config.secrets, &log)?;
        let metrics = EdgeMetrics::new(&mut registry);
        metrics.program_links.set(program.links().count() as i64);
        metrics.signals(&classifier);
        // Before the first click: the day keys around now (blocking, as opening the log is).
        let day_keys = privacy::DayKeys::new();
        day_keys.prepare(&log, &program, now_ms());
        Ok(Arc::new(Edge {
            config,
            program: ArcSwap::from_pointee(program),
            classifier: ArcSwap::from_pointee(classifier),
            changes: tokio::sync::Mutex::new(()),
            appender: log.appender(),
            log,
            registry,
            metrics,
            day_keys,
            customer_secret,
            on_program: std::sync::OnceLock::new(),
            portal: std::sync::OnceLock::new(),
            portal_limiter: portal::Limiter::default(),
        }))
    }

    /// Gives the affiliate API the ledger and stats; a second call is ignored.
    pub fn set_portal_hooks(&self, hooks: portal::PortalHooks) {
        let _ = self.portal.set(hooks);
    }

    /// Installs the hook told of every program this edge puts in force from its own file or
    /// admin API; a second call is ignored.
    pub fn set_program_hook(&self, hook: ProgramHook) {
        let _ = self.on_program.set(hook);
    }

    fn announce(&self) {
        if let Some(hook) = self.on_program.get() {
            hook(&self.program());
        }
    }

    /// Puts in force a program another node put in force (a cluster's program, from the
    /// bus, as [`program_doc`] wrote it): its credentials resolved from this edge's secrets
    /// store, a new base logged as a `ProgramChange` and managed entities this edge lacks as
    /// a `ProgramEdit` (by `cluster`), then swapped in. Returns false if it is the program
    /// already in force. Not announced.
    pub async fn adopt(&self, doc: String) -> Result<bool, ReloadError> {
        let _serial = self.changes.lock().await;
        let secrets = self.config.secrets.clone();
        let current = self.program();
        let parsed = tokio::task::spawn_blocking(move || -> Result<_, ReloadError> {
            let (base, theirs) = parse_program_doc(&doc)?;
            let edit = current.managed.diff(&theirs);
            let program = if base == current.source {
                current.with_edit(&edit)?
            } else {
                let mut managed = (*current.managed).clone();
                managed.apply(&edit);
                serving_composed(&base, Arc::new(managed), &secrets)?
            };
            Ok((base, edit, program))
        })
        .await
        .unwrap_or_else(|e| Err(ReloadError::Read { path: String::new(), reason: e.to_string() }));
        let (base, edit, program) = parsed?;
        if program.digest == self.program.load().digest {
            return Ok(false);
        }
        if base != self.program.load().source {
            // The new base first, composed with the entities in force here.
            let on_base = serving_composed(&base, self.program.load().managed.clone(), &self.config.secrets)?;
            self.log_and_swap(Loaded { base: base.clone(), program: on_base }).await?;
        }
        if !edit.is_empty() {
            self.log_edit_and_swap("cluster", &edit, program).await?;
        }
        Ok(true)
    }

    pub fn log(&self) -> &Log {
        &self.log
    }

    pub fn program(&self) -> Arc<Program> {
        self.program.load_full()
    }

    /// What clicks are classified by now.
    pub fn classifier(&self) -> Arc<tally_signals::Classifier> {
        self.classifier.load_full()
    }

    /// Re-reads the program file (and the legacy link overlay), composed with the managed
    /// entities in force, and the `[signals]` files. An invalid file keeps the old program
    /// (or classifier) and returns why. A changed program is first committed to the log as
    /// a `ProgramChange` event, then swapped in, so every event after it in the log was
    /// judged by the new rules. Returns whether the program changed.
    pub async fn reload(&self) -> Result<bool, ReloadError> {
        let _serial = self.changes.lock().await;
        let config = self.config.clone();
        let managed = self.program().managed.clone();
        let result = tokio::task::spawn_blocking(move || {
            // The databases are updated on their own schedule (geoipupdate): a reload picks
            // them up. They are not part of the program: clicks record what they answered.
            let classifier = tally_signals::Classifier::load(&config.signals);
            (load_for(&config, managed), classifier)
        })
        .await;
        // All or nothing: a bad file of either kind keeps both the program and the
        // classifier in force, so one reload has one answer.
        let result = match result {
            Ok((Ok(loaded), Ok(classifier))) => {
                self.metrics.signals(&classifier);
                self.classifier.store(Arc::new(classifier));
                Ok(loaded)
            }
            Ok((Err(e), _)) => Err(e),
            Ok((Ok(_), Err(e))) => Err(e.into()),
            Err(e) => Err(ReloadError::Read { path: String::new(), reason: e.to_string() }),
        };
        let outcome = match result {
            Ok(loaded) if loaded.program.digest == self.program.load().digest => {
                // The same rules, so nothing to log; but credential values may have been
                // rotated in the secrets store, so the freshly resolved program goes in.
                self.program.store(Arc::new(loaded.program));
                Ok(false)
            }
            Ok(loaded) => self.log_and_swap(loaded).await.map(|_| true),
            Err(e) => Err(e),
        };
        if matches!(outcome, Ok(true)) {
            self.announce();
        }
        self.metrics.reload(if outcome.is_ok() { ReloadOutcome::ok } else { ReloadOutcome::error });
        outcome
    }

    /// Puts managed entities in force: `build` turns the program in force into the
    /// [`Edit`] to make (or refuses); the program with it is composed and validated, logged
    /// as one `ProgramEdit` by `actor`, then swapped in. Nothing is in force, or on disk,
    /// until the log has it. Returns the new program and the edit's sequence number.
    pub async fn edit_program<F>(&self, actor: &str, build: F) -> Result<(Arc<Program>, u64), EditError>
    where
        F: FnOnce(&Program) -> Result<Edit, EditError> + Send + 'static,
    {
        let _serial = self.changes.lock().await;
        let current = self.program();
        let prepared = tokio::task::spawn_blocking(move || -> Result<_, EditError> {
            let edit = build(&current)?;
            // Incremental: the file, and so the resolved credentials, are the current ones.
            let program = current.with_edit(&edit).map_err(|e| EditError::Invalid(e.problems()))?;
            Ok((edit, program))
        })
        .await
        .map_err(|e| EditError::Internal(e.to_string()))??;
        let (edit, program) = prepared;
        let seq = self.log_edit_and_swap(actor, &edit, program).await?;
        self.announce();
        Ok((self.program(), seq))
    }

    /// Logs an operator's decision; returns its sequence number. Attribution judges it.
    pub async fn log_decision(&self, actor: &str, d: &tally_model::Decision) -> Result<u64, ReloadError> {
        let record = tally_model::encode(&Event::Decision(tally_model::event::OperatorDecision {
            ts_ms: now_ms(),
            actor: actor.to_owned(),
            decision: d.to_json(),
        }))?;
        Ok(self.appender.submit(record)?.await?)
    }

    async fn log_edit_and_swap(&self, actor: &str, edit: &Edit, program: Program) -> Result<u64, ReloadError> {
        let record = program_edit_record(actor, edit, &program)?;
        let seq = self.appender.submit(record)?.await?;
        self.metrics.program_links.set(program.links().count() as i64);
        self.program.store(Arc::new(program));
        Ok(seq)
    }

    async fn log_and_swap(&self, loaded: Loaded) -> Result<u64, ReloadError> {
        let seq = self.appender.submit(program_change_record(&loaded.program)?)?.await?;
        self.metrics.program_links.set(loaded.program.links().count() as i64);
        self.program.store(Arc::new(loaded.program));
        Ok(seq)
    }
}

/// Why an API link edit was refused.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("invalid: {}", .0.join("; "))]
    Invalid(Vec<String>),
    #[error(transparent)]
    Overlay(#[from] links::OverlayError),
    #[error(transparent)]
    Reload(#[from] ReloadError),
    #[error("internal error: {0}")]
    Internal(String),
}

/// Reads the program file and the legacy link overlay (`links.toml`, written by builds
/// before program edits: read, never written), composes the managed entities on top,
/// validates the whole, and resolves its credentials from the secrets store.
pub fn load_with_overlay(
    program_path: &Path,
    overlay_path: &Path,
    managed: Arc<Managed>,
    secrets: &secrets::SecretsConfig,
) -> Result<Loaded, ReloadError> {
    let file = std::fs::read_to_string(program_path)
        .map_err(|e| ReloadError::Read { path: program_path.display().to_string(), reason: e.to_string() })?;
    let base = Overlay::load(overlay_path)?.compose(&file)?;
    let program = serving_composed(&base, managed, secrets)?;
    Ok(Loaded { base, program })
}

/// What `tally serve` loads: `config`'s program file (with the legacy overlay in its data
/// directory) and `managed`, the entities the log's program edits put.
pub fn load_for(config: &Config, managed: Arc<Managed>) -> Result<Loaded, ReloadError> {
    load_with_overlay(&config.program_path, &Overlay::path(&config.data_dir), managed, &config.secrets)
}

/// The managed entities the log's program edits put, in log order (the `program` index:
/// no click is read).
pub fn managed_in_log(reader: &tally_log::LogReader) -> Result<Managed, ReloadError> {
    let mut managed = Managed::default();
    for (seq, record) in reader.program_edits()? {
        let Event::ProgramEdit(e) = tally_model::decode(&record)? else {
            return Err(ReloadError::Read {
                path: format!("log event {seq}"),
                reason: "the program index names an event that is not a program edit".into(),
            });
        };
        let edit = Edit::from_json(&e.edit)
            .map_err(|reason| ReloadError::Read { path: format!("program edit at log event {seq}"), reason })?;
        managed.apply(&edit);
    }
    Ok(managed)
}

/// Parses a program file to serve: as [`Program::from_toml`], and also refusing credentials
/// written inline (the log would record them) and resolving the named ones from the store.
pub fn serving_program(source: &str, secrets: &secrets::SecretsConfig) -> Result<Program, ReloadError> {
    serving_composed(source, Arc::new(Managed::default()), secrets)
}

/// [`serving_program`] for `source` with the `managed` entities on top.
pub fn serving_composed(
    source: &str,
    managed: Arc<Managed>,
    secrets: &secrets::SecretsConfig,
) -> Result<Program, ReloadError> {
    let mut program = Program::compose(source, managed)?;
    let inline = program.inline_credentials();
    if !inline.is_empty() {
        let problems = inline
            .iter()
            .map(|field| {
                format!(
                    "{field}: a credential may not be written in the program, which the log records \
                     verbatim for every auditor; put its value in the secrets store and name it in \
                     postback_tokens or hmac_secrets (README: Secrets)"
                )
            })
            .collect();
        return Err(tally_model::ProgramError::Invalid(problems).into());
    }
    let store = secrets::Secrets::load(secrets)?;
    program.resolve_credentials(|name| store.get(name)).map_err(|e| {
        let mut problems = e.problems();
        problems.push(format!("(the secrets store looks in: {})", store.sources()));
        tally_model::ProgramError::Invalid(problems)
    })?;
    Ok(program)
}

/// What a cluster's program channel carries: the program file's text and the managed
/// entities, as JSON.
pub fn program_doc(program: &Program) -> String {
    serde_json::json!({ "source": program.source, "managed": *program.managed }).to_string()
}

/// Reads a [`program_doc`]; a plain program file (what builds before program edits
/// published) is a doc with no managed entities.
pub fn parse_program_doc(doc: &str) -> Result<(String, Managed), ReloadError> {
    #[derive(serde::Deserialize)]
    struct Doc {
        source: String,
        managed: Managed,
    }
    if !doc.trim_start().starts_with('{') {
        return Ok((doc.to_owned(), Managed::default()));
    }
    let d: Doc = serde_json::from_str(doc)
        .map_err(|e| ReloadError::Read { path: "the cluster's program".into(), reason: e.to_string() })?;
    Ok((d.source, d.managed))
}

/// The log record announcing `program` as the rules in force from here on.
pub fn program_change_record(program: &Program) -> Result<Vec<u8>, tally_model::RecordError> {
    tally_model::encode(&Event::ProgramChange(ProgramChange {
        ts_ms: now_ms(),
        digest: program.digest.clone(),
        source: program.source.clone(),
    }))
}

/// The log record of `edit`, made by `actor`, which puts `program` in force.
pub fn program_edit_record(actor: &str, edit: &Edit, program: &Program) -> Result<Vec<u8>, tally_model::RecordError> {
    tally_model::encode(&Event::ProgramEdit(ProgramEdit {
        ts_ms: now_ms(),
        actor: actor.to_owned(),
        digest: program.digest.clone(),
        edit: edit.to_json(),
    }))
}

/// Wall-clock milliseconds since the Unix epoch: the time stamped on every event the edge
/// records (attribution reads time only from these stamps).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
