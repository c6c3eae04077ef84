//! The edge's sections of `tally.toml`: `[server]` (listener and HTTP limits), `[program]`,
//! `[privacy]`, `[postback]`, `[admin]` and `[secrets]`, with `tally-signals`' `[signals]` (its
//! type, validated here because the edge loads it). The application crate composes them with the
//! other crates' sections and the data directory; this module owns their keys, defaults and
//! validation. Parse-all-then-fail: [`Config::validate`] reports every bad value at once,
//! naming each.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use tally_protocol::ip::{IpMode, IpPolicy};

use crate::secrets::{SecretsConfig, SecretsSection};

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    pub listen: String,
    pub node_id: u16,
    pub worker_threads: usize,
    pub max_connections: usize,
    pub header_read_timeout_ms: u64,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub postback_max_body_bytes: usize,
    pub body_read_timeout_ms: u64,
    pub drain_timeout_ms: u64,
    pub fallback_url: String,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
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

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProgramSection {
    pub path: String,
}

impl Default for ProgramSection {
    fn default() -> Self {
        ProgramSection { path: "program.toml".into() }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrivacySection {
    pub ip_mode: String,
    pub ip_hash_key: String,
    pub cookies: bool,
    pub cookie_secure: bool,
    pub trusted_proxies: Vec<String>,
    pub retention_days: u32,
}

impl Default for PrivacySection {
    fn default() -> Self {
        PrivacySection {
            ip_mode: "truncate".into(),
            ip_hash_key: String::new(),
            cookies: true,
            cookie_secure: false,
            trusted_proxies: Vec::new(),
            retention_days: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostbackSection {
    pub signature_max_age_secs: u64,
}

impl Default for PostbackSection {
    fn default() -> Self {
        PostbackSection { signature_max_age_secs: 300 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    pub listen: String,
    pub token: String,
    pub token_file: String,
}

impl Default for AdminSection {
    fn default() -> Self {
        AdminSection { listen: "127.0.0.1:9464".into(), token: String::new(), token_file: String::new() }
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
    /// The data directory, from `[log]`: the link overlay lives there.
    pub data_dir: PathBuf,
    pub program_path: PathBuf,
    pub ip: IpPolicy,
    pub cookies: bool,
    pub cookie_secure: bool,
    /// Personal fields older than this many days are erased; 0 keeps them.
    pub retention_days: u32,
    pub signature_max_age: Duration,
    pub admin: AdminConfig,
    /// Where advertisers' credentials are looked up ([`crate::secrets`]).
    pub secrets: SecretsConfig,
    /// `[signals]` (owned by `tally-signals`): the databases and lists clicks are
    /// classified by, loaded at start and on every reload.
    pub signals: tally_signals::SignalsConfig,
}

/// The edge's sections as parsed, for [`Config::validate`].
#[derive(Debug, Clone, Copy)]
pub struct Sections<'a> {
    pub server: &'a ServerSection,
    pub program: &'a ProgramSection,
    pub privacy: &'a PrivacySection,
    pub postback: &'a PostbackSection,
    pub admin: &'a AdminSection,
    pub secrets: &'a SecretsSection,
    pub signals: &'a tally_signals::SignalsSection,
}

impl Config {
    /// Validates the edge's sections. `base` is the config file's directory (relative paths
    /// are resolved against it); `data_dir` comes from `[log]`. Every bad value is pushed
    /// onto `problems`, named by its key; `None` when there was any.
    pub fn validate(
        sections: Sections<'_>,
        base: &Path,
        data_dir: PathBuf,
        problems: &mut Vec<String>,
    ) -> Option<Config> {
        let p = problems;
        let before = p.len();
        let s = sections.server;
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

        if sections.program.path.is_empty() {
            p.push("program.path: must not be empty".into());
        }

        let pr = sections.privacy;
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
        if pr.retention_days > 36_500 {
            p.push(format!("privacy.retention_days: must be 0 (keep) to 36500, got {}", pr.retention_days));
        }
        let mut trusted = Vec::new();
        for cidr in &pr.trusted_proxies {
            match cidr.parse::<IpNet>().or_else(|_| cidr.parse::<std::net::IpAddr>().map(IpNet::from)) {
                Ok(net) => trusted.push(net),
                Err(_) => p.push(format!("privacy.trusted_proxies: \"{cidr}\" is not an IP address or CIDR")),
            }
        }
        let signals = sections.signals.validate(base, p);
        let ad = sections.admin;
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
        if p.len() > before {
            return None;
        }
        Some(Config {
            listen: listen?,
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
            data_dir,
            program_path: base.join(&sections.program.path),
            ip: IpPolicy::new(ip_mode, &pr.ip_hash_key, trusted),
            cookies: pr.cookies,
            cookie_secure: pr.cookie_secure,
            retention_days: pr.retention_days,
            signature_max_age: Duration::from_secs(sections.postback.signature_max_age_secs),
            admin: AdminConfig { listen: admin_listen, token: admin_token },
            secrets: sections
                .secrets
                .validate(base, std::env::var_os(crate::secrets::CREDENTIALS_DIRECTORY).map(PathBuf::from)),
            signals,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The edge's sections of a config file, as the application crate parses them.
    #[derive(Debug, Default, Deserialize)]
    #[serde(default)]
    struct Doc {
        server: ServerSection,
        program: ProgramSection,
        privacy: PrivacySection,
        postback: PostbackSection,
        admin: AdminSection,
        secrets: SecretsSection,
        signals: tally_signals::SignalsSection,
    }

    fn validate(text: &str, base: &Path) -> Result<Config, Vec<String>> {
        let d: Doc = toml::from_str(text).unwrap();
        let sections = Sections {
            server: &d.server,
            program: &d.program,
            privacy: &d.privacy,
            postback: &d.postback,
            admin: &d.admin,
            secrets: &d.secrets,
            signals: &d.signals,
        };
        let mut problems = Vec::new();
        Config::validate(sections, base, base.join("data"), &mut problems).ok_or(problems)
    }

    #[test]
    fn defaults_are_valid() {
        let c = validate("", Path::new("/etc/tally")).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.data_dir, Path::new("/etc/tally/data"));
        assert_eq!(c.program_path, Path::new("/etc/tally/program.toml"));
        assert_eq!(c.postback_max_body_bytes, 65_536);
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
body_read_timeout_ms = 0
fallback_url = "javascript:alert(1)"
[program]
path = ""
[privacy]
ip_mode = "blur"
trusted_proxies = ["10.0.0.0/33"]
[admin]
listen = "localhost"
token = "short"
"#;
        let all = validate(bad, Path::new(".")).unwrap_err().join("\n");
        for key in [
            "server.listen",
            "server.max_connections",
            "server.header_read_timeout_ms",
            "server.max_header_bytes",
            "server.max_headers",
            "server.postback_max_body_bytes",
            "server.body_read_timeout_ms",
            "server.fallback_url",
            "program.path",
            "privacy.ip_mode",
            "privacy.trusted_proxies",
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
        let c = validate("[admin]\ntoken_file = \"admin.token\"\n", dir.path()).unwrap();
        assert_eq!(c.admin.token.as_deref(), Some("0123456789abcdef-token"));
        assert_eq!(c.admin.listen.map(|a| a.to_string()).as_deref(), Some("127.0.0.1:9464"));
        assert!(!format!("{c:?}").contains("0123456789abcdef"), "Debug must not print the token");
    }

    #[test]
    fn admin_token_problems_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let both = "[admin]\ntoken = \"0123456789abcdef\"\ntoken_file = \"t\"\n";
        let err = validate(both, dir.path()).unwrap_err().join("\n");
        assert!(err.contains("not both"), "{err}");
        let missing = validate("[admin]\ntoken_file = \"nope\"\n", dir.path()).unwrap_err().join("\n");
        assert!(missing.contains("admin.token_file: cannot read"), "{missing}");
        let off = validate("[admin]\nlisten = \"\"\n", dir.path()).unwrap();
        assert_eq!(off.admin.listen, None);
        assert_eq!(off.admin.token, None);
    }
}
