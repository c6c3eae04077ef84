//! The `tally` binary. Everything lives in the `tally_cli` library; this only hands over.

// See the workspace manifest: glibc malloc was a tenth of the hot path's cost.
#[global_allocator]
static GLOBAL: tally_cli::alloc::Allocator = tally_cli::alloc::Allocator;

fn main() -> std::process::ExitCode {
    tally_cli::main()
}
