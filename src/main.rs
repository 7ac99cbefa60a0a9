//! The `tidegate` binary: everything lives in the library; this only picks the allocator.

use clap::Parser;

/// mimalloc: fast with many small, long-lived per-stream allocations spread over threads. With
/// transparent huge pages off (`sys.rs`) its RSS per stream is no higher than the system
/// allocator's (`loadtest/RESULTS.md`).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tidegate::cli::main(tidegate::cli::Cli::parse())
}
