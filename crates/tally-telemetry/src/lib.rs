//! Logging helpers every crate of Tally uses, with no dependency on storage or the runtime:
//! [`error_limited!`] and [`warn_limited!`], one rate limiter per call site (see [`limit`]).
//!
//! Conventions the crates follow (`ARCHITECTURE.md`, cross-cutting concerns): structured
//! `tracing` fields, never a line per request; ERROR means data loss or an operator must
//! act; metric names `tally_<thing>_<unit>[_total]`, registered once per process by the
//! application crate and listed in the README's metrics table, which a test keeps equal to
//! `/metrics`.

pub mod limit;
