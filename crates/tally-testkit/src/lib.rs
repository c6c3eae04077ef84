//! Test kit for Tally's integration tests (a dev-dependency only).
//!
//! - [`Env`]: a temp directory with a `tally.toml` and a copy of the example program.
//! - [`TestServer`]: the real server (`tally_server::App`) in this process, on
//!   `127.0.0.1:0`, with a real RocksDB in the temp directory. Stop it, restart it, reload
//!   its program: everything a test needs but killing it.
//! - [`Process`]: `tally serve` as a child process, for the tests that must kill it (SIGKILL,
//!   crash points, environment switches read once per process).
//! - [`Client`], [`Conn`], [`Resp`]: a raw HTTP/1.1 client, raw so tests can send what a
//!   browser or an attacker would; both server kinds dereference to a [`Client`].
//! - [`events`], [`ledger`]: the log and the commission ledger as `tally export events`
//!   and `tally commissions --format jsonl` print them, read in-process.
//! - [`generate`]: the one generator of plausible logs (clicks, conversions, repeats,
//!   reversals, program changes), shaped by parameters: the attribution model check, the
//!   worker and replay tests and the attribution benchmark all use it.
//! - [`Rng`]: the one seeded RNG (`StdRng` under a few draws), for tests that need chance.
//! - [`ClickBuilder`], [`ConversionBuilder`]: events for tests that build them by hand.
//! - [`mmdb`]: a MaxMind DB writer and the GeoLite2-shaped databases built with it (tiny
//!   City and ASN fixtures with known answers, a City-sized one for the click-path benchmark).
//! - [`nats::NatsCluster`]: a NATS JetStream cluster (Debian's `nats-server`) on
//!   127.0.0.1, nodes to kill, stop and restart, for the cluster tests.
//! - [`wait_for`]: polling with a deadline, for effects that are asynchronous by design
//!   (the attribution worker follows the log).
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

mod build;
pub mod fixtures;
pub mod generate;
mod http;
pub mod merchant;
pub mod mmdb;
pub mod nats;
mod rng;
mod server;

pub use build::{ClickBuilder, ConversionBuilder, CUSTOMER_SECRET};
pub use http::{click_storm, Client, Conn, Resp};
pub use rng::Rng;
pub use server::{Process, TestServer};

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The values an [`Env`]'s secrets file gives the example program's credentials
/// (`config/program.toml` names them: `acme-token`, `acme-hmac`, `globex-token`).
pub const TOKEN: &str = "demo-acme-token-change-me";
pub const HMAC_SECRET: &str = "demo-acme-hmac-secret-change-me";
pub const GLOBEX_TOKEN: &str = "demo-globex-token-change-me";

/// A secrets file for the example program, as [`Env`] writes it.
pub fn example_secrets() -> String {
    format!("acme-token = \"{TOKEN}\"\nacme-hmac = \"{HMAC_SECRET}\"\nglobex-token = \"{GLOBEX_TOKEN}\"\n")
}

/// A file of the repository's `config/` directory.
pub fn repo_config(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config").join(name)
}

/// A file of the repository (for tests that check documents and deploy files).
pub fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(path)
}

/// A temp directory holding `tally.toml`, `program.toml` and `secrets.toml` (the example
/// program's credentials, [`example_secrets`]); removed on drop.
#[derive(Debug)]
pub struct Env {
    pub tmp: tempfile::TempDir,
}

impl Env {
    /// `tally.toml` with `log_extra` appended to its `[log]` section, and a copy of the
    /// example program.
    pub fn new(log_extra: &str) -> Env {
        Env::build("", log_extra, "")
    }

    /// Like [`Env::new`], with extra lines for the `[server]`, `[log]` and `[privacy]` tables.
    pub fn build(server_extra: &str, log_extra: &str, privacy_extra: &str) -> Env {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::copy(repo_config("program.toml"), tmp.path().join("program.toml")).unwrap();
        let server = if server_extra.contains("header_read_timeout_ms") {
            format!("drain_timeout_ms = 5000\n{server_extra}")
        } else {
            format!("header_read_timeout_ms = 2000\ndrain_timeout_ms = 5000\n{server_extra}")
        };
        std::fs::write(tmp.path().join("secrets.toml"), example_secrets()).unwrap();
        let config = format!(
            "[server]\n{server}\n[log]\ndata_dir = \"data\"\n{log_extra}\n[program]\npath = \"program.toml\"\n[privacy]\n{privacy_extra}\n[logging]\nlevel = \"warn\"\n[secrets]\nfile = \"secrets.toml\"\n"
        );
        std::fs::write(tmp.path().join("tally.toml"), config).unwrap();
        Env { tmp }
    }

