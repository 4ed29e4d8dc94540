//! Load shapes. Closed loop: C clients, each sending its next request when the previous one
//! is answered, for a fixed time (throughput at a concurrency). Open loop: requests at a fixed
//! rate whatever the answers (latency at a light load, without coordinated omission).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::stats::Percentiles;

#[derive(Debug, Clone, Serialize)]
pub struct LoadResult {
    pub ok: usize,
    pub errors: usize,
    pub elapsed_secs: f64,
    pub per_sec: f64,
    pub latency: Option<Percentiles>,
}

/// Runs `op(i)` from `concurrency` tasks for `duration`; `op` says whether it succeeded.
/// Throughput is successes over the time until the last request started in time returned.
pub async fn closed_loop<F, Fut>(concurrency: usize, duration: Duration, op: F) -> LoadResult
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    tally_closed_loop(concurrency, duration, op).await.result()
}

/// What a closed loop measured, kept whole so that several windows can be added up (their
/// percentiles over every sample, not averaged).
#[derive(Debug, Default)]
pub struct Tally {
    samples: Vec<Duration>,
    errors: usize,
    elapsed_secs: f64,
}

impl Tally {
    /// Successes per second over the tally's time.
    pub fn per_sec(&self) -> f64 {
        self.samples.len() as f64 / self.elapsed_secs.max(1e-9)
    }

    /// Adds another window's measurements.
    pub fn add(&mut self, other: Tally) {
        self.samples.extend(other.samples);
        self.errors += other.errors;
        self.elapsed_secs += other.elapsed_secs;
    }

    pub fn result(&self) -> LoadResult {
        LoadResult {
            ok: self.samples.len(),
            errors: self.errors,
            elapsed_secs: crate::stats::round3(self.elapsed_secs),
            per_sec: self.per_sec(),
            latency: Percentiles::of(&self.samples),
        }
    }
}

/// [`closed_loop`], its samples kept.
pub async fn tally_closed_loop<F, Fut>(concurrency: usize, duration: Duration, op: F) -> Tally
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    let started = Instant::now();
    let deadline = started + duration;
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let op = op.clone();
        let next = next.clone();
        tasks.spawn(async move {
            let mut samples = Vec::new();
            let mut errors = 0;
            while Instant::now() < deadline {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let at = Instant::now();
                if op(i).await {
                    samples.push(at.elapsed());
                } else {
                    errors += 1;
                }
            }
            (samples, errors)
        });
    }
    let mut tally = Tally::default();
    while let Some(joined) = tasks.join_next().await {
        if let Ok((samples, errors)) = joined {
            tally.samples.extend(samples);
            tally.errors += errors;
        } else {
            tally.errors += 1;
        }
    }
    tally.elapsed_secs = started.elapsed().as_secs_f64();
    tally
}

/// Starts `op(i)` for `i` in `0..n` at `rate` per second, each in its own task, and returns
/// their outputs in order once all have finished.
pub async fn open_loop<F, Fut, T>(n: usize, rate: f64, op: F) -> Vec<T>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let started = tokio::time::Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        tokio::time::sleep_until(started + interval.mul_f64(i as f64)).await;
        handles.push(tokio::spawn(op(i)));
    }
    let mut out = Vec::with_capacity(n);
    for handle in handles {
        if let Ok(value) = handle.await {
            out.push(value);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_add_up_to_their_samples_over_their_time() {
        let window = |ms: &[u64], errors, elapsed_secs| Tally {
            samples: ms.iter().map(|&m| Duration::from_millis(m)).collect(),
            errors,
            elapsed_secs,
        };
        let mut tally = window(&[1, 2, 3], 1, 1.0);
        tally.add(window(&[10; 5], 0, 3.0));
        let result = tally.result();
        assert_eq!((result.ok, result.errors), (8, 1));
        assert_eq!(result.per_sec, 2.0);
        let latency = result.latency.expect("samples");
        assert_eq!((latency.p50_ms, latency.max_ms), (10.0, 10.0));
    }
}
