//! Integration tests of the tracker, in this process: each test starts `tally_server::App`
//! on `127.0.0.1:0` with a real RocksDB in a temp directory (`tally_testkit::TestServer`)
//! and talks to it over real sockets with a raw HTTP/1.1 client. One test binary, so the
//! suite links RocksDB once. Tests that must kill the server live with the binary
//! (`crates/tally-cli/tests`).
#![allow(clippy::unwrap_used)]

mod abuse;
mod affiliate_api;
mod decisions;
mod deliveries;
mod fast_path;
mod ingest;
mod limits;
mod openapi;
mod ops;
mod payouts;
mod program_api;
mod recurring;
mod referral;
mod security;
mod signals;
mod tag;

mod common {
    pub use tally_testkit::*;
}
