//! A Redis Cluster on loopback, for tests of the third topology: `masters` masters (and
//! `replicas` replicas of each), every node a `redis-server --cluster-enabled yes` child process
//! on free ports, joined by `redis-cli --cluster create`, with their files in one temporary
//! directory. Dropping it kills every node and removes the directory; the shared Redis on 6379
//! is never touched.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _};

use crate::services::{free_port, output_within, wait_port};

/// How long a node may be unreachable before the others call it failed, unless a test that
/// kills one asks for less ([`ClusterRedis::start_with`]). Not shorter by default: a node of a
/// busy 2-core machine may miss a second, and a failover nobody asked for fails other tests.
const NODE_TIMEOUT: Duration = Duration::from_secs(5);

struct Node {
    port: u16,
    /// The cluster bus port, kept so that a restarted node comes back on the same one.
    bus: u16,
    child: Child,
}

pub struct ClusterRedis {
    dir: PathBuf,
    node_timeout: Duration,
    nodes: Vec<Node>,
}

impl ClusterRedis {
    /// Starts the nodes, joins them and returns once every node reports the cluster `ok` with
    /// all 16,384 slots served and (with replicas) every master's replicas online.
    pub async fn start(masters: usize, replicas: usize) -> anyhow::Result<Self> {
        Self::start_with(masters, replicas, NODE_TIMEOUT).await
    }

    /// [`Self::start`] with `cluster-node-timeout` set to `node_timeout`: about how long a
    /// killed master goes unnoticed before its replica is promoted.
    pub async fn start_with(
        masters: usize,
        replicas: usize,
        node_timeout: Duration,
    ) -> anyhow::Result<Self> {
        if masters < 3 {
            bail!("redis-cli --cluster create needs at least 3 masters");
        }
        let dir = std::env::temp_dir().join(format!(
            "agentfleet-redis-cluster-{}",
            uuid::Uuid::now_v7().simple()
        ));
        std::fs::create_dir_all(&dir)?;
        let mut cluster = Self {
            dir,
            node_timeout,
            nodes: Vec::new(),
        };
        for _ in 0..masters * (1 + replicas) {
            // The bus port is chosen too: the default (port + 10,000) may be past 65,535.
            let (port, bus) = (free_port()?, free_port()?);
            let child = cluster.start_node(port, bus).await?;
            cluster.nodes.push(Node { port, bus, child });
        }
        cluster.create(replicas).await?;
        cluster.wait_ready(masters, replicas).await?;
        Ok(cluster)
    }

