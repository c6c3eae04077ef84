//! `tally_bus_*`: shipping on an edge, merging on the attribution tier. Updated per message,
//! never per event.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

#[derive(Debug, Clone, Default)]
pub struct BusMetrics {
    /// Committed events of this edge's log the bus has not acknowledged.
    pub ship_lag_events: Gauge,
    /// The age of the oldest committed event not yet acknowledged (0 when caught up).
    pub ship_lag_seconds: Gauge<f64, AtomicU64>,
    pub shipped_position: Gauge,
    pub shipped_events: Counter,
    pub shipped_messages: Counter,
    pub publish_errors: Counter,
    /// 1 while the client holds a connection to a NATS server.
    pub connected: Gauge,
    pub stream_position: Gauge,
    pub merged_events: Counter,
    /// Records received again (a re-ship) and dropped by the high-water marks.
    pub duplicate_events: Counter,
    /// Messages that started past a node's next record: records missing from the stream.
    pub gaps: Counter,
    pub consume_errors: Counter,
    /// 1 while this attribution process holds the lease (is the active one).
    pub lease_held: Gauge,
    pub lease_changes: Counter,
    /// Delivery states this process published to the tier's delivery feed.
    pub delivery_feed_published: Counter,
    /// Delivery states taken from the feed into this process's delivery log.
    pub delivery_feed_applied: Counter,
    /// Delivery states not published because the feed's queue was full.
    pub delivery_feed_dropped: Counter,
}

impl BusMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("tally_bus");
        r.register("ship_lag_events", "Committed events not yet acknowledged by the bus", self.ship_lag_events.clone());
        r.register_with_unit(
            "ship_lag",
            "Age of the oldest committed event the bus has not acknowledged (0 when caught up)",
            Unit::Seconds,
            self.ship_lag_seconds.clone(),
        );
        r.register("shipped_position", "Last sequence number the bus acknowledged", self.shipped_position.clone());
        r.register("shipped_events", "Events published and acknowledged", self.shipped_events.clone());
        r.register("shipped_messages", "Messages published and acknowledged", self.shipped_messages.clone());
        r.register(
            "publish_errors",
            "Publishes that failed or were not acknowledged in time",
            self.publish_errors.clone(),
        );
        r.register("connected", "1 while connected to a NATS server", self.connected.clone());
        r.register("stream_position", "Last stream sequence merged", self.stream_position.clone());
        r.register("merged_events", "Events merged into this node's log", self.merged_events.clone());
        r.register("duplicate_events", "Events received again and dropped", self.duplicate_events.clone());
        r.register("gaps", "Messages not merged because their node's earlier events are missing", self.gaps.clone());
        r.register("consume_errors", "Consumer failures (it resumes from its checkpoint)", self.consume_errors.clone());
        r.register("lease_held", "1 while this attribution process holds the lease", self.lease_held.clone());
        r.register(
            "lease_changes",
            "Times this process took or lost the attribution lease",
            self.lease_changes.clone(),
        );
        r.register(
            "delivery_feed_published",
            "Delivery states published to the attribution tier's delivery feed",
            self.delivery_feed_published.clone(),
        );
        r.register(
            "delivery_feed_applied",
            "Delivery states taken from the delivery feed into this process's delivery log",
            self.delivery_feed_applied.clone(),
        );
        r.register(
            "delivery_feed_dropped",
            "Delivery states not published because the feed's queue was full",
            self.delivery_feed_dropped.clone(),
        );
    }
}
