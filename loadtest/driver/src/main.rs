//! The `tidegate-bench` binary: everything lives in the library; this parses the arguments and
//! picks the allocator.

use clap::Parser;

/// mimalloc, as in the gateway's binary: the driver holds thousands of small per-stream
/// allocations too, and reports its own RSS as the process `bench`.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Load driver: run many concurrent streaming chat completions against a loopback gateway (or
/// the mock) and report time to first event, per-event latency, failures by kind and the RSS/CPU
/// of given processes (exit code 1 if any stream failed, 2 for bad arguments)
#[derive(Debug, Parser)]
#[command(name = "tidegate-bench", version)]
struct Cli {
    #[command(flatten)]
    args: tidegate_bench::BenchArgs,
}

fn main() -> std::process::ExitCode {
    // First, before the heap grows: thousands of small per-stream allocations.
    let _ = tidegate::sys::disable_transparent_huge_pages();
    tidegate_bench::main(Cli::parse().args)
}
