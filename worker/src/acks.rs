//! Acks combined per channel: one `basic.ack` with `multiple` covers every delivery of the
//! channel up to its tag, so the acks that fall due together (a wave of runs ending, a burst
//! of short jobs) cross to the broker as one frame, one lapin task and one settle command in
//! the queue's log, instead of one each.
//!
//! `multiple` acks *every* unacked delivery up to the tag, so it may only reach as far as
//! every delivery below it is known to be settled. [`Ledger`] keeps that boundary, without
//! I/O: the tags the consume loop has handed out (tags on a channel count up from 1), the ones
//! still being worked or given back, and the acks due. An ack above the boundary (a delivery
//! below it is still running, or not yet taken off its consumer) waits at most [`HOLD`] for
//! the boundary to pass it and then goes on its own, so a long run never holds back the acks
//! — and the prefetch room — of the runs that end after it.
//!
//! Order on the wire matters as much: an ack for a tag that an earlier `multiple` already
//! acked closes the channel ("unknown delivery tag"), and lapin sends each ack from its own
//! task. So one task per channel ([`Acks::start`]) sends the acks, a batch at a time, and
//! waits for a batch to be written before it reads the next; a nack or reject counts as
//! settled only once it was written ([`Acks::gone`] after it).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use lapin::types::DeliveryTag;
use lapin::Acker;
use prometheus::IntCounterVec;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

/// How long an ack that cannot be combined yet (a delivery below it is still being worked)
/// waits for the boundary to pass it before it goes alone. Short next to a run, so it holds
/// no prefetch room worth having; long next to the spread of runs that end together.
const HOLD: Duration = Duration::from_millis(5);

/// Notes read at most per batch: bounds how many acks one batch sends, and so how long it
/// holds the next one back.
const BATCH: usize = 1_024;

/// What the consume loop and the handlers tell a channel's ack sender.
enum Note {
    /// The consume loop took this delivery off its consumer.
    Taken(DeliveryTag),
    /// The delivery was nacked or rejected, and that frame was written.
    Gone(DeliveryTag),
    /// The delivery is done with: ack it.
    Due(DeliveryTag, Acker),
}

/// The sending side of one channel's acks. Cheap to clone; the sender task ends once every
/// clone is dropped (the consume loop and every handler of the channel are done) and it has
/// sent what was due.
#[derive(Clone)]
pub struct Acks {
    notes: mpsc::UnboundedSender<Note>,
}

impl Acks {
    /// Starts the channel's ack sender, tracked by `tracker` so a shutdown waits for the acks
    /// to be written before it closes the channel; it counts the frames it sends in `frames`.
    pub fn start(tracker: &TaskTracker, frames: IntCounterVec) -> Self {
        let (notes, inbox) = mpsc::unbounded_channel();
        tracker.spawn(send_acks(inbox, frames));
        Self { notes }
    }

    /// The consume loop took `tag` off its consumer (before any handler sees it).
    pub fn taken(&self, tag: DeliveryTag) {
        let _ = self.notes.send(Note::Taken(tag));
    }

    /// `tag` was nacked or rejected, and the frame written.
    pub fn gone(&self, tag: DeliveryTag) {
        let _ = self.notes.send(Note::Gone(tag));
    }

    /// Acks `tag` (soon, perhaps with others). The handler need not wait: the sender task
    /// outlives it and is waited for at shutdown.
    pub fn ack(&self, tag: DeliveryTag, acker: Acker) {
        let _ = self.notes.send(Note::Due(tag, acker));
    }

    /// What settling `delivery` needs, once its content was read.
    pub fn settlement(&self, delivery: Delivery) -> Settlement {
        Settlement {
            tag: delivery.delivery_tag,
            acker: delivery.acker,
            acks: self.clone(),
        }
    }
}

/// One delivery's means of being settled, without its content (a handler keeps this, not
/// the delivery, for the length of a run).
pub struct Settlement {
    pub tag: DeliveryTag,
    pub acker: Acker,
    pub acks: Acks,
}

