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
mod fast;
mod handlers;
pub mod links;
pub mod metrics;
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
use tally_model::{Event, Program, ProgramChange};

pub use admin::{serve_admin, AdminHooks};
pub use config::Config;
pub use links::{Overlay, OverlayLink};
pub use server::serve;

use metrics::{EdgeMetrics, ReloadOutcome};

/// The edge's shared state: configuration, the hot-swappable program, the log and metrics.
pub struct Edge {
    pub config: Config,
    program: ArcSwap<Program>,
    /// The program file's text behind the loaded program; API link edits compose on it, so
    /// an edit never pulls in file changes the operator has not reloaded yet.
    base_source: std::sync::Mutex<String>,
    /// Serialises reloads and API edits: each reads the overlay, logs a program, swaps it.
    changes: tokio::sync::Mutex<()>,
    log: Log,
    /// The request handlers' way into the log: per-turn staging and per-batch acks.
    appender: Appender,
    registry: Registry,
    pub metrics: EdgeMetrics,
    /// Day keys of visitor pseudonyms ([`privacy`]).
    day_keys: privacy::DayKeys,
    /// Told of every program this edge puts in force from its own file or API (not of those
    /// it [`Edge::adopt`]s): a cluster publishes them to the other edges.
    on_program: std::sync::OnceLock<ProgramHook>,
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
}

impl ReloadError {
    /// Every problem, one line each.
    pub fn problems(&self) -> Vec<String> {
        match self {
            ReloadError::Program(e) => e.problems(),
            other => vec![other.to_string()],
        }
    }
}

/// A program as loaded from its file and the link overlay.
#[derive(Debug)]
pub struct Loaded {
    /// The program file's text.
    pub base: String,
    /// The composed program (file + overlay); its `source` is what the log records.
    pub program: Program,
}

