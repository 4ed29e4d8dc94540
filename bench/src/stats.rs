//! Latency percentiles over a run's samples (nearest rank: every reported value was observed).

use std::time::Duration;

use serde::Serialize;

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Percentiles {
    pub count: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    /// `None` without samples.
    pub fn of(samples: &[Duration]) -> Option<Self> {
        Self::of_ms(&samples.iter().map(ms).collect::<Vec<_>>())
    }

    /// The same over samples already in milliseconds (which may be negative: an overhead
    /// after subtracting a nominal latency).
    pub fn of_ms(samples: &[f64]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let rank = |p: f64| {
            let index = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
            round3(sorted[index])
        };
        Some(Self {
            count: sorted.len(),
            p50_ms: rank(0.50),
            p95_ms: rank(0.95),
            p99_ms: rank(0.99),
            max_ms: rank(1.0),
        })
    }
}

pub fn ms(d: &Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = Percentiles::of_ms(&samples).expect("samples");
        assert_eq!(
            (p.p50_ms, p.p95_ms, p.p99_ms, p.max_ms),
            (50.0, 95.0, 99.0, 100.0)
        );
        let one = Percentiles::of_ms(&[7.0]).expect("one sample");
        assert_eq!((one.p50_ms, one.p99_ms), (7.0, 7.0));
        assert!(Percentiles::of(&[]).is_none());
    }
}
