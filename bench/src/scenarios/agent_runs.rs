//! Scenario 8, Agent runs: N tool-calling runs already queued, each five model calls (stub
//! latency 500 ms) and four calls of the HTTP tool `lookup` (tool server latency 200 ms), on one
//! worker process whose agent concurrency lets every run proceed at once. The makespan (worker
//! spawned → last job finished, from the job records) against the ideal, one run's latencies
//! (5 × 0.5 s plus 4 × 0.2 s = 3.3 s); the worker's peak RSS and what each run in flight adds
//! to it; every record read back through the dispatcher; Redis commands per job.
//!
//! Then, on a fleet of its own without latencies, the bytes a run leaves in Redis (step log,
//! record, spec) for a run of one turn and one of 50 (49 `lookup` calls, then an answer),
//! against what storing each model call's whole conversation in place of the steps would take:
//! the step log keeps each message once, so it grows with the turns, where the conversations
//! grow with their square.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use chrono::{DateTime, Utc};
use futures_util::StreamExt as _;
use serde::Serialize;
use serde_json::{json, Value};
use uuid::Uuid;

use agentfleet_common::config::HttpVersion;
use agentfleet_common::store::{JobStore, Redis};
use agentfleet_stub::script::{Scenario, ScriptedCall, Turn};
use agentfleet_tests::AgentSpec;

use crate::fleet::{finished_at, Fleet, FleetOptions, Sent};
use crate::procfs::{self, CpuMeter, CpuUse};
use crate::report::{Outcome, Row};
use crate::scenarios::{commands_per_job, redis_command_calls, redis_summary};
use crate::stats::Percentiles;
use crate::suite::{Ctx, Settings};

const MB: f64 = 1e6;
/// Model calls and tool calls of one run of the `five-turns` script.
const TURNS: u64 = 5;
const TOOL_CALLS: u64 = 4;
/// Turns of the long run whose storage is measured: 49 tool calls, then the answer.
const LONG_TURNS: usize = 50;
/// Ceilings above both scripts, so that the long run is not cut off by the default 10 turns.
const LIMITS: &str = "{ max_turns: 60, max_tool_calls: 60 }";
/// Records read back (and step logs measured) at once after the runs.
const READERS: usize = 32;

/// The agent of both fleets: the same config but for its concurrency, so that the runs of
/// both leave records of the same shape. HTTP/2 to the provider, as to a hosted one over
/// TLS: up to 100 model calls per connection (the tools are plain HTTP/1.1).
fn agent(concurrency: u16) -> AgentSpec {
    AgentSpec {
        concurrency,
        timeout_secs: 30,
        http_version: HttpVersion::Http2,
        tools: vec!["lookup"],
        limits: Some(LIMITS.to_owned()),
        ..AgentSpec::new("agent")
    }
}

/// What the runs measured.
struct Runs {
    enqueue: Duration,
    makespan: f64,
    ideal: f64,
    hwm: u64,
    rss_at_peak: u64,
    peak_in_flight: u64,
    /// Worker spawned → each run's first model call.
    first_call: Option<Percentiles>,
    /// Between two model calls of a run, less the model's and the tool's latency: storing the
    /// step, the tool call's own overhead, admission.
    turn_overhead: Option<Percentiles>,
    /// Last model call answered → the record's `finished_at`.
    finish_overhead: Option<Percentiles>,
    /// First and last start of each turn's model calls, seconds from the worker's spawn.
    turn_starts: Vec<(f64, f64)>,
    last_webhook: Option<Duration>,
    /// Runs that did not succeed with five model steps and four good tool steps.
    bad: usize,
    first_bad: Option<String>,
    redis_commands_per_job: BTreeMap<String, f64>,
    cpu: CpuUse,
    /// Mean bytes stored per run.
    stored: StoredMean,
    /// Mean over the runs of Σ over a run's model calls of the bytes of the conversation each
    /// was sent.
    conversations: f64,
}

/// Bytes a job leaves in Redis: its step log (the sum of the list's elements), its record and
/// its spec (as `STRLEN` counts them).
#[derive(Debug, Clone, Default, Serialize)]
struct Stored {
    steps: u64,
    step_count: usize,
    record: u64,
    spec: u64,
    /// `MEMORY USAGE` of the job's key: the bytes above, as stored, with Redis' own overhead.
    redis: u64,
    /// The job's value once it is sealed (record and steps in one string, stored forms).
    sealed: Option<u64>,
    #[serde(skip)]
    kinds: Vec<(String, String)>,
}

