//! A RabbitMQ cluster on this machine, for the test that kills a node under load
//! (`tests/cluster.rs`): [`PrivateRabbit`] nodes on their own ports and data directories,
//! sharing an Erlang cookie of their own, joined with `join_cluster`. Every node is stopped
//! and its data removed on drop; the shared broker on 5672 is never touched.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use serde_json::Value;

use crate::services::{wait_port, PrivateRabbit};

pub struct RabbitCluster {
    nodes: Vec<Arc<PrivateRabbit>>,
    /// `HOME` of every node and of `rabbitmqctl`: it holds the cluster's Erlang cookie, so
    /// the nodes and the CLI agree on it whatever the user's own cookie is.
    home: PathBuf,
}

impl RabbitCluster {
    /// Starts `size` nodes at once, then joins each to the first one.
    pub async fn start(size: usize) -> anyhow::Result<Self> {
        anyhow::ensure!(size >= 1, "a cluster has at least one node");
        let home = std::env::temp_dir().join(format!(
            "agentfleet-cluster-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&home)?;
        write_cookie(&home)?;
        let mut cluster = Self {
            nodes: Vec::new(),
            home,
        };
        for _ in 0..size {
            let node = PrivateRabbit::prepare(Some(cluster.home.clone()))?;
            cluster.nodes.push(Arc::new(node));
        }
        futures_util::future::try_join_all(cluster.nodes.iter().map(|n| n.boot())).await?;
        let seed = cluster.nodes[0].node().to_owned();
        for node in &cluster.nodes[1..] {
            let node = node.clone();
            let seed = seed.clone();
            blocking(move || {
                node.ctl(&["stop_app"])?;
                node.ctl(&["join_cluster", &seed])?;
                node.ctl(&["start_app"])?;
                node.ctl(&["await_startup"])
            })
            .await?;
        }
        let running = cluster.running_nodes().await?;
        if running.len() != size {
            bail!("cluster formed with {running:?}, expected {size} nodes");
        }
        Ok(cluster)
    }

    /// Each node's AMQP URL, in node order.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.url()).collect()
    }

    /// Each node's Erlang name, in node order.
    pub fn node_names(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.node().to_owned()).collect()
    }

    /// The nodes the cluster reports running, as seen from the first node that answers.
    pub async fn running_nodes(&self) -> anyhow::Result<Vec<String>> {
        let status = self
            .ctl_any(&["cluster_status", "--formatter", "json"])
            .await?;
        let status: Value = serde_json::from_str(&status).context("cluster_status JSON")?;
        Ok(status["running_nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n.as_str().map(str::to_owned))
            .collect())
    }

    /// The leader node of every queue whose name starts with `prefix`, by queue name.
    pub async fn queue_leaders(&self, prefix: &str) -> anyhow::Result<Vec<(String, String)>> {
        let listed = self
            .ctl_any(&["list_queues", "name", "leader", "--formatter", "json"])
            .await?;
        let queues: Vec<Value> = serde_json::from_str(&listed).context("list_queues JSON")?;
        Ok(queues
            .iter()
            .filter_map(|q| Some((q["name"].as_str()?, q["leader"].as_str()?)))
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(name, leader)| (name.to_owned(), leader.to_owned()))
            .collect())
    }

    /// Kills node `index` (SIGKILL, as a crash would: no goodbye to its clients or peers; the
    /// queues it led elect new leaders among the rest) and waits until its AMQP port is closed.
    pub async fn kill_node(&self, index: usize) -> anyhow::Result<()> {
        let node = self.nodes.get(index).context("no such node")?;
        let pid = std::fs::read_to_string(node.pid_file()).context("the node's pid file")?;
        let status = std::process::Command::new("kill")
            .args(["-KILL", pid.trim()])
            .status()
            .context("running kill")?;
        anyhow::ensure!(status.success(), "kill -KILL {} failed", pid.trim());
        wait_port(
            node.port(),
            false,
            Duration::from_secs(30),
            "the killed node's port to close",
        )
        .await
    }

    /// Starts node `index` again on its data (it rejoins the cluster), and waits until the
    /// cluster reports every node running.
    pub async fn restart_node(&self, index: usize) -> anyhow::Result<()> {
        self.nodes
            .get(index)
            .context("no such node")?
            .boot()
            .await?;
        let size = self.nodes.len();
        crate::wait_until(Duration::from_secs(60), "every node running", || async {
            let running = self.running_nodes().await.ok()?;
            (running.len() == size).then_some(())
        })
        .await
    }

    /// `rabbitmqctl` on the first node that answers (a stopped one does not).
    async fn ctl_any(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut last = None;
        for node in &self.nodes {
            let node = node.clone();
            let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
            let result = blocking(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                node.ctl(&args)
            })
            .await;
            match result {
                Ok(out) => return Ok(out),
                Err(err) => last = Some(err),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("the cluster has no node")))
    }
}

impl Drop for RabbitCluster {
    fn drop(&mut self) {
        // Each node stops and removes its data as its last handle drops (`PrivateRabbit`):
        // all at once, since each `rabbitmqctl stop` takes seconds.
        let stopping: Vec<_> = self
            .nodes
            .drain(..)
            .map(|node| std::thread::spawn(move || drop(node)))
            .collect();
        for stop in stopping {
            let _ = stop.join();
        }
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

/// A random cookie, readable by its owner only (Erlang refuses it otherwise).
fn write_cookie(home: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = home.join(".erlang.cookie");
    std::fs::write(
        &path,
        uuid::Uuid::new_v4().simple().to_string().to_uppercase(),
    )?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400))?;
    Ok(())
}

/// Runs a CLI call off the async threads: `rabbitmqctl` takes seconds, and the test's
/// clients must keep going meanwhile.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f).await.context("CLI task")?
}
