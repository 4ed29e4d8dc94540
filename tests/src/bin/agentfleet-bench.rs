//! Whole-path measurement (the seed of the benchmark suite): N no-op jobs POSTed with C
//! concurrent clients through 1 dispatcher and 1 worker against the real RabbitMQ and Redis,
//! with an instant stub LLM, until every webhook has arrived. Prints jobs/s and the
//! submit→webhook latency percentiles. Bounded: gives up after 120 s.
//!
//! `cargo run --release -p agentfleet-tests --bin agentfleet-bench -- [N] [C]`

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;

use agentfleet_tests::{AgentSpec, AppOptions, TestApp};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(2000);
    let clients: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(64);
    let mut agent = AgentSpec::new("bench");
    agent.concurrency = 256;
    let app = TestApp::spawn(AppOptions {
        agents: vec![agent],
        workers: 1,
        ..AppOptions::default()
    })
    .await?;

    let started = Instant::now();
    let sent: Vec<(String, Instant)> = futures_util::stream::iter(0..n)
        .map(|i| {
            let app = &app;
            async move {
                let at = Instant::now();
                app.submit_job("bench", &format!("job {i}")).await.map(|id| (id, at))
            }
        })
        .buffer_unordered(clients)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let submitted = started.elapsed();
    app.wait_webhooks(n, Duration::from_secs(120)).await?;
    let total = started.elapsed();

    let sent: HashMap<String, Instant> = sent.into_iter().collect();
    let mut latencies: Vec<Duration> = app
        .receiver
        .deliveries()
        .iter()
        .filter_map(|d| {
            let id = d.event.as_ref()?["data"]["id"].as_str()?.to_owned();
            Some(d.at.duration_since(*sent.get(&id)?))
        })
        .collect();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!("| metric | value |");
    println!("|---|---|");
    println!("| jobs | {n} ({clients} concurrent clients, 1 dispatcher, 1 worker, instant stub) |");
    println!("| accepted POSTs/s | {:.0} |", n as f64 / submitted.as_secs_f64());
    println!("| whole path jobs/s (first POST → last webhook) | {:.0} |", n as f64 / total.as_secs_f64());
    println!("| submit→webhook p50 | {:.1} ms |", pct(0.50).as_secs_f64() * 1e3);
    println!("| submit→webhook p99 | {:.1} ms |", pct(0.99).as_secs_f64() * 1e3);
    Ok(())
}
