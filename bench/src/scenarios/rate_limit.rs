//! Scenario 5, Fleet-wide limit accuracy: three worker processes share one requests-per-minute
//! limit and are kept saturated (more jobs queued than the window can admit) for the window; the
//! calls the stub sees in the window, over what the limit allows. The same workers run, at the
//! same time, an agent limited in tokens per minute ([`token_limit`]), with its own stub.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use agentfleet_stub::llm::StubLlm;
use agentfleet_tests::{wait_until, AgentSpec};

use super::token_limit;
use crate::fleet::{Fleet, FleetOptions};
use crate::report::{Outcome, Row};
use crate::suite::{Ctx, Settings};

/// Left out of the steady state: the first burst.
const SETTLE: Duration = Duration::from_secs(2);

pub async fn run(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let s = &ctx.settings;
    let plan = Plan::of(s);
    let (mut fleet, token_agent) = start(ctx, &plan).await?;
    let first = first_call(&fleet.app.llm, "the first provider call").await?;
    let token_first = first_call(&token_agent.llm, "the first tokens/min call").await?;
    let requests = observe_requests(&mut fleet, s, first + plan.window).await?;
    let tokens = observe_tokens(&mut fleet, s, &token_agent, token_first).await?;
    drop(fleet);

    let accuracy = Accuracy::of(&plan, &requests, first);
    let mut rows = accuracy.rows(s, &plan);
    let mut notes = requests.notes(s, &plan);
    rows.extend(tokens.figures.rows);
    notes.extend(tokens.figures.notes);
    notes.extend(tokens.waits.note("Tokens/min: wait for a turn"));
    notes.extend(failures_note(
        "Tokens/min: jobs failed (all attempts)",
        &tokens.failures,
    ));
    Ok(Outcome {
        rows,
        notes,
        details: details(s, &plan, &requests, &accuracy, tokens.figures.details),
    })
}

/// The requests/min agent's load: what the limit allows over the window, and the jobs queued
/// to keep it saturated.
struct Plan {
    window: Duration,
    per_sec: f64,
    /// Calls the limit allows over the window.
    expected: f64,
    burst: f64,
    jobs: usize,
}

impl Plan {
    fn of(s: &Settings) -> Self {
        let window = s.limit_window;
        let per_sec = f64::from(s.limit_rpm) / 60.0;
        let expected = per_sec * window.as_secs_f64();
        // GCRA burst: one second's worth, at least one request.
        let burst = per_sec.max(1.0).floor();
        Self {
            window,
            per_sec,
            expected,
            burst,
            jobs: (expected * 1.25 + burst) as usize + 100,
        }
    }
}

/// The agent limited in requests per minute.
fn requests_agent(s: &Settings) -> AgentSpec {
    let mut agent = AgentSpec::new("limited");
    agent.concurrency = s.limit_concurrency;
    agent.requests_per_minute = Some(s.limit_rpm);
    // The shipped default deadline (the harness's 10 s is shorter than the fairest wait for a
    // turn when 48 runs share 10 calls a second, and a run past its deadline wastes its turn).
    agent.timeout_secs = 60;
    agent
}

/// The tokens/min agent's own stub LLM and the ids of its jobs.
struct TokenAgent {
    llm: StubLlm,
    jobs: Vec<String>,
}

/// Starts the fleet with both agents, queues both backlogs, then spawns the workers and waits
/// until every one is ready.
async fn start(ctx: &Ctx, plan: &Plan) -> anyhow::Result<(Fleet, TokenAgent)> {
    let s = &ctx.settings;
    let token_agent = token_limit::agent(s);
    let token_model = token_agent.spec.model();
    let options = FleetOptions::new(requests_agent(s), Duration::ZERO, 0).with_agent(token_agent);
    let mut fleet = Fleet::start(&ctx.bins, options).await?;
    let token_llm = fleet.llm(token_limit::AGENT);
    token_limit::script(&token_llm, &token_model);
    fleet.submit_many(plan.jobs, s.clients).await?;
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
    let token_agent = TokenAgent {
        llm: token_llm,
        jobs: token_jobs,
    };
    Ok((fleet, token_agent))
}