impl Stored {
    fn total(&self) -> u64 {
        self.steps + self.record + self.spec
    }

    /// Model steps, and tool steps that ran and answered.
    fn counts(&self) -> (u64, u64) {
        let model = self.kinds.iter().filter(|(k, _)| k == "model").count();
        let tool_ok = self
            .kinds
            .iter()
            .filter(|(k, s)| k == "tool" && s == "ok")
            .count();
        (model as u64, tool_ok as u64)
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
struct StoredMean {
    runs: usize,
    total: f64,
    steps: f64,
    record: f64,
    spec: f64,
}

/// What the storage measurement found.
struct Storage {
    one_turn: Stored,
    long: Stored,
    /// Σ over the long run's model calls of the bytes of the conversation each was sent.
    conversations: u64,
    idle_rss: Option<u64>,
}

pub async fn run(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let runs = measure_runs(ctx).await?;
    let storage = measure_storage(ctx).await?;
    let measured = Measured {
        s: &ctx.settings,
        growth: Growth::of(&runs, &storage),
        runs: &runs,
        storage: &storage,
    };
    let mut rows = measured.run_rows();
    rows.extend(measured.storage_rows());
    Ok(Outcome {
        rows,
        notes: measured.notes(),
        details: measured.details(),
    })
}

/// The stored bytes against each other: per turn, from 5 turns to 50, and against storing each
/// model call's whole conversation in place of the step log.
struct Growth {
    /// The long run's bytes had it stored the conversations instead.
    long_alternative: f64,
    /// A five-turn run's mean bytes had it stored the conversations instead.
    five_alternative: f64,
    /// Bytes per turn between the one-turn run and the long run.
    per_turn: f64,
    /// Bytes per turn between the one-turn run and the five-turn runs.
    five_per_turn: f64,
    /// The long run's bytes over a five-turn run's.
    growth: f64,
    /// The same, had the runs stored the conversations instead.
    alternative_growth: f64,
}

impl Growth {
    fn of(runs: &Runs, storage: &Storage) -> Self {
        let long = &storage.long;
        let one = &storage.one_turn;
        let long_alternative = alternative(
            storage.conversations as f64,
            long.total() as f64,
            long.steps as f64,
        );
        let five_alternative =
            alternative(runs.conversations, runs.stored.total, runs.stored.steps);
        Self {
            long_alternative,
            five_alternative,
            per_turn: long.total().saturating_sub(one.total()) as f64 / (LONG_TURNS - 1) as f64,
            five_per_turn: (runs.stored.total - one.total() as f64) / (TURNS - 1) as f64,
            growth: long.total() as f64 / runs.stored.total,
            alternative_growth: long_alternative / five_alternative,
        }
    }
}

/// Storing each model call's whole conversation in place of the step log (the record and
/// the spec stay).
fn alternative(conversations: f64, stored: f64, steps: f64) -> f64 {
    conversations + stored - steps
}

/// Both measurements and the figures derived from them, to report.
struct Measured<'a> {
    s: &'a Settings,
    runs: &'a Runs,
    storage: &'a Storage,
    growth: Growth,
}

impl Measured<'_> {
    /// The runs: their makespan, the worker's memory, whether they ran as scripted, Redis.
    fn run_rows(&self) -> Vec<Row> {
        let (s, runs) = (self.s, self.runs);
        let n = s.agent_runs;
        let hwm_mb = runs.hwm as f64 / MB;
        let model_ms = s.agent_model_latency.as_millis();
        let tool_ms = s.agent_tool_latency.as_millis();
        let mut rows = vec![
            Row::new("makespan", runs.makespan, "s")
                .display(format!(
                    "makespan {:.2} s ({n} runs at once, {TURNS} model calls of {model_ms} ms and {TOOL_CALLS} tool calls of {tool_ms} ms each)",
                    runs.makespan
                ))
                .baseline("ideal: one run's latencies", runs.ideal, "s")
                .info("— (scenario 3: ≤ 1.1)"),
            Row::new("worker peak RSS", hwm_mb, "MB")
                .display(format!(
                    "worker peak RSS (VmHWM) {hwm_mb:.1} MB; {:.1} MB at {} runs in flight",
                    runs.rss_at_peak as f64 / MB,
                    runs.peak_in_flight
                ))
                .info("— (scenario 3: ≤ 100 MB)"),
        ];
        if let Some(idle) = self.storage.idle_rss {
            let per_run = runs.hwm.saturating_sub(idle) as f64 / n as f64 / 1e3;
            rows.push(
                Row::new("worker RSS per run in flight", per_run, "KB")
                    .display(format!(
                        "worker RSS per run in flight: {per_run:.1} KB ((VmHWM − {:.1} MB idle) / {n})",
                        idle as f64 / MB
                    ))
                    .info("—"),
            );
        }
        rows.push(
            Row::new("runs not as scripted", runs.bad as f64, "runs")
                .display(format!(
                    "runs not succeeded with {TURNS} turns and {TOOL_CALLS} tool calls: {} of {n}",
                    runs.bad
                ))
                .goal("0", runs.bad == 0),
        );
        let redis_total: f64 = runs.redis_commands_per_job.values().sum();
        rows.push(
            Row::new("Redis commands per job", redis_total, "")
                .display(format!(
                    "Redis commands per job (POST to webhook): {}",
                    redis_summary(&runs.redis_commands_per_job)
                ))
                .info("—"),
        );
        rows
    }

