//! Scenario 5, Fleet-wide limit accuracy: three worker processes share one requests-per-minute
//! limit and are kept saturated (more jobs queued than the window can admit) for the window; the
//! calls the stub sees in the window, over what the limit allows. The same workers run, at the
//! same time, an agent limited in tokens per minute ([`token_limit`]), with its own stub.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;

use agentfleet_tests::{wait_until, AgentSpec};

use super::token_limit;
use crate::fleet::{Fleet, FleetOptions};
use crate::report::{Outcome, Row};
use crate::suite::Ctx;

pub async fn run(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let s = &ctx.settings;
    let window = s.limit_window;
    let per_sec = f64::from(s.limit_rpm) / 60.0;
    let expected = per_sec * window.as_secs_f64();
    // GCRA burst: one second's worth, at least one request.
    let burst = per_sec.max(1.0).floor();
    let jobs = (expected * 1.25 + burst) as usize + 100;

    let mut agent = AgentSpec::new("limited");
    agent.concurrency = s.limit_concurrency;
    agent.requests_per_minute = Some(s.limit_rpm);
    // The shipped default deadline (the harness's 10 s is shorter than the fairest wait for a
    // turn when 48 runs share 10 calls a second, and a run past its deadline wastes its turn).
    agent.timeout_secs = 60;
    let token_agent = token_limit::agent(s);
    let token_model = token_agent.spec.model();
    let options = FleetOptions::new(agent, Duration::ZERO, 0).with_agent(token_agent);
    let mut fleet = Fleet::start(&ctx.bins, options).await?;
    let token_llm = fleet.llm(token_limit::AGENT);
    token_limit::script(&token_llm, &token_model);
    fleet.submit_many(jobs, s.clients).await?;
    let token_jobs: Vec<String> = fleet
        .submit_many_to(
            token_limit::AGENT,
            token_limit::jobs(s),
            s.clients,
            token_limit::input,
        )
        .await?
        .into_iter()
        .map(|sent| sent.id)
        .collect();
    for _ in 0..s.limit_workers {
        fleet.spawn_worker()?;
    }
    for index in 0..s.limit_workers {
        fleet.wait_worker_ready(index).await?;
    }
    let llm = fleet.app.llm.clone();
    let first = wait_until(Duration::from_secs(20), "the first provider call", || {
        let llm = llm.clone();
        async move { llm.calls().first().map(|c| c.at) }
    })
    .await?;
    let token_first = wait_until(Duration::from_secs(20), "the first tokens/min call", || {
        let llm = token_llm.clone();
        async move { llm.calls().first().map(|c| c.at) }
    })
    .await?;
    let end = first + window;
    tokio::time::sleep_until((end + Duration::from_millis(300)).into()).await;
    fleet.check_alive()?;
    let left = fleet.app.agent_queue_depth(&fleet.agent).await?;
    let calls: Vec<_> = llm.calls().iter().map(|c| c.at).collect();
    let failures = failure_categories(&fleet, &fleet.agent);
    let mut waits = Histogram::default();
    for index in 0..s.limit_workers {
        waits.add(
            &fleet.worker_metrics(index).await?,
            WAIT_METRIC,
            &fleet.agent,
        );
    }

    let token_end = token_first + window;
    tokio::time::sleep_until((token_end + token_limit::RESOLVE).into()).await;
    fleet.check_alive()?;
    let mut token_waits = Histogram::default();
    for index in 0..s.limit_workers {
        token_waits.add(
            &fleet.worker_metrics(index).await?,
            WAIT_METRIC,
            token_limit::AGENT,
        );
    }
    let token_failures = failure_categories(&fleet, token_limit::AGENT);
    let deliveries = fleet.deliveries_by_job();
    let tokens = token_limit::measure(
        s,
        &token_limit::Observed {
            calls: token_llm.calls(),
            llm: &token_llm,
            deliveries: &deliveries,
            first: token_first,
            end: token_end,
            jobs: &token_jobs,
            workers: s.limit_workers,
        },
    );
    drop(fleet);

    let in_window = calls.iter().filter(|&&at| at >= first && at < end).count();
    let settle = Duration::from_secs(2);
    let steady = calls
        .iter()
        .filter(|&&at| at >= first + settle && at < end)
        .count();
    let ratio = in_window as f64 / expected;
    let steady_ratio = steady as f64 / (per_sec * (window - settle).as_secs_f64());
    // Allowed: the limit over the window plus the burst, and one call for the window's edges.
    let upper = (expected + burst + 1.0) / expected;
    let saturated = left > 0;
    let mut rows = vec![
        Row::new("calls in the window", in_window as f64, "calls")
            .display(format!(
                "{in_window} calls in {} s at {} /min ({} workers)",
                window.as_secs(),
                s.limit_rpm,
                s.limit_workers
            ))
            .baseline("limit × window", expected, "calls")
            .goal(
                &format!("0.95 – {upper:.3} (limit + 1 s burst)"),
                (0.95..=upper).contains(&ratio) && saturated,
            ),
        Row::new("steady-state rate / limit", steady_ratio, "")
            .display(format!(
                "steady state (after the first {} s): {:.3} × limit",
                settle.as_secs(),
                steady_ratio
            ))
            .ratio(steady_ratio)
            .info("—"),
    ];
    let mut notes = vec![format!(
        "{jobs} jobs queued before {} workers (concurrency {} each) started; {left} still queued at the end of the window.",
        s.limit_workers, s.limit_concurrency
    )];
    if waits.count > 0.0 {
        notes.push(format!(
            "Wait for a turn (from the workers' {WAIT_METRIC}): mean {:.1} s, p50 ≤ {} s, p99 ≤ {} s, max ≤ {} s over {} runs.",
            waits.sum / waits.count,
            waits.quantile(0.5),
            waits.quantile(0.99),
            waits.quantile(1.0),
            waits.count
        ));
    }
    if !failures.is_empty() {
        let text: Vec<String> = failures.iter().map(|(k, v)| format!("{k} {v}")).collect();
        notes.push(format!(
            "Jobs failed during the window, by error category: {}.",
            text.join(", ")
        ));
    }
    if !saturated {
        notes.push("The queue ran dry: the limit was not saturated.".to_owned());
    }
    rows.extend(tokens.rows);
    notes.extend(tokens.notes);
    if token_waits.count > 0.0 {
        notes.push(format!(
            "Tokens/min: wait for a turn: mean {:.1} s, p50 ≤ {} s, p99 ≤ {} s, max ≤ {} s over {} runs.",
            token_waits.sum / token_waits.count,
            token_waits.quantile(0.5),
            token_waits.quantile(0.99),
            token_waits.quantile(1.0),
            token_waits.count
        ));
    }
    if !token_failures.is_empty() {
        let text: Vec<String> = token_failures
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        notes.push(format!(
            "Tokens/min: jobs failed (all attempts), by error category: {}.",
            text.join(", ")
        ));
    }
    Ok(Outcome {
        rows,
        notes,
        details: json!({
            "workers": s.limit_workers,
            "requests_per_minute": s.limit_rpm,
            "window_secs": window.as_secs_f64(),
            "calls_in_window": in_window,
            "allowed": expected,
            "burst": burst,
            "ratio": ratio,
            "steady_state_ratio": steady_ratio,
            "left_in_queue": left,
            "failed_by_category": failures,
            "rate_limit_wait": {
                "count": waits.count,
                "mean_secs": if waits.count > 0.0 { waits.sum / waits.count } else { 0.0 },
                "p50_le_secs": waits.quantile(0.5),
                "p99_le_secs": waits.quantile(0.99),
                "max_le_secs": waits.quantile(1.0),
            },
            "tokens": tokens.details,
        }),
    })
}

