//! Shutdown never hangs: the dispatcher and the worker, each a process of its own (the
//! binaries' code), get SIGTERM in every phase of their life — idle, mid-publish, mid-run,
//! broker down, Redis down — again and again, and must exit with status 0 within their grace
//! period and a small margin. At a clean close neither logs at ERROR, and each says once, at
//! INFO, that it closed the broker connection. A second SIGTERM ends a process at once.
//!
//! Every phase is a test of its own (they run in parallel) with its own app; the processes'
//! JSON log lines are read from their stdout and stderr.

use std::collections::HashMap;
use std::io::BufRead as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use serde_json::{json, Value};

use agentfleet_stub::llm::Behavior;
use agentfleet_tests::proxy::Proxy;
use agentfleet_tests::{wait_until, AgentSpec, AppOptions, TestApp};

const DISPATCHER_BIN: &str = env!("CARGO_BIN_EXE_agentfleet-test-dispatcher");

/// Both processes' `shutdown_grace_secs`.
const GRACE_SECS: u64 = 2;
/// Beyond the grace period: the exit itself and this test's polling (every 20 ms), on a
/// shared, busy machine.
const MARGIN: Duration = Duration::from_millis(1500);
/// A held model call: longer than any phase, so a run is in flight until its worker stops.
const HELD: Duration = Duration::from_secs(120);

fn exit_limit() -> Duration {
    Duration::from_secs(GRACE_SECS) + MARGIN
}

/// A dispatcher or worker process, its output collected line by line.
struct Process {
    name: &'static str,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Process {
    /// Runs `binary` on `config`, with `env` (secrets, overrides of the file's settings).
    fn start(
        name: &'static str,
        binary: &str,
        config: &Path,
        env: &HashMap<String, String>,
    ) -> anyhow::Result<Self> {
        let mut child = Command::new(binary)
            .arg("--config")
            .arg(config)
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning the {name}"))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().context("stdout")?;
        let stderr = child.stderr.take().context("stderr")?;
        collect(stdout, lines.clone());
        collect(stderr, lines.clone());
        Ok(Self { name, child, lines })
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The JSON lines logged with `message`.
    fn logged(&self, message: &str) -> Vec<Value> {
        self.lines()
            .iter()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|line| line["message"] == message)
            .collect()
    }

    async fn wait_logged(&self, message: &str, n: usize) -> anyhow::Result<Vec<Value>> {
        let what = format!("{} to log {message:?} {n} times", self.name);
        wait_until(Duration::from_secs(20), &what, || async {
            let found = self.logged(message);
            (found.len() >= n).then_some(found)
        })
        .await
        .with_context(|| self.tail())
    }

    /// Lines at ERROR, and anything on the output that is not a log line.
    fn errors(&self) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|line| {
                serde_json::from_str::<Value>(line).map_or(true, |v| v["level"] == "ERROR")
            })
            .collect()
    }

    fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .context("running kill")?;
        ensure!(status.success(), "kill -{signal} {} failed", self.name);
        Ok(())
    }

    fn has_exited(&mut self) -> anyhow::Result<bool> {
        Ok(self.child.try_wait()?.is_some())
    }

    /// Polls until the process exits or `within` of `since` passed; answers its status and
    /// how long after `since` it was seen gone.
    async fn wait_exit(
        &mut self,
        since: Instant,
        within: Duration,
    ) -> anyhow::Result<(ExitStatus, Duration)> {
        let left = within.saturating_sub(since.elapsed());
        let child = &mut self.child;
        let exited = wait_until(left, "exit", || {
            let status = child.try_wait().ok().flatten();
            async move { status }
        })
        .await;
        match exited {
            Ok(status) => Ok((status, since.elapsed())),
            Err(_) => bail!(
                "{} still running {within:?} after the signal; {}",
                self.name,
                self.tail()
            ),
        }
    }

    /// The last lines it printed, for a failure's message.
    fn tail(&self) -> String {
        let lines = self.lines();
        let from = lines.len().saturating_sub(25);
        format!("{}'s last lines:\n{}", self.name, lines[from..].join("\n"))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Appends every line read from `from` to `lines`, on a thread of its own.
fn collect(from: impl std::io::Read + Send + 'static, lines: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(from).lines() {
            let Ok(line) = line else { return };
            lines.lock().unwrap_or_else(|e| e.into_inner()).push(line);
        }
    });
}