    /// The bytes the runs left in Redis.
    fn storage_rows(&self) -> Vec<Row> {
        vec![
            self.long_run_row(),
            self.per_turn_row(),
            self.single_call_row(),
            self.growth_row(),
        ]
    }

    fn long_run_row(&self) -> Row {
        let long = &self.storage.long;
        Row::new("bytes stored per 50-turn run", long.total() as f64, "B")
            .display(format!(
                "bytes stored per {LONG_TURNS}-turn run: {} B (step log {} B in {} steps, record {} B, spec {} B)",
                long.total(),
                long.steps,
                long.step_count,
                long.record,
                long.spec
            ))
            .baseline(
                "each model call's conversation stored instead of the steps",
                self.growth.long_alternative,
                "B",
            )
            .info("—")
    }

    fn per_turn_row(&self) -> Row {
        let (per_turn, five_per_turn) = (self.growth.per_turn, self.growth.five_per_turn);
        Row::new("bytes stored per turn", per_turn, "B")
            .display(format!(
                "bytes stored per turn: {per_turn:.0} B (({LONG_TURNS}-turn run − 1-turn run of {} B) / {}); {:.0} B per run of {TURNS} turns",
                self.storage.one_turn.total(),
                LONG_TURNS - 1,
                self.runs.stored.total
            ))
            .baseline(&format!("per turn in the {TURNS}-turn runs"), five_per_turn, "B")
            .goal("≤ 1.2 (linear in turns)", per_turn <= 1.2 * five_per_turn)
    }

    fn single_call_row(&self) -> Row {
        let one = &self.storage.one_turn;
        Row::new("Redis bytes per single-call job", one.redis as f64, "B")
            .display(format!(
                "Redis bytes per single-call job: {} B (MEMORY USAGE of its one key, after its webhook: {}; as the API shows them, record {} B, spec {} B, step log {} B)",
                one.redis,
                one.sealed.map_or("not sealed".to_owned(), |n| format!("sealed, {n} B of value")),
                one.record,
                one.spec,
                one.steps
            ))
            .baseline("its JSON alone", one.total() as f64, "B")
            .goal("≤ 1,024 B", one.redis <= 1024)
    }

    fn growth_row(&self) -> Row {
        let Growth {
            long_alternative,
            five_alternative,
            growth,
            alternative_growth,
            ..
        } = self.growth;
        Row::new("bytes stored, 50 turns over 5", growth, "×")
            .display(format!(
                "bytes stored, {LONG_TURNS} turns over {TURNS}: × {growth:.1} ({:.0} B over {:.0} B)",
                self.storage.long.total(),
                self.runs.stored.total
            ))
            .baseline(
                &format!(
                    "each call's conversation stored instead ({long_alternative:.0} B over {five_alternative:.0} B)"
                ),
                alternative_growth,
                "×",
            )
            .info("—")
    }

