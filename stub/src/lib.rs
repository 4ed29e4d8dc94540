//! Local stand-ins for the outside world, used by tests, benchmarks, the README demo and
//! docker-compose: an OpenAI-compatible LLM ([`llm`]) whose latency, token counts and faults
//! are configurable and which counts what it sees, and a webhook receiver ([`receiver`]) that
//! verifies Standard Webhooks signatures and records deliveries.

pub mod llm;
pub mod receiver;

use std::net::SocketAddr;

use axum::Router;
use tokio::net::TcpListener;

/// Serves `router` on `listener` in a background task until the process (or test) ends.
pub fn spawn_router(listener: TcpListener, router: Router) -> SocketAddr {
    let addr = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, router).await {
            tracing::error!(error = %err, "stub server stopped");
        }
    });
    addr
}
