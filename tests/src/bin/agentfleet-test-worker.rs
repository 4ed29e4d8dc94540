//! The worker binary's own code, built inside the test crate so integration tests can run it
//! as a separate process (and SIGKILL it) with `CARGO_BIN_EXE_agentfleet-test-worker`.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    agentfleet_worker::cli::main().await
}
