//! `agentfleet-dispatcher --config PATH`: load and validate the config (exiting non-zero with
//! the bad key named, before binding anything), then serve until SIGTERM/SIGINT, reloading
//! quotas and budgets from the same file on SIGHUP.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;

use agentfleet_common::config::Config;
use agentfleet_common::metrics::Metrics;
use agentfleet_common::{shutdown, telemetry};
use agentfleet_dispatcher::Dispatcher;

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

/// jemalloc rather than glibc's malloc: the hot paths allocate many small, short-lived buffers
/// across threads, and glibc malloc took about a fifth of the worker's CPU in the benchmark
/// profile. (mimalloc was as fast but raised the worker's peak RSS by a third.)
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config =
        Config::load(&args.config).with_context(|| format!("loading {}", args.config.display()))?;
    telemetry::init(&config.telemetry);
    let listen = config.dispatcher.listen;
    let dispatcher = Dispatcher::new(config, Arc::new(Metrics::new()))?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let stop = shutdown::token_on_signal();
    let reloader = dispatcher.reloader();
    shutdown::reload_on_sighup(args.config, stop.clone(), move |new| reloader.apply(new));
    dispatcher.serve(listener, stop).await?;
    Ok(())
}
