//! The `tally` binary. Everything lives in the `tally_cli` library; this only hands over.

fn main() -> std::process::ExitCode {
    tally_cli::main()
}
