//! The peer: the queue a team would pick instead of agentfleet — BullMQ (npm) behind a minimal
//! Node HTTP intake, intake and worker as two processes (`bench/bullmq/peer.mjs`). It does the
//! same job as the whole-path scenario's no-op agent against the same stub LLM and the same
//! verifying webhook receiver, driven by the same load generator, in the same run, so its
//! figures are a baseline for ours. Its keys live under the run's prefix and go with it.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde::Serialize;
use sha2::{Digest, Sha256};

use agentfleet_tests::{AppOptions, TestApp};

use crate::fleet::{free_port, Binaries, Client, Process};
use crate::load::Batches;
use crate::procfs::{CpuMeter, CpuUse, Groups};

/// Where the peer's script and its installed dependencies are.
fn dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/bullmq"))
}

/// Why the peer cannot run on this machine, if it cannot: no Node, or its dependencies not
/// installed (`scripts/bench.sh` installs them with `npm ci` where Node is present).
pub fn unavailable() -> Option<String> {
    let node = Command::new("node").arg("--version").output();
    if !node.is_ok_and(|out| out.status.success()) {
        return Some("Node is not installed".into());
    }
    if !dir().join("node_modules/bullmq").is_dir() {
        return Some("bench/bullmq has no node_modules (run `npm install` there)".into());
    }
    None
}

/// The peer's whole path at saturation, as [`crate::scenarios::WholePath`] measures ours.
#[derive(Debug, Clone, Serialize)]
pub struct PeerRun {
    pub jobs: usize,
    pub clients: usize,
    pub concurrency: u16,
    /// First POST to last webhook.
    pub jobs_per_sec: f64,
    /// While the POSTs were going on (intake under a concurrent drain).
    pub accepted_posts_per_sec: f64,
    pub cpu: CpuUse,
}

/// The intake and worker processes (killed on drop) and the app whose stub LLM and webhook
/// receiver they use (its prefix is theirs, and is cleaned up with it).
struct Peer {
    intake: Process,
    /// `None` when only the intake is measured.
    worker: Option<Process>,
    url: String,
    app: TestApp,
}

impl Peer {
    async fn start(bins: &Binaries, concurrency: u16, with_worker: bool) -> anyhow::Result<Self> {
        let app = TestApp::spawn(AppOptions {
            workers: 0,
            ..AppOptions::default()
        })
        .await?;
        let port = free_port()?;
        let spawn = |role: &str| -> anyhow::Result<Process> {
            let mut command = Command::new("node");
            command
                .current_dir(dir())
                .arg("peer.mjs")
                .arg(role)
                .env("PEER_PREFIX", &app.prefix)
                .env("PEER_QUEUE", "bench")
                .env("PEER_PORT", port.to_string())
                .env(
                    "PEER_API_KEY_SHA256",
                    hex::encode(Sha256::digest(app.acme.api_key.as_bytes())),
                )
                .env("PEER_LLM_URL", format!("http://{}/v1", app.llm_addr))
                .env("PEER_MODEL", "bench-peer")
                .env("PEER_WEBHOOK_SECRET", &app.acme.webhook_secret)
                .env("PEER_CONCURRENCY", concurrency.to_string());
            let log = bins.logs.join(format!("{}-bullmq-{role}.log", app.prefix));
            Process::spawn(&mut command, &format!("bullmq {role}"), log)
        };
        let intake = spawn("intake")?;
        let worker = with_worker.then(|| spawn("worker")).transpose()?;
        let mut peer = Self {
            intake,
            worker,
            url: format!("http://127.0.0.1:{port}/v1/jobs"),
            app,
        };
        peer.wait_listening().await?;
        Ok(peer)
    }