/// A dispatcher and a worker process, both up.
struct Fleet {
    dispatcher: Process,
    worker: Process,
    /// Where the dispatcher process listens.
    addr: SocketAddr,
}

impl Fleet {
    /// Starts both on `config`, with both grace periods `grace_secs`, logging at INFO (the
    /// lines this test waits for; the file says `warn`), and with `settings` (more overrides
    /// of the file, as `AGENTFLEET__*` variables); answers once both are up.
    async fn start(
        app: &TestApp,
        config: &Path,
        grace_secs: u64,
        settings: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let mut env = app.worker_env();
        let grace = grace_secs.to_string();
        for (key, value) in [
            ("AGENTFLEET__TELEMETRY__LOG_LEVEL", "info"),
            ("AGENTFLEET__TELEMETRY__LOG_FORMAT", "json"),
            ("AGENTFLEET__DISPATCHER__SHUTDOWN_GRACE_SECS", &grace),
            ("AGENTFLEET__WORKER__SHUTDOWN_GRACE_SECS", &grace),
        ]
        .iter()
        .chain(settings)
        {
            env.insert((*key).to_owned(), (*value).to_owned());
        }
        let dispatcher = Process::start("dispatcher", DISPATCHER_BIN, config, &env)?;
        let worker = Process::start("worker", crate::WORKER_BIN, config, &env)?;
        let listening = dispatcher.wait_logged("dispatcher listening", 1).await?;
        let addr = listening[0]["addr"]
            .as_str()
            .context("addr")?
            .parse()
            .context("the dispatcher's address")?;
        // One consumption per agent, and the webhooks'.
        let consumptions = app.config.agents.len() + 1;
        worker.wait_logged("consuming", consumptions).await?;
        Ok(Self {
            dispatcher,
            worker,
            addr,
        })
    }

    /// Sends SIGTERM to both; answers how long each took to exit, after checking that it
    /// exited with status 0 within the limit.
    async fn terminate(&mut self) -> anyhow::Result<[Duration; 2]> {
        let sent = Instant::now();
        self.dispatcher.signal("TERM")?;
        self.worker.signal("TERM")?;
        let (dispatcher, worker) = tokio::join!(
            self.dispatcher.wait_exit(sent, exit_limit()),
            self.worker.wait_exit(sent, exit_limit()),
        );
        let mut took = [Duration::ZERO; 2];
        for (i, (process, exit)) in [(&self.dispatcher, dispatcher), (&self.worker, worker)]
            .into_iter()
            .enumerate()
        {
            let (status, after) = exit?;
            ensure!(
                status.code() == Some(0),
                "{} exited with {status}; {}",
                process.name,
                process.tail()
            );
            took[i] = after;
        }
        Ok(took)
    }

    /// At a clean close: no line at ERROR, and the broker connection closed once, at INFO.
    fn assert_clean(&self) {
        for process in [&self.dispatcher, &self.worker] {
            let errors = process.errors();
            assert!(errors.is_empty(), "{} logged: {errors:#?}", process.name);
            let closed = process.logged("broker connection closed");
            assert_eq!(closed.len(), 1, "{}", process.tail());
            assert_eq!(closed[0]["level"], "INFO");
        }
    }

    /// A client of the dispatcher process, as acme.
    fn client(&self, app: &TestApp) -> Client {
        Client {
            http: app.http.clone(),
            api_key: app.acme.api_key.clone(),
            webhook_url: app.webhook_url(),
            addr: self.addr,
        }
    }
}

/// Submits jobs to a dispatcher process.
#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    api_key: String,
    webhook_url: String,
    addr: SocketAddr,
}

impl Client {
    /// POSTs a job; its id if accepted.
    async fn submit(&self, input: &str) -> Option<String> {
        let response = self
            .http
            .post(format!("http://{}/v1/jobs", self.addr))
            .bearer_auth(&self.api_key)
            .json(&json!({"agent": "summarize", "input": input, "webhook_url": self.webhook_url}))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?;
        if response.status() != 202 {
            return None;
        }
        let body: Value = response.json().await.ok()?;
        body["id"].as_str().map(str::to_owned)
    }

