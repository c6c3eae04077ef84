//! `tally_deliveries_*`: what the dispatcher did.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabels {
    /// `postback` or `webhook`.
    pub kind: &'static str,
    /// `delivered`, `retry` (failed, to be tried again), `failed` (given up), `refused`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

fn duration_histogram() -> Histogram {
    Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
}

#[derive(Clone, Debug)]
pub struct DeliveryMetrics {
    pub attempts: Family<AttemptLabels, Counter>,
    pub duration: Family<KindLabel, Histogram, fn() -> Histogram>,
    pub taken: Counter,
}

impl Default for DeliveryMetrics {
    fn default() -> Self {
        let m = DeliveryMetrics {
            attempts: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            taken: Counter::default(),
        };
        // Every series from the start, so rates and alerts have a zero to start from.
        for kind in ["postback", "webhook"] {
            for outcome in ["delivered", "retry", "failed", "refused"] {
                let _ = m.attempts.get_or_create(&AttemptLabels { kind, outcome });
            }
            let _ = m.duration.get_or_create(&KindLabel { kind });
        }
        m
    }
}

impl DeliveryMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("tally_deliveries");
        r.register("attempts", "Delivery attempts of postbacks and webhooks, by outcome", self.attempts.clone());
        r.register_with_unit(
            "attempt_duration",
            "Time of a delivery attempt, to the answer or the failure",
            Unit::Seconds,
            self.duration.clone(),
        );
        r.register("taken", "Notifications taken from the outbox into the delivery log", self.taken.clone());
    }
}