    fn notes(&self) -> Vec<String> {
        let (n, runs) = (self.s.agent_runs, self.runs);
        let mut notes = vec![
            self.timing_note(),
            format!("CPU while the runs ran: {}.", runs.cpu.summary()),
            "Redis commands are counted by INFO commandstats from before the first POST to the last webhook: every client of the server, and the commands inside each Lua script (evalsha) as well as the script call.".to_owned(),
        ];
        if runs.peak_in_flight < n as u64 {
            notes.push(format!(
                "only {} runs were seen in a model or tool call at once, not {n}.",
                runs.peak_in_flight
            ));
        }
        if let Some(bad) = &runs.first_bad {
            notes.push(format!("first run not as scripted: {bad}"));
        }
        notes.push(self.storage_note());
        notes
    }

    /// When the runs' turns began and ended, and where the time beyond the latencies went.
    fn timing_note(&self) -> String {
        let (s, runs) = (self.s, self.runs);
        let n = s.agent_runs;
        let model_ms = s.agent_model_latency.as_millis();
        let tool_ms = s.agent_tool_latency.as_millis();
        let starts: Vec<String> = runs
            .turn_starts
            .iter()
            .map(|(first, last)| format!("{first:.2}–{last:.2}"))
            .collect();
        let p = |p: &Option<Percentiles>| {
            p.map_or("?".to_owned(), |p| {
                format!("{:.0} / {:.0} / {:.0}", p.p50_ms, p.p99_ms, p.max_ms)
            })
        };
        format!(
            "{n} runs enqueued in {:.1} s before the worker started. From the worker's spawn, s: turn k's model calls began at {}; last job finished at {:.2} s, last webhook at {:.2} s. p50 / p99 / max ms: spawn → a run's first model call {}; per turn beyond the {model_ms} + {tool_ms} ms of latency {}; last answer → finished {}.",
            runs.enqueue.as_secs_f64(),
            starts.join(" / "),
            runs.makespan,
            runs.last_webhook.map_or(f64::NAN, |d| d.as_secs_f64()),
            p(&runs.first_call),
            p(&runs.turn_overhead),
            p(&runs.finish_overhead),
        )
    }

    /// The bytes of the one-turn, long and five-turn runs, and of the conversations instead.
    fn storage_note(&self) -> String {
        let (runs, storage) = (self.runs, self.storage);
        let (one, long) = (&storage.one_turn, &storage.long);
        format!(
            "storage: one run of 1 turn ({} B) and one of {LONG_TURNS} turns ({} B) on a fleet without latencies; a run of {TURNS} turns stores {:.0} B on average (step log {:.0}, record {:.0}, spec {:.0}). Storing each model call's conversation instead of the steps: {:.0} B for the {LONG_TURNS}-turn run ({:.1}× the step log), {:.0} B for a {TURNS}-turn run.",
            one.total(),
            long.total(),
            runs.stored.total,
            runs.stored.steps,
            runs.stored.record,
            runs.stored.spec,
            self.growth.long_alternative,
            storage.conversations as f64 / long.steps as f64,
            self.growth.five_alternative,
        )
    }