    /// Starts a submission and sends only the start of its body: the request stays in the
    /// dispatcher until the stream is dropped.
    async fn stall(&self) -> anyhow::Result<tokio::net::TcpStream> {
        agentfleet_tests::stalled_submit(self.addr, &self.api_key).await
    }
}

/// What each phase measured: the slowest exit of each process, over its repetitions.
#[derive(Default)]
struct Slowest {
    dispatcher: Duration,
    worker: Duration,
}

impl Slowest {
    fn note(&mut self, [dispatcher, worker]: [Duration; 2]) {
        self.dispatcher = self.dispatcher.max(dispatcher);
        self.worker = self.worker.max(worker);
    }

    fn report(&self, phase: &str, reps: usize) {
        eprintln!(
            "shutdown {phase}: {reps} times; slowest exit: dispatcher {:?}, worker {:?} (grace {GRACE_SECS} s, limit {:?})",
            self.dispatcher,
            self.worker,
            exit_limit()
        );
    }
}

/// An app for processes that run from its config file (no in-process worker); the stub
/// holds model calls when `held`.
async fn app_for_processes(options: AppOptions, held: bool) -> anyhow::Result<(TestApp, PathBuf)> {
    let mut agent = AgentSpec::new("summarize");
    // Runs go round several workers' shutdowns before they may finish.
    agent.timeout_secs = 300;
    let mut app = TestApp::spawn(AppOptions {
        agents: vec![agent],
        workers: 0,
        shutdown_grace_secs: GRACE_SECS,
        behavior: Behavior {
            latency: if held { HELD } else { Duration::ZERO },
            ..Behavior::default()
        },
        ..options
    })
    .await?;
    let config = app.write_config_file("shutdown")?;
    Ok((app, config))
}

/// Waits until the stub has seen `n` model calls in all.
async fn wait_calls(app: &TestApp, n: usize) -> anyhow::Result<()> {
    wait_until(
        Duration::from_secs(20),
        &format!("{n} model calls"),
        || async { (app.llm.call_count() >= n).then_some(()) },
    )
    .await
}

/// Releases the held calls and checks that every job accepted during the phase ends well,
/// run by an in-process worker: nothing a shutdown interrupted was lost.
async fn assert_all_finish(app: &mut TestApp, ids: &[String]) -> anyhow::Result<()> {
    app.llm.set_behavior(Behavior::default());
    app.start_worker().await?;
    let records = app.wait_terminal(ids, Duration::from_secs(30)).await?;
    assert!(
        records.iter().all(|r| r["status"] == "succeeded"),
        "{records:#?}"
    );
    Ok(())
}

/// SIGTERM as soon as both are up, with nothing to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_processes_exit_at_once() -> anyhow::Result<()> {
    const REPS: usize = 8;
    let (app, config) = app_for_processes(AppOptions::default(), false).await?;
    let mut slowest = Slowest::default();
    for _ in 0..REPS {
        let mut fleet = Fleet::start(&app, &config, GRACE_SECS, &[]).await?;
        slowest.note(fleet.terminate().await?);
        fleet.assert_clean();
    }
    slowest.report("idle", REPS);
    Ok(())
}

/// The dispatcher's runtime has `dispatcher.runtime_threads` threads (as its runtime counts
/// them, logged when it listens): one unless told more, and a replica told three serves and
/// stops in time on three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dispatcher_runs_on_the_threads_it_is_given() -> anyhow::Result<()> {
    let (app, config) = app_for_processes(AppOptions::default(), false).await?;
    for (setting, threads) in [(None, 1), (Some("3"), 3)] {
        let settings: Vec<_> = setting
            .map(|n| ("AGENTFLEET__DISPATCHER__RUNTIME_THREADS", n))
            .into_iter()
            .collect();
        let mut fleet = Fleet::start(&app, &config, GRACE_SECS, &settings).await?;
        let client = fleet.client(&app);
        assert!(client.submit("on its threads").await.is_some(), "202");
        let listening = fleet.dispatcher.logged("dispatcher listening");
        assert_eq!(listening[0]["runtime_threads"], threads, "{setting:?}");
        fleet.terminate().await?;
        fleet.assert_clean();
    }
    Ok(())
}

