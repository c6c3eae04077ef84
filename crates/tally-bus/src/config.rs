//! The `[bus]` section of `tally.toml`: how a node reaches the cluster's NATS JetStream.
//! Without `urls` the section is off and Tally is a single binary.

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
    /// Copies JetStream keeps of each message (3 in a 3-node cluster; 1 for one server).
    pub replicas: usize,
    /// How long the stream keeps a message, in hours (0 = until the operator removes it).
    /// An attribution tier down for longer than this loses events: size it to outlast any
    /// outage you plan to recover from.
    pub retention_hours: u64,
    /// The most records one message carries, and the most bytes (NATS refuses messages
    /// over its `max_payload`, 1 MiB by default).
    pub max_records: usize,
    pub max_message_bytes: usize,
    /// How long a publish waits for JetStream's acknowledgement before it is sent again.
    pub ack_timeout_ms: u64,
    /// How long the active attribution process's lease outlives its last renewal: a standby
    /// takes over this long after the active one stops renewing (it renews every third).
    pub lease_ttl_ms: u64,
}

impl Default for BusSection {
    fn default() -> Self {
        BusSection {
            urls: Vec::new(),
            stream: "TALLY_EVENTS".into(),
            replicas: 3,
            retention_hours: 0,
            max_records: 4096,
            max_message_bytes: 512 * 1024,
            ack_timeout_ms: 5000,
            lease_ttl_ms: 5000,
        }
    }
}

/// The validated `[bus]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusConfig {
    pub urls: Vec<String>,
    pub stream: String,
    pub replicas: usize,
    pub retention: Option<Duration>,
    pub max_records: usize,
    pub max_message_bytes: usize,
    pub ack_timeout: Duration,
    pub lease_ttl: Duration,
}

/// Subjects of the events stream: one per edge node.
pub const SUBJECT_PREFIX: &str = "tally.events";

impl BusConfig {
    /// The subject an edge publishes its events on.
    pub fn subject(node: u16) -> String {
        format!("{SUBJECT_PREFIX}.{node}")
    }
}

impl BusSection {
    /// The bus, if `urls` names one. Every bad value is pushed onto `problems`, named by
    /// its key.
    pub fn validate(&self, problems: &mut Vec<String>) -> Option<BusConfig> {
        for url in &self.urls {
            let rest = url.strip_prefix("nats://").unwrap_or("");
            if rest.is_empty() || rest.contains('@') || rest.contains('/') || rest.contains(char::is_whitespace) {
                // Credentials in the URL would sit in the config file and in every log line
                // that names the server: they are refused.
                problems.push(format!("bus.urls: expected nats://host:port without user or password, got \"{url}\""));
            }
        }
        let stream_ok = !self.stream.is_empty()
            && self.stream.len() <= 64
            && self.stream.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !stream_ok {
            problems.push(format!("bus.stream: expected 1-64 letters, digits, _ or -, got \"{}\"", self.stream));
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
        if !(1000..=600_000).contains(&self.lease_ttl_ms) {
            problems.push(format!("bus.lease_ttl_ms: must be 1000-600000, got {}", self.lease_ttl_ms));
        }
        if self.urls.is_empty() {
            return None;
        }
        Some(BusConfig {
            urls: self.urls.clone(),
            stream: self.stream.clone(),
            replicas: self.replicas,
            retention: (self.retention_hours > 0).then(|| Duration::from_secs(self.retention_hours * 3600)),
            max_records: self.max_records,
            max_message_bytes: self.max_message_bytes,
            ack_timeout: Duration::from_millis(self.ack_timeout_ms),
            lease_ttl: Duration::from_millis(self.lease_ttl_ms),
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
        assert_eq!(BusSection::default().validate(&mut problems), None);
        let on = BusSection { urls: vec!["nats://127.0.0.1:4222".into()], ..Default::default() };
        let config = on.validate(&mut problems).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!((config.replicas, config.retention), (3, None));
        assert_eq!(BusConfig::subject(7), "tally.events.7");
    }

    #[test]
    fn every_bad_value_is_named() {
        let bad = BusSection {
            urls: vec!["nats://user:secret@host:4222".into(), "http://host".into()],
            stream: "a b".into(),
            replicas: 0,
            max_records: 0,
            max_message_bytes: 10,
            ack_timeout_ms: 1,
            lease_ttl_ms: 10,
            ..Default::default()
        };
        let mut problems = Vec::new();
        bad.validate(&mut problems);
        let text = problems.join("\n");
        for key in [
            "bus.urls",
            "bus.stream",
            "bus.replicas",
            "bus.max_records",
            "bus.max_message_bytes",
            "bus.ack_timeout_ms",
            "bus.lease_ttl_ms",
        ] {
            assert!(text.contains(key), "{key} not named in {text}");
        }
        assert_eq!(problems.iter().filter(|p| p.starts_with("bus.urls")).count(), 2);
    }
}
