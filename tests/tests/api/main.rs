//! Integration tests against the real RabbitMQ and Redis on localhost. Each test spawns its
//! own app under a unique prefix, so they run in parallel and leave nothing behind.

mod agents;
mod audit;
mod auth;
mod batches;
mod contract;
mod end_to_end;
mod hygiene;
mod lifecycle;
mod limits;
mod load;
mod ops;
mod outages;
mod privacy;
mod reliability;
mod retries;
mod shutdown;
mod side_effects;
mod tenants;
mod validation;
mod webhooks;

/// The worker binary built by this crate, for tests that need a separate process.
pub const WORKER_BIN: &str = env!("CARGO_BIN_EXE_agentfleet-test-worker");
