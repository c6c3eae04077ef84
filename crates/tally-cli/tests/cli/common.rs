//! What the binary's tests add to the test kit: the `tally` binary itself, run as a command
//! or as a server process to kill.

use std::process::{Command, Output};

pub use tally_testkit::*;

pub const BIN: &str = env!("CARGO_BIN_EXE_tally");

/// Runs a `tally` subcommand to completion.
pub fn tally(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

/// Runs a `tally` subcommand to completion: (succeeded, stdout, stderr).
pub fn run(args: &[&str]) -> (bool, String, String) {
    let out = tally(args);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `tally serve` as a child process, for tests that kill it or set its environment.
pub trait Spawn {
    fn spawn(&self) -> Process {
        self.spawn_with_env(&[])
    }

    fn spawn_with_env(&self, vars: &[(&str, &str)]) -> Process;
}

impl Spawn for Env {
    fn spawn_with_env(&self, vars: &[(&str, &str)]) -> Process {
        Process::start(BIN, &self.config(), &self.data(), vars)
    }
}

/// Runs a `tally` subcommand to completion: (exit code, stdout, stderr).
pub fn run_code(args: &[&str]) -> (i32, String, String) {
    let out = tally(args);
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs a `tally ... --format json` command: (exit code, the one JSON object it printed).
/// Its standard output must be exactly that object on one line.
pub fn run_json(args: &[&str]) -> (i32, serde_json::Value) {
    let (code, out, err) = run_code(args);
    assert_eq!(out.lines().count(), 1, "{args:?}: not one line of JSON:\n{out}\nstderr: {err}");
    let value: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"));
    assert!(value.is_object() && value["ok"].is_boolean(), "{args:?}: {value}");
    (code, value)
}
