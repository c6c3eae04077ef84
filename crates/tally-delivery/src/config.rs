//! `[deliveries]`: how outgoing postbacks and webhooks are delivered.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::DeliveryConfig;

/// `[deliveries]` as written. Every key has a default; unknown keys are errors.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveriesSection {
    /// Deliver the outbox (with `tally serve` when attribution runs in it, or `tally attribute`).
    pub enabled: bool,
    /// Let receivers be on private, loopback or link-local addresses (a receiver on your own
    /// network); off, such receivers are refused (no SSRF through a postback URL).
    pub allow_private: bool,
    /// Each attempt's limit: connect, send, and the answer's first 64 KiB.
    pub timeout_ms: u64,
    /// Keep retrying a delivery this long before it is `failed` (redeliverable).
    pub retry_hours: u64,
    /// Requests to one receiver (host and port) at once.
    pub per_receiver: usize,
}

impl Default for DeliveriesSection {
    fn default() -> Self {
        DeliveriesSection { enabled: true, allow_private: false, timeout_ms: 10_000, retry_hours: 26, per_receiver: 4 }
    }
}

/// The validated section.
#[derive(Debug, Clone)]
pub struct DeliveriesConfig {
    pub enabled: bool,
    pub delivery: DeliveryConfig,
}

impl DeliveriesSection {
    pub fn validate(&self, problems: &mut Vec<String>) -> DeliveriesConfig {
        if !(100..=120_000).contains(&self.timeout_ms) {
            problems.push(format!("deliveries.timeout_ms: must be 100-120000, got {}", self.timeout_ms));
        }
        if !(1..=24 * 30).contains(&self.retry_hours) {
            problems.push(format!("deliveries.retry_hours: must be 1-720, got {}", self.retry_hours));
        }
        if !(1..=64).contains(&self.per_receiver) {
            problems.push(format!("deliveries.per_receiver: must be 1-64, got {}", self.per_receiver));
        }
        DeliveriesConfig {
            enabled: self.enabled,
            delivery: DeliveryConfig {
                allow_private: self.allow_private,
                timeout: Duration::from_millis(self.timeout_ms),
                retry_for: Duration::from_secs(self.retry_hours * 3600),
                per_host: self.per_receiver,
                ..DeliveryConfig::default()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_are_named() {
        let mut problems = Vec::new();
        let bad = DeliveriesSection { timeout_ms: 5, retry_hours: 0, per_receiver: 0, ..DeliveriesSection::default() };
        bad.validate(&mut problems);
        let all = problems.join("\n");
        for key in ["deliveries.timeout_ms", "deliveries.retry_hours", "deliveries.per_receiver"] {
            assert!(all.contains(key), "{key}: {all}");
        }
        let mut none = Vec::new();
        let good = DeliveriesSection::default().validate(&mut none);
        assert!(none.is_empty() && good.enabled && !good.delivery.allow_private);
    }
}