/// When `llm` saw its first call.
async fn first_call(llm: &StubLlm, what: &str) -> anyhow::Result<Instant> {
    wait_until(Duration::from_secs(20), what, || {
        let llm = llm.clone();
        async move { llm.calls().first().map(|c| c.at) }
    })
    .await
}

/// What the requests/min agent left at the end of its window.
struct RequestsSeen {
    /// Its jobs still queued.
    left: u32,
    /// When the stub saw each call.
    calls: Vec<Instant>,
    failures: BTreeMap<String, usize>,
    waits: Histogram,
}

/// Waits past the requests/min window's `end`, then reads what the agent left.
async fn observe_requests(
    fleet: &mut Fleet,
    s: &Settings,
    end: Instant,
) -> anyhow::Result<RequestsSeen> {
    tokio::time::sleep_until((end + Duration::from_millis(300)).into()).await;
    fleet.check_alive()?;
    let left = fleet.app.agent_queue_depth(&fleet.agent).await?;
    let calls: Vec<_> = fleet.app.llm.calls().iter().map(|c| c.at).collect();
    let failures = failure_categories(fleet, &fleet.agent);
    let waits = scrape_waits(fleet, s.limit_workers, &fleet.agent).await?;
    Ok(RequestsSeen {
        left,
        calls,
        failures,
        waits,
    })
}

impl RequestsSeen {
    /// Jobs left in the queue means the limit was saturated.
    fn saturated(&self) -> bool {
        self.left > 0
    }

    fn notes(&self, s: &Settings, plan: &Plan) -> Vec<String> {
        let (jobs, left) = (plan.jobs, self.left);
        let mut notes = vec![format!(
            "{jobs} jobs queued before {} workers (concurrency {} each) started; {left} still queued at the end of the window.",
            s.limit_workers, s.limit_concurrency
        )];
        notes.extend(self.waits.note(&format!(
            "Wait for a turn (from the workers' {WAIT_METRIC})"
        )));
        notes.extend(failures_note(
            "Jobs failed during the window",
            &self.failures,
        ));
        if !self.saturated() {
            notes.push("The queue ran dry: the limit was not saturated.".to_owned());
        }
        notes
    }
}

/// What the tokens/min agent left once its window's calls were resolved.
struct TokensSeen {
    figures: token_limit::Figures,
    waits: Histogram,
    failures: BTreeMap<String, usize>,
}

/// Waits until the calls of the tokens/min window, from `first`, are resolved, then measures
/// them.
async fn observe_tokens(
    fleet: &mut Fleet,
    s: &Settings,
    agent: &TokenAgent,
    first: Instant,
) -> anyhow::Result<TokensSeen> {
    let end = first + s.limit_window;
    tokio::time::sleep_until((end + token_limit::RESOLVE).into()).await;
    fleet.check_alive()?;
    let waits = scrape_waits(fleet, s.limit_workers, token_limit::AGENT).await?;
    let failures = failure_categories(fleet, token_limit::AGENT);
    let deliveries = fleet.deliveries_by_job();
    let figures = token_limit::measure(
        s,
        &token_limit::Observed {
            calls: agent.llm.calls(),
            llm: &agent.llm,
            deliveries: &deliveries,
            first,
            end,
            jobs: &agent.jobs,
            workers: s.limit_workers,
        },
    );
    Ok(TokensSeen {
        figures,
        waits,
        failures,
    })
}

/// The requests/min agent's calls in its window against what the limit allows.
struct Accuracy {
    in_window: usize,
    ratio: f64,
    steady_ratio: f64,
    /// The most calls allowed, as a multiple of the limit over the window.
    upper: f64,
    saturated: bool,
}

