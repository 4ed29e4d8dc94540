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

/// The longest one `rabbitmqctl` call may take (a node's startup, a join, a stop).
const CTL_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `command` to its end and answers its output, or kills it after `within`.
pub(crate) fn output_within(
    mut command: Command,
    within: Duration,
) -> anyhow::Result<std::process::Output> {
    let child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let pid = child.id();
    let (done, finished) = std::sync::mpsc::channel();
    // The pipes are read while waiting, so a chatty command cannot block on a full pipe.
    std::thread::spawn(move || done.send(child.wait_with_output()));
    match finished.recv_timeout(within) {
        Ok(output) => Ok(output?),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            bail!("{command:?} did not finish within {within:?}")
        }
    }
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
    /// `HOME` of the node and of `rabbitmqctl`, where their Erlang cookie is: a cluster's
    /// own (see `rabbit_cluster`), else the user's.
    home: Option<PathBuf>,
}

impl PrivateRabbit {
    pub async fn start() -> anyhow::Result<Self> {
        let rabbit = Self::prepare(None)?;
        rabbit.boot().await?;
        Ok(rabbit)
    }

    /// A node on free ports with an empty data directory, not started yet.
    pub(crate) fn prepare(home: Option<PathBuf>) -> anyhow::Result<Self> {
        let port = free_port()?;
        let dist_port = free_port()?;
        let node = format!("aftest{}@localhost", port);
        let dir = std::env::temp_dir().join(format!("agentfleet-rabbit-{port}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            node,
            port,
            dist_port,
            dir,
            home,
        })
    }

    pub(crate) async fn boot(&self) -> anyhow::Result<()> {
        let mut command = Command::new(rabbit_bin("rabbitmq-server"));
        command
            .arg("-detached")
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", self.dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", self.dir.join("log"))
            .env("RABBITMQ_PID_FILE", self.pid_file())
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", self.dir.join("plugins"))
            .env("RABBITMQ_CONFIG_FILE", self.dir.join("none"));
        if let Some(home) = &self.home {
            command.env("HOME", home);
        }
        let status = command.status().context(
            "starting rabbitmq-server (is RabbitMQ installed? scripts/services.sh installs it)",
        )?;
        if !status.success() {
            bail!("rabbitmq-server -detached failed: {status}");
        }
        wait_port(
            self.port,
            true,
            Duration::from_secs(90),
            "private RabbitMQ to listen",
        )
        .await?;
        self.ctl(&["await_startup"]).map(drop)
    }

    /// Runs `rabbitmqctl -n {node} {args}`; answers its standard output.
    pub(crate) fn ctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut command = Command::new(rabbit_bin("rabbitmqctl"));
        command.arg("-n").arg(&self.node).args(args);
        if let Some(home) = &self.home {
            command.env("HOME", home);
        }
        let out = output_within(command, CTL_TIMEOUT)?;
        if !out.status.success() {
            bail!(
                "rabbitmqctl -n {} {args:?}: {}",
                self.node,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The Erlang node name, `aftest{port}@localhost`.
    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// Where `rabbitmq-server` writes the node's OS process id.
    pub(crate) fn pid_file(&self) -> PathBuf {
        self.dir.join("pid")
    }

    /// Stops the whole node (every connection drops) and waits until its port is closed.
    pub async fn stop(&self) -> anyhow::Result<()> {
        self.ctl(&["stop"])?;
        wait_port(
            self.port,
            false,
            Duration::from_secs(30),
            "private RabbitMQ to stop",
        )
        .await
    }

    /// Stops the whole node (every connection drops) and starts it again on the same data.
    pub async fn restart(&self) -> anyhow::Result<()> {
        self.stop().await?;
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
