//! The consume loop shared by agent queues and the webhook queue: (re)connect with backoff,
//! set the prefetch, consume every queue of the set on one channel, take a slot, hand the
//! next delivery — picked in weighted round-robin across the queues — to a handler task, and
//! on shutdown cancel the consumers so nothing new arrives.
//!
//! Several queues feeding one set of slots is how tenants share an agent: each tenant's jobs
//! wait in their own queue, so a slot that frees goes to whoever's turn it is, not to
//! whoever queued first (see [`crate::fair`]). A handler holding more work of its queue (a
//! batch's jobs) claims further turns on the same lanes ([`Turns`]).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{self, BoxStream, SelectAll};
use futures_util::{FutureExt as _, StreamExt as _};
use lapin::message::Delivery;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions,
};
use lapin::types::FieldTable;
use lapin::Channel;
use prometheus::IntCounterVec;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use agentfleet_common::broker::{Broker, BrokerError};

use crate::acks::Acks;
use crate::fair::Lanes;

/// One queue of a consumption and its share of the slots.
#[derive(Debug, Clone)]
pub struct Source {
    pub queue: String,
    pub weight: u32,
}

/// What to consume and how.
pub struct Consumption {
    pub sources: Vec<Source>,
    /// Per queue: each may hold this many unacked deliveries, so one tenant alone can fill
    /// every slot.
    pub prefetch: u16,
    pub slots: Arc<Semaphore>,
    pub consumer_tag: String,
    /// Where the channel's ack sender counts its frames.
    pub ack_frames: IntCounterVec,
}

impl Consumption {
    /// `sources` served by `slots` slots, each queue prefetching as many, so one source
    /// alone can fill every slot.
    pub fn new(
        sources: Vec<Source>,
        slots: u16,
        consumer_tag: String,
        ack_frames: IntCounterVec,
    ) -> Self {
        Self {
            sources,
            prefetch: slots,
            slots: Arc::new(Semaphore::new(usize::from(slots))),
            consumer_tag,
            ack_frames,
        }
    }

    fn tag(&self, source: usize) -> String {
        format!("{}.{source}", self.consumer_tag)
    }

    fn label(&self) -> &str {
        self.sources.first().map_or("", |s| s.queue.as_str())
    }
}

const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Consumes the queues of `consumption` until `stop` is cancelled, running `handle` for each
/// delivery in a task tracked by `tracker` that holds a slot until it finishes. Answers the
/// channel it was consuming on when stopped: the runs still going ack on it, so it stays
/// open until the caller closes it after them (dropping it would close it at once, and make
/// their acks fail and their messages come round again).
pub async fn consume<H, F>(
    broker: Broker,
    consumption: Consumption,
    tracker: TaskTracker,
    stop: CancellationToken,
    handle: H,
) -> Option<Channel>
where
    H: Fn(Handed) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let mut backoff = Duration::from_millis(100);
    while !stop.is_cancelled() {
        match consume_once(&broker, &consumption, &tracker, &stop, &handle).await {
            Ok(Some(channel)) => return Some(channel),
            Ok(None) => backoff = Duration::from_millis(100),
            Err(err) => {
                tracing::warn!(queue = %consumption.label(), error = %err, ?backoff, "consumer lost; reconnecting");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = stop.cancelled() => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    None
}

/// A delivery from source `.0`, or `None` when that source's consumer ended.
type Arrival = (usize, Option<Result<Delivery, lapin::Error>>);

/// The arrivals of every source of a consumption, merged.
type Arrivals = SelectAll<BoxStream<'static, Arrival>>;

/// What the loop learned while waiting.
enum Wake {
    Stop,
    Slot(OwnedSemaphorePermit),
    Arrived(Box<Arrival>),
    Claimed(Claim),
}

/// What waits on a source's lane for a slot: a delivery, or a turn claimed by a handler for
/// more work of that source it already holds (the next job of a batch).
#[expect(
    clippy::large_enum_variant,
    reason = "deliveries are nearly every entry, as large as before claims: boxing them would allocate per delivery"
)]
enum Waiting {
    Delivery(Delivery),
    Claim(oneshot::Sender<OwnedSemaphorePermit>),
}

/// A turn claimed on a source's lane: the slot goes down the sender when the turn comes.
type Claim = (usize, oneshot::Sender<OwnedSemaphorePermit>);