impl Accuracy {
    fn of(plan: &Plan, requests: &RequestsSeen, first: Instant) -> Self {
        let end = first + plan.window;
        let calls = &requests.calls;
        let in_window = calls.iter().filter(|&&at| at >= first && at < end).count();
        let steady = calls
            .iter()
            .filter(|&&at| at >= first + SETTLE && at < end)
            .count();
        Self {
            in_window,
            ratio: in_window as f64 / plan.expected,
            steady_ratio: steady as f64 / (plan.per_sec * (plan.window - SETTLE).as_secs_f64()),
            // Allowed: the limit over the window plus the burst, and one call for the window's
            // edges.
            upper: (plan.expected + plan.burst + 1.0) / plan.expected,
            saturated: requests.saturated(),
        }
    }

    fn rows(&self, s: &Settings, plan: &Plan) -> Vec<Row> {
        let (in_window, upper) = (self.in_window, self.upper);
        vec![
            Row::new("calls in the window", in_window as f64, "calls")
                .display(format!(
                    "{in_window} calls in {} s at {} /min ({} workers)",
                    plan.window.as_secs(),
                    s.limit_rpm,
                    s.limit_workers
                ))
                .baseline("limit × window", plan.expected, "calls")
                .goal(
                    &format!("0.95 – {upper:.3} (limit + 1 s burst)"),
                    (0.95..=upper).contains(&self.ratio) && self.saturated,
                ),
            Row::new("steady-state rate / limit", self.steady_ratio, "")
                .display(format!(
                    "steady state (after the first {} s): {:.3} × limit",
                    SETTLE.as_secs(),
                    self.steady_ratio
                ))
                .ratio(self.steady_ratio)
                .info("—"),
        ]
    }
}

fn details(
    s: &Settings,
    plan: &Plan,
    requests: &RequestsSeen,
    accuracy: &Accuracy,
    tokens: Value,
) -> Value {
    let waits = &requests.waits;
    json!({
        "workers": s.limit_workers,
        "requests_per_minute": s.limit_rpm,
        "window_secs": plan.window.as_secs_f64(),
        "calls_in_window": accuracy.in_window,
        "allowed": plan.expected,
        "burst": plan.burst,
        "ratio": accuracy.ratio,
        "steady_state_ratio": accuracy.steady_ratio,
        "left_in_queue": requests.left,
        "failed_by_category": requests.failures,
        "rate_limit_wait": {
            "count": waits.count,
            "mean_secs": if waits.count > 0.0 { waits.sum / waits.count } else { 0.0 },
            "p50_le_secs": waits.quantile(0.5),
            "p99_le_secs": waits.quantile(0.99),
            "max_le_secs": waits.quantile(1.0),
        },
        "tokens": tokens,
    })
}

/// `head`, then the failed jobs by error category, if any failed.
fn failures_note(head: &str, failures: &BTreeMap<String, usize>) -> Option<String> {
    if failures.is_empty() {
        return None;
    }
    let text: Vec<String> = failures.iter().map(|(k, v)| format!("{k} {v}")).collect();
    Some(format!("{head}, by error category: {}.", text.join(", ")))
}

/// The wait-for-a-turn histogram of `agent`, summed over the workers' metrics.
async fn scrape_waits(fleet: &Fleet, workers: usize, agent: &str) -> anyhow::Result<Histogram> {
    let mut waits = Histogram::default();
    for index in 0..workers {
        waits.add(&fleet.worker_metrics(index).await?, WAIT_METRIC, agent);
    }
    Ok(waits)
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

    /// `head`, then the wait's mean and quantiles, if any run waited.
    fn note(&self, head: &str) -> Option<String> {
        (self.count > 0.0).then(|| {
            format!(
                "{head}: mean {:.1} s, p50 ≤ {} s, p99 ≤ {} s, max ≤ {} s over {} runs.",
                self.sum / self.count,
                self.quantile(0.5),
                self.quantile(0.99),
                self.quantile(1.0),
                self.count
            )
        })
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
