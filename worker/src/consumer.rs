//! The consume loop shared by agent queues and the webhook queue: (re)connect with backoff,
//! set the prefetch, consume every queue of the set on one channel, take a slot, hand the
//! next delivery — picked in weighted round-robin across the queues — to a handler task, and
//! on shutdown cancel the consumers so nothing new arrives.
//!
//! Several queues feeding one set of slots is how tenants share an agent: each tenant's jobs
//! wait in their own queue, so a slot that frees goes to whoever's turn it is, not to
//! whoever queued first (see [`crate::fair`]).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
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
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
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
}

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
    let waiting = Arc::new(LaneCounts::new(consumption.sources.len()));
    let mut handing = Handing {
        arrivals: &mut arrivals,
        lanes: &mut lanes,
        acks: &acks,
        waiting: &waiting,
    };
    let result = serve(&mut handing, consumption, tracker, stop, handle).await;
    give_back(&channel, consumption, &mut lanes, &acks).await;
    waiting.clear();
    result?;
    Ok(stop.is_cancelled().then_some(channel))
}

/// What a handler is given: the delivery, the channel's ack sender, the slot it runs on, and
/// whether deliveries of other sources wait for a slot meanwhile.
pub struct Handed {
    pub delivery: Delivery,
    pub acks: Acks,
    pub slot: OwnedSemaphorePermit,
    pub others: OthersWaiting,
}

/// How many deliveries wait on each source's lane for a slot.
pub struct LaneCounts(Vec<AtomicUsize>);

impl LaneCounts {
    fn new(lanes: usize) -> Self {
        Self((0..lanes).map(|_| AtomicUsize::new(0)).collect())
    }

    fn add(&self, lane: usize, by: isize) {
        if let Some(count) = self.0.get(lane) {
            if by >= 0 {
                count.fetch_add(by.unsigned_abs(), Ordering::Relaxed);
            } else {
                let _ = count.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    Some(n.saturating_sub(by.unsigned_abs()))
                });
            }
        }
    }

    fn clear(&self) {
        for count in &self.0 {
            count.store(0, Ordering::Relaxed);
        }
    }
}

/// Whether a delivery of another source than the handed one's waits for a slot: a handler that
/// could hold slots for more work of its own source (a batch's jobs) gives way instead.
pub struct OthersWaiting {
    counts: Arc<LaneCounts>,
    source: usize,
}

impl OthersWaiting {
    pub fn any(&self) -> bool {
        self.counts
            .0
            .iter()
            .enumerate()
            .any(|(lane, count)| lane != self.source && count.load(Ordering::Relaxed) > 0)
    }
}

/// What the serve loop hands out from: the merged arrivals, the lanes they wait on (each
/// delivery with its source), how many wait on each, and the channel's ack sender, told of
/// every delivery taken off a consumer.
struct Handing<'a> {
    arrivals: &'a mut Arrivals,
    lanes: &'a mut Lanes<(usize, Delivery)>,
    acks: &'a Acks,
    waiting: &'a Arc<LaneCounts>,
}

impl Handing<'_> {
    /// Queues an arrival on its lane: `false` when a consumer ended (the consumption restarts
    /// quietly), an error when one failed.
    fn take(&mut self, arrival: Arrival) -> Result<bool, BrokerError> {
        match arrival {
            (source, Some(Ok(delivery))) => {
                self.acks.taken(delivery.delivery_tag);
                self.lanes.push(source, (source, delivery));
                self.waiting.add(source, 1);
                Ok(true)
            }
            (_, Some(Err(err))) => Err(err.into()),
            (_, None) => Ok(false),
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
    loop {
        // Arrivals queue on their lanes while every slot is busy.
        let permit = loop {
            match wait(handing.arrivals, Some(&consumption.slots), stop).await {
                Wake::Slot(permit) => break permit,
                Wake::Arrived(arrival) => {
                    if !handing.take(*arrival)? {
                        return Ok(());
                    }
                }
                Wake::Stop => return Ok(()),
            }
        };
        // Whatever already arrived joins the pick, so every waiting queue gets its turn.
        while let Some(Some(arrival)) = handing.arrivals.next().now_or_never() {
            if !handing.take(arrival)? {
                return Ok(());
            }
        }
        let (source, delivery) = loop {
            if let Some((source, delivery)) = handing.lanes.pick() {
                handing.waiting.add(source, -1);
                break (source, delivery);
            }
            match wait(handing.arrivals, None, stop).await {
                Wake::Arrived(arrival) => {
                    if !handing.take(*arrival)? {
                        return Ok(());
                    }
                }
                Wake::Stop | Wake::Slot(_) => return Ok(()),
            }
        };
        tracker.spawn(handle(Handed {
            delivery,
            acks: handing.acks.clone(),
            slot: permit,
            others: OthersWaiting {
                counts: handing.waiting.clone(),
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
    arrivals: &mut Arrivals,
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
        arrival = arrivals.next() => arrival.map_or(Wake::Stop, |a| Wake::Arrived(Box::new(a))),
    }
}

/// Ends this consumption: the consumers are cancelled, so nothing more is prefetched onto a
/// channel no one reads (runs in flight still ack on it, so it stays open); deliveries not
/// yet handed out go back to their queues at once, for another replica or the next
/// consumption.
async fn give_back(
    channel: &Channel,
    consumption: &Consumption,
    lanes: &mut Lanes<(usize, Delivery)>,
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
    for (_, delivery) in lanes.drain() {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn others_wait_only_on_another_lane() {
        let counts = Arc::new(LaneCounts::new(3));
        let mine = OthersWaiting {
            counts: counts.clone(),
            source: 1,
        };
        assert!(!mine.any(), "nothing waits");
        counts.add(1, 1);
        assert!(!mine.any(), "only its own lane waits");
        counts.add(2, 1);
        assert!(mine.any(), "another lane waits");
        counts.add(2, -1);
        counts.add(2, -1);
        assert!(!mine.any(), "taken, and never below zero");
        counts.add(0, 2);
        assert!(mine.any());
        counts.clear();
        assert!(!mine.any());
        counts.add(7, 1);
        assert!(!mine.any(), "an unknown lane is ignored");
    }
}
