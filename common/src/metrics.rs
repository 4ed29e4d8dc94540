//! Prometheus metrics. The registry is built per process (or per test app) and passed
//! around, never a hidden global, so tests read their own counters.

use prometheus::{
    CounterVec, Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric agentfleet exports. Names are part of the public contract: dashboards and
/// alerts in `deploy/` refer to them, and a test checks they exist.
pub struct Metrics {
    registry: Registry,
    pub jobs_submitted: IntCounterVec,
    pub jobs_rejected: IntCounterVec,
    pub jobs_completed: IntCounterVec,
    pub job_duration: HistogramVec,
    pub jobs_in_flight: IntGaugeVec,
    pub llm_tokens: IntCounterVec,
    pub llm_cost_usd: CounterVec,
    pub llm_cache: IntCounterVec,
    pub tool_calls: IntCounterVec,
    pub tool_call_duration: HistogramVec,
    pub llm_requests: IntCounterVec,
    pub llm_request_duration: HistogramVec,
    pub rate_limit_wait: HistogramVec,
    pub queue_depth: IntGaugeVec,
    pub admissible_backlog: IntGaugeVec,
    pub tenant_spend: GaugeVec,
    pub tenant_budget: GaugeVec,
    pub queue_wait: HistogramVec,
    pub job_retries: IntCounterVec,
    pub dead_letters: IntCounterVec,
    pub webhook_deliveries: IntCounterVec,
    pub webhook_first_attempts: IntCounterVec,
    pub ack_frames: IntCounterVec,
    pub circuit_state: IntGaugeVec,
    pub jobs_cancelled: IntCounterVec,
    pub http_requests: IntCounterVec,
    pub http_request_duration: HistogramVec,
    pub redis_round_trips: IntCounter,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0,
];

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let metric = IntCounterVec::new(Opts::new(name, help), labels)
                .unwrap_or_else(|e| panic!("metric {name} is malformed: {e}"));
            register(&registry, name, Box::new(metric.clone()));
            metric
        };
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
            let metric = HistogramVec::new(opts, labels)
                .unwrap_or_else(|e| panic!("metric {name} is malformed: {e}"));
            register(&registry, name, Box::new(metric.clone()));
            metric
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let metric = IntGaugeVec::new(Opts::new(name, help), labels)
                .unwrap_or_else(|e| panic!("metric {name} is malformed: {e}"));
            register(&registry, name, Box::new(metric.clone()));
            metric
        };
        let float_gauge = |name: &str, help: &str, labels: &[&str]| {
            let metric = GaugeVec::new(Opts::new(name, help), labels)
                .unwrap_or_else(|e| panic!("metric {name} is malformed: {e}"));
            register(&registry, name, Box::new(metric.clone()));
            metric
        };
        let float_counter = |name: &str, help: &str, labels: &[&str]| {
            let metric = CounterVec::new(Opts::new(name, help), labels)
                .unwrap_or_else(|e| panic!("metric {name} is malformed: {e}"));
            register(&registry, name, Box::new(metric.clone()));
            metric
        };
        Self {
            llm_cost_usd: float_counter(
                "agentfleet_llm_cost_usd_total",
                "What model calls cost in USD, from the price table.",
                &["agent"],
            ),
            llm_cache: counter(
                "agentfleet_llm_cache_total",
                "Response-cache lookups of agents with a cache, by result (hit, miss).",
                &["agent", "result"],
            ),
            tool_calls: counter(
                "agentfleet_tool_calls_total",
                "Tool calls, by status (ok, error, invalid, uncertain).",
                &["tool", "status"],
            ),
            tool_call_duration: histogram(
                "agentfleet_tool_call_duration_seconds",
                "Duration of one executed tool call.",
                &["tool"],
            ),
            jobs_submitted: counter(
                "agentfleet_jobs_submitted_total",
                "Jobs accepted by the dispatcher (202).",
                &["agent"],
            ),
            jobs_rejected: counter(
                "agentfleet_jobs_rejected_total",
                "Job submissions refused, by reason (invalid, unauthorized, unavailable).",
                &["reason"],
            ),
            jobs_completed: counter(
                "agentfleet_jobs_completed_total",
                "Jobs that reached a terminal state.",
                &["agent", "status"],
            ),
            job_duration: histogram(
                "agentfleet_job_duration_seconds",
                "From a job's creation to its terminal state.",
                &["agent"],
            ),
            queue_depth: gauge(
                "agentfleet_queue_depth",
                "Jobs ready in a work queue, by agent and tenant (tenant=\"\" for an agent's shared queue), as the dispatcher last polled it.",
                &["agent", "tenant"],
            ),
            admissible_backlog: gauge(
                "agentfleet_admissible_backlog",
                "Queued jobs of an agent that its limits would admit now (not paused, not held by a tenant's running quota, at most a minute of its requests/min): what autoscaling should scale on.",
                &["agent"],
            ),
            tenant_spend: float_gauge(
                "agentfleet_tenant_spend_usd",
                "What a tenant's model calls cost today (UTC), fleet-wide, from its budget ledger (reservations in flight included), as the dispatcher last read it.",
                &["tenant"],
            ),
            tenant_budget: float_gauge(
                "agentfleet_tenant_budget_usd",
                "A tenant's daily budget in USD (tenants with one).",
                &["tenant"],
            ),
            queue_wait: histogram(
                "agentfleet_queue_wait_seconds",
                "From a job's acceptance to the start of its first run, by agent and tenant.",
                &["agent", "tenant"],
            ),
            jobs_in_flight: gauge(
                "agentfleet_jobs_in_flight",
                "Runs in progress on this replica.",
                &["agent"],
            ),
            llm_tokens: counter(
                "agentfleet_llm_tokens_total",
                "Tokens reported by providers, by kind (prompt, completion).",
                &["agent", "kind"],
            ),
            llm_requests: counter(
                "agentfleet_llm_requests_total",
                "Provider calls, by outcome (ok or an error category).",
                &["agent", "outcome"],
            ),
            llm_request_duration: histogram(
                "agentfleet_llm_request_duration_seconds",
                "Duration of one provider call.",
                &["agent"],
            ),
            rate_limit_wait: histogram(
                "agentfleet_rate_limit_wait_seconds",
                "Time a run waited for the fleet-wide rate limit.",
                &["agent"],
            ),
            job_retries: counter(
                "agentfleet_job_retries_total",
                "Attempts scheduled for a retry, by error category.",
                &["agent", "category"],
            ),
            dead_letters: counter(
                "agentfleet_dead_letters_total",
                "Messages sent to the dead-letter queue, by reason.",
                &["reason"],
            ),
            webhook_deliveries: counter(
                "agentfleet_webhook_deliveries_total",
                "Webhook delivery attempts, by outcome (delivered, retry, gone, exhausted, blocked, throttled).",
                &["status"],
            ),
            webhook_first_attempts: counter(
                "agentfleet_webhook_first_attempts_total",
                "Where jobs' events went from the run that ended them: concluded inline, or queued (no inline room, or a failed or slow first attempt).",
                &["path"],
            ),
            ack_frames: counter(
                "agentfleet_ack_frames_total",
                "Acks sent to the broker, by kind: multiple (one frame for every delivery of its channel up to its tag) or single. Deliveries acked per frame = jobs / frames.",
                &["kind"],
            ),
            circuit_state: gauge(
                "agentfleet_circuit_state",
                "Provider circuit breaker per endpoint: 0 closed, 1 open, 2 half-open.",
                &["endpoint"],
            ),
            jobs_cancelled: counter(
                "agentfleet_jobs_cancelled_total",
                "Cancellations accepted, by the status the job had (queued, retrying, running).",
                &["from"],
            ),
            http_requests: counter(
                "agentfleet_http_requests_total",
                "Dispatcher HTTP requests, by route and status code.",
                &["route", "status"],
            ),
            http_request_duration: histogram(
                "agentfleet_http_request_duration_seconds",
                "Dispatcher HTTP request duration, by route.",
                &["route"],
            ),
            redis_round_trips: {
                let name = "agentfleet_redis_round_trips_total";
                let metric = IntCounter::new(
                    name,
                    "Round trips to Redis this process made (a command, a pipeline or a script, each with its WAIT when writes are acknowledged).",
                )
                .unwrap_or_else(|e| panic!("metric {name} is malformed: {e}"));
                register(&registry, name, Box::new(metric.clone()));
                metric
            },
            registry,
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec only fails on a malformed metric family, which `new` rules out.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Names of every metric this process can export (families appear in `render` only once
    /// a label set is used; this lists them all).
    pub fn names() -> Vec<&'static str> {
        vec![
            "agentfleet_jobs_submitted_total",
            "agentfleet_jobs_rejected_total",
            "agentfleet_jobs_completed_total",
            "agentfleet_job_duration_seconds",
            "agentfleet_jobs_in_flight",
            "agentfleet_llm_tokens_total",
            "agentfleet_llm_cost_usd_total",
            "agentfleet_llm_cache_total",
            "agentfleet_tool_calls_total",
            "agentfleet_tool_call_duration_seconds",
            "agentfleet_llm_requests_total",
            "agentfleet_llm_request_duration_seconds",
            "agentfleet_rate_limit_wait_seconds",
            "agentfleet_queue_depth",
            "agentfleet_admissible_backlog",
            "agentfleet_tenant_spend_usd",
            "agentfleet_tenant_budget_usd",
            "agentfleet_queue_wait_seconds",
            "agentfleet_job_retries_total",
            "agentfleet_dead_letters_total",
            "agentfleet_webhook_deliveries_total",
            "agentfleet_webhook_first_attempts_total",
            "agentfleet_ack_frames_total",
            "agentfleet_circuit_state",
            "agentfleet_jobs_cancelled_total",
            "agentfleet_http_requests_total",
            "agentfleet_http_request_duration_seconds",
            "agentfleet_redis_round_trips_total",
        ]
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn register(registry: &Registry, name: &str, metric: Box<dyn prometheus::core::Collector>) {
    registry
        .register(metric)
        .unwrap_or_else(|e| panic!("metric {name} registered twice: {e}"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_name_is_registered() {
        let metrics = Metrics::new();
        metrics.jobs_submitted.with_label_values(&["a"]).inc();
        let rendered = metrics.render();
        assert!(rendered.contains("agentfleet_jobs_submitted_total{agent=\"a\"} 1"));
        // Every family was registered under a listed name: registering one again must fail.
        for name in Metrics::names() {
            let dup = IntCounterVec::new(Opts::new(name, "dup"), &["x"]).expect("metric");
            assert!(
                metrics.registry().register(Box::new(dup)).is_err(),
                "{name}"
            );
        }
    }
}
