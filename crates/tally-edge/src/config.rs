//! The deployment's configuration (`tally.toml`): listeners, log, program path, privacy.
//!
//! Parse-all-then-fail: [`Config::from_toml`] reports every bad value at once, naming each.
//! `config/tally.toml` is the commented template; a test keeps it equal to the defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use tally_log::{LogOptions, SyncPolicy};

use crate::ip::{IpMode, IpPolicy};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    server: RawServer,
    log: RawLog,
    program: RawProgram,
    privacy: RawPrivacy,
    postback: RawPostback,
    logging: RawLogging,
    attribution: RawAttribution,
    admin: RawAdmin,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawServer {
    listen: String,
    node_id: u16,
    worker_threads: usize,
    max_connections: usize,
    header_read_timeout_ms: u64,
    max_header_bytes: usize,
    max_headers: usize,
    postback_max_body_bytes: usize,
    body_read_timeout_ms: u64,
    drain_timeout_ms: u64,
    fallback_url: String,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: "127.0.0.1:8080".into(),
            node_id: 0,
            worker_threads: 0,
            max_connections: 10_000,
            header_read_timeout_ms: 5_000,
            max_header_bytes: 16 * 1024,
            max_headers: 64,
            postback_max_body_bytes: 64 * 1024,
            body_read_timeout_ms: 10_000,
            drain_timeout_ms: 10_000,
            fallback_url: String::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLog {
    data_dir: String,
    sync: String,
    queue_capacity: usize,
    max_batch: usize,
    linger_us: u64,
    commit_on_park: bool,
}

impl Default for RawLog {
    fn default() -> Self {
        let d = LogOptions::default();
        RawLog {
            data_dir: "data".into(),
            sync: d.sync.as_str().into(),
            queue_capacity: d.queue_capacity,
            max_batch: d.max_batch,
            linger_us: d.linger.as_micros() as u64,
            commit_on_park: d.commit_on_park,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawProgram {
    path: String,
}

impl Default for RawProgram {
    fn default() -> Self {
        RawProgram { path: "program.toml".into() }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawPrivacy {
    ip_mode: String,
    ip_hash_key: String,
    cookies: bool,
    cookie_secure: bool,
    trusted_proxies: Vec<String>,
}

impl Default for RawPrivacy {
    fn default() -> Self {
        RawPrivacy {
            ip_mode: "truncate".into(),
            ip_hash_key: String::new(),
            cookies: true,
            cookie_secure: false,
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawPostback {
    signature_max_age_secs: u64,
}

impl Default for RawPostback {
    fn default() -> Self {
        RawPostback { signature_max_age_secs: 300 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLogging {
    format: String,
    level: String,
}

impl Default for RawLogging {
    fn default() -> Self {
        RawLogging { format: "pretty".into(), level: "info".into() }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAttribution {
    in_process: bool,
    commit_every: usize,
    sync: bool,
    snapshot_every: u64,
    snapshots_keep: usize,
}

impl Default for RawAttribution {
    fn default() -> Self {
        RawAttribution {
            in_process: true,
            commit_every: 65_536,
            sync: false,
            snapshot_every: 1_000_000,
            snapshots_keep: 16,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAdmin {
    listen: String,
    token: String,
    token_file: String,
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin { listen: "127.0.0.1:9464".into(), token: String::new(), token_file: String::new() }
    }
}

/// The admin listener: `/metrics`, health, and the token-protected JSON API.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// `None` when `admin.listen` is empty: no admin listener at all.
    pub listen: Option<SocketAddr>,
    /// The bearer token, from `admin.token` or read from `admin.token_file` at start.
    /// `None` disables the `/admin/` API (metrics and health still answer).
    pub token: Option<String>,
}

// Never print the token.
impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// Admin tokens shorter than this are refused: the API can change what links redirect to.
pub const MIN_ADMIN_TOKEN: usize = 16;

/// How `tally serve` runs the attribution worker (the worker itself lives in
/// `tally-attribution`; the edge only carries its settings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttributionConfig {
    /// Run the worker inside `tally serve`; false when `tally attribute` runs it instead.
    pub in_process: bool,
    pub commit_every: usize,
    pub sync: bool,
    /// Snapshot the attribution state every this many events (0 = never), for replays of
    /// windows that start mid-log.
    pub snapshot_every: u64,
    pub snapshots_keep: usize,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// Written into every click ID so IDs minted by different edge nodes never collide.
    pub node_id: u16,
    /// Tokio worker threads; 0 = one per core.
    pub worker_threads: usize,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub postback_max_body_bytes: usize,
    /// A client must send a whole postback body within this time (slow-body guard).
    pub body_read_timeout: Duration,
    pub drain_timeout: Duration,
    /// Where unknown links redirect; `None` answers 404.
    pub fallback_url: Option<String>,
    pub data_dir: PathBuf,
    pub log: LogOptions,
    pub program_path: PathBuf,
    pub ip: IpPolicy,
    pub cookies: bool,
    pub cookie_secure: bool,
    pub signature_max_age: Duration,
    pub log_format: LogFormat,
    pub log_level: String,
    pub attribution: AttributionConfig,
    pub admin: AdminConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("config is not valid TOML: {0}")]
    Syntax(String),
    #[error("config has {} problem(s):\n  {}", .0.len(), .0.join("\n  "))]
    Invalid(Vec<String>),
}

impl Config {
    /// Reads and validates a config file. Relative paths in it are relative to its directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Read { path: path.display().to_string(), reason: e.to_string() })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::from_toml(&text, base)
    }

    /// The defaults, as if from an empty file in `base`.
    pub fn defaults(base: &Path) -> Config {
        // An empty file is valid by construction; the test `defaults_are_valid` proves it.
        Config::from_toml("", base).unwrap_or_else(|e| panic!("built-in defaults are invalid: {e}"))
    }

    pub fn from_toml(text: &str, base: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string().trim().to_owned()))?;
        let mut p = Vec::new();
        let s = &raw.server;
        let listen = s
            .listen
            .parse::<SocketAddr>()
            .map_err(|_| p.push(format!("server.listen: \"{}\" is not an address like 127.0.0.1:8080", s.listen)))
            .ok();
        if s.max_connections == 0 {
            p.push("server.max_connections: must be at least 1".into());
        }
        if s.header_read_timeout_ms == 0 {
            p.push("server.header_read_timeout_ms: must be at least 1 (zero would disable the slowloris guard)".into());
        }
        if s.max_header_bytes < 1024 || s.max_header_bytes > 1 << 20 {
            p.push(format!("server.max_header_bytes: must be 1024-1048576, got {}", s.max_header_bytes));
        }
        if s.max_headers == 0 || s.max_headers > 1000 {
            p.push(format!("server.max_headers: must be 1-1000, got {}", s.max_headers));
        }
        if s.postback_max_body_bytes == 0 || s.postback_max_body_bytes > 16 << 20 {
            p.push(format!("server.postback_max_body_bytes: must be 1-16777216, got {}", s.postback_max_body_bytes));
        }
        if s.body_read_timeout_ms == 0 {
            p.push("server.body_read_timeout_ms: must be at least 1 (zero would disable the slow-body guard)".into());
        }
        let fallback_url = if s.fallback_url.is_empty() {
            None
        } else if url::Url::parse(&s.fallback_url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
            && !s.fallback_url.bytes().any(|b| b.is_ascii_control())
        {
            Some(s.fallback_url.clone())
        } else {
            p.push(format!("server.fallback_url: \"{}\" is not an absolute http(s) URL", s.fallback_url));
            None
        };

        let l = &raw.log;
        let sync = SyncPolicy::parse(&l.sync)
            .ok_or_else(|| p.push(format!("log.sync: expected none or batch, got \"{}\"", l.sync)))
            .unwrap_or_default();
        if l.queue_capacity == 0 {
            p.push("log.queue_capacity: must be at least 1".into());
        }
        if l.max_batch == 0 || l.max_batch > 65_536 {
            p.push(format!("log.max_batch: must be 1-65536, got {}", l.max_batch));
        }
        if l.linger_us > 100_000 {
            p.push(format!("log.linger_us: must be at most 100000 (100 ms), got {}", l.linger_us));
        }
        if l.data_dir.is_empty() {
            p.push("log.data_dir: must not be empty".into());
        }
        if raw.program.path.is_empty() {
            p.push("program.path: must not be empty".into());
        }

        let pr = &raw.privacy;
        let ip_mode = match pr.ip_mode.as_str() {
            "truncate" => IpMode::Truncate,
            "hash" => IpMode::Hash,
            "full" => IpMode::Full,
            other => {
                p.push(format!("privacy.ip_mode: expected truncate, hash or full, got \"{other}\""));
                IpMode::Truncate
            }
        };
        if ip_mode == IpMode::Hash && !pr.ip_hash_key.is_empty() && pr.ip_hash_key.len() < 16 {
            p.push("privacy.ip_hash_key: must be at least 16 characters".into());
        }
        let mut trusted = Vec::new();
        for cidr in &pr.trusted_proxies {
            match cidr.parse::<IpNet>().or_else(|_| cidr.parse::<std::net::IpAddr>().map(IpNet::from)) {
                Ok(net) => trusted.push(net),
                Err(_) => p.push(format!("privacy.trusted_proxies: \"{cidr}\" is not an IP address or CIDR")),
            }
        }
        let log_format = match raw.logging.format.as_str() {
            "pretty" => LogFormat::Pretty,
            "json" => LogFormat::Json,
            other => {
                p.push(format!("logging.format: expected pretty or json, got \"{other}\""));
                LogFormat::Pretty
            }
        };
        let a = &raw.attribution;
        if a.commit_every == 0 || a.commit_every > 1_000_000 {
            p.push(format!("attribution.commit_every: must be 1-1000000, got {}", a.commit_every));
        }
        if a.snapshot_every > 0 && a.snapshots_keep == 0 {
            p.push("attribution.snapshots_keep: must be at least 1 when snapshot_every is set, got 0".into());
        }
        let ad = &raw.admin;
        let admin_listen = if ad.listen.is_empty() {
            None
        } else {
            ad.listen
                .parse::<SocketAddr>()
                .map_err(|_| p.push(format!("admin.listen: \"{}\" is not an address like 127.0.0.1:9464", ad.listen)))
                .ok()
        };
        let admin_token = match (ad.token.is_empty(), ad.token_file.is_empty()) {
            (true, true) => None,
            (false, false) => {
                p.push("admin.token, admin.token_file: set one, not both".into());
                None
            }
            (false, true) => Some(ad.token.clone()),
            (true, false) => {
                let path = base.join(&ad.token_file);
                match std::fs::read_to_string(&path) {
                    // A trailing newline from `echo > file` is not part of the token.
                    Ok(t) => Some(t.trim().to_owned()),
                    Err(e) => {
                        p.push(format!("admin.token_file: cannot read {}: {e}", path.display()));
                        None
                    }
                }
            }
        };
        if let Some(t) = &admin_token {
            if t.len() < MIN_ADMIN_TOKEN || t.chars().any(|c| c.is_whitespace() || c.is_control()) {
                p.push(format!(
                    "admin.token: must be at least {MIN_ADMIN_TOKEN} characters without spaces or control characters"
                ));
            }
        }
        if !p.is_empty() {
            return Err(ConfigError::Invalid(p));
        }
        let listen = listen.ok_or_else(|| ConfigError::Invalid(vec!["server.listen".into()]))?;
        Ok(Config {
            listen,
            node_id: s.node_id,
            worker_threads: s.worker_threads,
            max_connections: s.max_connections,
            header_read_timeout: Duration::from_millis(s.header_read_timeout_ms),
            max_header_bytes: s.max_header_bytes,
            max_headers: s.max_headers,
            postback_max_body_bytes: s.postback_max_body_bytes,
            body_read_timeout: Duration::from_millis(s.body_read_timeout_ms),
            drain_timeout: Duration::from_millis(s.drain_timeout_ms),
            fallback_url,
            data_dir: base.join(&l.data_dir),
            log: LogOptions {
                sync,
                queue_capacity: l.queue_capacity,
                max_batch: l.max_batch,
                linger: Duration::from_micros(l.linger_us),
                commit_on_park: l.commit_on_park,
            },
            program_path: base.join(&raw.program.path),
            ip: IpPolicy::new(ip_mode, &pr.ip_hash_key, trusted),
            cookies: pr.cookies,
            cookie_secure: pr.cookie_secure,
            signature_max_age: Duration::from_secs(raw.postback.signature_max_age_secs),
            log_format,
            log_level: raw.logging.level.clone(),
            attribution: AttributionConfig {
                in_process: a.in_process,
                commit_every: a.commit_every,
                sync: a.sync,
                snapshot_every: a.snapshot_every,
                snapshots_keep: a.snapshots_keep,
            },
            admin: AdminConfig { listen: admin_listen, token: admin_token },
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let c = Config::defaults(Path::new("/etc/tally"));
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.data_dir, Path::new("/etc/tally/data"));
        assert_eq!(c.program_path, Path::new("/etc/tally/program.toml"));
        assert_eq!(c.postback_max_body_bytes, 65_536);
    }

    /// The commented template in `config/` must parse, have no unknown keys, and say exactly
    /// what the defaults are, so the file and the code cannot drift apart.
    #[test]
    fn template_parses_and_matches_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/tally.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let from_file: RawConfig = toml::from_str(&text).unwrap();
        let defaults = RawConfig::default();
        assert_eq!(format!("{from_file:?}"), format!("{defaults:?}"));
        Config::from_toml(&text, Path::new(".")).unwrap();
    }

    #[test]
    fn every_bad_value_is_reported_at_once() {
        let bad = r#"
[server]
listen = "nowhere"
max_connections = 0
header_read_timeout_ms = 0
max_header_bytes = 10
max_headers = 0
postback_max_body_bytes = 0
fallback_url = "javascript:alert(1)"
[log]
sync = "sometimes"
queue_capacity = 0
max_batch = 0
linger_us = 1000000
[privacy]
ip_mode = "blur"
trusted_proxies = ["10.0.0.0/33"]
[logging]
format = "xml"
[admin]
listen = "localhost"
token = "short"
"#;
        let Err(ConfigError::Invalid(problems)) = Config::from_toml(bad, Path::new(".")) else { panic!() };
        let all = problems.join("\n");
        for key in [
            "server.listen",
            "server.max_connections",
            "server.header_read_timeout_ms",
            "server.max_header_bytes",
            "server.max_headers",
            "server.postback_max_body_bytes",
            "server.fallback_url",
            "log.sync",
            "log.queue_capacity",
            "log.max_batch",
            "log.linger_us",
            "privacy.ip_mode",
            "privacy.trusted_proxies",
            "logging.format",
            "admin.listen",
            "admin.token",
        ] {
            assert!(all.contains(key), "{key} not reported in:\n{all}");
        }
    }

    #[test]
    fn admin_token_comes_from_a_file_without_its_newline() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("admin.token"), "0123456789abcdef-token\n").unwrap();
        let c = Config::from_toml("[admin]\ntoken_file = \"admin.token\"\n", dir.path()).unwrap();
        assert_eq!(c.admin.token.as_deref(), Some("0123456789abcdef-token"));
        assert_eq!(c.admin.listen.map(|a| a.to_string()).as_deref(), Some("127.0.0.1:9464"));
        assert!(!format!("{c:?}").contains("0123456789abcdef"), "Debug must not print the token");
    }

    #[test]
    fn admin_token_problems_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let both = "[admin]\ntoken = \"0123456789abcdef\"\ntoken_file = \"t\"\n";
        let err = Config::from_toml(both, dir.path()).unwrap_err().to_string();
        assert!(err.contains("not both"), "{err}");
        let missing = Config::from_toml("[admin]\ntoken_file = \"nope\"\n", dir.path()).unwrap_err().to_string();
        assert!(missing.contains("admin.token_file: cannot read"), "{missing}");
        let off = Config::from_toml("[admin]\nlisten = \"\"\n", dir.path()).unwrap();
        assert_eq!(off.admin.listen, None);
        assert_eq!(off.admin.token, None);
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = Config::from_toml("[server]\nlisten_on = \"x\"\n", Path::new(".")).unwrap_err();
        assert!(err.to_string().contains("listen_on"), "{err}");
    }
}