/// SIGTERM while submissions are in flight — and, every other time, one more stalled half
/// way through its body, which only the dispatcher's deadline ends (if it got in before the
/// signal). Every job answered 202
/// runs; the worker, running and publishing those jobs' webhooks meanwhile, acks the runs it
/// finishes while it stops (no delivery comes round again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_stop_in_time_mid_publish() -> anyhow::Result<()> {
    const REPS: usize = 6;
    const SUBMITTERS: usize = 4;
    let (mut app, config) = app_for_processes(AppOptions::default(), false).await?;
    let accepted = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut slowest = Slowest::default();
    for rep in 0..REPS {
        let mut fleet = Fleet::start(&app, &config, GRACE_SECS, &[]).await?;
        let client = fleet.client(&app);
        let stop = Arc::new(AtomicBool::new(false));
        let mut submitters = tokio::task::JoinSet::new();
        for s in 0..SUBMITTERS {
            let (client, stop, accepted) = (client.clone(), stop.clone(), accepted.clone());
            submitters.spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    if let Some(id) = client.submit(&format!("r{rep} s{s} n{n}")).await {
                        accepted.lock().unwrap_or_else(|e| e.into_inner()).push(id);
                    }
                }
            });
        }
        let stalled = if rep % 2 == 1 {
            Some(client.stall().await?)
        } else {
            None
        };
        let before = accepted.lock().unwrap_or_else(|e| e.into_inner()).len();
        wait_until(Duration::from_secs(20), "submissions accepted", || async {
            let now = accepted.lock().unwrap_or_else(|e| e.into_inner()).len();
            (now >= before + 10).then_some(())
        })
        .await?;
        let took = fleet.terminate().await;
        stop.store(true, Ordering::Relaxed);
        while submitters.join_next().await.is_some() {}
        drop(stalled);
        slowest.note(took?);
        fleet.assert_clean();
        let redelivered = fleet
            .worker
            .logged("could not settle a delivery; it will be redelivered");
        assert!(redelivered.is_empty(), "{redelivered:#?}");
    }
    slowest.report("mid-publish", REPS);
    let ids = accepted.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert_all_finish(&mut app, &ids).await
}

/// SIGTERM while runs wait on the model: the worker gives them back at the end of its grace
/// period's work part, and they all finish later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_stop_in_time_mid_run() -> anyhow::Result<()> {
    const REPS: usize = 5;
    let (mut app, config) = app_for_processes(AppOptions::default(), true).await?;
    let mut ids = Vec::new();
    let mut slowest = Slowest::default();
    for rep in 0..REPS {
        let calls = app.llm.call_count();
        let mut fleet = Fleet::start(&app, &config, GRACE_SECS, &[]).await?;
        let client = fleet.client(&app);
        for i in 0..2 {
            ids.push(
                client
                    .submit(&format!("r{rep} {i}"))
                    .await
                    .context("submit")?,
            );
        }
        // This rep's two, and those the last worker gave back.
        wait_calls(&app, calls + 2).await?;
        slowest.note(fleet.terminate().await?);
        fleet.assert_clean();
        let gave_back = fleet
            .worker
            .logged("grace period over; returning unfinished runs to the queue");
        assert_eq!(gave_back.len(), 1, "{}", fleet.worker.tail());
    }
    slowest.report("mid-run", REPS);
    assert_all_finish(&mut app, &ids).await
}

/// Where a phase's outage is: the proxy the processes reach one service through.
#[derive(Clone, Copy, PartialEq)]
enum Outage {
    Broker,
    Redis,
}

/// SIGTERM during an outage of the broker or of Redis, with a run waiting on the model: just
/// after the cut, or once the processes noticed it (every other time).
async fn stop_in_time_during(outage: Outage) -> anyhow::Result<()> {
    const REPS: usize = 6;
    let (port, name) = match outage {
        Outage::Broker => (5672, "broker-down"),
        Outage::Redis => (6379, "redis-down"),
    };
    let proxy = Proxy::start(([127, 0, 0, 1], port).into()).await?;
    let options = match outage {
        Outage::Broker => AppOptions {
            amqp_url: format!("amqp://guest:guest@{}/%2f", proxy.addr()),
            ..AppOptions::default()
        },
        Outage::Redis => AppOptions {
            redis_url: format!("redis://{}/0", proxy.addr()),
            ..AppOptions::default()
        },
    };
    let (app, config) = app_for_processes(options, true).await?;
    let mut slowest = Slowest::default();
    for rep in 0..REPS {
        proxy.restore();
        let calls = app.llm.call_count();
        let mut fleet = Fleet::start(&app, &config, GRACE_SECS, &[]).await?;
        fleet
            .client(&app)
            .submit(&format!("r{rep}"))
            .await
            .context("submit")?;
        wait_calls(&app, calls + 1).await?;
        proxy.cut();
        if rep % 2 == 1 {
            noticed(&app, &fleet, outage).await?;
        }
        slowest.note(fleet.terminate().await?);
    }
    slowest.report(name, REPS);
    Ok(())
}

