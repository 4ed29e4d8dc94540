//! Scenario 4, Dispatcher intake: accepted POSTs per second (each a Redis write and a publish with
//! a confirm) from 64 concurrent clients, with no worker draining, and their p99 latency; against
//! raw lapin publishes with confirms at the same concurrency, same message, same queue type, in the
//! same run; and against BullMQ's Node intake. Ours as shipped has group commit
//! (`dispatcher.batch_jobs`); a second dispatcher without it (one message per job) is measured
//! beside it.
//!
//! The turns: this VM's speed drifts by a fifth within minutes (one build, measured before the
//! peer in three consecutive runs, came out at 0.93, 0.72 and 0.85 of it). Windows taken in
//! turns, the sides forwards then backwards (ours, one message per job, BullMQ, BullMQ, one
//! message per job, ours, …),
//! put such a drift on every side alike, where one long window each put it all on whichever
//! side came last.

use serde_json::json;

use agentfleet_tests::AgentSpec;

use crate::baseline;
use crate::bullmq::{self, IntakePeer, PeerIntake};
use crate::fleet::{Client, Fleet, FleetOptions};
use crate::load::{tally_closed_loop, Tally};
use crate::procfs::{CpuMeter, CpuUse, Groups};
use crate::report::{Outcome, Row};
use crate::suite::{Ctx, Settings};

pub async fn run(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let s = &ctx.settings;
    let options = || FleetOptions::new(AgentSpec::new("bench"), std::time::Duration::ZERO, 0);
    let fleet = Fleet::start(&ctx.bins, options()).await?;
    let unbatched = Fleet::start(&ctx.bins, options().one_message_per_job()).await?;
    let mut notes = Vec::new();
    let mut peer = start_peer(ctx, &mut notes).await;
    let mut ours = Side::new(fleet.client(), fleet.cpu_groups());
    let mut single = Side::new(unbatched.client(), unbatched.cpu_groups());
    let mut theirs = peer
        .as_ref()
        .map(|peer| Side::new(peer.client(), peer.cpu_groups()));
    let rounds = {
        let mut sides = vec![&mut ours, &mut single];
        sides.extend(theirs.as_mut());
        for side in &sides {
            side.warm_up(s).await;
        }
        alternate(s, &mut sides).await
    };
    let peer_alive = peer.as_mut().map(IntakePeer::check_alive);
    let (jobs, messages) = fleet.jobs_and_messages("bench").await?;
    drop((fleet, unbatched, peer));

    let intake = ours.tally.result();
    let cpu = CpuUse::over(&ours.cpu);
    let payload = baseline::job_payload("bench");
    let raw = baseline::publish_only(s.clients, s.intake_warmup, s.intake_window, &payload).await?;

    let ratio = intake.per_sec / raw.per_sec;
    let mut rows = vec![Row::new("accepted POSTs/s", intake.per_sec, "/s")
        .baseline("raw publish+confirm", raw.per_sec, "/s")
        .goal("≥ 0.60", ratio >= 0.6)];
    if let (Some(p), Some(r)) = (&intake.latency, &raw.latency) {
        rows.push(
            Row::new("POST→202 p99", p.p99_ms, "ms")
                .display(format!(
                    "POST→202 p50 / p99: {:.1} / {:.1} ms",
                    p.p50_ms, p.p99_ms
                ))
                .baseline("raw confirm p99", r.p99_ms, "ms")
                .info("—"),
        );
    }
    notes.insert(
        0,
        format!(
            "{} clients for {} s after {} s of warm-up; {jobs} jobs in {messages} messages ({:.1} a message, warm-up included); CPU while measured: {}.",
            s.clients,
            s.intake_window.as_secs(),
            s.intake_warmup.as_secs(),
            jobs as f64 / messages.max(1) as f64,
            cpu.summary()
        ),
    );
    let unbatched = single.tally.result();
    notes.push(single_note(&single));
    for (side, load) in [("ours", &intake), ("the unbatched dispatcher", &unbatched)] {
        if load.errors > 0 {
            notes.push(format!(
                "{} POSTs to {side} were not accepted.",
                load.errors
            ));
        }
    }
    let peer = match (theirs, peer_alive) {
        (Some(theirs), Some(alive)) => peer_rows(
            s,
            [intake.per_sec, unbatched.per_sec],
            (theirs, alive),
            &rounds,
            (&mut rows, &mut notes),
        ),
        _ => None,
    };
    Ok(Outcome {
        rows,
        notes,
        details: json!({
            "clients": s.clients,
            "window_secs": s.intake_window.as_secs_f64(),
            "rounds": rounds,
            "dispatcher": intake,
            "jobs": jobs,
            "messages": messages,
            "one_message_per_job": {"load": unbatched, "cpu": CpuUse::over(&single.cpu)},
            "raw_publish": raw,
            "cpu": cpu,
            "bullmq": peer,
        }),
    })
}

/// What the dispatcher without group commit did: its POSTs/s, latency and CPU.
fn single_note(side: &Side) -> String {
    let load = side.tally.result();
    let latency = load
        .latency
        .map(|l| format!("p50 / p99 {:.1} / {:.1} ms", l.p50_ms, l.p99_ms))
        .unwrap_or_default();
    format!(
        "With one message per job (`dispatcher.batch_jobs: false`): {:.0} POSTs/s, {latency}; CPU while measured: {}.",
        load.per_sec,
        CpuUse::over(&side.cpu).summary()
    )
}