    fn details(&self) -> Value {
        let (s, runs, storage, g) = (self.s, self.runs, self.storage, &self.growth);
        let (one, long) = (&storage.one_turn, &storage.long);
        json!({
            "runs": s.agent_runs,
            "concurrency": s.agent_concurrency,
            "model_latency_secs": s.agent_model_latency.as_secs_f64(),
            "tool_latency_secs": s.agent_tool_latency.as_secs_f64(),
            "enqueue_secs": runs.enqueue.as_secs_f64(),
            "makespan_secs": runs.makespan,
            "ideal_secs": runs.ideal,
            "ratio": runs.makespan / runs.ideal,
            "turn_starts_secs": runs.turn_starts,
            "first_call_from_spawn": runs.first_call,
            "turn_overhead": runs.turn_overhead,
            "finish_overhead": runs.finish_overhead,
            "last_webhook_secs": runs.last_webhook.map(|d| d.as_secs_f64()),
            "peak_in_flight": runs.peak_in_flight,
            "worker_vmhwm_bytes": runs.hwm,
            "worker_rss_at_peak_bytes": runs.rss_at_peak,
            "worker_idle_rss_bytes": storage.idle_rss,
            "runs_not_as_scripted": runs.bad,
            "redis_commands_per_job": runs.redis_commands_per_job,
            "cpu": runs.cpu,
            "stored_per_five_turn_run": runs.stored,
            "storage": {
                "one_turn": one,
                "long_turns": LONG_TURNS,
                "long": long,
                "long_total_bytes": long.total(),
                "one_turn_total_bytes": one.total(),
                "bytes_per_turn": g.per_turn,
                "bytes_per_turn_five_turn_runs": g.five_per_turn,
                "conversations_bytes": storage.conversations,
                "five_turn_conversations_bytes": runs.conversations,
                "alternative_total_bytes": g.long_alternative,
                "five_turn_alternative_total_bytes": g.five_alternative,
                "growth_50_over_5": g.growth,
                "alternative_growth_50_over_5": g.alternative_growth,
            },
        })
    }
}

async fn measure_runs(ctx: &Ctx) -> anyhow::Result<Runs> {
    let s = &ctx.settings;
    let n = s.agent_runs;
    let mut fleet = five_turn_fleet(ctx).await?;
    let redis_before = redis_command_calls().await?;
    let enqueue_started = Instant::now();
    let sent = fleet.submit_many(n, s.clients).await?;
    let enqueue = enqueue_started.elapsed();
    let worker = run_worker(&mut fleet, n).await?;
    let redis_after = redis_command_calls().await?;

    let deliveries = fleet.deliveries_by_job();
    let finished: HashMap<&str, DateTime<Utc>> = deliveries
        .iter()
        .filter_map(|(id, d)| Some((id.as_str(), finished_at(d)?)))
        .collect();
    let last_finished = finished
        .values()
        .max()
        .copied()
        .context("no finished jobs")?;
    let timings = CallTimings::of(s, &fleet, &sent, &finished, &worker)?;
    let checked = check_runs(&fleet, &sent).await?;
    let conversations = mean_conversations(&fleet, &sent);
    drop(fleet);
    Ok(Runs {
        enqueue,
        makespan: (last_finished - worker.spawned_wall)
            .to_std()
            .unwrap_or_default()
            .as_secs_f64(),
        ideal: TURNS as f64 * s.agent_model_latency.as_secs_f64()
            + TOOL_CALLS as f64 * s.agent_tool_latency.as_secs_f64(),
        hwm: worker.hwm,
        rss_at_peak: worker.rss_at_peak,
        peak_in_flight: worker.peak_in_flight,
        first_call: timings.first_call,
        turn_overhead: timings.turn_overhead,
        finish_overhead: timings.finish_overhead,
        turn_starts: timings.turn_starts,
        last_webhook: deliveries
            .values()
            .map(|d| d.at)
            .max()
            .map(|at| at.duration_since(worker.spawned)),
        bad: checked.bad,
        first_bad: checked.first_bad,
        redis_commands_per_job: commands_per_job(&redis_before, &redis_after, n),
        cpu: worker.cpu,
        stored: checked.stored,
        conversations,
    })
}

/// The fleet of the runs, without its worker: the model scripted to five turns, with the
/// model's and the tool's latencies.
async fn five_turn_fleet(ctx: &Ctx) -> anyhow::Result<Fleet> {
    let s = &ctx.settings;
    let fleet = Fleet::start(
        &ctx.bins,
        FleetOptions::new(agent(s.agent_concurrency), s.agent_model_latency, 0),
    )
    .await?;
    let five_turns = Scenario::named("five-turns").context("the stub's five-turns script")?;
    fleet.app.llm.script_model(&fleet.model, five_turns);
    fleet.app.tools.set_latency(s.agent_tool_latency);
    Ok(fleet)
}

/// The worker of the runs: when it was spawned, and what it used until their webhooks.
struct WorkerRun {
    spawned: Instant,
    spawned_wall: DateTime<Utc>,
    cpu: CpuUse,
    hwm: u64,
    peak_in_flight: u64,
    rss_at_peak: u64,
}

