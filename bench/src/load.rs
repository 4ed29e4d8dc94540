//! Load shapes. Closed loop: C clients, each sending its next request when the previous one
//! is answered, for a fixed time (throughput at a concurrency). Open loop: requests at a fixed
//! rate whatever the answers (latency at a light load, without coordinated omission).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::procfs::CpuUse;
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

/// Batches of jobs measured one at a time and added up, as scenario 1 takes its turns: jobs
/// over the batches' summed time (each from its first POST to its last webhook) and over
/// their summed submitting, and the CPU of each batch.
#[derive(Debug, Default)]
pub struct Batches {
    jobs: usize,
    elapsed: Duration,
    submitting: Duration,
    cpu: Vec<CpuUse>,
}

impl Batches {
    /// Adds a batch of `jobs` that took `elapsed` (POSTs for `submitting` of it); answers its
    /// jobs/s.
    pub fn add(
        &mut self,
        jobs: usize,
        elapsed: Duration,
        submitting: Duration,
        cpu: CpuUse,
    ) -> f64 {
        self.jobs += jobs;
        self.elapsed += elapsed;
        self.submitting += submitting;
        self.cpu.push(cpu);
        jobs as f64 / elapsed.as_secs_f64().max(1e-9)
    }

    pub fn jobs(&self) -> usize {
        self.jobs
    }

    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    pub fn jobs_per_sec(&self) -> f64 {
        self.jobs as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Accepted POSTs per second while the POSTs went on (intake under a concurrent drain).
    pub fn posts_per_sec(&self) -> f64 {
        self.jobs as f64 / self.submitting.as_secs_f64().max(1e-9)
    }

    /// CPU over every batch, each weighted by its length.
    pub fn cpu(&self) -> CpuUse {
        CpuUse::over(&self.cpu)
    }
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
    fn batches_add_up_over_their_summed_time() {
        let cpu = |wall_secs: f64, cores: f64| CpuUse {
            wall_secs,
            machine_cores: cores,
            cores: [("worker".to_owned(), cores)].into(),
        };
        let mut batches = Batches::default();
        let first = batches.add(
            1_000,
            Duration::from_secs(1),
            Duration::from_millis(500),
            cpu(1.0, 1.0),
        );
        let second = batches.add(
            1_000,
            Duration::from_secs(3),
            Duration::from_millis(1_500),
            cpu(3.0, 2.0),
        );
        assert_eq!((first, second), (1_000.0, 1_000.0 / 3.0));
        // 2,000 jobs in 4 s, not the mean of the two rates (667).
        assert_eq!(batches.jobs_per_sec(), 500.0);
        assert_eq!(batches.posts_per_sec(), 1_000.0);
        assert_eq!(batches.cpu().machine_cores, 1.75);
    }

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
