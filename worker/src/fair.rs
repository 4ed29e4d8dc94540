//! Whose delivery runs next when several queues feed one set of slots: smooth weighted
//! round-robin (the algorithm nginx uses for upstreams) over the queues that have a delivery
//! waiting. Over any stretch in which lanes stay busy, each gets turns in proportion to its
//! weight, interleaved rather than in bursts; an idle lane is skipped and banks nothing.
//!
//! Pure: the consumer pushes what the broker delivered and pops when a slot frees.

use std::collections::VecDeque;

pub struct Lanes<T> {
    lanes: Vec<Lane<T>>,
}

struct Lane<T> {
    weight: i64,
    /// Smooth round-robin credit: grows by `weight` each pick it takes part in, shrinks by
    /// the total weight of the contenders when it wins.
    credit: i64,
    waiting: VecDeque<T>,
}

impl<T> Lanes<T> {
    /// One lane per weight, in order; a weight of zero counts as one.
    pub fn new(weights: impl IntoIterator<Item = u32>) -> Self {
        Self {
            lanes: weights
                .into_iter()
                .map(|w| Lane {
                    weight: i64::from(w.max(1)),
                    credit: 0,
                    waiting: VecDeque::new(),
                })
                .collect(),
        }
    }

    /// Queues `item` on `lane`; an unknown lane is treated as the first.
    pub fn push(&mut self, lane: usize, item: T) {
        let index = if lane < self.lanes.len() { lane } else { 0 };
        if let Some(lane) = self.lanes.get_mut(index) {
            lane.waiting.push_back(item);
        }
    }

    /// The next item, from the lane whose turn it is among those with one waiting.
    pub fn pick(&mut self) -> Option<T> {
        let mut total = 0;
        let mut best: Option<usize> = None;
        for i in 0..self.lanes.len() {
            let lane = &mut self.lanes[i];
            if lane.waiting.is_empty() {
                continue;
            }
            lane.credit += lane.weight;
            total += lane.weight;
            let credit = lane.credit;
            if best.is_none_or(|b| credit > self.lanes[b].credit) {
                best = Some(i);
            }
        }
        let lane = &mut self.lanes[best?];
        lane.credit -= total;
        let item = lane.waiting.pop_front();
        if lane.waiting.is_empty() {
            // An idle lane banks nothing: it rejoins on equal terms.
            lane.credit = 0;
        }
        item
    }

    /// Everything still waiting, lane by lane (to give back to the broker).
    pub fn drain(&mut self) -> Vec<T> {
        let mut all = Vec::new();
        for lane in &mut self.lanes {
            all.extend(lane.waiting.drain(..));
            lane.credit = 0;
        }
        all
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.lanes.iter().all(|l| l.waiting.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picks(lanes: &mut Lanes<(usize, u32)>, n: usize) -> Vec<usize> {
        (0..n)
            .filter_map(|_| lanes.pick())
            .map(|(lane, _)| lane)
            .collect()
    }

    fn fill(lanes: &mut Lanes<(usize, u32)>, lane: usize, n: u32) {
        for i in 0..n {
            lanes.push(lane, (lane, i));
        }
    }

    #[test]
    fn equal_lanes_alternate() {
        let mut lanes = Lanes::new([1, 1]);
        fill(&mut lanes, 0, 1000);
        fill(&mut lanes, 1, 10);
        let order = picks(&mut lanes, 20);
        assert_eq!(order.iter().filter(|&&l| l == 1).count(), 10);
        // Lane 1's ten are done within the first twenty picks, one every other turn.
        for pair in order.chunks(2) {
            assert!(pair.contains(&0) && pair.contains(&1), "{order:?}");
        }
    }

    #[test]
    fn a_late_lane_gets_the_next_turn_after_at_most_one_other() {
        let mut lanes = Lanes::new([1, 1, 1]);
        fill(&mut lanes, 0, 100);
        assert_eq!(picks(&mut lanes, 50), vec![0; 50]);
        fill(&mut lanes, 2, 3);
        let order = picks(&mut lanes, 6);
        assert_eq!(order.iter().filter(|&&l| l == 2).count(), 3, "{order:?}");
        assert!(order[..2].contains(&2), "{order:?}");
    }

    #[test]
    fn weights_share_turns_in_proportion() {
        let mut lanes = Lanes::new([3, 1]);
        fill(&mut lanes, 0, 1000);
        fill(&mut lanes, 1, 1000);
        let order = picks(&mut lanes, 400);
        assert_eq!(order.iter().filter(|&&l| l == 0).count(), 300);
        // Interleaved: never more than three of lane 0 in a row.
        assert!(order.windows(4).all(|w| w.contains(&1)), "{order:?}");
    }

    #[test]
    fn items_of_one_lane_keep_their_order_and_empty_lanes_are_skipped() {
        let mut lanes = Lanes::new([1, 5, 1]);
        fill(&mut lanes, 2, 5);
        let items: Vec<_> = std::iter::from_fn(|| lanes.pick()).collect();
        assert_eq!(items, (0..5).map(|i| (2, i)).collect::<Vec<_>>());
        assert!(lanes.pick().is_none());
        assert!(lanes.is_empty());
    }

    #[test]
    fn drain_returns_everything_and_unknown_lanes_fall_back_to_the_first() {
        let mut lanes = Lanes::new([1, 1]);
        fill(&mut lanes, 1, 2);
        lanes.push(7, (7, 0));
        assert_eq!(lanes.drain().len(), 3);
        assert!(lanes.is_empty());
    }
}
