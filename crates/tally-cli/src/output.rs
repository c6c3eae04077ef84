//! What every command shares in how it ends: the exit codes and `--format json`.

use std::process::ExitCode;

/// The check ran and the answer is no: `verify` found a broken chain or a failed anchor,
/// `replay` a ledger difference, `config check` a problem, `health` an unhealthy server.
pub const FOUND_DIFFERENCE: ExitCode = ExitCode::FAILURE;

/// The command could not do its job: it could not open or read something, or an argument
/// was wrong. Clap's usage errors use the same code, so a script tells "the data is bad"
/// (1) from "the run is bad" (2) whichever part found it.
pub const TROUBLE: u8 = 2;

/// Exit 0 when `ok`, else [`FOUND_DIFFERENCE`].
pub fn found(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        FOUND_DIFFERENCE
    }
}

/// How a command prints its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputFormat {
    // No doc comments on these: clap would show them in `--help` as each value's help.
    #[default]
    Text,
    Json,
}

/// Prints `value` as one line of JSON on standard output: one object per run, so a script
/// can read it with a single `jq` or `json.loads`.
pub fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, value)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

/// Lower-case hex, as the text output prints heads.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
