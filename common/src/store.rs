//! Redis access: one connection manager (it reconnects by itself), every command bounded by a
//! timeout so an outage fails fast instead of hanging, and the job store built on it.

use std::future::Future;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::FromRedisValue;
use secrecy::ExposeSecret;
use uuid::Uuid;

use crate::config::RedisConfig;
use crate::naming::Names;
use crate::wire::{JobRecord, JobSpec};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("stored job data is corrupt: {0}")]
    Corrupt(#[from] serde_json::Error),
}

/// A cheap-clone handle to Redis with a per-command timeout.
#[derive(Clone)]
pub struct Redis {
    conn: ConnectionManager,
    timeout: Duration,
}

impl Redis {
    /// Connects lazily: a process starts even while Redis is down, and reports not-ready.
    pub fn connect(config: &RedisConfig) -> Result<Self, StoreError> {
        let client = redis::Client::open(config.url.expose_secret())?;
        let timeout = Duration::from_millis(config.timeout_ms);
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        let conn = ConnectionManager::new_lazy_with_config(client, manager_config)?;
        Ok(Self { conn, timeout })
    }

    async fn bounded<T, F>(&self, fut: F) -> Result<T, StoreError>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| StoreError::Timeout(self.timeout))?
            .map_err(StoreError::from)
    }

    pub async fn cmd<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        let mut conn = self.conn.clone();
        self.bounded(cmd.query_async(&mut conn)).await
    }

    pub async fn pipe<T: FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T, StoreError> {
        let mut conn = self.conn.clone();
        self.bounded(pipe.query_async(&mut conn)).await
    }

    pub async fn script<T: FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn.clone();
        self.bounded(invocation.invoke_async(&mut conn)).await
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        let _: String = self.cmd(&redis::cmd("PING")).await?;
        Ok(())
    }
}

/// Job records and specs, under the deployment's prefix, with the configured TTL.
#[derive(Clone)]
pub struct JobStore {
    redis: Redis,
    names: Names,
    ttl_secs: u64,
}

impl JobStore {
    pub fn new(redis: Redis, names: Names, ttl_secs: u64) -> Self {
        Self {
            redis,
            names,
            ttl_secs,
        }
    }

    pub fn redis(&self) -> &Redis {
        &self.redis
    }

    /// Writes a new job's record and spec in one transaction: both exist or neither does.
    pub async fn create(&self, record: &JobRecord, spec: &JobSpec) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .set_ex(
                self.names.job_key(record.id),
                serde_json::to_string(record)?,
                self.ttl_secs,
            )
            .ignore()
            .set_ex(
                self.names.job_spec_key(record.id),
                serde_json::to_string(spec)?,
                self.ttl_secs,
            )
            .ignore();
        self.redis.pipe::<()>(&pipe).await
    }

    /// Removes a job's record and spec (undoing a `create` whose publish failed).
    pub async fn delete(&self, id: Uuid) -> Result<(), StoreError> {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(self.names.job_key(id))
            .arg(self.names.job_spec_key(id));
        self.redis.cmd::<()>(&cmd).await
    }

    pub async fn load(&self, id: Uuid) -> Result<Option<JobRecord>, StoreError> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.names.job_key(id));
        let raw: Option<String> = self.redis.cmd(&cmd).await?;
        raw.map(|raw| serde_json::from_str(&raw))
            .transpose()
            .map_err(StoreError::from)
    }

    /// The record and the spec together; `None` if either is gone (expired or never made).
    pub async fn load_with_spec(
        &self,
        id: Uuid,
    ) -> Result<Option<(JobRecord, JobSpec)>, StoreError> {
        let mut cmd = redis::cmd("MGET");
        cmd.arg(self.names.job_key(id))
            .arg(self.names.job_spec_key(id));
        let (record, spec): (Option<String>, Option<String>) = self.redis.cmd(&cmd).await?;
        match (record, spec) {
            (Some(record), Some(spec)) => Ok(Some((
                serde_json::from_str(&record)?,
                serde_json::from_str(&spec)?,
            ))),
            _ => Ok(None),
        }
    }

    /// Overwrites the record (and refreshes the TTL of record and spec).
    pub async fn save(&self, record: &JobRecord) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .set_ex(
                self.names.job_key(record.id),
                serde_json::to_string(record)?,
                self.ttl_secs,
            )
            .ignore()
            .expire(self.names.job_spec_key(record.id), self.ttl_secs as i64)
            .ignore();
        self.redis.pipe::<()>(&pipe).await
    }
}
