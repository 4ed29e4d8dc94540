//! The cluster chaos test: a three-node RabbitMQ cluster (quorum queues on every node), two
//! dispatchers and three workers each given all three nodes in a different order, and the
//! node that leads the work queues killed (SIGKILL) mid-run. Every accepted job must end and have its
//! webhook delivered, no job may run on two workers at once, and the window of 503s each
//! dispatcher answered during the failover is measured and printed.
//!
//! Short form (CI): 200 jobs over 10 s. Full form: `AGENTFLEET_CLUSTER_JOBS=1000` (see
//! `scripts/cluster-chaos.sh`).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use agentfleet_common::metrics::Metrics;
use agentfleet_dispatcher::Dispatcher;
use agentfleet_stub::llm::Behavior;
use agentfleet_tests::rabbit_cluster::RabbitCluster;
use agentfleet_tests::resubmit::{Answered, Resubmit, Submitted};
use agentfleet_tests::{AgentSpec, AppOptions, TestApp};

const NODES: usize = 3;

struct Plan {
    jobs: usize,
    /// Submissions are spread evenly over it.
    window: Duration,
    /// When the leading node is killed, from the first submission.
    kill_at: Duration,
}

impl Plan {
    fn from_env() -> Self {
        let jobs = std::env::var("AGENTFLEET_CLUSTER_JOBS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(200usize);
        let window = Duration::from_secs((jobs as u64 / 20).clamp(10, 100));
        Self {
            jobs,
            window,
            kill_at: window * 2 / 5,
        }
    }
}

/// One answer a dispatcher gave: when the request was sent, when it was answered, the status.
#[derive(Debug, Clone, Copy)]
struct Answer {
    dispatcher: usize,
    sent: Instant,
    answered: Instant,
    status: u16,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_accepted_job_is_lost_when_the_node_leading_the_queues_dies() -> anyhow::Result<()> {
    let plan = Plan::from_env();
    let booting = Instant::now();
    let cluster = RabbitCluster::start(NODES).await?;
    let boot_time = booting.elapsed();
    let urls = cluster.urls();
    let from = |first: usize| -> Vec<String> {
        (0..NODES)
            .map(|i| urls[(first + i) % NODES].clone())
            .collect()
    };

    let mut agent = AgentSpec::new("cluster");
    agent.concurrency = 16;
    agent.timeout_secs = 600;
    agent.retry_attempts = 10;
    agent.retry_max_delay_secs = 2;
    let mut app = TestApp::spawn(AppOptions {
        agents: vec![agent],
        workers: 0,
        behavior: Behavior {
            latency: Duration::from_millis(500),
            ..Behavior::default()
        },
        // Dispatcher 0 connects to node 0 first, and so declares the queues there.
        amqp_urls: from(0),
        quorum_initial_group_size: Some(NODES as u32),
        // The last node declares nothing first, so it leads nothing and stays up.
        admin_amqp_url: urls[NODES - 1].clone(),
        ..AppOptions::default()
    })
    .await?;

    // Dispatcher 1 starts on node 1; worker w on node w.
    let second = second_dispatcher(&app, from(1)).await?;
    for w in 0..NODES {
        let mut config = app.config.clone();
        config.amqp.urls = Some(from(w).into_iter().map(Into::into).collect());
        app.start_worker_with(config).await?;
    }
    let dispatchers = [app.dispatcher_addr, second.addr];
    // Found before the run: `rabbitmqctl` takes seconds on a busy machine.
    let prefix = format!("{}.jobs.", app.prefix);
    let (victim, led) = leading_node(&cluster, &prefix).await?;

    let answers = Arc::new(Mutex::new(Vec::<Answer>::new()));
    let started = Instant::now();
    let spacing = plan.window / u32::try_from(plan.jobs)?;
    let submitter = futures_util::stream::iter(0..plan.jobs)
        .map(|i| {
            let (app, answers) = (&app, answers.clone());
            async move {
                tokio::time::sleep_until((started + spacing * u32::try_from(i)?).into()).await;
                submit_until_accepted(app, dispatchers[i % 2], i % 2, i, &answers).await
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<anyhow::Result<String>>>();

    let chaos = async {
        tokio::time::sleep_until((started + plan.kill_at).into()).await;
        let killed_at = Instant::now();
        cluster.kill_node(victim).await?;
        let port_closed = Instant::now();
        anyhow::Ok((killed_at, port_closed))
    };
    let (accepted, stop) = tokio::join!(submitter, chaos);
    let (killed_at, port_closed) = stop?;
    // The harness cleans up through a node that is still up.
    app.amqp_url = urls[(victim + 1) % NODES].clone();
    let accepted = accepted
        .into_iter()
        .collect::<anyhow::Result<Vec<String>>>()?;
    let unique: HashSet<&String> = accepted.iter().collect();
    assert_eq!(
        unique.len(),
        accepted.len(),
        "every accepted job has its own id"
    );

    let records = app
        .wait_terminal(&accepted, Duration::from_secs(120))
        .await?;
    let succeeded = records
        .iter()
        .filter(|r| r["status"] == "succeeded")
        .count();
    let delivered = wait_for_every_webhook(&app, &accepted).await?;
    let double_runs = app.llm.double_runs();
    let leaders_after = cluster.queue_leaders(&prefix).await?;
    let victim_name = &cluster.node_names()[victim];

    // Back on its data, the node rejoins (and the harness's clean-up, deleting quorum queues,
    // does not wait on a dead member's replicas).
    cluster.restart_node(victim).await?;
    let answers = answers.lock().map(|a| a.clone()).unwrap_or_default();
    let windows: Vec<String> = (0..dispatchers.len())
        .map(|d| failover_figures(&answers, d, killed_at))
        .collect();
    println!(
        "cluster: nodes={NODES} boot={boot_time:.0?} | jobs={} accepted={} terminal={} succeeded={succeeded} lost={} | webhooks for every job={delivered} | double runs={double_runs} | killed node {victim} {victim_name} (led {led} work queues; its port closed in {:.0?}) | {} | run {:.0?}, test so far {:.0?}",
        plan.jobs,
        accepted.len(),
        records.len(),
        accepted.len() - records.len(),
        port_closed - killed_at,
        windows.join(" | "),
        started.elapsed(),
        booting.elapsed(),
    );
    assert_eq!(
        accepted.len(),
        plan.jobs,
        "every job was accepted in the end"
    );
    assert_eq!(records.len(), accepted.len(), "0 lost");
    assert_eq!(succeeded, accepted.len(), "every job succeeded");
    assert_eq!(double_runs, 0, "no job ran on two workers at once");
    assert!(led > 0, "the killed node led work queues");
    assert!(
        leaders_after
            .iter()
            .all(|(_, leader)| leader != victim_name),
        "every queue has a new leader: {leaders_after:?}"
    );
    let accepted_by = |before: bool| {
        answers
            .iter()
            .filter(|a| a.status == 202 && (a.answered < killed_at) == before)
            .count()
    };
    assert!(
        accepted_by(true) > 0 && accepted_by(false) > 0,
        "the node died mid-run: {} jobs accepted before, {} after",
        accepted_by(true),
        accepted_by(false)
    );
    Ok(())
}

/// The node leading the most work queues of this test, and how many it leads.
async fn leading_node(cluster: &RabbitCluster, prefix: &str) -> anyhow::Result<(usize, usize)> {
    let leaders = cluster.queue_leaders(prefix).await?;
    let names = cluster.node_names();
    let counts: Vec<usize> = names
        .iter()
        .map(|n| leaders.iter().filter(|(_, l)| l == n).count())
        .collect();
    let (victim, led) = counts
        .iter()
        .copied()
        .enumerate()
        .max_by_key(|&(_, c)| c)
        .unwrap_or_default();
    Ok((victim, led))
}

/// The second dispatcher, in process, on its own port; it stops when dropped.
struct SecondDispatcher {
    addr: SocketAddr,
    _stop: tokio_util::sync::DropGuard,
}

async fn second_dispatcher(app: &TestApp, urls: Vec<String>) -> anyhow::Result<SecondDispatcher> {
    let mut config = app.config.clone();
    config.amqp.urls = Some(urls.into_iter().map(Into::into).collect());
    let dispatcher = Dispatcher::new(config, Arc::new(Metrics::new()))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    tokio::spawn(dispatcher.serve(listener, stop.clone()));
    agentfleet_tests::wait_until(
        Duration::from_secs(20),
        "second dispatcher ready",
        || async {
            let r = app
                .http
                .get(format!("http://{addr}/readyz"))
                .send()
                .await
                .ok()?;
            r.status().is_success().then_some(())
        },
    )
    .await?;
    Ok(SecondDispatcher {
        addr,
        _stop: stop.drop_guard(),
    })
}

/// Submits job `i` to `addr`, retrying 503s (and a 409 of a retry racing its first try) with
/// the same Idempotency-Key, as a client should, until accepted; notes every answer.
async fn submit_until_accepted(
    app: &TestApp,
    addr: SocketAddr,
    dispatcher: usize,
    i: usize,
    answers: &Mutex<Vec<Answer>>,
) -> anyhow::Result<String> {
    let submission = Resubmit {
        url: format!("http://{addr}/v1/jobs"),
        tenant: &app.acme,
        body: json!({"agent": "cluster", "input": format!("cluster job {i}"), "webhook_url": app.webhook_url()}),
        key: format!("cluster-{i}"),
        within: Duration::from_secs(120),
        stuck_after: None,
    };
    let noted = |answered: Answered| {
        if let (Ok(mut answers), true) = (answers.lock(), answered.status != 0) {
            answers.push(Answer {
                dispatcher,
                sent: answered.sent,
                answered: answered.answered,
                status: answered.status,
            });
        }
    };
    match app.resubmit(submission, noted).await? {
        Submitted::Accepted(id) => Ok(id),
        Submitted::StuckKey => anyhow::bail!("job {i}: its key is stuck"),
    }
}

/// Waits until the receiver has a webhook for every job; answers how many jobs that is.
async fn wait_for_every_webhook(app: &TestApp, accepted: &[String]) -> anyhow::Result<usize> {
    let expected: HashSet<String> = accepted
        .iter()
        .filter_map(|id| uuid::Uuid::parse_str(id).ok())
        .map(|u| format!("msg_{}_", u.simple()))
        .collect();
    let deliveries =
        agentfleet_tests::wait_until(Duration::from_secs(120), "a webhook per job", || async {
            let deliveries = app.receiver.deliveries();
            let got: HashSet<String> = deliveries
                .iter()
                .filter_map(|d| d.webhook_id.rsplit_once('_').map(|(p, _)| format!("{p}_")))
                .collect();
            expected.is_subset(&got).then_some(deliveries)
        })
        .await?;
    assert!(
        deliveries.iter().all(|d| d.verified),
        "every delivery verifies"
    );
    Ok(expected.len())
}

/// Dispatcher `d`'s failover as a line: its 503 window (first to last 503 answered after the
/// stop began) and the time from the kill to its first accept of a request sent after it.
fn failover_figures(answers: &[Answer], d: usize, killed_at: Instant) -> String {
    let mine = || answers.iter().filter(move |a| a.dispatcher == d);
    let refused: Vec<Instant> = mine()
        .filter(|a| a.status == 503 && a.answered >= killed_at)
        .map(|a| a.answered)
        .collect();
    let window = match (refused.iter().min(), refused.iter().max()) {
        (Some(first), Some(last)) => format!(
            "{} ms ({} × 503, first {} ms after the kill)",
            (*last - *first).as_millis(),
            refused.len(),
            (*first - killed_at).as_millis()
        ),
        _ => "none".to_owned(),
    };
    let first_accept = mine()
        .filter(|a| a.status == 202 && a.sent >= killed_at)
        .map(|a| a.answered)
        .min()
        .map_or("never".to_owned(), |at| {
            format!("{} ms", (at - killed_at).as_millis())
        });
    format!("dispatcher {d}: 503 window {window}, kill → first accept {first_accept}")
}
