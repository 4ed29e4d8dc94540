//! The dispatcher binary's own code, built inside the test crate so integration tests can run
//! it as a separate process (and signal it) with `CARGO_BIN_EXE_agentfleet-test-dispatcher`.

fn main() -> anyhow::Result<()> {
    agentfleet_dispatcher::cli::main()
}