/// One consumption, from connecting to its end: the channel when it ended because of `stop`,
/// `None` when a consumer ended (it restarts quietly).
async fn consume_once<H, F>(
    broker: &Broker,
    consumption: &Consumption,
    tracker: &TaskTracker,
    stop: &CancellationToken,
    handle: &H,
) -> Result<Option<Channel>, BrokerError>
where
    H: Fn(Handed) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    // A stop waits for this (it takes a few round trips): a channel dropped half set up would
    // be closed by lapin in the background, racing the connection's close (see
    // `Broker::close`). A broker that does not answer is the worker's deadline's business.
    let conn = broker.connection().await?;
    let channel = conn.create_channel().await?;
    channel
        .basic_qos(consumption.prefetch, BasicQosOptions::default())
        .await?;
    let mut arrivals = subscribe(&channel, consumption).await?;
    tracing::info!(queue = %consumption.label(), queues = consumption.sources.len(), prefetch = consumption.prefetch, "consuming");
    let mut lanes = Lanes::new(consumption.sources.iter().map(|s| s.weight));
    let acks = Acks::start(tracker, consumption.ack_frames.clone());
    let (claims, mut claimed) = mpsc::unbounded_channel();
    let mut handing = Handing {
        arrivals: &mut arrivals,
        claimed: &mut claimed,
        claims: &claims,
        lanes: &mut lanes,
        acks: &acks,
    };
    let result = serve(&mut handing, consumption, tracker, stop, handle).await;
    // Claims not served are dropped here and by the channel's close: their handlers learn
    // the consumption is over.
    claimed.close();
    give_back(&channel, consumption, &mut lanes, &acks).await;
    result?;
    Ok(stop.is_cancelled().then_some(channel))
}

/// What a handler is given: the delivery, the channel's ack sender, the slot it runs on, and
/// where to claim further turns of its source.
pub struct Handed {
    pub delivery: Delivery,
    pub acks: Acks,
    pub slot: OwnedSemaphorePermit,
    pub turns: Turns,
}

/// Further turns of one source for a handler that holds more of its work (a batch's jobs):
/// each is claimed on the source's lane, behind what already waits there, and the lanes'
/// round-robin serves it as it would a delivery of that source. So a batch of n jobs takes n
/// turns of its source, not one, and never more than the source's share.
#[derive(Clone)]
pub struct Turns {
    claims: mpsc::UnboundedSender<Claim>,
    source: usize,
}

impl Turns {
    /// Claims the source's next turn: the slot arrives when the turn comes; the receiver
    /// errs if the consumption ended first (the claim is never served).
    pub fn claim(&self) -> oneshot::Receiver<OwnedSemaphorePermit> {
        let (tx, rx) = oneshot::channel();
        // A closed channel drops `tx`: the receiver errs, as documented.
        let _ = self.claims.send((self.source, tx));
        rx
    }
}

/// What the serve loop hands out from: the merged arrivals, the turns handlers claim, the
/// lanes both wait on (each with its source), and the channel's ack sender, told of every
/// delivery taken off a consumer.
struct Handing<'a> {
    arrivals: &'a mut Arrivals,
    claimed: &'a mut mpsc::UnboundedReceiver<Claim>,
    claims: &'a mpsc::UnboundedSender<Claim>,
    lanes: &'a mut Lanes<(usize, Waiting)>,
    acks: &'a Acks,
}

impl Handing<'_> {
    /// Queues an arrival on its lane: `false` when a consumer ended (the consumption restarts
    /// quietly), an error when one failed.
    fn take(&mut self, arrival: Arrival) -> Result<bool, BrokerError> {
        match arrival {
            (source, Some(Ok(delivery))) => {
                self.acks.taken(delivery.delivery_tag);
                self.lanes
                    .push(source, (source, Waiting::Delivery(delivery)));
                Ok(true)
            }
            (_, Some(Err(err))) => Err(err.into()),
            (_, None) => Ok(false),
        }
    }

    /// Queues a claimed turn on its source's lane.
    fn queue_claim(&mut self, (source, tx): Claim) {
        self.lanes.push(source, (source, Waiting::Claim(tx)));
    }

    /// Queues what a wake brought: `Ok(false)` to stop serving (a stop, or a consumer
    /// ended); a slot is answered to the caller.
    fn queue(&mut self, wake: Wake) -> Result<Result<OwnedSemaphorePermit, bool>, BrokerError> {
        match wake {
            Wake::Slot(permit) => Ok(Ok(permit)),
            Wake::Arrived(arrival) => self.take(*arrival).map(Err),
            Wake::Claimed(claim) => {
                self.queue_claim(claim);
                Ok(Err(true))
            }
            Wake::Stop => Ok(Err(false)),
        }
    }
}

