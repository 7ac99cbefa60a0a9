//! tracing setup: human-readable lines by default, one JSON object per line with
//! `--log-format json`. Logs go to stderr so stdout stays free for what a command prints.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Checks a filter directive string (`log.level`) before anything starts.
pub fn parse_filter(level: &str) -> Result<EnvFilter, String> {
    EnvFilter::try_new(level).map_err(|e| format!("not a valid log filter: {e}"))
}

/// Installs the global subscriber. `RUST_LOG`, when set and valid, overrides `filter`.
pub fn init(format: LogFormat, filter: EnvFilter) {
    let filter = EnvFilter::try_from_default_env().unwrap_or(filter);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, never in files or log collectors.
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    // A second init (tests, or a host program) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}
