//! The body of `agentfleet-dispatcher`: load and validate the config (exiting non-zero with
//! the bad key named, before binding anything), then serve until SIGTERM/SIGINT, reloading
//! quotas and budgets from the same file on SIGHUP. Kept in the library so test harnesses
//! can run the real binary's code as a process of its own.
//!
//! After the first SIGTERM/SIGINT the dispatcher stops within `dispatcher.shutdown_grace_secs`
//! (see [`Dispatcher::serve`]); a second signal ends it at once, and a watchdog ends it
//! (status 1) if a shutdown step ever overran (see [`agentfleet_common::shutdown`]).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;

use agentfleet_common::config::Config;
use agentfleet_common::metrics::Metrics;
use agentfleet_common::shutdown::{self, Grace};
use agentfleet_common::telemetry;

use crate::Dispatcher;

#[derive(Parser)]
#[command(
    version,
    about = "agentfleet dispatcher: accepts jobs over HTTP and enqueues them"
)]
struct Args {
    /// YAML configuration file; any key can be overridden by AGENTFLEET__SECTION__KEY.
    #[arg(long, env = "AGENTFLEET_CONFIG")]
    config: PathBuf,
}

/// Loads the config, then runs the dispatcher on a runtime of `dispatcher.runtime_threads`
/// threads (built here, not by `#[tokio::main]`, because the config says how many).
pub fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config =
        Config::load(&args.config).with_context(|| format!("loading {}", args.config.display()))?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(config.dispatcher.runtime_threads))
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(serve(args.config, config))
}

async fn serve(path: PathBuf, config: Config) -> anyhow::Result<()> {
    telemetry::init(&config.telemetry);
    let listen = config.dispatcher.listen;
    let watchdog = Grace::watchdog(
        config.dispatcher.shutdown_grace,
        config.amqp.connect_timeout,
    );
    let dispatcher = Dispatcher::new(config, Arc::new(Metrics::new()))?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let stop = shutdown::token_on_signal(watchdog);
    let reloader = dispatcher.reloader();
    shutdown::reload_on_sighup(path, stop.clone(), move |new| reloader.apply(new));
    dispatcher.serve(listener, stop).await?;
    Ok(())
}