/// Hands deliveries to handlers, one per slot, until a stop or a consumer's end.
async fn serve<H, F>(
    handing: &mut Handing<'_>,
    consumption: &Consumption,
    tracker: &TaskTracker,
    stop: &CancellationToken,
    handle: &H,
) -> Result<(), BrokerError>
where
    H: Fn(Handed) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    'serve: loop {
        // Arrivals and claims queue on their lanes while every slot is busy.
        let mut permit = loop {
            let wake = wait(handing, Some(&consumption.slots), stop).await;
            match handing.queue(wake)? {
                Ok(permit) => break permit,
                Err(true) => {}
                Err(false) => return Ok(()),
            }
        };
        // Whatever already arrived joins the pick, so every waiting queue gets its turn.
        while let Some(Some(arrival)) = handing.arrivals.next().now_or_never() {
            if !handing.take(arrival)? {
                return Ok(());
            }
        }
        while let Ok(claim) = handing.claimed.try_recv() {
            handing.queue_claim(claim);
        }
        let (source, delivery) = loop {
            match handing.lanes.pick() {
                Some((source, Waiting::Delivery(delivery))) => break (source, delivery),
                // A claim whose handler no longer waits gives the slot back to the pick.
                Some((_, Waiting::Claim(tx))) => match tx.send(permit) {
                    Ok(()) => continue 'serve,
                    Err(unwanted) => permit = unwanted,
                },
                None => {
                    let wake = wait(handing, None, stop).await;
                    match handing.queue(wake)? {
                        Err(true) => {}
                        Ok(_) | Err(false) => return Ok(()),
                    }
                }
            }
        };
        tracker.spawn(handle(Handed {
            delivery,
            acks: handing.acks.clone(),
            slot: permit,
            turns: Turns {
                claims: handing.claims.clone(),
                source,
            },
        }));
    }
}

/// Starts one consumer per source on `channel`, merged into one stream of tagged arrivals
/// that also reports each consumer's end.
async fn subscribe(channel: &Channel, consumption: &Consumption) -> Result<Arrivals, BrokerError> {
    let mut merged = SelectAll::new();
    for (i, source) in consumption.sources.iter().enumerate() {
        let consumer = channel
            .basic_consume(
                source.queue.as_str().into(),
                consumption.tag(i).as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let ended = stream::once(async move { (i, None) });
        merged.push(consumer.map(move |d| (i, Some(d))).chain(ended).boxed());
    }
    Ok(merged)
}

async fn wait(
    handing: &mut Handing<'_>,
    slots: Option<&Arc<Semaphore>>,
    stop: &CancellationToken,
) -> Wake {
    let slot = async {
        match slots {
            Some(slots) => slots.clone().acquire_owned().await.ok(),
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        biased;
        () = stop.cancelled() => Wake::Stop,
        permit = slot => permit.map_or(Wake::Stop, Wake::Slot),
        arrival = handing.arrivals.next() => arrival.map_or(Wake::Stop, |a| Wake::Arrived(Box::new(a))),
        // Never `None`: the loop holds a sender.
        Some(claim) = handing.claimed.recv() => Wake::Claimed(claim),
    }
}

/// Ends this consumption: the consumers are cancelled, so nothing more is prefetched onto a
/// channel no one reads (runs in flight still ack on it, so it stays open); deliveries not
/// yet handed out go back to their queues at once, for another replica or the next
/// consumption.
async fn give_back(
    channel: &Channel,
    consumption: &Consumption,
    lanes: &mut Lanes<(usize, Waiting)>,
    acks: &Acks,
) {
    for i in 0..consumption.sources.len() {
        let _ = channel
            .basic_cancel(
                consumption.tag(i).as_str().into(),
                BasicCancelOptions::default(),
            )
            .await;
    }
    for (_, waiting) in lanes.drain() {
        // A claim dropped here tells its handler the consumption is over.
        let Waiting::Delivery(delivery) = waiting else {
            continue;
        };
        let tag = delivery.delivery_tag;
        if delivery
            .reject(BasicRejectOptions { requeue: true })
            .await
            .is_ok()
        {
            acks.gone(tag);
        }
    }
}
