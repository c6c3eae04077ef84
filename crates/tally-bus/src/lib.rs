//! Tally's scale-out on NATS JetStream ([decision 0045](../../../docs/decisions/0045-scale-out-on-jetstream.md)).
//!
//! ```text
//! edge: tally-log ──tail──▶ Shipper ──publish, one message at a time, acked──▶ JetStream
//!        (its own log,        │ shipped position → the edge log's `bus` family       stream
//!         commit-first)       ▼                                                        │
//!                                                                   stream order        ▼
//! attribution: Consumer ◀── ordered consumer from the merged log's checkpoint ─────────┘
//!                 │ Merger: drop what is at or below each node's high-water mark
//!                 ▼
//!              Log::merge: records + origins + high-water marks + stream position, one batch
//!                 ▼
//!              the merged log, which the attribution worker follows as on a single node
//! ```
//!
//! **API Boundary:** the edge and attribution crates know nothing of this: the server (the
//! composition root) starts a [`Shipper`] beside an edge and a [`Consumer`] beside the
//! attribution worker. Each runs on its own thread with its own small runtime, off the
//! click path: NATS being slow or away changes nothing an edge answers.
//!
//! **Architecture Invariant:** a record reaches the merged log at most once and in its
//! edge's order: the merger admits only sequence numbers above the node's high-water mark,
//! and the mark is stored in the same `WriteBatch` as the records it covers.

pub mod config;
mod consumer;
mod deliveries;
pub mod envelope;
mod lease;
pub mod merger;
mod metrics;
mod nats;
pub mod program;
mod shipper;
mod task;
#[cfg(feature = "test-util")]
pub mod testing;

pub use config::{Auth, BusConfig, BusSection, Credential, Tls};
pub use consumer::Consumer;
pub use deliveries::{Apply, DeliveryFeed};
pub use lease::Lease;
pub use metrics::BusMetrics;
pub use program::{fetch_program, ProgramChannel};
pub use shipper::Shipper;
