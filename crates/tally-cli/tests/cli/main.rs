//! Tests of the `tally` binary: its commands (export, commissions, report, replay, verify,
//! snapshot, attribute, config check, health), its signals, and the crash tests that kill
//! it. Servers these tests only talk to run in-process (`tally_testkit::TestServer`); the
//! ones a test must kill or configure through the environment are child processes. One test
//! binary, so the suite links RocksDB once.
#![allow(clippy::unwrap_used)]

mod attribution;
mod audit;
mod audit_io;
mod cluster;
mod commands;
mod common;
mod crash;
mod deliveries;
#[cfg(feature = "parquet")]
mod export_parquet;
mod export_scale;
mod overload;
mod privacy;
mod secrets;
mod systemd;
