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