/// Spawns the worker and waits for the webhooks of the `n` runs queued.
async fn run_worker(fleet: &mut Fleet, n: usize) -> anyhow::Result<WorkerRun> {
    let spawned = Instant::now();
    let spawned_wall = Utc::now();
    let pid = fleet.spawn_worker()?;
    let meter = CpuMeter::start(fleet.cpu_groups());

    // The worker's memory and the runs in a model or tool call.
    let stop = Arc::new(AtomicBool::new(false));
    let (llm, tools, model) = (
        fleet.app.llm.clone(),
        fleet.app.tools.clone(),
        fleet.model.clone(),
    );
    let sampler = tokio::spawn(procfs::rss_at_peak(pid, stop.clone(), move || {
        llm.in_flight(&model) + tools.in_flight("/lookup")
    }));
    let waited = fleet.wait_webhooks_for(0, n, Duration::from_secs(60)).await;
    let cpu = meter.finish();
    let hwm = procfs::memory(pid).map(|m| m.hwm).unwrap_or_default();
    stop.store(true, Ordering::Relaxed);
    let (peak_in_flight, rss_at_peak) = sampler.await?;
    waited?;
    Ok(WorkerRun {
        spawned,
        spawned_wall,
        cpu,
        hwm,
        peak_in_flight,
        rss_at_peak,
    })
}

/// When the runs' model calls came, from the stub's record of them.
struct CallTimings {
    /// First and last start of each turn's model calls, seconds from the worker's spawn.
    turn_starts: Vec<(f64, f64)>,
    first_call: Option<Percentiles>,
    turn_overhead: Option<Percentiles>,
    finish_overhead: Option<Percentiles>,
}

impl CallTimings {
    fn of(
        s: &Settings,
        fleet: &Fleet,
        sent: &[Sent],
        finished: &HashMap<&str, DateTime<Utc>>,
        worker: &WorkerRun,
    ) -> anyhow::Result<Self> {
        let spawned = worker.spawned;
        let model_latency = s.agent_model_latency.as_secs_f64();
        let tool_latency = s.agent_tool_latency.as_secs_f64();
        let by_job = model_calls_by_job(fleet);
        let since_spawn = |at: &Instant| at.duration_since(spawned).as_secs_f64();
        let mut turn_starts = Vec::new();
        let (mut first_calls, mut turn_gaps) = (Vec::new(), Vec::new());
        for calls in by_job.values() {
            first_calls.push(calls[0].duration_since(spawned));
            for (k, at) in calls.iter().enumerate() {
                if turn_starts.len() <= k {
                    turn_starts.push((f64::INFINITY, 0.0f64));
                }
                let t = since_spawn(at);
                turn_starts[k] = (turn_starts[k].0.min(t), turn_starts[k].1.max(t));
            }
            for pair in calls.windows(2) {
                let gap = pair[1].duration_since(pair[0]).as_secs_f64();
                turn_gaps.push((gap - model_latency - tool_latency) * 1e3);
            }
        }
        let finishes = finish_overheads(s, sent, &by_job, finished, worker)?;
        Ok(Self {
            turn_starts,
            first_call: Percentiles::of(&first_calls),
            turn_overhead: Percentiles::of_ms(&turn_gaps),
            finish_overhead: Percentiles::of_ms(&finishes),
        })
    }
}

/// Each run's model calls in order: call k is turn k.
fn model_calls_by_job(fleet: &Fleet) -> HashMap<String, Vec<Instant>> {
    let mut by_job: HashMap<String, Vec<Instant>> = HashMap::new();
    for call in fleet.app.llm.calls() {
        if let Some(job) = call.job_id {
            by_job.entry(job).or_default().push(call.at);
        }
    }
    for calls in by_job.values_mut() {
        calls.sort();
    }
    by_job
}

/// Each run's last model call answered → its record's `finished_at`, in ms.
fn finish_overheads(
    s: &Settings,
    sent: &[Sent],
    by_job: &HashMap<String, Vec<Instant>>,
    finished: &HashMap<&str, DateTime<Utc>>,
    worker: &WorkerRun,
) -> anyhow::Result<Vec<f64>> {
    let mut finishes = Vec::new();
    for job in sent {
        let (Some(calls), Some(done)) = (by_job.get(&job.id), finished.get(job.id.as_str())) else {
            continue;
        };
        let Some(last) = calls.last() else { continue };
        // The call's start on the wall clock, by its offset from the worker's spawn.
        let answered = worker.spawned_wall
            + chrono::Duration::from_std(
                last.duration_since(worker.spawned) + s.agent_model_latency,
            )?;
        finishes.push((*done - answered).num_microseconds().unwrap_or_default() as f64 / 1e3);
    }
    Ok(finishes)
}