/// Waits until the processes noticed the outage: the worker lost its consumers (broker), or
/// the dispatcher's readiness probe says Redis is down.
async fn noticed(app: &TestApp, fleet: &Fleet, outage: Outage) -> anyhow::Result<()> {
    match outage {
        Outage::Broker => {
            fleet
                .worker
                .wait_logged("consumer lost; reconnecting", 1)
                .await?;
        }
        Outage::Redis => {
            let url = format!("http://{}/readyz", fleet.addr);
            wait_until(
                Duration::from_secs(20),
                "readyz to say redis is down",
                || async {
                    let response = app.http.get(&url).send().await.ok()?;
                    let body: Value = response.json().await.ok()?;
                    (body["redis"] == "down").then_some(())
                },
            )
            .await?;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_stop_in_time_with_the_broker_down() -> anyhow::Result<()> {
    stop_in_time_during(Outage::Broker).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_stop_in_time_with_redis_down() -> anyhow::Result<()> {
    stop_in_time_during(Outage::Redis).await
}

/// A second SIGTERM ends a process at once (status 143), however long its grace period: the
/// worker waiting on a run, the dispatcher on a stalled request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_ends_a_process_at_once() -> anyhow::Result<()> {
    const LONG_GRACE_SECS: u64 = 60;
    let (app, config) = app_for_processes(AppOptions::default(), true).await?;
    // One API request at a time: a probe answered 503 `busy` shows the stalled one is in.
    let one = [("AGENTFLEET__DISPATCHER__MAX_CONCURRENT_REQUESTS", "1")];
    let mut fleet = Fleet::start(&app, &config, LONG_GRACE_SECS, &one).await?;
    let client = fleet.client(&app);
    client.submit("held").await.context("submit")?;
    wait_calls(&app, 1).await?;
    let mut stalled = client.stall().await?;
    let probe = format!("http://{}/v1/agents", fleet.addr);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let response = app
            .http
            .get(&probe)
            .bearer_auth(&app.acme.api_key)
            .send()
            .await?;
        if response.status() == 503 {
            break;
        }
        // The probe may have held the one place when the stalled request came, which was
        // then shed (answered 503 at once): it is started again.
        let shed = agentfleet_tests::read_raw_response(&mut stalled, Duration::from_millis(50));
        if shed.await.is_ok() {
            stalled = client.stall().await?;
        }
        ensure!(
            Instant::now() < deadline,
            "the stalled request never got in"
        );
    }
    fleet.dispatcher.signal("TERM")?;
    fleet.worker.signal("TERM")?;
    fleet
        .dispatcher
        .wait_logged("shutdown signal received", 1)
        .await?;
    fleet
        .worker
        .wait_logged("stopped consuming; draining runs", 1)
        .await?;
    // Both are waiting out their grace period.
    ensure!(
        !fleet.dispatcher.has_exited()?,
        "{}",
        fleet.dispatcher.tail()
    );
    ensure!(!fleet.worker.has_exited()?, "{}", fleet.worker.tail());
    let sent = Instant::now();
    fleet.dispatcher.signal("TERM")?;
    fleet.worker.signal("TERM")?;
    let (dispatcher, worker) = tokio::join!(
        fleet.dispatcher.wait_exit(sent, MARGIN),
        fleet.worker.wait_exit(sent, MARGIN),
    );
    for (process, exit) in [(&fleet.dispatcher, dispatcher), (&fleet.worker, worker)] {
        let (status, took) = exit?;
        assert_eq!(status.code(), Some(143), "{}", process.tail());
        eprintln!("{} ended {took:?} after a second SIGTERM", process.name);
    }
    Ok(())
}
