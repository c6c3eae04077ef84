//! The log's metrics. Recorded once per batch, never per event, so they cost nothing on the
//! hot path. Names follow `tally_<thing>_<unit>[_total]`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

#[derive(Debug, Clone)]
pub struct LogMetrics {
    pub batch_size: Histogram,
    pub commit_duration: Histogram,
    pub queue_depth: Gauge,
    pub queue_capacity: Gauge,
    pub events_appended: Counter,
    pub batches_committed: Counter,
    /// Of those, batches a runtime thread committed before parking ([`crate::Log::park_hook`]).
    pub inline_batches: Counter,
    pub fsyncs: Counter,
    pub commit_errors: Counter,
    pub last_sequence: Gauge,
    /// Sampled by [`crate::Log::sample_metrics`].
    pub pending_compaction_bytes: Gauge,
    /// Advanced by [`crate::Log::sample_metrics`].
    pub stall_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
}

impl Default for LogMetrics {
    fn default() -> Self {
        LogMetrics {
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            // 10 µs .. ~330 ms
            commit_duration: Histogram::new(exponential_buckets(0.000_01, 2.0, 16)),
            queue_depth: Gauge::default(),
            queue_capacity: Gauge::default(),
            events_appended: Counter::default(),
            batches_committed: Counter::default(),
            inline_batches: Counter::default(),
            fsyncs: Counter::default(),
            commit_errors: Counter::default(),
            last_sequence: Gauge::default(),
            pending_compaction_bytes: Gauge::default(),
            stall_seconds: Counter::default(),
        }
    }
}

impl LogMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("tally_log");
        r.register("batch_size", "Events per committed batch", self.batch_size.clone());
        r.register_with_unit(
            "commit_duration",
            "Time to write one batch to RocksDB (WAL, and fsync when sync = batch)",
            Unit::Seconds,
            self.commit_duration.clone(),
        );
        r.register("queue_depth", "Appends waiting for the writer thread, sampled per batch", self.queue_depth.clone());
        r.register("queue_capacity", "Capacity of the writer's queue", self.queue_capacity.clone());
        r.register("events_appended", "Events committed to the log", self.events_appended.clone());
        r.register("batches_committed", "Batches committed to the log", self.batches_committed.clone());
        r.register(
            "inline_batches",
            "Batches committed by a runtime thread about to park rather than by the writer thread",
            self.inline_batches.clone(),
        );
        r.register("fsyncs", "Batches committed with fsync", self.fsyncs.clone());
        r.register(
            "commit_errors",
            "Batches whose commit failed (their appends were refused)",
            self.commit_errors.clone(),
        );
        r.register("last_sequence", "Sequence number of the newest committed event", self.last_sequence.clone());
        r.register_with_unit(
            "rocksdb_pending_compaction",
            "RocksDB's estimate of bytes compaction must rewrite to reach its target shape; growth ahead of stalls",
            Unit::Bytes,
            self.pending_compaction_bytes.clone(),
        );
        r.register_with_unit(
            "rocksdb_stall",
            "Time RocksDB delayed or stopped writes because compaction or flushes fell behind",
            Unit::Seconds,
            self.stall_seconds.clone(),
        );
    }
}