    /// Appends `text` (whole tables) to `tally.toml`.
    pub fn append_config(&self, text: &str) {
        let mut config = std::fs::read_to_string(self.config()).unwrap();
        config.push('\n');
        config.push_str(text);
        std::fs::write(self.config(), config).unwrap();
    }

    /// Appends `text` (whole tables) to `program.toml`.
    pub fn append_program(&self, text: &str) {
        let mut program = std::fs::read_to_string(self.program()).unwrap();
        program.push('\n');
        program.push_str(text);
        std::fs::write(self.program(), program).unwrap();
    }

    pub fn config(&self) -> PathBuf {
        self.tmp.path().join("tally.toml")
    }

    pub fn data(&self) -> PathBuf {
        self.tmp.path().join("data")
    }

    pub fn program(&self) -> PathBuf {
        self.tmp.path().join("program.toml")
    }

    /// The server in this process.
    pub fn serve(&self) -> TestServer {
        TestServer::start(&self.config(), &self.data())
    }
}

/// Polls `ok` every 20 ms until it holds; panics naming `what` after 30 s.
pub fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every file under `dir`, recursively (for tests that scan a data directory's bytes).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Every event in the log of `data_dir`, as the JSON objects `tally export events` prints
/// (read through a secondary instance, so the server may be running).
pub fn events(data_dir: &Path) -> Vec<serde_json::Value> {
    let reader = tally_log::LogReader::open_secondary(data_dir).unwrap();
    reader
        .iter_from(1)
        .map(|item| {
            let (seq, record) = item.unwrap();
            let (event, personal) = tally_model::decode_personal(&record).unwrap();
            let row = tally_audit::export::row(seq, &event, personal);
            serde_json::Value::Object(row.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
        })
        .collect()
}

/// The commission ledger of `data_dir`, as the JSON objects `tally commissions --format
/// jsonl` prints; empty while the worker has not created its state yet.
pub fn ledger(data_dir: &Path) -> Vec<serde_json::Value> {
    let dir = tally_attribution::state_dir(data_dir);
    if !dir.join("CURRENT").exists() {
        return Vec::new();
    }
    let state = tally_attribution::LedgerReader::open(&dir).unwrap();
    state
        .entries()
        .map(|e| {
            let row = tally_audit::digest::row(&e.unwrap());
            serde_json::Value::Object(row.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
        })
        .collect()
}

/// The ledger of `data_dir` once the attribution worker has booked `txid`.
pub fn ledger_with(data_dir: &Path, txid: &str) -> Vec<serde_json::Value> {
    ledger_once(data_dir, &format!("{txid} to be attributed"), |e| e["txid"] == txid)
}

/// The ledger of `data_dir` once the attribution worker has booked a conversion of `click_id`.
pub fn ledger_with_click(data_dir: &Path, click_id: &str) -> Vec<serde_json::Value> {
    ledger_once(data_dir, &format!("a conversion of {click_id} to be attributed"), |e| e["click_id"] == click_id)
}

/// The ledger of `data_dir` once an entry satisfies `booked`.
fn ledger_once(data_dir: &Path, what: &str, booked: impl Fn(&serde_json::Value) -> bool) -> Vec<serde_json::Value> {
    let mut entries = Vec::new();
    wait_for(what, || {
        entries = ledger(data_dir);
        entries.iter().any(&booked)
    });
    entries
}

/// Polls until the attribution worker of `data_dir` has made at least `n` ledger entries.
pub fn wait_for_ledger(data_dir: &Path, n: usize) {
    wait_for(&format!("{n} ledger entries"), || ledger(data_dir).len() >= n);
}

/// `tally replay --explain TARGET` of `data_dir`: its lines.
pub fn explain(data_dir: &Path, target: &str) -> Vec<String> {
    tally_audit::explain(data_dir, target).unwrap().lines
}

/// Replays the log of `data_dir` from its start and compares with the live ledger: panics
/// on any difference, returns the number of entries compared.
pub fn assert_replay_matches(data_dir: &Path) -> u64 {
    let options = tally_audit::ReplayOptions { no_snapshots: true, ..tally_audit::ReplayOptions::default() };
    let report = tally_audit::replay(data_dir, &options, &mut |_, _, _| {}).unwrap();
    assert!(report.differences.is_empty(), "replay differs from the live ledger: {:?}", report.differences);
    assert_eq!(report.digest_replayed, report.digest_live, "ledger digests differ");
    report.compared
}

/// The events of one type (`click`, `conversion`, `program_change`).
pub fn of_type<'a>(events: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}
