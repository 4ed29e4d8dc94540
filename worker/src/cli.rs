//! The body of `agentfleet-worker`: load and validate the config and the secrets it names
//! (exiting non-zero with the bad key named, before binding anything), then run until
//! SIGTERM/SIGINT, reloading limits, quotas and budgets from the same file on SIGHUP. Kept in
//! the library so test harnesses can run the real binary's code.
//!
//! After the first SIGTERM/SIGINT the worker stops within `worker.shutdown_grace_secs` (see
//! [`Worker::run`]); a second signal ends it at once, and a watchdog ends it (status 1) if a
//! shutdown step ever overran (see [`agentfleet_common::shutdown`]).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;

use agentfleet_common::config::Config;
use agentfleet_common::metrics::Metrics;
use agentfleet_common::shutdown::{self, Grace};
use agentfleet_common::telemetry;

use crate::Worker;

#[derive(Parser)]
#[command(version, about = "agentfleet worker: runs agent jobs from RabbitMQ")]
struct Args {
    /// YAML configuration file; any key can be overridden by AGENTFLEET__SECTION__KEY.
    #[arg(long, env = "AGENTFLEET_CONFIG")]
    config: PathBuf,
}

pub async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config =
        Config::load(&args.config).with_context(|| format!("loading {}", args.config.display()))?;
    let secrets = config.secrets(|var| std::env::var(var).ok())?;
    telemetry::init(&config.telemetry);
    let listen = config.worker.metrics_listen;
    let watchdog = Grace::watchdog(config.worker.shutdown_grace, config.amqp.connect_timeout);
    let worker = Worker::new(config, secrets, Arc::new(Metrics::new()))?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let stop = shutdown::token_on_signal(watchdog);
    let reloader = worker.reloader();
    shutdown::reload_on_sighup(args.config, stop.clone(), move |new| reloader.apply(new));
    worker.run(listener, stop).await?;
    Ok(())
}
