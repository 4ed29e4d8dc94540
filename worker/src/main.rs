//! `agentfleet-worker --config PATH`; see [`agentfleet_worker::cli`].

/// mimalloc rather than the system allocator: the hot paths allocate many small, short-lived
/// buffers, and glibc malloc took about a fifth of the worker's CPU in the benchmark profile.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    agentfleet_worker::cli::main().await
}
