//! The worker's metrics. Labels are closed enums (entry status), never IDs.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::ledger::Status;

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
enum StatusLabel {
    pending,
    approved,
    rejected,
    rejected_cap,
    duplicate,
    unattributed,
}

impl From<Status> for StatusLabel {
    fn from(s: Status) -> Self {
        match s {
            Status::Pending => StatusLabel::pending,
            Status::Approved => StatusLabel::approved,
            Status::Rejected => StatusLabel::rejected,
            Status::RejectedCap => StatusLabel::rejected_cap,
            Status::Duplicate => StatusLabel::duplicate,
            Status::Unattributed => StatusLabel::unattributed,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: StatusLabel,
}

#[derive(Clone, Debug)]
pub struct AttributionMetrics {
    pub events: Counter,
    pub lag_events: Gauge,
    pub lag_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub position: Gauge,
    pub commit_duration: Histogram,
    pub errors: Counter,
    pub up: Gauge,
    pub pending_holds: Gauge,
    entries: Family<StatusLabels, Counter>,
}

impl Default for AttributionMetrics {
    fn default() -> Self {
        let m = AttributionMetrics {
            events: Counter::default(),
            lag_events: Gauge::default(),
            lag_seconds: Gauge::default(),
            position: Gauge::default(),
            commit_duration: Histogram::new(exponential_buckets(0.000_1, 2.0, 16)),
            errors: Counter::default(),
            up: Gauge::default(),
            pending_holds: Gauge::default(),
            entries: Family::default(),
        };
        // Every status shows from the start, so rate() and absent() behave.
        for s in Status::ALL {
            let _ = m.entries.get_or_create(&StatusLabels { status: s.into() });
        }
        m
    }
}

impl AttributionMetrics {
    /// Counts an entry written with `status` (a status change counts under the new status).
    pub fn entry(&self, status: Status) {
        self.entries.get_or_create(&StatusLabels { status: status.into() }).inc();
    }

    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("tally_attribution");
        r.register("events", "Log events applied by the attribution worker", self.events.clone());
        r.register("lag_events", "Events in the log not yet attributed", self.lag_events.clone());
        r.register_with_unit(
            "lag",
            "Event time of the log head minus event time of the last attributed event",
            Unit::Seconds,
            self.lag_seconds.clone(),
        );
        r.register("position", "Sequence number of the last attributed event", self.position.clone());
        r.register_with_unit(
            "commit_duration",
            "Time to commit a batch of attribution outputs with its checkpoint",
            Unit::Seconds,
            self.commit_duration.clone(),
        );
        r.register(
            "errors",
            "Failures of the worker: each transient one it retried, and the one it stopped on",
            self.errors.clone(),
        );
        r.register("up", "1 while the attribution worker is running", self.up.clone());
        r.register("pending_holds", "Commissions waiting for their hold period", self.pending_holds.clone());
        r.register("ledger_entries", "Ledger entries written or changed, by resulting status", self.entries.clone());
    }
}
