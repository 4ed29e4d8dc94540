//! A replicated Redis watched by Sentinel, for tests that kill its master: one master, two
//! replicas and three sentinels (quorum 2), each a `redis-server` child process on a free port,
//! with their files in one temporary directory. A failover takes a few seconds
//! (`down-after-milliseconds` 3 s). Dropping it kills every process and removes the directory;
//! the shared Redis on 6379 is never touched.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::services::{free_port, wait_port};

/// The name the sentinels monitor the master under.
pub const MASTER_NAME: &str = "agentfleet-test";
/// How long the sentinels wait before they call an unanswering master down. Not 1 s: on this
/// 2-core machine a replica just promoted once failed to answer a PING for a second, and the
/// sentinels failed over again — a second failover within 3 s of the first, which the test then
/// counted as a lost job even with `WAIT 1` (see the closing notes; production setups use 5–30 s).
const DOWN_AFTER_MS: u64 = 3_000;
const FAILOVER_TIMEOUT_MS: u64 = 5_000;
const REPLICAS: usize = 2;
const SENTINELS: usize = 3;

struct Node {
    port: u16,
    child: Child,
}

impl Node {
    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

pub struct SentinelRedis {
    dir: PathBuf,
    /// Keep `dir` on drop (see [`SentinelRedis::keep`]).
    keep: bool,
    /// Master first, as started; after a failover the sentinels know which is which.
    servers: Vec<Node>,
    sentinels: Vec<Node>,
}

impl SentinelRedis {
    /// Starts the topology and returns once the replicas are in sync and the sentinels see
    /// each other and both replicas (so a failover can be authorised).
    pub async fn start() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "agentfleet-sentinel-{}",
            uuid::Uuid::now_v7().simple()
        ));
        std::fs::create_dir_all(&dir)?;
        let mut topology = Self {
            dir,
            keep: false,
            servers: Vec::new(),
            sentinels: Vec::new(),
        };
        let master = topology.start_server(None).await?;
        topology.servers.push(master);
        let master_port = topology.servers[0].port;
        for _ in 0..REPLICAS {
            let replica = topology.start_server(Some(master_port)).await?;
            topology.servers.push(replica);
        }
        topology.wait_replicas_synced(master_port).await?;
        for _ in 0..SENTINELS {
            let sentinel = topology.start_sentinel(master_port).await?;
            topology.sentinels.push(sentinel);
        }
        topology.wait_sentinels_ready().await?;
        Ok(topology)
    }

    async fn start_server(&self, replica_of: Option<u16>) -> anyhow::Result<Node> {
        let port = free_port()?;
        let dir = self.dir.join(format!("redis-{port}"));
        std::fs::create_dir_all(&dir)?;
        let mut command = Command::new("redis-server");
        command
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args([
                "--repl-diskless-sync",
                "yes",
                "--repl-diskless-sync-delay",
                "0",
            ])
            .arg("--port")
            .arg(port.to_string())
            .arg("--dir")
            .arg(&dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"));
        if let Some(master) = replica_of {
            command
                .arg("--replicaof")
                .arg("127.0.0.1")
                .arg(master.to_string());
        }
        let child = spawn(&mut command)?;
        wait_port(
            port,
            true,
            Duration::from_secs(20),
            "a Redis server to listen",
        )
        .await?;
        Ok(Node { port, child })
    }

    async fn start_sentinel(&self, master_port: u16) -> anyhow::Result<Node> {
        let port = free_port()?;
        let conf = self.dir.join(format!("sentinel-{port}.conf"));
        write_sentinel_conf(&conf, port, master_port, &self.dir)?;
        let child = spawn(Command::new("redis-server").arg(&conf).arg("--sentinel"))?;
        wait_port(port, true, Duration::from_secs(20), "a sentinel to listen").await?;
        Ok(Node { port, child })
    }

    async fn wait_replicas_synced(&self, master_port: u16) -> anyhow::Result<()> {
        let master = format!("redis://127.0.0.1:{master_port}");
        crate::wait_until(Duration::from_secs(30), "replicas in sync", || {
            let master = master.clone();
            async move {
                let info = info(&master, "replication").await.ok()?;
                let online = info.matches("state=online").count();
                (online == REPLICAS).then_some(())
            }
        })
        .await
    }

    async fn wait_sentinels_ready(&self) -> anyhow::Result<()> {
        for sentinel in &self.sentinels {
            let url = sentinel.url();
            crate::wait_until(
                Duration::from_secs(30),
                "sentinels to see each other and the replicas",
                || {
                    let url = url.clone();
                    async move {
                        let mut conn = connection(&url).await.ok()?;
                        let quorum: redis::RedisResult<String> = redis::cmd("SENTINEL")
                            .arg("CKQUORUM")
                            .arg(MASTER_NAME)
                            .query_async(&mut conn)
                            .await;
                        let replicas: Vec<redis::Value> = redis::cmd("SENTINEL")
                            .arg("REPLICAS")
                            .arg(MASTER_NAME)
                            .query_async(&mut conn)
                            .await
                            .ok()?;
                        let peers: Vec<redis::Value> = redis::cmd("SENTINEL")
                            .arg("SENTINELS")
                            .arg(MASTER_NAME)
                            .query_async(&mut conn)
                            .await
                            .ok()?;
                        let ready = quorum.is_ok()
                            && replicas.len() == REPLICAS
                            && peers.len() == SENTINELS - 1;
                        ready.then_some(())
                    }
                },
            )
            .await?;
        }
        Ok(())
    }

    /// The sentinels' URLs, for `redis.sentinel.urls`.
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels.iter().map(Node::url).collect()
    }

    /// The `redis:` connection fields for the app's configuration (YAML flow-map fields).
    pub fn config_fields(&self) -> String {
        let urls: Vec<String> = self
            .sentinel_urls()
            .iter()
            .map(|u| format!("\"{u}\""))
            .collect();
        format!(
            "sentinel: {{ urls: [{}], master_name: \"{MASTER_NAME}\" }}",
            urls.join(", ")
        )
    }

    /// The master's port as the first sentinel that answers names it.
    pub async fn master_port(&self) -> anyhow::Result<u16> {
        let mut last = None;
        for sentinel in &self.sentinels {
            match master_addr(&sentinel.url()).await {
                Ok(port) => return Ok(port),
                Err(err) => last = Some(err),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no sentinels")))
    }

    pub async fn master_url(&self) -> anyhow::Result<String> {
        Ok(format!("redis://127.0.0.1:{}/0", self.master_port().await?))
    }

    /// SIGKILLs the current master; answers its port.
    pub async fn kill_master(&mut self) -> anyhow::Result<u16> {
        let port = self.master_port().await?;
        let node = self
            .servers
            .iter_mut()
            .find(|n| n.port == port)
            .context("the sentinels name a master that is not ours")?;
        node.child.kill()?; // SIGKILL
        node.child.wait()?;
        Ok(port)
    }

    /// Polls until every sentinel names a master other than `old`, and that master says so
    /// too; answers its port.
    pub async fn wait_failover(&self, old: u16, within: Duration) -> anyhow::Result<u16> {
        let started = Instant::now();
        let port = crate::wait_until(within, "the sentinels to promote a replica", || async {
            let mut named = Vec::new();
            for sentinel in &self.sentinels {
                named.push(master_addr(&sentinel.url()).await.ok()?);
            }
            let port = named[0];
            let agreed = port != old && named.iter().all(|&p| p == port);
            if !agreed {
                return None;
            }
            let role = info(&format!("redis://127.0.0.1:{port}"), "replication")
                .await
                .ok()?;
            role.contains("role:master").then_some(port)
        })
        .await?;
        tracing::info!(elapsed = ?started.elapsed(), port, "failover done");
        Ok(port)
    }

    /// Keeps the servers' and sentinels' files (their logs) after the drop, for a run whose
    /// figures want explaining.
    pub fn keep(&mut self) {
        self.keep = true;
    }

    /// Asks the sentinels for a failover while the master is alive: it is demoted to a
    /// replica (and answers `READONLY` to writes) and a replica is promoted.
    pub async fn demote_master(&self) -> anyhow::Result<u16> {
        let old = self.master_port().await?;
        let mut conn = connection(&self.sentinels[0].url()).await?;
        redis::cmd("SENTINEL")
            .arg("FAILOVER")
            .arg(MASTER_NAME)
            .query_async::<()>(&mut conn)
            .await?;
        Ok(old)
    }
}

impl Drop for SentinelRedis {
    fn drop(&mut self) {
        for node in self.sentinels.iter_mut().chain(self.servers.iter_mut()) {
            let _ = node.child.kill();
            let _ = node.child.wait();
        }
        // A failed test keeps the servers' and sentinels' logs for its post-mortem.
        if self.keep || std::thread::panicking() {
            eprintln!("sentinel topology kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn spawn(command: &mut Command) -> anyhow::Result<Child> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting redis-server (scripts/services.sh installs it)")
}

/// A sentinel's configuration; the sentinel rewrites it (its state), so it is a file of its own.
fn write_sentinel_conf(path: &Path, port: u16, master_port: u16, dir: &Path) -> anyhow::Result<()> {
    let conf = format!(
        "port {port}\n\
         bind 127.0.0.1\n\
         dir {dir}\n\
         logfile {log}\n\
         sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n\
         sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n\
         sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}\n\
         sentinel parallel-syncs {MASTER_NAME} {REPLICAS}\n",
        dir = dir.display(),
        log = dir.join(format!("sentinel-{port}.log")).display(),
    );
    std::fs::write(path, conf)?;
    Ok(())
}

async fn connection(url: &str) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(url)?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(500)))
        .set_response_timeout(Some(Duration::from_millis(500)));
    Ok(client
        .get_multiplexed_async_connection_with_config(&config)
        .await?)
}

async fn info(url: &str, section: &str) -> anyhow::Result<String> {
    let mut conn = connection(url).await?;
    Ok(redis::cmd("INFO")
        .arg(section)
        .query_async(&mut conn)
        .await?)
}

async fn master_addr(sentinel: &str) -> anyhow::Result<u16> {
    let mut conn = connection(sentinel).await?;
    let addr: Option<(String, String)> = redis::cmd("SENTINEL")
        .arg("GET-MASTER-ADDR-BY-NAME")
        .arg(MASTER_NAME)
        .query_async(&mut conn)
        .await?;
    match addr {
        Some((_, port)) => Ok(port.parse()?),
        None => bail!("the sentinel knows no master {MASTER_NAME}"),
    }
}
