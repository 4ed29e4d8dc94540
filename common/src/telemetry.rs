//! Structured logging: JSON lines by default, with the fields of the current spans (a run's
//! span carries `job_id`, `agent` and `tenant`, so every line of a run has them).

use tracing::Subscriber;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{fmt, EnvFilter, Layer as _};

use crate::config::{LogFormat, TelemetryConfig};

/// Installs the global subscriber, writing to stdout. Call once, at the top of a binary.
pub fn init(config: &TelemetryConfig) {
    // A second init (tests that start several apps) keeps the first subscriber.
    let _ = subscriber(config, std::io::stdout).try_init();
}

/// The subscriber [`init`] installs, writing its lines to `writer` instead: tests install it
/// as their thread's default to read exactly what a process would print.
pub fn subscriber<W>(config: &TelemetryConfig, writer: W) -> impl Subscriber + Send + Sync
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    // The level was validated with the config; fall back to `info` rather than fail here.
    let filter = EnvFilter::try_new(&config.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let lines = match config.log_format {
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .with_writer(writer)
            .boxed(),
        LogFormat::Pretty => fmt::layer().with_writer(writer).boxed(),
    };
    tracing_subscriber::registry().with(filter).with(lines)
}
