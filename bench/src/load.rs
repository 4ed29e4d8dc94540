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
    let mut samples = Vec::new();
    let mut errors = 0;
    while let Some(joined) = tasks.join_next().await {
        if let Ok((s, e)) = joined {
            samples.extend(s);
            errors += e;
        } else {
            errors += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    LoadResult {
        ok: samples.len(),
        errors,
        elapsed_secs: crate::stats::round3(elapsed),
        per_sec: samples.len() as f64 / elapsed,
        latency: Percentiles::of(&samples),
    }
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
