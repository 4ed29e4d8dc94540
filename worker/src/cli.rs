//! The body of `agentfleet-worker`: load and validate the config and the secrets it names
//! (exiting non-zero with the bad key named, before binding anything), then run until
//! SIGTERM/SIGINT, reloading limits, quotas and budgets from the same file on SIGHUP. Kept in the library so test harnesses can run the real binary's code.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;

use agentfleet_common::config::Config;
use agentfleet_common::metrics::Metrics;
use agentfleet_common::{shutdown, telemetry};

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
    let worker = Worker::new(config, secrets, Arc::new(Metrics::new()))?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let stop = shutdown::token_on_signal();
    let reloader = worker.reloader();
    shutdown::reload_on_sighup(args.config, stop.clone(), move |new| reloader.apply(new));
    worker.run(listener, stop).await?;
    Ok(())
}
