//! The `[bus]` section of `tally.toml`: how a node reaches the cluster's NATS JetStream.
//! Without `urls` the section is off and Tally is a single binary.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[bus]` as written in the file. Every key has a default; unknown keys are errors.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BusSection {
    /// NATS servers, `nats://host:port` each; any one is enough to join, several let the
    /// client fail over. Empty: no bus.
    pub urls: Vec<String>,
    /// The JetStream stream that carries every edge's events.
    pub stream: String,
    /// The first token(s) of every subject the cluster uses: `{prefix}.events.{node}`,
    /// `{prefix}.program`. Two clusters on one NATS need different ones (and streams).
    pub subject_prefix: String,
    /// Copies JetStream keeps of each message (3 in a 3-node cluster; 1 for one server).
    pub replicas: usize,
    /// How long the stream keeps a message, in hours (0 = until the operator removes it).
    /// An attribution tier down for longer than this loses events: size it to outlast any
    /// outage you plan to recover from.
    pub retention_hours: u64,
    /// The most records one message carries, and the most bytes, its chain entries and
    /// headers included (NATS refuses messages over its `max_payload`, 1 MiB by default).
    pub max_records: usize,
    pub max_message_bytes: usize,
    /// How long a publish waits for JetStream's acknowledgement before it is sent again.
    pub ack_timeout_ms: u64,
    /// How long the shipper waits for more events before it sends a message shorter than
    /// `max_records`: fewer, larger messages cost the edge and NATS far less CPU per event,
    /// for this much more shipping lag.
    pub linger_ms: u64,
    /// How long the active attribution process's lease outlives its last renewal: a standby
    /// takes over this long after the active one stops renewing (it renews every third).
    pub lease_ttl_ms: u64,
    /// NATS authentication: a user, whose password is the secret `password_secret` names,
    /// or a token, the secret `token_secret` names (secrets come from `[secrets]`, never
    /// from this file).
    pub user: String,
    pub password_secret: String,
    pub token_secret: String,
    /// The CA certificate (PEM) that signed the NATS servers' certificates: with it the
    /// connection must be TLS and the servers are checked against it.
    pub tls_ca_file: String,
    /// A client certificate and its key (PEM), for servers that verify their clients.
    pub tls_cert_file: String,
    pub tls_key_file: String,
}

impl Default for BusSection {
    fn default() -> Self {
        BusSection {
            urls: Vec::new(),
            stream: "TALLY_EVENTS".into(),
            subject_prefix: "tally".into(),
            replicas: 3,
            retention_hours: 0,
            max_records: 4096,
            max_message_bytes: 512 * 1024,
            ack_timeout_ms: 5000,
            linger_ms: 10,
            lease_ttl_ms: 5000,
            user: String::new(),
            password_secret: String::new(),
            token_secret: String::new(),
            tls_ca_file: String::new(),
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
        }
    }
}

/// The validated `[bus]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusConfig {
    pub urls: Vec<String>,
    pub stream: String,
    pub subject_prefix: String,
    pub replicas: usize,
    pub retention: Option<Duration>,
    pub max_records: usize,
    pub max_message_bytes: usize,
    pub ack_timeout: Duration,
    pub linger: Duration,
    pub lease_ttl: Duration,
    pub auth: Auth,
    pub tls: Tls,
    /// The value of the secret `auth` names, once the application resolved it
    /// ([`BusConfig::with_credential`]).
    pub credential: Option<Credential>,
}

/// How a node authenticates to NATS; secrets by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    None,
    Token { secret: String },
    User { user: String, secret: String },
}

/// TLS to NATS: the servers' CA, and a client certificate and key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tls {
    pub ca: Option<PathBuf>,
    pub client: Option<(PathBuf, PathBuf)>,
}

/// A resolved secret (a password or token); `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential(pub String);

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credential(<redacted>)")
    }
}

impl BusConfig {
    /// The secret to resolve before connecting, with the key that names it.
    pub fn secret_name(&self) -> Option<(&'static str, &str)> {
        match &self.auth {
            Auth::None => None,
            Auth::Token { secret } => Some(("bus.token_secret", secret)),
            Auth::User { secret, .. } => Some(("bus.password_secret", secret)),
        }
    }

