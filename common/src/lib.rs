//! Shared pieces of agentfleet: the typed configuration, the wire types that cross process
//! boundaries, the naming scheme for every queue and key, the broker and store clients,
//! webhook signing, the outbound HTTP client, metrics, telemetry and shutdown.
//!
//! Everything that two processes must agree on lives here, so the dispatcher and the worker
//! cannot drift apart.

pub mod broker;
pub mod budget;
pub mod config;
pub mod events;
pub mod live;
pub mod metrics;
pub mod naming;
pub mod ops;
pub mod outbound;
pub mod privacy;
pub mod rate;
pub mod shutdown;
pub mod signing;
pub mod store;
pub mod telemetry;
pub mod tool_url;
pub mod wire;
