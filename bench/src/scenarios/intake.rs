//! Scenario 4, Dispatcher intake: accepted POSTs per second (each a Redis write and a publish with
//! a confirm) from 64 concurrent clients, with no worker draining, and their p99 latency; against
//! raw lapin publishes with confirms at the same concurrency, same message, same queue type, in the
//! same run; and against BullMQ's Node intake, measured in turns with ours.
//!
//! The turns: this VM's speed drifts by a fifth within minutes (one build, measured before the
//! peer in three consecutive runs, came out at 0.93, 0.72 and 0.85 of it). Windows taken in the
//! order ours, peer, peer, ours, ours, … put such a drift on both sides alike, where one long
//! window each put it all on whichever side came second.

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
    let fleet = Fleet::start(
        &ctx.bins,
        FleetOptions::new(AgentSpec::new("bench"), std::time::Duration::ZERO, 0),
    )
    .await?;
    let mut notes = Vec::new();
    let mut peer = start_peer(ctx, &mut notes).await;
    let mut ours = Side::new(fleet.client(), fleet.cpu_groups());
    let mut theirs = peer
        .as_ref()
        .map(|peer| Side::new(peer.client(), peer.cpu_groups()));
    ours.warm_up(s).await;
    if let Some(theirs) = &mut theirs {
        theirs.warm_up(s).await;
    }
    let rounds = alternate(s, &mut ours, theirs.as_mut()).await;
    let peer_alive = peer.as_mut().map(IntakePeer::check_alive);
    drop((fleet, peer));

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
            "{} clients for {} s after {} s of warm-up; CPU while measured: {}.",
            s.clients,
            s.intake_window.as_secs(),
            s.intake_warmup.as_secs(),
            cpu.summary()
        ),
    );
    if intake.errors > 0 {
        notes.push(format!("{} POSTs were not accepted.", intake.errors));
    }
    let peer = match (theirs, peer_alive) {
        (Some(theirs), Some(alive)) => peer_rows(
            s,
            intake.per_sec,
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
            "raw_publish": raw,
            "cpu": cpu,
            "bullmq": peer,
        }),
    })
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

/// Each round's POSTs/s, ours and the peer's (if it runs), their order alternating.
async fn alternate(s: &Settings, ours: &mut Side, mut theirs: Option<&mut Side>) -> Vec<[f64; 2]> {
    let mut rounds = Vec::new();
    for round in 0..s.intake_rounds.max(1) {
        let Some(theirs) = theirs.as_deref_mut() else {
            rounds.push([ours.window(s).await, 0.0]);
            continue;
        };
        let pair = if round % 2 == 0 {
            let mine = ours.window(s).await;
            [mine, theirs.window(s).await]
        } else {
            let peer = theirs.window(s).await;
            [ours.window(s).await, peer]
        };
        rounds.push(pair);
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

/// The row of ours against the BullMQ intake, unless the peer failed.
fn peer_rows(
    s: &Settings,
    ours: f64,
    (theirs, alive): (Side, anyhow::Result<()>),
    rounds: &[[f64; 2]],
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
    let per_round: Vec<String> = rounds
        .iter()
        .map(|[mine, peer]| format!("{:.2}", mine / peer))
        .collect();
    notes.push(format!(
        "BullMQ intake ({} clients, no worker): {:.0} POSTs/s, p99 {:.1} ms; CPU while measured: {}. \
         Measured in {} rounds of {:.1} s a side, in turns (ours, BullMQ, BullMQ, ours, ours, …); ours ÷ BullMQ per round: {}.",
        s.clients,
        peer.posts_per_sec,
        peer.p99_ms.unwrap_or_default(),
        peer.cpu.summary(),
        rounds.len(),
        s.intake_round().as_secs_f64(),
        per_round.join(", ")
    ));
    Some(peer)
}
