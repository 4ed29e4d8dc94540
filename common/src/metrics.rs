//! Prometheus metrics. The registry is built per process (or per test app) and passed
//! around, never a hidden global, so tests read their own counters.

use prometheus::core::Collector;
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
    pub batched_jobs: IntCounterVec,
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

/// One metric family: its name, help and labels. Each is declared once, below; `Metrics::new`
/// makes them and `Metrics::names` lists them.
struct Family {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
}

impl Family {
    fn opts(&self) -> Opts {
        Opts::new(self.name, self.help)
    }
}

const FAMILIES: &[&Family] = &[
    &LLM_COST_USD,
    &LLM_CACHE,
    &TOOL_CALLS,
    &TOOL_CALL_DURATION,
    &JOBS_SUBMITTED,
    &JOBS_REJECTED,
    &JOBS_COMPLETED,
    &JOB_DURATION,
    &QUEUE_DEPTH,
    &ADMISSIBLE_BACKLOG,
    &TENANT_SPEND,
    &TENANT_BUDGET,
    &QUEUE_WAIT,
    &JOBS_IN_FLIGHT,
    &LLM_TOKENS,
    &LLM_REQUESTS,
    &LLM_REQUEST_DURATION,
    &RATE_LIMIT_WAIT,
    &JOB_RETRIES,
    &DEAD_LETTERS,
    &WEBHOOK_DELIVERIES,
    &WEBHOOK_FIRST_ATTEMPTS,
    &ACK_FRAMES,
    &BATCHED_JOBS,
    &CIRCUIT_STATE,
    &JOBS_CANCELLED,
    &HTTP_REQUESTS,
    &HTTP_REQUEST_DURATION,
    &REDIS_ROUND_TRIPS,
];

const LLM_COST_USD: Family = Family {
    name: "agentfleet_llm_cost_usd_total",
    help: "What model calls cost in USD, from the price table.",
    labels: &["agent"],
};

const LLM_CACHE: Family = Family {
    name: "agentfleet_llm_cache_total",
    help: "Response-cache lookups of agents with a cache, by result (hit, miss).",
    labels: &["agent", "result"],
};

const TOOL_CALLS: Family = Family {
    name: "agentfleet_tool_calls_total",
    help: "Tool calls, by status (ok, error, invalid, uncertain).",
    labels: &["tool", "status"],
};

const TOOL_CALL_DURATION: Family = Family {
    name: "agentfleet_tool_call_duration_seconds",
    help: "Duration of one executed tool call.",
    labels: &["tool"],
};

const JOBS_SUBMITTED: Family = Family {
    name: "agentfleet_jobs_submitted_total",
    help: "Jobs accepted by the dispatcher (202).",
    labels: &["agent"],
};

const JOBS_REJECTED: Family = Family {
    name: "agentfleet_jobs_rejected_total",
    help: "Job submissions refused, by reason (invalid, unauthorized, unavailable).",
    labels: &["reason"],
};

const JOBS_COMPLETED: Family = Family {
    name: "agentfleet_jobs_completed_total",
    help: "Jobs that reached a terminal state.",
    labels: &["agent", "status"],
};

const JOB_DURATION: Family = Family {
    name: "agentfleet_job_duration_seconds",
    help: "From a job's creation to its terminal state.",
    labels: &["agent"],
};

const QUEUE_DEPTH: Family = Family {
    name: "agentfleet_queue_depth",
    help: "Jobs ready in a work queue, by agent and tenant (tenant=\"\" for an agent's shared queue), as the dispatcher last polled it.",
    labels: &["agent", "tenant"],
};

const ADMISSIBLE_BACKLOG: Family = Family {
    name: "agentfleet_admissible_backlog",
    help: "Queued jobs of an agent that its limits would admit now (not paused, not held by a tenant's running quota, at most a minute of its requests/min): what autoscaling should scale on.",
    labels: &["agent"],
};