    /// Starts (or restarts: its `nodes.conf` is kept) the node on `port`.
    async fn start_node(&self, port: u16, bus: u16) -> anyhow::Result<Child> {
        let dir = self.dir.join(format!("node-{port}"));
        std::fs::create_dir_all(&dir)?;
        let mut command = Command::new("redis-server");
        command
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--cluster-enabled", "yes", "--daemonize", "no"])
            .arg("--port")
            .arg(port.to_string())
            .arg("--cluster-port")
            .arg(bus.to_string())
            .arg("--cluster-node-timeout")
            .arg(self.node_timeout.as_millis().to_string())
            .arg("--cluster-config-file")
            .arg(dir.join(format!("nodes-{port}.conf")))
            .arg("--dir")
            .arg(&dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"));
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server (scripts/services.sh installs it)")?;
        wait_port(
            port,
            true,
            Duration::from_secs(20),
            "a cluster node to listen",
        )
        .await?;
        Ok(child)
    }

    /// Assigns the slots evenly over the first nodes and makes the others their replicas.
    async fn create(&self, replicas: usize) -> anyhow::Result<()> {
        let mut command = Command::new("redis-cli");
        command.arg("--cluster").arg("create");
        for node in &self.nodes {
            command.arg(format!("127.0.0.1:{}", node.port));
        }
        command
            .arg("--cluster-replicas")
            .arg(replicas.to_string())
            .arg("--cluster-yes");
        let output =
            tokio::task::spawn_blocking(move || output_within(command, Duration::from_secs(60)))
                .await??;
        if !output.status.success() {
            bail!(
                "redis-cli --cluster create failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }

    async fn wait_ready(&self, masters: usize, replicas: usize) -> anyhow::Result<()> {
        let total = self.nodes.len();
        for node in &self.nodes {
            let url = url(node.port);
            crate::wait_until(Duration::from_secs(30), "the cluster to be ok", || {
                let url = url.clone();
                async move {
                    let info: String = query(&url, redis::cmd("CLUSTER").arg("INFO")).await.ok()?;
                    let ready = info.contains("cluster_state:ok")
                        && info.contains("cluster_slots_ok:16384")
                        && info.contains(&format!("cluster_known_nodes:{total}"));
                    ready.then_some(())
                }
            })
            .await?;
        }
        crate::wait_until(Duration::from_secs(30), "every replica online", || async {
            let masters_now = self.masters().await.ok()?;
            let mut online = 0;
            for master in &masters_now {
                let info: String = query(master, redis::cmd("INFO").arg("replication"))
                    .await
                    .ok()?;
                online += info.matches("state=online").count();
            }
            (masters_now.len() == masters && online == masters * replicas).then_some(())
        })
        .await
    }

    /// Every node's port.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// Every node's URL, for `redis.cluster.nodes`.
    pub fn node_urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| url(n.port)).collect()
    }

    /// The `redis:` connection fields for the app's configuration (YAML flow-map fields). Two
    /// nodes suffice: the client learns the others from the slot map.
    pub fn config_fields(&self) -> String {
        let nodes: Vec<String> = self
            .node_urls()
            .iter()
            .take(2)
            .map(|u| format!("\"{u}\""))
            .collect();
        format!("cluster: {{ nodes: [{}] }}", nodes.join(", "))
    }

    /// The masters' URLs, as the first node that answers knows them (`CLUSTER NODES`).
    pub async fn masters(&self) -> anyhow::Result<Vec<String>> {
        let mut last = None;
        for node in &self.nodes {
            match query::<String>(&url(node.port), redis::cmd("CLUSTER").arg("NODES")).await {
                Ok(nodes) => return Ok(masters_in(&nodes)),
                Err(err) => last = Some(err),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no nodes")))
    }

    /// What every node answered with an error: counts by kind (`INFO errorstats`:
    /// `errorstat_MOVED:count=3`) and the commands that failed (`INFO commandstats` entries
    /// with failed or rejected calls), each prefixed with the node's port.
    pub async fn error_stats(&self) -> anyhow::Result<Vec<String>> {
        let mut stats = Vec::new();
        for node in &self.nodes {
            let info: String = query(&url(node.port), redis::cmd("INFO").arg("errorstats")).await?;
            let commands: String =
                query(&url(node.port), redis::cmd("INFO").arg("commandstats")).await?;
            let failed = commands
                .lines()
                .filter(|l| l.starts_with("cmdstat_"))
                .filter(|l| !l.contains("rejected_calls=0,failed_calls=0"));
            stats.extend(
                info.lines()
                    .filter(|l| l.starts_with("errorstat_"))
                    .chain(failed)
                    .map(|l| format!("{}: {l}", node.port)),
            );
        }
        Ok(stats)
    }
}

impl ClusterRedis {
    /// The port of the master that owns `key`'s slot: the one master that does not answer a
    /// `GET` of it with `MOVED`.
    pub async fn owner_of(&self, key: &str) -> anyhow::Result<u16> {
        for master in self.masters().await? {
            if query::<Option<String>>(&master, redis::cmd("GET").arg(key))
                .await
                .is_ok()
            {
                let port = master.rsplit(':').next().unwrap_or_default();
                return Ok(port.parse()?);
            }
        }
        bail!("no master owns {key}")
    }

    /// SIGKILLs the node on `port`.
    pub fn kill(&mut self, port: u16) -> anyhow::Result<()> {
        let node = self.node(port)?;
        node.child.kill()?;
        node.child.wait()?;
        Ok(())
    }

    /// Starts the node on `port` again, with its cluster state: a master that was failed over
    /// comes back as a replica of the one that replaced it.
    pub async fn restart(&mut self, port: u16) -> anyhow::Result<()> {
        let bus = self.node(port)?.bus;
        let child = self.start_node(port, bus).await?;
        self.node(port)?.child = child;
        Ok(())
    }

    fn node(&mut self, port: u16) -> anyhow::Result<&mut Node> {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .with_context(|| format!("no node on {port}"))
    }

    /// Polls until the cluster has `masters` masters again, none of them `old`, and says it is
    /// ok; answers how long that took.
    pub async fn wait_failover(
        &self,
        old: u16,
        masters: usize,
        within: Duration,
    ) -> anyhow::Result<Duration> {
        let started = std::time::Instant::now();
        let old = url(old);
        crate::wait_until(
            within,
            "a replica promoted in place of the killed master",
            || async {
                let now = self.masters().await.ok()?;
                let info: String = query(now.first()?, redis::cmd("CLUSTER").arg("INFO"))
                    .await
                    .ok()?;
                let done = now.len() == masters
                    && !now.contains(&old)
                    && info.contains("cluster_state:ok");
                done.then_some(())
            },
        )
        .await?;
        Ok(started.elapsed())
    }

    /// Polls until the node on `port` is a replica whose link to its master is up.
    pub async fn wait_replica(&self, port: u16, within: Duration) -> anyhow::Result<()> {
        let node = url(port);
        crate::wait_until(within, "the restarted node to replicate", || async {
            let info: String = query(&node, redis::cmd("INFO").arg("replication"))
                .await
                .ok()?;
            let synced = info.contains("role:slave") && info.contains("master_link_status:up");
            synced.then_some(())
        })
        .await
    }

    /// Moves `slots` hash slots, keys and all, from the master on `from` to the master on
    /// `to` (`redis-cli --cluster reshard`: slot by slot, marked migrating and importing, its
    /// keys moved with `MIGRATE`, then given to `to`); answers how long it took.
    pub async fn reshard(
        &self,
        from: u16,
        to: u16,
        slots: u32,
        within: Duration,
    ) -> anyhow::Result<Duration> {
        let from_id: String = query(&url(from), redis::cmd("CLUSTER").arg("MYID")).await?;
        let to_id: String = query(&url(to), redis::cmd("CLUSTER").arg("MYID")).await?;
        let mut command = Command::new("redis-cli");
        command
            .args(["--cluster", "reshard", &format!("127.0.0.1:{from}")])
            .args(["--cluster-from", &from_id, "--cluster-to", &to_id])
            .args(["--cluster-slots", &slots.to_string(), "--cluster-yes"]);
        let started = std::time::Instant::now();
        let output = tokio::task::spawn_blocking(move || output_within(command, within)).await??;
        if !output.status.success() {
            bail!(
                "redis-cli --cluster reshard failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(started.elapsed())
    }

    /// How many hash slots the master on `port` serves, as it says itself.
    pub async fn slots_of(&self, port: u16) -> anyhow::Result<usize> {
        let nodes: String = query(&url(port), redis::cmd("CLUSTER").arg("NODES")).await?;
        nodes
            .lines()
            .find(|line| line.contains("myself"))
            .map(slots_in)
            .context("CLUSTER NODES names no `myself`")
    }

    /// How often each master has run `command` (`INFO commandstats`, e.g. `wait`), in the
    /// order of [`Self::masters`].
    pub async fn calls_per_master(&self, command: &str) -> anyhow::Result<Vec<u64>> {
        let prefix = format!("cmdstat_{command}:calls=");
        let mut calls = Vec::new();
        for master in self.masters().await? {
            let info: String = query(&master, redis::cmd("INFO").arg("commandstats")).await?;
            let count = info
                .lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .and_then(|rest| rest.split(',').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            calls.push(count);
        }
        Ok(calls)
    }

    /// Connections each node has accepted since it started (`total_connections_received`).
    pub async fn connections_received(&self) -> anyhow::Result<Vec<u64>> {
        let mut counts = Vec::new();
        for node in &self.nodes {
            let info: String = query(&url(node.port), redis::cmd("INFO").arg("stats")).await?;
            let count = info
                .lines()
                .find_map(|l| l.strip_prefix("total_connections_received:"))
                .and_then(|v| v.trim().parse().ok())
                .context("INFO stats without total_connections_received")?;
            counts.push(count);
        }
        Ok(counts)
    }
}

impl Drop for ClusterRedis {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.child.kill();
            let _ = node.child.wait();
        }
        // A failed test keeps the nodes' logs for its post-mortem.
        if std::thread::panicking() {
            eprintln!("redis cluster kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn url(port: u16) -> String {
    format!("redis://127.0.0.1:{port}")
}

/// The masters of a `CLUSTER NODES` answer (`<id> <ip:port@bus> <flags> ...` a line), as
/// URLs; a master that failed (`fail`) is left out.
fn masters_in(nodes: &str) -> Vec<String> {
    let mut masters: Vec<String> = nodes
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let address = fields.nth(1)?;
            let flags = fields.next()?;
            let master =
                flags.split(',').any(|f| f == "master") && !flags.split(',').any(|f| f == "fail");
            let (host_port, _bus) = address.split_once('@')?;
            master.then(|| format!("redis://{host_port}"))
        })
        .collect();
    masters.sort();
    masters
}

/// The slots a `CLUSTER NODES` line serves: its ranges (`0-5460`) and single slots (`5461`),
/// not the ones it is importing or migrating (`[5461->-b2]`).
fn slots_in(line: &str) -> usize {
    line.split_whitespace()
        .skip(8)
        .filter(|field| !field.starts_with('['))
        .filter_map(|field| match field.split_once('-') {
            Some((first, last)) => {
                Some(last.parse::<usize>().ok()? + 1 - first.parse::<usize>().ok()?)
            }
            None => field.parse::<usize>().ok().map(|_| 1),
        })
        .sum()
}

async fn query<T: redis::FromRedisValue>(url: &str, cmd: &redis::Cmd) -> anyhow::Result<T> {
    let client = redis::Client::open(url)?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(500)))
        .set_response_timeout(Some(Duration::from_millis(500)));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    Ok(cmd.query_async(&mut conn).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masters_are_read_from_cluster_nodes() {
        let nodes = "\
a1 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:30002@40002 master - 0 0 2 connected 5461-10922
c3 127.0.0.1:30003@40003 master,fail - 0 0 3 connected
d4 127.0.0.1:30004@40004 slave a1 0 0 1 connected
";
        assert_eq!(
            masters_in(nodes),
            ["redis://127.0.0.1:30001", "redis://127.0.0.1:30002"]
        );
    }

    #[test]
    fn slots_are_counted_from_ranges_and_single_slots() {
        let line =
            "a1 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-99 150 200-201 [300->-b2]";
        assert_eq!(slots_in(line), 103);
        assert_eq!(
            slots_in("c3 127.0.0.1:30003@40003 master,fail - 0 0 3 connected"),
            0
        );
    }
}
