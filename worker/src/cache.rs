//! An agent's response cache (`agents.<name>.cache`, off by default): the answer to a model
//! call, kept in Redis for `ttl_secs` under the tenant and the SHA-256 of the encoded request
//! — model, system prompt, messages, tools and `max_tokens` — so an identical call of the same
//! agent for the same tenant is answered without the provider (never across tenants: an
//! answer may carry what one tenant's input held, and a hit would tell another tenant what
//! was asked): no slot, rate-limit turn or budget spent, and the step is
//! recorded `cached: true` at zero cost and zero tokens.
//!
//! A cache is a performance aid, never a source of failure: a Redis error or an unreadable
//! entry is a miss.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use agentfleet_agent::{AssistantMessage, Usage};
use agentfleet_common::naming::Names;
use agentfleet_common::store::Redis;

/// What is kept of an answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CachedAnswer {
    pub message: AssistantMessage,
    /// What the original call used (kept for the record, not charged again).
    pub usage: Usage,
}

pub struct ResponseCache {
    agent: String,
    ttl: Duration,
    names: Names,
    redis: Redis,
}

impl ResponseCache {
    pub fn new(agent: &str, ttl: Duration, names: Names, redis: Redis) -> Self {
        Self {
            agent: agent.to_owned(),
            ttl,
            names,
            redis,
        }
    }

    /// Where the answer to `tenant`'s request `body` is kept.
    pub fn key(&self, tenant: &str, body: &[u8]) -> String {
        let digest = hex::encode(Sha256::digest(body));
        self.names.cache_key(&self.agent, tenant, &digest)
    }

    /// The answer stored at `key`, if any.
    pub async fn get(&self, key: &str) -> Option<CachedAnswer> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(key);
        match self.redis.cmd::<Option<Vec<u8>>>(&cmd).await {
            Ok(Some(raw)) => serde_json::from_slice(&raw).ok(),
            Ok(None) => None,
            Err(err) => {
                tracing::debug!(error = %err, "response cache unreachable; calling the provider");
                None
            }
        }
    }

    /// Keeps `answer` at `key` for the cache's TTL.
    pub async fn put(&self, key: &str, answer: &CachedAnswer) {
        let Ok(raw) = serde_json::to_vec(answer) else {
            return;
        };
        let mut cmd = redis::cmd("SET");
        cmd.arg(key)
            .arg(raw)
            .arg("PX")
            .arg(self.ttl.as_millis().max(1) as u64);
        if let Err(err) = self.redis.cmd::<()>(&cmd).await {
            tracing::debug!(error = %err, "could not store an answer in the response cache");
        }
    }
}