/// Failed jobs of `agent` among the webhooks received, by error category.
fn failure_categories(fleet: &Fleet, agent: &str) -> BTreeMap<String, usize> {
    let mut failures = BTreeMap::new();
    for d in fleet.app.receiver.deliveries() {
        let Some(event) = &d.event else { continue };
        if event["type"] == "job.failed" && event["data"]["agent"] == agent {
            let category = event["data"]["error"]["category"]
                .as_str()
                .unwrap_or("unknown")
                .to_owned();
            *failures.entry(category).or_default() += 1;
        }
    }
    failures
}

const WAIT_METRIC: &str = "agentfleet_rate_limit_wait_seconds";

/// A Prometheus histogram of one agent summed over scrapes: cumulative bucket counts by upper
/// bound.
#[derive(Debug, Default)]
struct Histogram {
    buckets: BTreeMap<String, (f64, f64)>,
    sum: f64,
    count: f64,
}

impl Histogram {
    fn add(&mut self, text: &str, metric: &str, agent: &str) {
        let label = format!("agent=\"{agent}\"");
        for line in text
            .lines()
            .filter(|l| l.starts_with(metric) && l.contains(&label))
        {
            let Some((name, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            if let Some(le) = name.split("le=\"").nth(1).and_then(|r| r.split('"').next()) {
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap_or(f64::INFINITY)
                };
                let entry = self.buckets.entry(le.to_owned()).or_insert((bound, 0.0));
                entry.1 += value;
            } else if name.starts_with(&format!("{metric}_sum")) {
                self.sum += value;
            } else if name.starts_with(&format!("{metric}_count")) {
                self.count += value;
            }
        }
    }

    /// The upper bound of the bucket holding quantile `q`.
    fn quantile(&self, q: f64) -> f64 {
        let mut buckets: Vec<(f64, f64)> = self.buckets.values().copied().collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let rank = (q * self.count).ceil().max(1.0);
        buckets
            .iter()
            .find(|(_, cumulative)| *cumulative >= rank)
            .map_or(f64::INFINITY, |(bound, _)| *bound)
    }
}
