//! Tally's HTTP edge: click redirects, the conversion pixel, S2S postbacks, health and
//! metrics, on hyper 1.x and tokio.
//!
//! Architecture invariants:
//! - A pixel or postback is answered 2xx only after its event is committed to the log; when
//!   the log cannot take it the answer is 503 with `Retry-After`, never 2xx.
//! - A click always gets its redirect (a person is waiting). It waits for its commit, and
//!   when the log cannot take it the click is counted in `tally_clicks_unrecorded_total`.
//! - Nothing here blocks a tokio worker: appends go through `Log::submit` (a bounded channel)
//!   and the handler awaits a oneshot. Program reloads read the file on a blocking thread.
//! - Macro values and deep links are encoded or validated before they reach `Location`; no
//!   request data reaches a header unencoded, and no foreign host is ever redirected to.
//! - This crate computes no commissions.

pub mod auth;
pub mod bots;
pub mod config;
mod handlers;
pub mod ip;
pub mod metrics;
pub mod params;
mod server;

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus_client::registry::Registry;
use tally_log::{Log, LogMetrics};
use tally_model::{Event, Program, ProgramChange};

pub use config::Config;
pub use server::serve;

use metrics::{EdgeMetrics, ReloadOutcome};

/// The edge's shared state: configuration, the hot-swappable program, the log and metrics.
pub struct Edge {
    pub config: Config,
    program: ArcSwap<Program>,
    log: Log,
    registry: Registry,
    log_metrics: LogMetrics,
    pub metrics: EdgeMetrics,
}

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
}

impl Edge {
    /// `log_metrics` must be the handles the log was opened with; they are exported here.
    pub fn new(config: Config, program: Program, log: Log, log_metrics: LogMetrics) -> Arc<Edge> {
        Edge::with_metrics(config, program, log, log_metrics, |_| {})
    }

    /// Like [`Edge::new`], also exporting metrics registered by `register` (e.g. those of an
    /// attribution worker running in the same process) on `/metrics`.
    pub fn with_metrics(
        config: Config,
        program: Program,
        log: Log,
        log_metrics: LogMetrics,
        register: impl FnOnce(&mut Registry),
    ) -> Arc<Edge> {
        let mut registry = Registry::default();
        log_metrics.register(&mut registry);
        register(&mut registry);
        let metrics = EdgeMetrics::new(&mut registry);
        metrics.program_links.set(program.links().count() as i64);
        Arc::new(Edge { config, program: ArcSwap::from_pointee(program), log, registry, log_metrics, metrics })
    }

    pub fn log(&self) -> &Log {
        &self.log
    }

    pub fn program(&self) -> Arc<Program> {
        self.program.load_full()
    }

    /// Re-reads the program file. An invalid file keeps the old program and returns why.
    /// A changed program is first committed to the log as a `ProgramChange` event, then
    /// swapped in, so every event after it in the log was judged by the new rules.
    pub async fn reload(&self) -> Result<bool, ReloadError> {
        let path = self.config.program_path.clone();
        let result = tokio::task::spawn_blocking(move || load_program(&path))
            .await
            .unwrap_or_else(|e| Err(ReloadError::Read { path: String::new(), reason: e.to_string() }));
        let outcome = match result {
            Ok(program) if program.digest == self.program.load().digest => Ok(false),
            Ok(program) => match self.log.submit(program_change_record(&program)?) {
                Ok(pending) => match pending.await {
                    Ok(_) => {
                        self.metrics.program_links.set(program.links().count() as i64);
                        self.program.store(Arc::new(program));
                        Ok(true)
                    }
                    Err(e) => Err(e.into()),
                },
                Err(e) => Err(e.into()),
            },
            Err(e) => Err(e),
        };
        self.metrics.reload(if outcome.is_ok() { ReloadOutcome::ok } else { ReloadOutcome::error });
        outcome
    }
}

/// Reads and validates a program file.
pub fn load_program(path: &Path) -> Result<Program, ReloadError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ReloadError::Read { path: path.display().to_string(), reason: e.to_string() })?;
    Ok(Program::from_toml(&text)?)
}

/// The log record announcing `program` as the rules in force from here on.
pub fn program_change_record(program: &Program) -> Result<Vec<u8>, tally_model::RecordError> {
    tally_model::encode(&Event::ProgramChange(ProgramChange {
        ts_ms: handlers::now_ms(),
        digest: program.digest.clone(),
        source: program.source.clone(),
    }))
}