async fn send_acks(mut inbox: mpsc::UnboundedReceiver<Note>, frames: IntCounterVec) {
    let mut ledger = Ledger::new(HOLD);
    let mut notes = Vec::with_capacity(64);
    let mut release: Option<Instant> = None;
    loop {
        let received = match release {
            Some(at) => tokio::select! {
                n = inbox.recv_many(&mut notes, BATCH) => Some(n),
                () = tokio::time::sleep_until(at.into()) => None,
            },
            None => Some(inbox.recv_many(&mut notes, BATCH).await),
        };
        // Every sender is gone (the consumption and its handlers ended): send what is left.
        let closing = received == Some(0);
        if !closing && received.is_some() {
            // Let the handlers that are about to ack run first, so their acks join this batch.
            tokio::task::yield_now().await;
            while notes.len() < BATCH {
                match inbox.try_recv() {
                    Ok(note) => notes.push(note),
                    Err(_) => break,
                }
            }
        }
        let now = Instant::now();
        for note in notes.drain(..) {
            match note {
                Note::Taken(tag) => ledger.taken(tag),
                Note::Gone(tag) => ledger.gone(tag),
                Note::Due(tag, acker) => ledger.due(tag, acker, now),
            }
        }
        let batch = if closing {
            ledger.take_all()
        } else {
            ledger.take(now)
        };
        release = ledger.next_release();
        send(batch, &frames).await;
        if closing {
            return;
        }
    }
}

/// Sends one batch of acks and waits until every frame is written (the next batch may ack
/// past these tags with a `multiple`, which must reach the broker after them).
async fn send(batch: Vec<(Acker, bool)>, frames: &IntCounterVec) {
    for (_, multiple) in &batch {
        let kind = if *multiple { "multiple" } else { "single" };
        frames.with_label_values(&[kind]).inc();
    }
    let sent = futures_util::future::join_all(
        batch
            .into_iter()
            .map(|(acker, multiple)| async move { acker.ack(BasicAckOptions { multiple }).await }),
    )
    .await;
    if let Some(err) = sent.into_iter().find_map(Result::err) {
        // The channel is gone: the broker redelivers those messages, which is safe.
        tracing::warn!(error = %err, "could not ack deliveries; they will be redelivered");
    }
}

/// Where each delivery of one channel stands, and which acks may be combined. `A` is what
/// sends one ack (lapin's `Acker`; a plain value in tests).
#[derive(Debug)]
pub struct Ledger<A> {
    /// Every tag up to this one was taken off a consumer.
    taken_through: DeliveryTag,
    /// Tags taken beyond `taken_through` (the consumers of a channel are merged, so tags may
    /// come out of order).
    taken_ahead: BTreeSet<DeliveryTag>,
    /// Taken, and neither settled nor due.
    open: BTreeSet<DeliveryTag>,
    /// Due for an ack, not sent yet, and since when.
    due: BTreeMap<DeliveryTag, (A, Instant)>,
    /// How long an ack that cannot be combined yet waits for the deliveries below it.
    hold: Duration,
}

impl<A> Ledger<A> {
    pub fn new(hold: Duration) -> Self {
        Self {
            taken_through: 0,
            taken_ahead: BTreeSet::new(),
            open: BTreeSet::new(),
            due: BTreeMap::new(),
            hold,
        }
    }

    pub fn taken(&mut self, tag: DeliveryTag) {
        self.open.insert(tag);
        if tag == self.taken_through + 1 {
            self.taken_through = tag;
            while self.taken_ahead.remove(&(self.taken_through + 1)) {
                self.taken_through += 1;
            }
        } else if tag > self.taken_through {
            self.taken_ahead.insert(tag);
        }
    }

    pub fn gone(&mut self, tag: DeliveryTag) {
        self.open.remove(&tag);
    }

    pub fn due(&mut self, tag: DeliveryTag, acker: A, now: Instant) {
        self.open.remove(&tag);
        self.due.insert(tag, (acker, now));
    }

    /// The acks to send at `now`, each with whether it is `multiple`: at most one
    /// `multiple`, for the highest due tag below every open or untaken one, then the due
    /// tags above that which have waited `hold` for it, one by one.
    pub fn take(&mut self, now: Instant) -> Vec<(A, bool)> {
        let mut acks: Vec<(A, bool)> = self.take_combined().into_iter().collect();
        let hold = self.hold;
        let ripe: Vec<DeliveryTag> = self
            .due
            .iter()
            .filter(|(_, (_, since))| now.saturating_duration_since(*since) >= hold)
            .map(|(tag, _)| *tag)
            .collect();
        acks.extend(
            ripe.into_iter()
                .filter_map(|tag| self.due.remove(&tag))
                .map(|(acker, _)| (acker, false)),
        );
        acks
    }