/// What reading every run back found.
struct Checked {
    /// Runs not as scripted, and what was wrong with the first of them.
    bad: usize,
    first_bad: Option<String>,
    stored: StoredMean,
}

/// Every record through the dispatcher, every step log from Redis.
async fn check_runs(fleet: &Fleet, sent: &[Sent]) -> anyhow::Result<Checked> {
    let checked: Vec<anyhow::Result<(Stored, Option<String>)>> =
        futures_util::stream::iter(sent.iter().map(|job| check_run(fleet, &job.id)))
            .buffer_unordered(READERS)
            .collect()
            .await;
    let (mut bad, mut first_bad, mut stored) = (0, None, StoredMean::default());
    for result in checked {
        let (job, problem) = result?;
        if let Some(problem) = problem {
            bad += 1;
            first_bad.get_or_insert(problem);
        }
        stored.runs += 1;
        stored.total += job.total() as f64;
        stored.steps += job.steps as f64;
        stored.record += job.record as f64;
        stored.spec += job.spec as f64;
    }
    let runs = stored.runs.max(1) as f64;
    for sum in [
        &mut stored.total,
        &mut stored.steps,
        &mut stored.record,
        &mut stored.spec,
    ] {
        *sum /= runs;
    }
    Ok(Checked {
        bad,
        first_bad,
        stored,
    })
}

/// The mean over the runs of the conversations each run's calls were sent, from the last
/// request the stub kept.
fn mean_conversations(fleet: &Fleet, sent: &[Sent]) -> f64 {
    let sizes: Vec<u64> = sent
        .iter()
        .filter_map(|job| fleet.app.llm.last_request(&job.id))
        .map(|request| conversations(&request))
        .collect();
    sizes.iter().sum::<u64>() as f64 / sizes.len().max(1) as f64
}

/// A run's bytes in Redis, and what is wrong with it, if anything: it must have succeeded
/// with five turns and four tool calls in its record, and five model steps and four tool
/// steps that answered in its log.
async fn check_run(fleet: &Fleet, id: &str) -> anyhow::Result<(Stored, Option<String>)> {
    let record = fleet.job(id).await?;
    let stored = stored(fleet, id).await?;
    let as_scripted = record["status"] == "succeeded"
        && record["turns"].as_u64() == Some(TURNS)
        && record["tool_calls"].as_u64() == Some(TOOL_CALLS)
        && stored.counts() == (TURNS, TOOL_CALLS);
    let problem = (!as_scripted).then(|| {
        format!(
            "job {id}: status {}, turns {}, tool_calls {}, error {}; steps (model, tool ok) {:?}",
            record["status"],
            record["turns"],
            record["tool_calls"],
            record["error"],
            stored.counts()
        )
    });
    Ok((stored, problem))
}

/// The bytes a job leaves in Redis: its record, spec and step log as the store wrote them
/// (the same serializer), and what Redis says the job's hash takes with its own overhead.
async fn stored(fleet: &Fleet, id: &str) -> anyhow::Result<Stored> {
    let uuid: Uuid = id.parse().with_context(|| format!("job id {id}"))?;
    let app = &fleet.app;
    let store = JobStore::new(Redis::connect(&app.config.redis)?, app.names(), 3600);
    let record = store
        .load(uuid)
        .await?
        .with_context(|| format!("job {id} is not in Redis"))?;
    // Gone once the job's webhook was delivered.
    let spec = store.load_with_spec(uuid).await?.map(|(_, spec)| spec);
    let steps = store.load_steps(uuid).await?;
    let kinds = steps
        .iter()
        .map(|step| {
            let step = serde_json::to_value(step).unwrap_or_default();
            let field = |name: &str| step[name].as_str().unwrap_or_default().to_owned();
            (field("kind"), field("status"))
        })
        .collect();
    Ok(Stored {
        steps: steps.iter().map(json_len).sum(),
        step_count: steps.len(),
        record: json_len(&record),
        spec: spec.as_ref().map_or(0, json_len),
        redis: store.memory_usage(uuid).await?,
        sealed: store.sealed_len(uuid).await?,
        kinds,
    })
}

