//! The process's logs: the `[logging]` section, the tracing subscriber, and the filter the
//! admin API changes at run time.

use std::sync::{Mutex, OnceLock};

use serde::{Deserialize, Serialize};
use tally_edge::admin::LogLevel;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

/// The environment variable that replaces `logging.level` (a tracing filter).
pub const LOG_FILTER_ENV: &str = "TALLY_LOG";

/// `[logging]` as written in the file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingSection {
    pub format: String,
    pub level: String,
}

impl Default for LoggingSection {
    fn default() -> Self {
        LoggingSection { format: "pretty".into(), level: "info".into() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// The validated section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggingConfig {
    pub format: LogFormat,
    /// A tracing filter; a bad one falls back to `info` when the subscriber starts.
    pub level: String,
}

impl LoggingSection {
    pub fn validate(&self, problems: &mut Vec<String>) -> LoggingConfig {
        let format = match self.format.as_str() {
            "pretty" => LogFormat::Pretty,
            "json" => LogFormat::Json,
            other => {
                problems.push(format!("logging.format: expected pretty or json, got \"{other}\""));
                LogFormat::Pretty
            }
        };
        LoggingConfig { format, level: self.level.clone() }
    }
}

/// The installed subscriber's filter handle and the filter's text.
struct Filter {
    handle: reload::Handle<EnvFilter, Registry>,
    current: Mutex<String>,
}

static FILTER: OnceLock<Filter> = OnceLock::new();

/// Installs the global subscriber: `TALLY_LOG` or `logging.level` as the filter (reloadable),
/// pretty or JSON lines on stderr. A second call (tests, `attribute` after `serve`) is a no-op.
pub fn init_tracing(config: &LoggingConfig) {
    let text = std::env::var(LOG_FILTER_ENV).ok().filter(|v| EnvFilter::try_new(v).is_ok());
    let text = text.unwrap_or_else(|| config.level.clone());
    let filter = EnvFilter::try_new(&text).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    // Colours only for a person at a terminal, not for journald or a log shipper.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = match config.format {
        LogFormat::Json => tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr).boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer().with_ansi(ansi).with_writer(std::io::stderr).boxed(),
    };
    if tracing_subscriber::registry().with(filter).with(fmt).try_init().is_ok() {
        let _ = FILTER.set(Filter { handle, current: Mutex::new(text) });
    }
}

/// The admin API's view of the filter.
#[derive(Debug)]
pub struct RuntimeLevel;

impl LogLevel for RuntimeLevel {
    fn get(&self) -> String {
        FILTER.get().and_then(|f| f.current.lock().ok().map(|c| c.clone())).unwrap_or_default()
    }

    fn set(&self, text: &str) -> Result<(), String> {
        let f = FILTER.get().ok_or("no reloadable subscriber is installed")?;
        // Bounded so a request cannot hand the subscriber an enormous filter.
        if text.is_empty() || text.len() > 512 {
            return Err("must be 1-512 characters, e.g. \"info\" or \"info,tally_edge=debug\"".into());
        }
        let filter = EnvFilter::try_new(text).map_err(|e| format!("not a tracing filter: {e}"))?;
        f.handle.reload(filter).map_err(|e| e.to_string())?;
        if let Ok(mut c) = f.current.lock() {
            *c = text.to_owned();
        }
        Ok(())
    }
}
