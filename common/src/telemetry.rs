//! Structured logging: JSON lines by default, with the fields of the current spans (a run's
//! span carries `job_id`, `agent` and `tenant`, so every line of a run has them).

use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{fmt, EnvFilter};

use crate::config::{LogFormat, TelemetryConfig};

/// Installs the global subscriber. Call once, at the top of a binary.
pub fn init(config: &TelemetryConfig) {
    // The level was validated with the config; fall back to `info` rather than fail here.
    let filter = EnvFilter::try_new(&config.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match config.log_format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(true),
            )
            .try_init(),
        LogFormat::Pretty => registry.with(fmt::layer()).try_init(),
    };
    // A second init (tests that start several apps) keeps the first subscriber.
    let _ = result;
}