impl Edge {
    /// The edge of `log`, serving the program `loaded`. Its own metrics are added to
    /// `registry`, which the application fills with the rest of the process's (the log's,
    /// the attribution worker's) and which the admin listener serves on `/metrics`.
    pub fn new(config: Config, loaded: Loaded, log: Log, mut registry: Registry) -> Arc<Edge> {
        let Loaded { base, program } = loaded;
        let metrics = EdgeMetrics::new(&mut registry);
        metrics.program_links.set(program.links().count() as i64);
        // Before the first click: the day keys around now (blocking, as opening the log is).
        let day_keys = privacy::DayKeys::new();
        day_keys.prepare(&log, &program, now_ms());
        Arc::new(Edge {
            config,
            program: ArcSwap::from_pointee(program),
            base_source: std::sync::Mutex::new(base),
            changes: tokio::sync::Mutex::new(()),
            appender: log.appender(),
            log,
            registry,
            metrics,
            day_keys,
            on_program: std::sync::OnceLock::new(),
        })
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
    /// bus): its credentials resolved from this edge's secrets store, logged as a
    /// `ProgramChange`, swapped in, and the source kept as the base later API link edits
    /// compose on. Returns false if it is the program already in force. Not announced.
    pub async fn adopt(&self, source: String) -> Result<bool, ReloadError> {
        let _serial = self.changes.lock().await;
        let secrets = self.config.secrets.clone();
        let parsed = tokio::task::spawn_blocking(move || serving_program(&source, &secrets).map(|p| (source, p)))
            .await
            .unwrap_or_else(|e| Err(ReloadError::Read { path: String::new(), reason: e.to_string() }));
        let (base, program) = parsed?;
        if program.digest == self.program.load().digest {
            return Ok(false);
        }
        self.log_and_swap(Loaded { base, program }).await.map(|_| true)
    }

    pub fn log(&self) -> &Log {
        &self.log
    }

    pub fn program(&self) -> Arc<Program> {
        self.program.load_full()
    }

    /// Re-reads the program file and the link overlay. An invalid file keeps the old program
    /// and returns why. A changed program is first committed to the log as a
    /// `ProgramChange` event, then swapped in, so every event after it in the log was judged
    /// by the new rules.
    pub async fn reload(&self) -> Result<bool, ReloadError> {
        let _serial = self.changes.lock().await;
        let config = self.config.clone();
        let result = tokio::task::spawn_blocking(move || load_for(&config))
            .await
            .unwrap_or_else(|e| Err(ReloadError::Read { path: String::new(), reason: e.to_string() }));
        let outcome = match result {
            Ok(loaded) if loaded.program.digest == self.program.load().digest => {
                // The same rules, so nothing to log; but credential values may have been
                // rotated in the secrets store, so the freshly resolved program goes in.
                self.set_base(loaded.base);
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

    /// Applies `edit` to the link overlay and puts the result in force: the composed program
    /// is validated, the overlay written, the program logged as a `ProgramChange`, then
    /// swapped in. If logging fails the old overlay file is restored. Returns the new
    /// program and the sequence number of its `ProgramChange`.
    pub async fn edit_links<F>(&self, edit: F) -> Result<(Arc<Program>, u64), EditError>
    where
        F: FnOnce(&Program, &mut Overlay) -> Result<(), EditError> + Send + 'static,
    {
        let _serial = self.changes.lock().await;
        let path = Overlay::path(&self.config.data_dir);
        let secrets = self.config.secrets.clone();
        let base = self.base();
        let current = self.program();
        let prepared = tokio::task::spawn_blocking(move || -> Result<_, EditError> {
            let old = Overlay::load(&path)?;
            let mut new = old.clone();
            edit(&current, &mut new)?;
            let program =
                serving_program(&new.compose(&base)?, &secrets).map_err(|e| EditError::Invalid(e.problems()))?;
            new.save(&path)?;
            Ok((old, path, Loaded { base, program }))
        })
        .await
        .map_err(|e| EditError::Internal(e.to_string()))??;
        let (old, path, loaded) = prepared;
        match self.log_and_swap(loaded).await {
            Ok(seq) => {
                self.announce();
                Ok((self.program(), seq))
            }
            Err(e) => {
                // The change is not in force, so the file must not say it is.
                let restored = tokio::task::spawn_blocking(move || old.save(&path)).await;
                if !matches!(restored, Ok(Ok(()))) {
                    tracing::error!("cannot restore the link overlay after a failed change; it holds the refused edit");
                }
                Err(e.into())
            }
        }
    }

    fn base(&self) -> String {
        self.base_source.lock().map(|b| b.clone()).unwrap_or_default()
    }

    fn set_base(&self, base: String) {
        if let Ok(mut b) = self.base_source.lock() {
            *b = base;
        }
    }

    async fn log_and_swap(&self, loaded: Loaded) -> Result<u64, ReloadError> {
        let seq = self.appender.submit(program_change_record(&loaded.program)?)?.await?;
        self.metrics.program_links.set(loaded.program.links().count() as i64);
        self.set_base(loaded.base);
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

/// Reads the program file and the link overlay, validates their composition, and resolves
/// its credentials from the secrets store `secrets` describes.
pub fn load_with_overlay(
    program_path: &Path,
    overlay_path: &Path,
    secrets: &secrets::SecretsConfig,
) -> Result<Loaded, ReloadError> {
    let base = std::fs::read_to_string(program_path)
        .map_err(|e| ReloadError::Read { path: program_path.display().to_string(), reason: e.to_string() })?;
    let overlay = Overlay::load(overlay_path)?;
    let program = serving_program(&overlay.compose(&base)?, secrets)?;
    Ok(Loaded { base, program })
}

/// What `tally serve` loads: `config`'s program file with the overlay in its data directory.
pub fn load_for(config: &Config) -> Result<Loaded, ReloadError> {
    load_with_overlay(&config.program_path, &Overlay::path(&config.data_dir), &config.secrets)
}

/// Parses a program to serve: as [`Program::from_toml`], and also refusing credentials
/// written inline (the log would record them) and resolving the named ones from the store.
pub fn serving_program(source: &str, secrets: &secrets::SecretsConfig) -> Result<Program, ReloadError> {
    let mut program = Program::from_toml(source)?;
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

/// The log record announcing `program` as the rules in force from here on.
pub fn program_change_record(program: &Program) -> Result<Vec<u8>, tally_model::RecordError> {
    tally_model::encode(&Event::ProgramChange(ProgramChange {
        ts_ms: now_ms(),
        digest: program.digest.clone(),
        source: program.source.clone(),
    }))
}

/// Wall-clock milliseconds since the Unix epoch: the time stamped on every event the edge
/// records (attribution reads time only from these stamps).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
