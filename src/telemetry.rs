//! Logging: `tracing` to standard output, human-readable or one JSON object per line.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{ConfigError, LogFormat};

/// warp's own per-request events repeat what the request span and the access-log line already
/// say (and log every 4xx as a warning), so they are off unless `RUST_LOG` names them.
const QUIET_WARP: &str = "warp::filters::trace=off";

fn filter(rust_log: &str) -> Result<EnvFilter, ConfigError> {
    let directives = if rust_log.contains("warp::filters::trace") {
        rust_log.to_owned()
    } else {
        format!("{rust_log},{QUIET_WARP}")
    };
    EnvFilter::try_new(directives).map_err(|e| ConfigError(format!("RUST_LOG is not valid: {e}")))
}

/// Installs the global subscriber. Call once, before anything logs.
pub fn init(format: LogFormat, rust_log: &str) -> Result<(), ConfigError> {
    let filter = filter(rust_log)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stdout().is_terminal());
    let result = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
    result.map_err(|e| ConfigError(format!("cannot install the logger: {e}")))
}