    /// This config with the value of [`BusConfig::secret_name`]'s secret.
    pub fn with_credential(self, value: String) -> BusConfig {
        BusConfig { credential: Some(Credential(value)), ..self }
    }

    /// The subject edge `node` publishes its events on.
    pub fn events_subject(&self, node: u16) -> String {
        format!("{}.events.{node}", self.subject_prefix)
    }

    /// The subjects of every edge's events: the events stream's.
    pub fn events_subjects(&self) -> String {
        format!("{}.events.>", self.subject_prefix)
    }

    /// The subject of the cluster's program.
    pub fn program_subject(&self) -> String {
        format!("{}.program", self.subject_prefix)
    }
}

impl BusSection {
    /// The bus, if `urls` names one (files relative to `base`, the config file's directory).
    /// Every bad value is pushed onto `problems`, named by its key.
    pub fn validate(&self, base: &Path, problems: &mut Vec<String>) -> Option<BusConfig> {
        for url in &self.urls {
            let rest = url.strip_prefix("nats://").or_else(|| url.strip_prefix("tls://")).unwrap_or("");
            if rest.is_empty() || rest.contains('@') || rest.contains('/') || rest.contains(char::is_whitespace) {
                // Credentials in the URL would sit in the config file and in every log line
                // that names the server: they are refused.
                problems.push(format!(
                    "bus.urls: expected nats://host:port (or tls://) without user or password, got \"{url}\""
                ));
            }
        }
        let stream_ok = !self.stream.is_empty()
            && self.stream.len() <= 64
            && self.stream.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !stream_ok {
            problems.push(format!("bus.stream: expected 1-64 letters, digits, _ or -, got \"{}\"", self.stream));
        }
        let token_ok = |t: &str| !t.is_empty() && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if self.subject_prefix.len() > 64 || !self.subject_prefix.split('.').all(token_ok) {
            problems.push(format!(
                "bus.subject_prefix: expected dot-separated tokens of letters, digits, _ or -, got \"{}\"",
                self.subject_prefix
            ));
        }
        if !(1..=5).contains(&self.replicas) {
            problems.push(format!("bus.replicas: must be 1-5 (JetStream's limit), got {}", self.replicas));
        }
        if self.max_records == 0 || self.max_records > 65_536 {
            problems.push(format!("bus.max_records: must be 1-65536, got {}", self.max_records));
        }
        if !(4096..=64 << 20).contains(&self.max_message_bytes) {
            problems.push(format!("bus.max_message_bytes: must be 4096-67108864, got {}", self.max_message_bytes));
        }
        if !(100..=600_000).contains(&self.ack_timeout_ms) {
            problems.push(format!("bus.ack_timeout_ms: must be 100-600000, got {}", self.ack_timeout_ms));
        }
        if self.linger_ms > 1000 {
            problems.push(format!("bus.linger_ms: must be at most 1000, got {}", self.linger_ms));
        }
        if !(1000..=600_000).contains(&self.lease_ttl_ms) {
            problems.push(format!("bus.lease_ttl_ms: must be 1000-600000, got {}", self.lease_ttl_ms));
        }
        let name_ok = |n: &str| n.is_empty() || tally_model::program::is_credential_name(n);
        for (key, value) in [("bus.password_secret", &self.password_secret), ("bus.token_secret", &self.token_secret)] {
            if !name_ok(value) {
                problems.push(format!("{key}: expected the name of a secret ([secrets]), got \"{value}\""));
            }
        }
        let auth = match (self.user.is_empty(), self.password_secret.is_empty(), self.token_secret.is_empty()) {
            (true, true, true) => Auth::None,
            (true, true, false) => Auth::Token { secret: self.token_secret.clone() },
            (false, false, true) => Auth::User { user: self.user.clone(), secret: self.password_secret.clone() },
            _ => {
                problems.push(
                    "bus.user, bus.password_secret, bus.token_secret: set user and password_secret, or token_secret, or none"
                        .into(),
                );
                Auth::None
            }
        };
        let file = |v: &str| (!v.is_empty()).then(|| base.join(v));
        let client = match (file(&self.tls_cert_file), file(&self.tls_key_file)) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => {
                problems.push("bus.tls_cert_file, bus.tls_key_file: set both or neither".into());
                None
            }
        };
        let tls = Tls { ca: file(&self.tls_ca_file), client };
        if self.urls.is_empty() {
            return None;
        }
        Some(BusConfig {
            urls: self.urls.clone(),
            stream: self.stream.clone(),
            subject_prefix: self.subject_prefix.clone(),
            replicas: self.replicas,
            retention: (self.retention_hours > 0).then(|| Duration::from_secs(self.retention_hours * 3600)),
            max_records: self.max_records,
            max_message_bytes: self.max_message_bytes,
            ack_timeout: Duration::from_millis(self.ack_timeout_ms),
            linger: Duration::from_millis(self.linger_ms),
            lease_ttl: Duration::from_millis(self.lease_ttl_ms),
            auth,
            tls,
            credential: None,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn off_without_urls_and_on_with_them() {
        let mut problems = Vec::new();
        assert_eq!(BusSection::default().validate(Path::new("/etc/tally"), &mut problems), None);
        let on = BusSection { urls: vec!["nats://127.0.0.1:4222".into()], ..Default::default() };
        let config = on.validate(Path::new("/etc/tally"), &mut problems).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!((config.replicas, config.retention), (3, None));
        assert_eq!(config.events_subject(7), "tally.events.7");
        assert_eq!(config.events_subjects(), "tally.events.>");
        assert_eq!(config.program_subject(), "tally.program");
    }

    #[test]
    fn every_bad_value_is_named() {
        let bad = BusSection {
            urls: vec!["nats://user:secret@host:4222".into(), "http://host".into()],
            stream: "a b".into(),
            subject_prefix: "tally.>".into(),
            replicas: 0,
            max_records: 0,
            max_message_bytes: 10,
            ack_timeout_ms: 1,
            lease_ttl_ms: 10,
            linger_ms: 5000,
            user: "tally".into(),
            token_secret: "a secret".into(),
            tls_cert_file: "client.pem".into(),
            ..Default::default()
        };
        let mut problems = Vec::new();
        bad.validate(Path::new("."), &mut problems);
        let text = problems.join("\n");
        for key in [
            "bus.urls",
            "bus.stream",
            "bus.subject_prefix",
            "bus.replicas",
            "bus.max_records",
            "bus.max_message_bytes",
            "bus.ack_timeout_ms",
            "bus.lease_ttl_ms",
            "bus.linger_ms",
            "bus.token_secret: expected the name",
            "set user and password_secret, or token_secret",
            "bus.tls_cert_file, bus.tls_key_file: set both",
        ] {
            assert!(text.contains(key), "{key} not named in {text}");
        }
        assert_eq!(problems.iter().filter(|p| p.starts_with("bus.urls")).count(), 2);
    }

    #[test]
    fn credentials_are_named_and_files_resolved_against_the_config() {
        let section = BusSection {
            urls: vec!["tls://nats.internal:4222".into()],
            user: "edge".into(),
            password_secret: "nats-password".into(),
            tls_ca_file: "nats-ca.pem".into(),
            tls_cert_file: "/etc/tally/client.pem".into(),
            tls_key_file: "client.key".into(),
            ..Default::default()
        };
        let mut problems = Vec::new();
        let config = section.validate(Path::new("/etc/tally"), &mut problems).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(config.secret_name(), Some(("bus.password_secret", "nats-password")));
        assert_eq!(config.tls.ca.as_deref(), Some(Path::new("/etc/tally/nats-ca.pem")));
        assert_eq!(
            config.tls.client,
            Some((PathBuf::from("/etc/tally/client.pem"), PathBuf::from("/etc/tally/client.key")))
        );
        let resolved = config.with_credential("hunter2-hunter2".into());
        assert!(!format!("{resolved:?}").contains("hunter2"), "a credential never reaches a log line");
    }
}
