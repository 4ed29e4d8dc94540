//! Private RabbitMQ and Redis servers for tests that restart them (the chaos test), so the
//! shared ones on 5672/6379 are never disturbed. Each lives in its own temporary directory
//! on free ports, and is stopped and removed on drop.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context as _};

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub(crate) fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

pub(crate) async fn wait_port(
    port: u16,
    open: bool,
    within: Duration,
    what: &str,
) -> anyhow::Result<()> {
    crate::wait_until(within, what, || async move {
        (port_open(port) == open).then_some(())
    })
    .await
}

/// The RabbitMQ server scripts (Debian puts the unwrapped ones here; the wrappers in
/// /usr/sbin switch to the rabbitmq user and drop our environment).
fn rabbit_bin(name: &str) -> PathBuf {
    let debian = PathBuf::from("/usr/lib/rabbitmq/bin").join(name);
    if debian.exists() {
        debian
    } else {
        PathBuf::from(name)
    }
}

pub struct PrivateRabbit {
    node: String,
    port: u16,
    dist_port: u16,
    dir: PathBuf,
}

impl PrivateRabbit {
    pub async fn start() -> anyhow::Result<Self> {
        let port = free_port()?;
        let dist_port = free_port()?;
        let node = format!("aftest{}@localhost", port);
        let dir = std::env::temp_dir().join(format!("agentfleet-rabbit-{port}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let rabbit = Self {
            node,
            port,
            dist_port,
            dir,
        };
        rabbit.boot().await?;
        Ok(rabbit)
    }

    async fn boot(&self) -> anyhow::Result<()> {
        let status = Command::new(rabbit_bin("rabbitmq-server"))
            .arg("-detached")
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", self.dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", self.dir.join("log"))
            .env("RABBITMQ_PID_FILE", self.dir.join("pid"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", self.dir.join("plugins"))
            .env("RABBITMQ_CONFIG_FILE", self.dir.join("none"))
            .status()
            .context(
                "starting rabbitmq-server (is RabbitMQ installed? scripts/services.sh installs it)",
            )?;
        if !status.success() {
            bail!("rabbitmq-server -detached failed: {status}");
        }
        wait_port(
            self.port,
            true,
            Duration::from_secs(60),
            "private RabbitMQ to listen",
        )
        .await?;
        self.ctl(&["await_startup"])
    }

    fn ctl(&self, args: &[&str]) -> anyhow::Result<()> {
        let out = Command::new(rabbit_bin("rabbitmqctl"))
            .arg("-n")
            .arg(&self.node)
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "rabbitmqctl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Stops the whole node (every connection drops) and starts it again on the same data.
    pub async fn restart(&self) -> anyhow::Result<()> {
        self.ctl(&["stop"])?;
        wait_port(
            self.port,
            false,
            Duration::from_secs(30),
            "private RabbitMQ to stop",
        )
        .await?;
        self.boot().await
    }
}

impl Drop for PrivateRabbit {
    fn drop(&mut self) {
        let _ = self.ctl(&["stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub struct PrivateRedis {
    port: u16,
    dir: PathBuf,
}

impl PrivateRedis {
    /// A Redis with the append-only file on (`appendfsync everysec`).
    pub async fn start_with_aof() -> anyhow::Result<Self> {
        let port = free_port()?;
        let dir = std::env::temp_dir().join(format!("agentfleet-redis-{port}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let redis = Self { port, dir };
        redis.boot().await?;
        Ok(redis)
    }

    async fn boot(&self) -> anyhow::Result<()> {
        let status = Command::new("redis-server")
            .args(["--daemonize", "yes", "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "everysec"])
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .status()
            .context("starting redis-server (scripts/services.sh installs it)")?;
        if !status.success() {
            bail!("redis-server failed: {status}");
        }
        wait_port(
            self.port,
            true,
            Duration::from_secs(20),
            "private Redis to listen",
        )
        .await
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn shutdown(&self) {
        // SHUTDOWN flushes the append-only file before exiting.
        let _ = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "shutdown"])
            .output();
    }

    pub async fn restart(&self) -> anyhow::Result<()> {
        self.shutdown();
        wait_port(
            self.port,
            false,
            Duration::from_secs(20),
            "private Redis to stop",
        )
        .await?;
        self.boot().await
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.shutdown();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
