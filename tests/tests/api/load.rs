use std::collections::{HashMap, HashSet};
use std::time::Duration;

use agentfleet_tests::{AgentSpec, AppOptions, TestApp};

/// 300 jobs over 3 agents across 2 workers: every job ends succeeded, ran exactly once, and
/// got exactly one webhook.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_jobs_none_lost_none_duplicated() -> anyhow::Result<()> {
    let agents = ["alpha", "beta", "gamma"];
    let app = TestApp::spawn(AppOptions {
        agents: agents.iter().map(|a| AgentSpec::new(a)).collect(),
        workers: 2,
        ..AppOptions::default()
    })
    .await?;
    let mut ids = Vec::new();
    let mut per_agent: HashMap<String, usize> = HashMap::new();
    let submissions = (0..300).map(|i| {
        let agent = agents[i % 3];
        let app = &app;
        async move { (agent, app.submit_job(agent, &format!("job {i}")).await) }
    });
    for (agent, id) in futures_join_all(submissions).await {
        ids.push(id?);
        *per_agent.entry(agent.to_owned()).or_default() += 1;
    }
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        300,
        "ids are unique"
    );

    let records = app.wait_succeeded(&ids, Duration::from_secs(90)).await?;
    for agent in agents {
        let done = records.iter().filter(|r| r["agent"] == agent).count();
        assert_eq!(done, per_agent[agent]);
    }

    let calls = app.llm.calls_per_job();
    for id in &ids {
        assert_eq!(calls.get(id), Some(&1), "job {id} ran exactly once");
    }
    app.wait_webhooks(300, Duration::from_secs(60)).await?;
    let deliveries = app.receiver.deliveries();
    assert!(deliveries.iter().all(|d| d.verified));
    let distinct: HashSet<_> = deliveries.iter().map(|d| d.webhook_id.clone()).collect();
    assert_eq!(distinct.len(), 300, "one event per job");
    assert_eq!(
        deliveries.len(),
        300,
        "no duplicate deliveries without failures"
    );
    // Both workers did work.
    for index in 0..2 {
        let metrics = app.worker_metrics(index).expect("running");
        let done: u64 = agents
            .iter()
            .map(|a| {
                metrics
                    .jobs_completed
                    .with_label_values(&[a, "succeeded"])
                    .get()
            })
            .sum();
        assert!(done > 0, "worker {index} completed jobs");
    }
    Ok(())
}

/// Runs `futures` 50 at a time.
async fn futures_join_all<F: std::future::Future>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    use futures_util::StreamExt as _;
    futures_util::stream::iter(futures)
        .buffer_unordered(50)
        .collect()
        .await
}