/// Load before each measured window, not counted: a side that stood idle through the other's
/// window starts cold (without it, in the short mode's 1-s rounds, BullMQ's intake used 1.49 of
/// the 2 cores, against 1.73 in 2-s rounds, and ours read 1.17× it).
const LEAD_IN: std::time::Duration = std::time::Duration::from_millis(300);

/// One intake under measurement: where to POST, whose CPU counts, what its windows measured.
struct Side {
    client: Client,
    groups: Groups,
    tally: Tally,
    cpu: Vec<CpuUse>,
}

impl Side {
    fn new(client: Client, groups: Groups) -> Self {
        Self {
            client,
            groups,
            tally: Tally::default(),
            cpu: Vec::new(),
        }
    }

    /// `s.clients` clients POSTing for `length`.
    async fn load(&self, s: &Settings, length: std::time::Duration) -> Tally {
        let client = self.client.clone();
        tally_closed_loop(s.clients, length, move |i| accepted(client.clone(), i)).await
    }

    async fn warm_up(&self, s: &Settings) {
        self.load(s, s.intake_warmup).await;
    }

    /// One measured window, after a short unmeasured lead-in; its POSTs/s.
    async fn window(&mut self, s: &Settings) -> f64 {
        self.load(s, LEAD_IN).await;
        let meter = CpuMeter::start(self.groups.clone());
        let tally = self.load(s, s.intake_round()).await;
        self.cpu.push(meter.finish());
        let per_sec = tally.per_sec();
        self.tally.add(tally);
        per_sec
    }
}

/// POSTs job `i`; whether it was accepted.
async fn accepted(client: Client, i: usize) -> bool {
    matches!(client.post(i).await, Ok((202, _)))
}

/// Each round's POSTs/s of every side, in the sides' order; each round takes the sides in
/// turn, forwards then backwards (A B C, C B A, A B C, …).
async fn alternate(s: &Settings, sides: &mut [&mut Side]) -> Vec<Vec<f64>> {
    let mut rounds = Vec::new();
    for round in 0..s.intake_rounds.max(1) {
        let mut per_sec = vec![0.0; sides.len()];
        let order: Vec<usize> = if round % 2 == 0 {
            (0..sides.len()).collect()
        } else {
            (0..sides.len()).rev().collect()
        };
        for i in order {
            per_sec[i] = sides[i].window(s).await;
        }
        rounds.push(per_sec);
    }
    rounds
}

/// The BullMQ intake, or why it does not run (said loudly; our own rows stand either way).
async fn start_peer(ctx: &Ctx, notes: &mut Vec<String>) -> Option<IntakePeer> {
    if let Some(reason) = bullmq::unavailable() {
        eprintln!("bench: WARNING: the BullMQ peer is SKIPPED: {reason}");
        notes.push(format!("BullMQ peer SKIPPED: {reason}."));
        return None;
    }
    match IntakePeer::start(&ctx.bins).await {
        Ok(peer) => Some(peer),
        Err(err) => {
            eprintln!("bench: WARNING: the BullMQ intake failed: {err:#}");
            notes.push(format!("BullMQ intake FAILED: {err:#}."));
            None
        }
    }
}

/// The rows of ours (as shipped, then with one message per job) against the BullMQ intake,
/// unless the peer failed.
fn peer_rows(
    s: &Settings,
    [ours, single]: [f64; 2],
    (theirs, alive): (Side, anyhow::Result<()>),
    rounds: &[Vec<f64>],
    (rows, notes): (&mut Vec<Row>, &mut Vec<String>),
) -> Option<PeerIntake> {
    let load = theirs.tally.result();
    let failure = match alive {
        Err(err) => Some(format!("{err:#}")),
        Ok(()) if load.errors > 0 => Some(format!("it refused {} POSTs", load.errors)),
        Ok(()) => None,
    };
    if let Some(failure) = failure {
        eprintln!("bench: WARNING: the BullMQ intake failed: {failure}");
        notes.push(format!("BullMQ intake FAILED: {failure}."));
        return None;
    }
    let peer = PeerIntake {
        posts_per_sec: load.per_sec,
        p99_ms: load.latency.map(|l| l.p99_ms),
        cpu: CpuUse::over(&theirs.cpu),
    };
    rows.push(
        Row::new("accepted POSTs/s vs BullMQ", ours, "/s")
            .baseline("BullMQ's Node intake", peer.posts_per_sec, "/s")
            .goal("≥ 1.0", ours >= peer.posts_per_sec),
    );
    rows.push(
        Row::new(
            "one message per job: accepted POSTs/s vs BullMQ",
            single,
            "/s",
        )
        .baseline("BullMQ's Node intake", peer.posts_per_sec, "/s")
        .info("—"),
    );
    notes.push(format!(
        "BullMQ intake ({} clients, no worker): {:.0} POSTs/s, p99 {:.1} ms; CPU while measured: {}. \
         Measured in {} rounds of {:.1} s a side, in turns (ours, one message per job, BullMQ, then backwards, …); \
         ÷ BullMQ per round: ours {}; one message per job {}.",
        s.clients,
        peer.posts_per_sec,
        peer.p99_ms.unwrap_or_default(),
        peer.cpu.summary(),
        rounds.len(),
        s.intake_round().as_secs_f64(),
        super::ratios_per_turn(rounds, 0, 2),
        super::ratios_per_turn(rounds, 1, 2)
    ));
    Some(peer)
}