const TENANT_SPEND: Family = Family {
    name: "agentfleet_tenant_spend_usd",
    help: "What a tenant's model calls cost today (UTC), fleet-wide, from its budget ledger (reservations in flight included), as the dispatcher last read it.",
    labels: &["tenant"],
};

const TENANT_BUDGET: Family = Family {
    name: "agentfleet_tenant_budget_usd",
    help: "A tenant's daily budget in USD (tenants with one).",
    labels: &["tenant"],
};

const QUEUE_WAIT: Family = Family {
    name: "agentfleet_queue_wait_seconds",
    help: "From a job's acceptance to the start of its first run, by agent and tenant.",
    labels: &["agent", "tenant"],
};

const JOBS_IN_FLIGHT: Family = Family {
    name: "agentfleet_jobs_in_flight",
    help: "Runs in progress on this replica.",
    labels: &["agent"],
};

const LLM_TOKENS: Family = Family {
    name: "agentfleet_llm_tokens_total",
    help: "Tokens reported by providers, by kind (prompt, completion).",
    labels: &["agent", "kind"],
};

const LLM_REQUESTS: Family = Family {
    name: "agentfleet_llm_requests_total",
    help: "Provider calls, by outcome (ok or an error category).",
    labels: &["agent", "outcome"],
};

const LLM_REQUEST_DURATION: Family = Family {
    name: "agentfleet_llm_request_duration_seconds",
    help: "Duration of one provider call.",
    labels: &["agent"],
};

const RATE_LIMIT_WAIT: Family = Family {
    name: "agentfleet_rate_limit_wait_seconds",
    help: "Time a run waited for the fleet-wide rate limit.",
    labels: &["agent"],
};

const JOB_RETRIES: Family = Family {
    name: "agentfleet_job_retries_total",
    help: "Attempts scheduled for a retry, by error category.",
    labels: &["agent", "category"],
};

const DEAD_LETTERS: Family = Family {
    name: "agentfleet_dead_letters_total",
    help: "Messages sent to the dead-letter queue, by reason.",
    labels: &["reason"],
};

const WEBHOOK_DELIVERIES: Family = Family {
    name: "agentfleet_webhook_deliveries_total",
    help: "Webhook delivery attempts, by outcome (delivered, retry, gone, exhausted, blocked, throttled).",
    labels: &["status"],
};

const WEBHOOK_FIRST_ATTEMPTS: Family = Family {
    name: "agentfleet_webhook_first_attempts_total",
    help: "Where jobs' events went from the run that ended them: concluded inline, or queued (no inline room, or a failed or slow first attempt).",
    labels: &["path"],
};

const BATCHED_JOBS: Family = Family {
    name: "agentfleet_batched_jobs_total",
    help: "Jobs that arrived several to a message, by what became of them: run (from the batch), spilled (not started in time, published again on their own), split (the batch was delivered again and the job published on its own) or ended (the batch was delivered again and the job had ended: its event made sure of, nothing published).",
    labels: &["outcome"],
};

const ACK_FRAMES: Family = Family {
    name: "agentfleet_ack_frames_total",
    help: "Acks sent to the broker, by kind: multiple (one frame for every delivery of its channel up to its tag) or single. Deliveries acked per frame = jobs / frames.",
    labels: &["kind"],
};

const CIRCUIT_STATE: Family = Family {
    name: "agentfleet_circuit_state",
    help: "Provider circuit breaker per endpoint: 0 closed, 1 open, 2 half-open.",
    labels: &["endpoint"],
};

const JOBS_CANCELLED: Family = Family {
    name: "agentfleet_jobs_cancelled_total",
    help: "Cancellations accepted, by the status the job had (queued, retrying, running).",
    labels: &["from"],
};

const HTTP_REQUESTS: Family = Family {
    name: "agentfleet_http_requests_total",
    help: "Dispatcher HTTP requests, by route and status code.",
    labels: &["route", "status"],
};

const HTTP_REQUEST_DURATION: Family = Family {
    name: "agentfleet_http_request_duration_seconds",
    help: "Dispatcher HTTP request duration, by route.",
    labels: &["route"],
};

