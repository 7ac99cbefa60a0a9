//! The `tidegate` binary: everything lives in the library; this only picks the allocator.

use clap::Parser;

/// mimalloc: lower fragmentation and RSS than the system allocator with many small, long-lived
/// per-stream allocations spread over worker threads.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tidegate::cli::main(tidegate::cli::Cli::parse())
}