    /// Until the intake answers (a 401 to a keyless POST proves it is up).
    async fn wait_listening(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            self.check_alive()?;
            if self.app.http.post(&self.url).send().await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the BullMQ intake did not listen within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn client(&self) -> Client {
        Client::to(
            self.app.http.clone(),
            self.url.clone(),
            &self.app.acme.api_key,
            "bench",
            self.app.webhook_url(),
        )
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        self.intake.check_alive()?;
        if let Some(worker) = &mut self.worker {
            worker.check_alive()?;
        }
        Ok(())
    }

    fn cpu_groups(&self) -> Groups {
        let mut groups = Groups::standard();
        groups.add("bullmq intake", self.intake.pid());
        if let Some(worker) = &self.worker {
            groups.add("bullmq worker", worker.pid());
        }
        groups
    }

    /// Until `n` more webhooks than `before` have arrived.
    async fn wait_webhooks(&mut self, before: usize, n: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.app.receiver.count() < before + n {
            self.check_alive()?;
            if Instant::now() > deadline {
                bail!(
                    "{} of {n} BullMQ webhooks within 120 s",
                    self.app.receiver.count().saturating_sub(before)
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }
}

/// The peer's intake and worker, warmed up, measured in batches that add up as
/// [`crate::scenarios::WholePathFleet`] measures ours: `n` jobs POSTed, then every webhook
/// awaited, each batch from its first POST to its last webhook.
pub struct ThroughputPeer {
    peer: Peer,
    client: Client,
    clients: usize,
    concurrency: u16,
    batches: Batches,
}

impl ThroughputPeer {
    /// The peer, after `warmup` jobs have been run and delivered.
    pub async fn start(
        bins: &Binaries,
        clients: usize,
        warmup: usize,
        concurrency: u16,
    ) -> anyhow::Result<Self> {
        let mut peer = Peer::start(bins, concurrency, true).await?;
        let client = peer.client();
        client
            .submit_many(warmup, clients, |i| format!("bench job {i}"))
            .await?;
        peer.wait_webhooks(0, warmup).await?;
        Ok(Self {
            peer,
            client,
            clients,
            concurrency,
            batches: Batches::default(),
        })
    }

    /// One measured batch of `n` jobs; its jobs/s.
    pub async fn batch(&mut self, n: usize) -> anyhow::Result<f64> {
        let before = self.peer.app.receiver.count();
        let meter = CpuMeter::start(self.peer.cpu_groups());
        let started = Instant::now();
        self.client
            .submit_many(n, self.clients, |i| format!("bench job {i}"))
            .await?;
        let submitted = started.elapsed();
        self.peer.wait_webhooks(before, n).await?;
        let elapsed = started.elapsed();
        Ok(self.batches.add(n, elapsed, submitted, meter.finish()))
    }

    /// Every batch as one measurement; an error if the receiver refused any of the peer's
    /// webhooks.
    pub fn finish(self) -> anyhow::Result<PeerRun> {
        let rejected = self
            .peer
            .app
            .receiver
            .deliveries()
            .iter()
            .filter(|d| !d.verified)
            .count();
        if rejected > 0 {
            bail!("the receiver refused {rejected} of the peer's webhooks (bad signature)");
        }
        Ok(PeerRun {
            jobs: self.batches.jobs(),
            clients: self.clients,
            concurrency: self.concurrency,
            jobs_per_sec: self.batches.jobs_per_sec(),
            accepted_posts_per_sec: self.batches.posts_per_sec(),
            cpu: self.batches.cpu(),
        })
    }
}

/// The peer's intake alone, with no worker draining: scenario 4 measures it in windows
/// alternated with ours.
pub struct IntakePeer(Peer);

impl IntakePeer {
    pub async fn start(bins: &Binaries) -> anyhow::Result<Self> {
        Ok(Self(Peer::start(bins, 1, false).await?))
    }

    pub fn client(&self) -> Client {
        self.0.client()
    }

    pub fn cpu_groups(&self) -> Groups {
        self.0.cpu_groups()
    }

    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        self.0.check_alive()
    }
}

/// What scenario 4 measured of [`IntakePeer`].
#[derive(Debug, Clone, Serialize)]
pub struct PeerIntake {
    pub posts_per_sec: f64,
    pub p99_ms: Option<f64>,
    pub cpu: CpuUse,
}
