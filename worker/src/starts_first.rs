//! Runs that begin go before runs that end. When a wave of runs ends together (a thousand
//! provider calls answering within a few milliseconds, scenario 3), every ending — the inline
//! webhook, the note that seals the job, the ack — and every run taking a freed call slot —
//! its lease and running mark, its provider request — want the same cores at once, and the
//! next wave's calls start only as fast as the whole pile drains: on two cores a call slot
//! stood empty for ~0.2–0.3 s at each turnover. A beginning is short and is what keeps the
//! slots busy; an ending can wait a little. So while a crowd of runs is beginning on this
//! replica, a run whose end is stored waits for the crowd to pass, for at most [`PATIENCE`],
//! before the rest of its ending. (Its end is stored first: a crash while it waits must not
//! lose a paid answer.)
//!
//! Only a crowd holds endings back ([`CROWD`]): at a steady rate a few runs are always
//! beginning, and an ending that waited for none would wait for ever more. The logic is here,
//! without I/O; the run takes a [`Beginning`] around its begin and waits its turn
//! ([`StartsFirst::ending_turn`]) between storing its end and delivering its webhook.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// More runs beginning at once than this is a crowd: a wave's turnover, where hundreds begin
/// together, not a steady rate (scenario 1's ~2,800 jobs/s ran as fast with the wait as
/// without it).
pub const CROWD: usize = 32;

/// The longest an ending waits for a crowd of beginnings: long next to a wave's turnover
/// (~0.1 s of beginnings for a thousand runs on two cores), short next to the provider calls
/// it lets start sooner.
pub const PATIENCE: Duration = Duration::from_millis(250);

/// The replica's count of runs beginning, which endings yield to.
#[derive(Debug)]
pub struct StartsFirst {
    beginning: AtomicUsize,
    /// Woken when the count falls back to [`CROWD`].
    passed: Notify,
    crowd: usize,
    patience: Duration,
}

impl Default for StartsFirst {
    fn default() -> Self {
        Self::new(CROWD, PATIENCE)
    }
}

impl StartsFirst {
    pub fn new(crowd: usize, patience: Duration) -> Self {
        Self {
            beginning: AtomicUsize::new(0),
            passed: Notify::new(),
            crowd,
            patience,
        }
    }

    /// Counts a run as beginning until the guard drops.
    pub fn beginning(&self) -> Beginning<'_> {
        self.beginning.fetch_add(1, Ordering::AcqRel);
        Beginning(self)
    }

    /// Waits while more than a crowd of runs are beginning, for at most the patience.
    pub async fn ending_turn(&self) {
        if !self.crowded() {
            return;
        }
        let deadline = tokio::time::Instant::now() + self.patience;
        loop {
            // Registered before the count is read again, so a crowd that passes in between
            // still wakes this waiter.
            let passed = self.passed.notified();
            tokio::pin!(passed);
            passed.as_mut().enable();
            if !self.crowded() {
                return;
            }
            if tokio::time::timeout_at(deadline, passed).await.is_err() {
                return;
            }
        }
    }

    fn crowded(&self) -> bool {
        self.beginning.load(Ordering::Acquire) > self.crowd
    }
}

/// A run counted as beginning (see [`StartsFirst::beginning`]).
#[derive(Debug)]
pub struct Beginning<'a>(&'a StartsFirst);

impl Drop for Beginning<'_> {
    fn drop(&mut self) {
        let before = self.0.beginning.fetch_sub(1, Ordering::AcqRel);
        if before == self.0.crowd + 1 {
            self.0.passed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Polls `ending` once: whether it finished.
    fn done(ending: &mut std::pin::Pin<Box<impl std::future::Future<Output = ()>>>) -> bool {
        let waker = futures_util::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        ending.as_mut().poll(&mut cx).is_ready()
    }

    #[tokio::test(start_paused = true)]
    async fn an_ending_goes_at_once_unless_a_crowd_is_beginning() {
        let gate = StartsFirst::new(2, Duration::from_secs(1));
        let few: Vec<_> = (0..2).map(|_| gate.beginning()).collect();
        assert!(done(&mut Box::pin(gate.ending_turn())), "two is no crowd");
        let third = gate.beginning();
        let mut ending = Box::pin(gate.ending_turn());
        assert!(!done(&mut ending), "three beginning hold an ending back");
        drop(third);
        assert!(done(&mut ending), "back to two: the ending goes");
        drop(few);
    }

    #[tokio::test(start_paused = true)]
    async fn an_ending_waits_no_longer_than_the_patience() {
        let gate = StartsFirst::new(0, Duration::from_millis(250));
        let _stuck = gate.beginning();
        let started = tokio::time::Instant::now();
        gate.ending_turn().await;
        assert_eq!(started.elapsed(), Duration::from_millis(250));
    }

    #[tokio::test(start_paused = true)]
    async fn every_waiting_ending_goes_when_the_crowd_passes() {
        let gate = StartsFirst::new(1, Duration::from_secs(60));
        let crowd: Vec<_> = (0..3).map(|_| gate.beginning()).collect();
        let mut endings: Vec<_> = (0..4).map(|_| Box::pin(gate.ending_turn())).collect();
        assert!(endings.iter_mut().all(|e| !done(e)));
        drop(crowd);
        assert!(
            endings.iter_mut().all(done),
            "all four go, none waits out its patience"
        );
    }
}