const REDIS_ROUND_TRIPS: Family = Family {
    name: "agentfleet_redis_round_trips_total",
    help: "Round trips to Redis this process made (a command, a pipeline or a script, each with its WAIT when writes are acknowledged).",
    labels: &[],
};

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let families = Registrar(&registry);
        Self {
            llm_cost_usd: families.float_counter(&LLM_COST_USD),
            llm_cache: families.counter(&LLM_CACHE),
            tool_calls: families.counter(&TOOL_CALLS),
            tool_call_duration: families.histogram(&TOOL_CALL_DURATION),
            jobs_submitted: families.counter(&JOBS_SUBMITTED),
            jobs_rejected: families.counter(&JOBS_REJECTED),
            jobs_completed: families.counter(&JOBS_COMPLETED),
            job_duration: families.histogram(&JOB_DURATION),
            queue_depth: families.gauge(&QUEUE_DEPTH),
            admissible_backlog: families.gauge(&ADMISSIBLE_BACKLOG),
            tenant_spend: families.float_gauge(&TENANT_SPEND),
            tenant_budget: families.float_gauge(&TENANT_BUDGET),
            queue_wait: families.histogram(&QUEUE_WAIT),
            jobs_in_flight: families.gauge(&JOBS_IN_FLIGHT),
            llm_tokens: families.counter(&LLM_TOKENS),
            llm_requests: families.counter(&LLM_REQUESTS),
            llm_request_duration: families.histogram(&LLM_REQUEST_DURATION),
            rate_limit_wait: families.histogram(&RATE_LIMIT_WAIT),
            job_retries: families.counter(&JOB_RETRIES),
            dead_letters: families.counter(&DEAD_LETTERS),
            webhook_deliveries: families.counter(&WEBHOOK_DELIVERIES),
            webhook_first_attempts: families.counter(&WEBHOOK_FIRST_ATTEMPTS),
            ack_frames: families.counter(&ACK_FRAMES),
            batched_jobs: families.counter(&BATCHED_JOBS),
            circuit_state: families.gauge(&CIRCUIT_STATE),
            jobs_cancelled: families.counter(&JOBS_CANCELLED),
            http_requests: families.counter(&HTTP_REQUESTS),
            http_request_duration: families.histogram(&HTTP_REQUEST_DURATION),
            redis_round_trips: families.plain_counter(&REDIS_ROUND_TRIPS),
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
        FAMILIES.iter().map(|family| family.name).collect()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Registers each family in the process's registry as it is made.
struct Registrar<'a>(&'a Registry);

impl Registrar<'_> {
    fn add<M: Collector + Clone + 'static>(
        &self,
        family: &Family,
        made: prometheus::Result<M>,
    ) -> M {
        let metric = made.unwrap_or_else(|e| panic!("metric {} is malformed: {e}", family.name));
        self.0
            .register(Box::new(metric.clone()))
            .unwrap_or_else(|e| panic!("metric {} registered twice: {e}", family.name));
        metric
    }

    fn counter(&self, family: &Family) -> IntCounterVec {
        self.add(family, IntCounterVec::new(family.opts(), family.labels))
    }

    fn plain_counter(&self, family: &Family) -> IntCounter {
        self.add(family, IntCounter::with_opts(family.opts()))
    }

    fn float_counter(&self, family: &Family) -> CounterVec {
        self.add(family, CounterVec::new(family.opts(), family.labels))
    }

    fn gauge(&self, family: &Family) -> IntGaugeVec {
        self.add(family, IntGaugeVec::new(family.opts(), family.labels))
    }

    fn float_gauge(&self, family: &Family) -> GaugeVec {
        self.add(family, GaugeVec::new(family.opts(), family.labels))
    }

    fn histogram(&self, family: &Family) -> HistogramVec {
        let opts = HistogramOpts::from(family.opts()).buckets(LATENCY_BUCKETS.to_vec());
        self.add(family, HistogramVec::new(opts, family.labels))
    }
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