    /// Every due ack, now: the combined one and the rest one by one.
    pub fn take_all(&mut self) -> Vec<(A, bool)> {
        let mut acks: Vec<(A, bool)> = self.take_combined().into_iter().collect();
        let rest = std::mem::take(&mut self.due);
        acks.extend(rest.into_values().map(|(acker, _)| (acker, false)));
        acks
    }

    /// When the oldest held ack is to go on its own.
    pub fn next_release(&self) -> Option<Instant> {
        self.due.values().map(|(_, since)| *since + self.hold).min()
    }

    /// The due tags below every open or untaken one, as one ack (`multiple` when it covers
    /// more than one).
    fn take_combined(&mut self) -> Option<(A, bool)> {
        let first_open = self.open.first().copied().unwrap_or(DeliveryTag::MAX);
        let boundary = self.taken_through.min(first_open.saturating_sub(1));
        let above = self.due.split_off(&boundary.saturating_add(1));
        let covered = std::mem::replace(&mut self.due, above);
        let combined = covered.len() > 1;
        covered
            .into_iter()
            .next_back()
            .map(|(_, (acker, _))| (acker, combined))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOLD_FOR: Duration = Duration::from_millis(5);

    fn ledger(taken: &[DeliveryTag]) -> Ledger<DeliveryTag> {
        let mut ledger = Ledger::new(HOLD_FOR);
        for &tag in taken {
            ledger.taken(tag);
        }
        ledger
    }

    fn due(ledger: &mut Ledger<DeliveryTag>, tags: &[DeliveryTag], at: Instant) {
        for &tag in tags {
            ledger.due(tag, tag, at);
        }
    }

    #[test]
    fn acks_due_together_go_as_one_multiple() {
        let t0 = Instant::now();
        let mut ledger = ledger(&[1, 2, 3, 4]);
        due(&mut ledger, &[2, 1, 3], t0);
        assert_eq!(ledger.take(t0), vec![(3, true)]);
        due(&mut ledger, &[4], t0);
        assert_eq!(
            ledger.take(t0),
            vec![(4, false)],
            "one due ack is sent plain"
        );
        assert_eq!(ledger.take(t0), vec![]);
        assert_eq!(ledger.next_release(), None);
    }

    #[test]
    fn an_ack_above_a_running_delivery_waits_the_hold_then_goes_alone() {
        let t0 = Instant::now();
        let mut ledger = ledger(&[1, 2, 3, 4, 5]);
        due(&mut ledger, &[1, 2, 4, 5], t0);
        // 3 still runs: 1–2 combine; 4 and 5 wait for it, but no longer than the hold.
        assert_eq!(ledger.take(t0), vec![(2, true)]);
        assert_eq!(ledger.next_release(), Some(t0 + HOLD_FOR));
        assert_eq!(ledger.take(t0 + HOLD_FOR / 2), vec![]);
        assert_eq!(ledger.take(t0 + HOLD_FOR), vec![(4, false), (5, false)]);
        due(&mut ledger, &[3], t0 + HOLD_FOR);
        assert_eq!(ledger.take(t0 + HOLD_FOR), vec![(3, false)]);
    }

    #[test]
    fn held_acks_join_the_multiple_when_the_delivery_below_ends_in_time() {
        let t0 = Instant::now();
        let mut ledger = ledger(&[1, 2, 3, 4, 5]);
        due(&mut ledger, &[1, 2, 4, 5], t0);
        assert_eq!(ledger.take(t0), vec![(2, true)]);
        let soon = t0 + Duration::from_millis(1);
        due(&mut ledger, &[3], soon);
        assert_eq!(ledger.take(soon), vec![(5, true)]);
    }

    #[test]
    fn a_multiple_never_reaches_an_untaken_tag() {
        let t0 = Instant::now();
        // 3 is still on its consumer: the loop has not taken it, and it may be unworked.
        let mut ledger = ledger(&[1, 2, 4, 5]);
        due(&mut ledger, &[1, 2, 4, 5], t0);
        assert_eq!(ledger.take(t0), vec![(2, true)]);
        assert_eq!(ledger.take(t0 + HOLD_FOR), vec![(4, false), (5, false)]);
        ledger.taken(3);
        due(&mut ledger, &[3], t0);
        assert_eq!(ledger.take(t0), vec![(3, false)]);
        ledger.taken(6);
        ledger.taken(7);
        due(&mut ledger, &[6, 7], t0);
        assert_eq!(
            ledger.take(t0),
            vec![(7, true)],
            "the boundary moved past 5"
        );
    }

    #[test]
    fn given_back_deliveries_stop_blocking_once_written() {
        let t0 = Instant::now();
        let mut ledger = ledger(&[1, 2, 3]);
        due(&mut ledger, &[1, 3], t0);
        // 2 is being nacked: not yet written, so the multiple stops below it.
        assert_eq!(ledger.take(t0), vec![(1, false)]);
        ledger.gone(2);
        ledger.taken(4);
        ledger.taken(5);
        due(&mut ledger, &[4, 5], t0);
        assert_eq!(ledger.take(t0), vec![(5, true)]);
    }

    #[test]
    fn out_of_order_takes_close_the_gap() {
        let t0 = Instant::now();
        let mut ledger = ledger(&[2, 3, 1]);
        due(&mut ledger, &[1, 2, 3], t0);
        assert_eq!(ledger.take(t0), vec![(3, true)]);
        assert!(ledger.taken_ahead.is_empty());
    }

    #[test]
    fn closing_sends_every_held_ack() {
        let t0 = Instant::now();
        let mut ledger = ledger(&[1, 2, 3, 4]);
        due(&mut ledger, &[1, 2, 4], t0);
        assert_eq!(ledger.take_all(), vec![(2, true), (4, false)]);
        assert_eq!(ledger.next_release(), None);
    }

    /// What the broker does with the acks a ledger sends, over random interleavings of
    /// takes, settles and flushes: every acked tag was due, no ack names a tag the broker no
    /// longer holds (that closes the channel), and in the end every due delivery was acked.
    #[test]
    fn the_broker_sees_every_due_delivery_acked_once_and_nothing_else() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let flush = |acks: Vec<(DeliveryTag, bool)>,
                     unacked: &mut BTreeSet<DeliveryTag>,
                     due_tags: &BTreeSet<DeliveryTag>| {
            for (tag, multiple) in acks {
                assert!(
                    unacked.contains(&tag),
                    "ack for tag {tag}, which the broker no longer holds"
                );
                let covered: Vec<DeliveryTag> = if multiple {
                    unacked.range(..=tag).copied().collect()
                } else {
                    vec![tag]
                };
                for t in covered {
                    assert!(due_tags.contains(&t), "tag {t} acked before it was due");
                    unacked.remove(&t);
                }
            }
        };
        for _ in 0..500 {
            let total: DeliveryTag = 1 + next(60);
            let mut now = Instant::now();
            let mut ledger: Ledger<DeliveryTag> = Ledger::new(HOLD_FOR);
            // Delivered to the channel and not yet acked, nacked or rejected, as the broker
            // sees it.
            let mut unacked: BTreeSet<DeliveryTag> = (1..=total).collect();
            let mut untaken: Vec<DeliveryTag> = (1..=total).collect();
            let mut running: Vec<DeliveryTag> = Vec::new();
            let mut due_tags = BTreeSet::new();
            while !(untaken.is_empty() && running.is_empty()) {
                now += Duration::from_millis(next(3));
                match next(4) {
                    0 if !untaken.is_empty() => {
                        // Consumers are merged: any of the next few may come out first.
                        let i = next(untaken.len().min(3) as u64) as usize;
                        let tag = untaken.remove(i);
                        ledger.taken(tag);
                        running.push(tag);
                    }
                    1 | 2 if !running.is_empty() => {
                        let tag = running.swap_remove(next(running.len() as u64) as usize);
                        if next(5) == 0 {
                            unacked.remove(&tag);
                            ledger.gone(tag);
                        } else {
                            due_tags.insert(tag);
                            ledger.due(tag, tag, now);
                        }
                    }
                    _ => flush(ledger.take(now), &mut unacked, &due_tags),
                }
            }
            flush(ledger.take_all(), &mut unacked, &due_tags);
            assert!(unacked.is_empty(), "never acked: {unacked:?}");
        }
    }
}
