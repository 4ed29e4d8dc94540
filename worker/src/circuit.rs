//! A circuit breaker per provider endpoint, per replica: after `failure_threshold`
//! consecutive retryable failures the endpoint is left alone for `cooldown_secs`; jobs for it
//! are delayed (not failed, not sent) meanwhile; then one probe call is let through, and its
//! outcome closes or re-opens the circuit. `agentfleet_circuit_state{endpoint}` shows it.
//!
//! Per replica rather than fleet-wide: each replica learns of an outage from its own calls
//! within `failure_threshold` calls, which costs a few calls per replica and no shared state.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use prometheus::IntGauge;

use agentfleet_common::config::CircuitBreakerConfig;
use agentfleet_common::metrics::Metrics;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probe_since: Instant },
}

/// What a call may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead; `probe` when this call decides whether the circuit closes.
    Call { probe: bool },
    /// The circuit is open: come back after this long.
    Wait(Duration),
}

/// How a call ended, as far as the endpoint's health goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallResult {
    /// The endpoint answered (successfully, or with a permanent error that is the request's fault).
    Healthy,
    /// A retryable failure: 429, 5xx, timeout, network, malformed answer.
    Unhealthy,
}

pub struct Circuit {
    threshold: u32,
    cooldown: Duration,
    phase: Mutex<Phase>,
    gauge: IntGauge,
}

impl Circuit {
    fn new(config: &CircuitBreakerConfig, gauge: IntGauge) -> Self {
        gauge.set(0);
        Self {
            threshold: config.failure_threshold,
            cooldown: config.cooldown,
            phase: Mutex::new(Phase::Closed { failures: 0 }),
            gauge,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.phase
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn admit(&self) -> Admission {
        let now = Instant::now();
        let mut phase = self.lock();
        match *phase {
            Phase::Closed { .. } => Admission::Call { probe: false },
            Phase::Open { until } if now < until => Admission::Wait(until - now),
            // A probe that never reported (its run was abandoned) does not block forever.
            Phase::HalfOpen { probe_since } if now < probe_since + self.cooldown => {
                Admission::Wait(self.cooldown.min(Duration::from_secs(1)))
            }
            Phase::Open { .. } | Phase::HalfOpen { .. } => {
                *phase = Phase::HalfOpen { probe_since: now };
                self.gauge.set(2);
                Admission::Call { probe: true }
            }
        }
    }

    pub fn record(&self, result: CallResult) {
        let mut phase = self.lock();
        let next = match (result, *phase) {
            (CallResult::Healthy, _) => Phase::Closed { failures: 0 },
            (CallResult::Unhealthy, Phase::Closed { failures })
                if failures + 1 < self.threshold =>
            {
                Phase::Closed {
                    failures: failures + 1,
                }
            }
            (CallResult::Unhealthy, Phase::Open { until }) => Phase::Open { until },
            (CallResult::Unhealthy, _) => {
                tracing::warn!(cooldown = ?self.cooldown, "provider circuit opened");
                Phase::Open {
                    until: Instant::now() + self.cooldown,
                }
            }
        };
        self.gauge.set(match next {
            Phase::Closed { .. } => 0,
            Phase::Open { .. } => 1,
            Phase::HalfOpen { .. } => 2,
        });
        *phase = next;
    }
}

/// The circuits of one replica, one per endpoint (agents sharing an endpoint share it).
#[derive(Default)]
pub struct Circuits {
    by_endpoint: Mutex<HashMap<String, Arc<Circuit>>>,
}

impl Circuits {
    /// The circuit of `endpoint`; `label` is what the metric shows (no path or credentials).
    pub fn get(
        &self,
        endpoint: &str,
        label: &str,
        config: &CircuitBreakerConfig,
        metrics: &Metrics,
    ) -> Arc<Circuit> {
        let mut map = self
            .by_endpoint
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.entry(endpoint.to_owned())
            .or_insert_with(|| {
                Arc::new(Circuit::new(
                    config,
                    metrics.circuit_state.with_label_values(&[label]),
                ))
            })
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn circuit(threshold: u32, cooldown_ms: u64) -> Circuit {
        let metrics = Metrics::new();
        let config = CircuitBreakerConfig {
            failure_threshold: threshold,
            cooldown: Duration::from_secs(1),
        };
        let mut c = Circuit::new(&config, metrics.circuit_state.with_label_values(&["e"]));
        c.cooldown = Duration::from_millis(cooldown_ms);
        c
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_and_closes_on_a_good_probe() {
        let c = circuit(3, 40);
        for _ in 0..2 {
            assert_eq!(c.admit(), Admission::Call { probe: false });
            c.record(CallResult::Unhealthy);
        }
        c.record(CallResult::Healthy); // a success resets the count
        for _ in 0..3 {
            c.record(CallResult::Unhealthy);
        }
        assert!(matches!(c.admit(), Admission::Wait(_)));
        assert_eq!(c.gauge.get(), 1);
        tokio::time::advance(Duration::from_millis(50)).await;
        assert_eq!(c.admit(), Admission::Call { probe: true });
        assert!(
            matches!(c.admit(), Admission::Wait(_)),
            "one probe at a time"
        );
        assert_eq!(c.gauge.get(), 2);
        c.record(CallResult::Healthy);
        assert_eq!(c.admit(), Admission::Call { probe: false });
        assert_eq!(c.gauge.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens() {
        let c = circuit(1, 30);
        c.record(CallResult::Unhealthy);
        tokio::time::advance(Duration::from_millis(40)).await;
        assert_eq!(c.admit(), Admission::Call { probe: true });
        c.record(CallResult::Unhealthy);
        assert!(matches!(c.admit(), Admission::Wait(_)));
    }
}
