//! `agentfleet-dispatcher --config PATH`; see [`agentfleet_dispatcher::cli`].

/// jemalloc rather than glibc's malloc: the hot paths allocate many small, short-lived buffers
/// across threads, and glibc malloc took about a fifth of the worker's CPU in the benchmark
/// profile. (mimalloc was as fast but raised the worker's peak RSS by a third.)
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    agentfleet_dispatcher::cli::main()
}