fn json_len<T: Serialize>(value: &T) -> u64 {
    serde_json::to_vec(value).map_or(0, |json| json.len() as u64)
}

/// One run of one turn and one of [`LONG_TURNS`], one after the other on a fleet of their own
/// without latencies (the bytes do not depend on them).
async fn measure_storage(ctx: &Ctx) -> anyhow::Result<Storage> {
    let mut fleet =
        Fleet::start(&ctx.bins, FleetOptions::new(agent(16), Duration::ZERO, 1)).await?;
    // The same binary at rest, before any job: what the runs of the first fleet added to.
    let idle_rss = fleet
        .worker_pids()
        .first()
        .and_then(|&pid| procfs::memory(pid))
        .map(|m| m.rss);
    let answer = || Turn::Final("done".to_owned());

    let (_, one_turn) = run_alone(&mut fleet, vec![answer()], 1, 0).await?;
    let lookup = || Turn::ToolCalls(vec![ScriptedCall::new("lookup", json!({ "id": "x" }))]);
    let turns = std::iter::repeat_with(lookup)
        .take(LONG_TURNS - 1)
        .chain([answer()])
        .collect();
    let (long_id, long) = run_alone(&mut fleet, turns, LONG_TURNS as u64, LONG_TURNS as u64 - 1)
        .await
        .context("the long run")?;

    let request = fleet
        .app
        .llm
        .last_request(&long_id)
        .with_context(|| format!("the stub kept no request of job {long_id}"))?;
    drop(fleet);
    Ok(Storage {
        one_turn,
        long,
        conversations: conversations(&request),
        idle_rss,
    })
}

/// Scripts the model with `turns`, runs one job to its webhook and checks it took `turns` model
/// calls and `tool_calls` tool calls; answers its id and its bytes.
async fn run_alone(
    fleet: &mut Fleet,
    turns: Vec<Turn>,
    expected_turns: u64,
    expected_tool_calls: u64,
) -> anyhow::Result<(String, Stored)> {
    fleet
        .app
        .llm
        .script_model(&fleet.model, Scenario::new(turns));
    let before = fleet.app.receiver.count();
    let job = fleet.client().submit(0).await?;
    fleet
        .wait_webhooks_for(before, 1, Duration::from_secs(30))
        .await?;
    let record = fleet.job(&job.id).await?;
    if record["status"] != "succeeded"
        || record["turns"].as_u64() != Some(expected_turns)
        || record["tool_calls"].as_u64() != Some(expected_tool_calls)
    {
        bail!(
            "job {}: status {}, turns {}, tool_calls {} (expected {expected_turns} and {expected_tool_calls}), error {}",
            job.id,
            record["status"],
            record["turns"],
            record["tool_calls"],
            record["error"]
        );
    }
    let bytes = stored(fleet, &job.id).await?;
    Ok((job.id, bytes))
}

/// Σ over a run's model calls of the bytes of the conversation (`messages`) each was sent,
/// from the last request of the run: the call at turn k was sent every message before the
/// run's k-th assistant message.
fn conversations(last_request: &Value) -> u64 {
    let Some(messages) = last_request["messages"].as_array() else {
        return 0;
    };
    let ends = messages
        .iter()
        .enumerate()
        .filter(|(_, m)| m["role"] == "assistant")
        .map(|(i, _)| i)
        .chain([messages.len()]);
    ends.map(|end| serde_json::to_vec(&messages[..end]).map_or(0, |b| b.len() as u64))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_call_counts_the_messages_before_its_answer() {
        let request = json!({"messages": [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "u"},
            {"role": "assistant", "content": null},
            {"role": "tool", "content": "t"},
        ]});
        let messages = request["messages"].as_array().expect("messages");
        let size = |n: usize| serde_json::to_vec(&messages[..n]).expect("json").len() as u64;
        assert_eq!(conversations(&request), size(2) + size(4));
        assert_eq!(conversations(&json!({})), 0);
    }
}
