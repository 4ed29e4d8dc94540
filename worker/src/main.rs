//! `agentfleet-worker --config PATH`; see [`agentfleet_worker::cli`].

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    agentfleet_worker::cli::main().await
}
