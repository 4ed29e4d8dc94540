//! Loading the whole configuration: defaults, keys named in errors, durations, overrides.

use std::time::Duration;

use secrecy::ExposeSecret as _;

use super::*;

const KEY_HASH: &str = "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";

fn yaml(extra_agent: &str) -> String {
    format!(
        r#"
amqp: {{ url: "amqp://guest:guest@127.0.0.1:5672/%2f", prefix: "t1" }}
redis: {{ url: "redis://127.0.0.1:6379/0", prefix: "t1" }}
tenants:
  - id: acme
    api_key_sha256: "{KEY_HASH}"
    webhook_secret_env: ACME_SECRET
agents:
  summarize:
    provider: openai
    base_url: "http://127.0.0.1:8000/v1"
    model: "m"
    {extra_agent}
"#
    )
}

#[test]
fn loads_defaults() {
    let config = Config::from_yaml(&yaml("")).expect("valid");
    let agent = &config.agents["summarize"];
    assert_eq!(agent.concurrency, 16);
    assert_eq!(agent.retry.attempts, 3);
    assert_eq!(config.dispatcher.max_body_bytes, 1_048_576);
    assert_eq!(config.served_agents(), vec!["summarize".to_string()]);
    assert_eq!(agent.http_version, HttpVersion::Auto);
    assert_eq!(agent.delivery_window(), 24);
    assert_eq!(agent.http2_streams_per_connection, 100);
}

#[test]
fn http2_streams_per_connection_is_positive() {
    let config = Config::from_yaml(&yaml("http2_streams_per_connection: 250")).expect("valid");
    assert_eq!(config.agents["summarize"].http2_streams_per_connection, 250);
    let err = Config::from_yaml(&yaml("http2_streams_per_connection: 0")).expect_err("zero");
    assert!(
        err.to_string()
            .contains("agents.summarize.http2_streams_per_connection"),
        "{err}"
    );
}

#[test]
fn http_version_is_one_of_three() {
    let config = Config::from_yaml(&yaml("http_version: http2")).expect("valid");
    assert_eq!(config.agents["summarize"].http_version, HttpVersion::Http2);
    let err = Config::from_yaml(&yaml("http_version: http3")).expect_err("invalid");
    let text = err.to_string();
    assert!(
        text.contains("http3") && text.contains("agents.summarize"),
        "{err}"
    );
}

#[test]
fn invalid_values_name_their_key() {
    let err = Config::from_yaml(&yaml("concurrency: 0")).expect_err("invalid");
    assert!(
        err.to_string().contains("agents.summarize.concurrency"),
        "{err}"
    );
    let err =
        Config::from_yaml(&yaml("rate_limit: { requests_per_minute: 0 }")).expect_err("invalid");
    assert!(
        err.to_string()
            .contains("agents.summarize.rate_limit.requests_per_minute"),
        "{err}"
    );
    let err = Config::from_yaml(&yaml("concurency: 3")).expect_err("typo");
    assert!(err.to_string().contains("concurency"), "{err}");
    let err = Config::from_yaml(&yaml("timeout_secs: soon")).expect_err("type");
    assert!(err.to_string().contains("timeout_secs"), "{err}");
}

#[test]
fn bad_tenant_hash_is_rejected() {
    let bad = yaml("").replace(KEY_HASH, "nothex");
    let err = Config::from_yaml(&bad).expect_err("invalid");
    assert!(
        err.to_string().contains("tenants[0].api_key_sha256"),
        "{err}"
    );
}

#[test]
fn secrets_come_from_the_lookup_and_never_print() {
    let config = Config::from_yaml(&yaml("")).expect("valid");
    let err = config.secrets(|_| None).expect_err("missing");
    assert!(err.to_string().contains("ACME_SECRET"), "{err}");
    let secrets = config
        .secrets(|_| Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()))
        .expect("resolved");
    assert!(secrets.webhook.contains_key("acme"));
    assert!(!format!("{secrets:?}").contains("MfKQ"));
    assert!(!format!("{:?}", config.amqp).contains("guest:guest"));
}

#[test]
fn identifiers_are_safe_for_names() {
    assert!(is_identifier("summarize-v2"));
    assert!(!is_identifier("Summarize"));
    assert!(!is_identifier("a.b"));
    assert!(!is_identifier(""));
    assert!(!is_identifier("-x"));
}

/// The base document with more top-level sections after it.
fn yaml_with(sections: &str, extra_agent: &str) -> String {
    format!("{}{sections}\n", yaml(extra_agent))
}

/// Loads like [`Config::load`], with `vars` standing in for the process environment.
fn load_with_env(yaml: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let vars = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let source = config::Config::builder()
        .add_source(config::File::from_str(yaml, config::FileFormat::Yaml))
        .add_source(environment_overrides().source(Some(vars)));
    Config::build(source)
}

#[test]
fn durations_default_to_the_documented_values() {
    let config = Config::from_yaml(&yaml("")).expect("valid");
    assert_eq!(config.amqp.connect_timeout, Duration::from_millis(3_000));
    assert_eq!(config.amqp.publish_timeout, Duration::from_millis(5_000));
    assert_eq!(config.redis.result_ttl, Duration::from_secs(604_800));
    assert_eq!(config.redis.timeout, Duration::from_millis(800));
    assert_eq!(config.worker.shutdown_grace, Duration::from_secs(30));
    assert_eq!(config.dispatcher.shutdown_grace, Duration::from_secs(15));
    assert_eq!(config.worker.lease, Duration::from_secs(15));
    assert_eq!(config.webhooks.timeout, Duration::from_secs(10));
    assert_eq!(config.webhooks.inline_timeout, Duration::from_millis(1_000));
    assert_eq!(config.webhooks.inline_concurrency, 256);
    assert_eq!(
        config.webhooks.retry_schedule,
        [5, 300, 1_800, 7_200, 18_000, 36_000, 36_000].map(Duration::from_secs)
    );
    let agent = &config.agents["summarize"];
    assert_eq!(agent.timeout, Duration::from_secs(60));
    assert_eq!(agent.request_timeout, None);
    assert_eq!(agent.request_timeout(), agent.timeout);
    assert_eq!(agent.retry.max_delay, Duration::from_secs(30));
    assert_eq!(agent.circuit_breaker.cooldown, Duration::from_secs(30));
}

#[test]
fn duration_keys_parse_into_durations() {
    let doc = yaml_with(
        "worker: { lease_secs: 5, shutdown_grace_secs: 12 }\n\
         webhooks: { timeout_secs: 4, retry_schedule_secs: [1, 60] }",
        "timeout_secs: 45\n    request_timeout_secs: 7\n    \
         retry: { max_delay_secs: 9 }\n    circuit_breaker: { cooldown_secs: 11 }",
    )
    .replace(
        r#"redis: { url: "redis://127.0.0.1:6379/0", prefix: "t1" }"#,
        r#"redis: { url: "redis://127.0.0.1:6379/0", prefix: "t1", timeout_ms: 250, result_ttl_secs: 3600 }"#,
    )
    .replace(
        r#"%2f", prefix: "t1" }"#,
        r#"%2f", prefix: "t1", connect_timeout_ms: 1500, publish_timeout_ms: 2500 }"#,
    );
    let config = Config::from_yaml(&doc).expect("valid");
    assert_eq!(config.amqp.connect_timeout, Duration::from_millis(1_500));
    assert_eq!(config.amqp.publish_timeout, Duration::from_millis(2_500));
    assert_eq!(config.redis.timeout, Duration::from_millis(250));
    assert_eq!(config.redis.result_ttl, Duration::from_secs(3_600));
    assert_eq!(config.worker.lease, Duration::from_secs(5));
    assert_eq!(config.worker.shutdown_grace, Duration::from_secs(12));
    assert_eq!(config.webhooks.timeout, Duration::from_secs(4));
    assert_eq!(
        config.webhooks.retry_schedule,
        [Duration::from_secs(1), Duration::from_secs(60)]
    );
    let agent = &config.agents["summarize"];
    assert_eq!(agent.timeout, Duration::from_secs(45));
    assert_eq!(agent.request_timeout, Some(Duration::from_secs(7)));
    assert_eq!(agent.request_timeout(), Duration::from_secs(7));
    assert_eq!(agent.retry.max_delay, Duration::from_secs(9));
    assert_eq!(agent.circuit_breaker.cooldown, Duration::from_secs(11));
}

#[test]
fn negative_or_fractional_durations_are_refused_naming_the_key() {
    let cases = [
        (yaml("timeout_secs: -5"), "agents.summarize.timeout_secs"),
        (yaml("timeout_secs: 1.5"), "agents.summarize.timeout_secs"),
        (
            yaml("request_timeout_secs: 0.5"),
            "agents.summarize.request_timeout_secs",
        ),
        (
            yaml("retry: { max_delay_secs: -1 }"),
            "agents.summarize.retry.max_delay_secs",
        ),
        (
            yaml_with("worker: { lease_secs: 7.5 }", ""),
            "worker.lease_secs",
        ),
        (
            yaml_with("webhooks: { retry_schedule_secs: [5, -2] }", ""),
            "webhooks.retry_schedule_secs[1]",
        ),
        (
            yaml("").replace(
                r#"%2f", prefix: "t1" }"#,
                r#"%2f", prefix: "t1", connect_timeout_ms: 2.5 }"#,
            ),
            "amqp.connect_timeout_ms",
        ),
    ];
    for (doc, key) in cases {
        let err = Config::from_yaml(&doc).expect_err(key);
        assert!(matches!(err, ConfigError::Load(_)), "{key}: {err}");
        assert!(err.to_string().contains(key), "{key}: {err}");
    }
}

#[test]
fn zero_durations_name_the_file_key() {
    let err = Config::from_yaml(&yaml("timeout_secs: 0")).expect_err("zero");
    assert!(
        err.to_string()
            .contains("`agents.summarize.timeout_secs`: must be greater than zero"),
        "{err}"
    );
    let err = Config::from_yaml(&yaml("circuit_breaker: { cooldown_secs: 0 }")).expect_err("zero");
    assert!(
        err.to_string()
            .contains("agents.summarize.circuit_breaker.cooldown_secs"),
        "{err}"
    );
    let err = Config::from_yaml(&yaml_with("worker: { lease_secs: 2 }", "")).expect_err("short");
    assert!(err.to_string().contains("worker.lease_secs"), "{err}");
}

#[test]
fn environment_overrides_reach_duration_keys() {
    let config =
        load_with_env(&yaml(""), &[("AGENTFLEET__WORKER__LEASE_SECS", "5")]).expect("valid");
    assert_eq!(config.worker.lease, Duration::from_secs(5));
    let config = load_with_env(
        &yaml(""),
        &[("AGENTFLEET__AGENTS__SUMMARIZE__REQUEST_TIMEOUT_SECS", "8")],
    )
    .expect("valid");
    assert_eq!(
        config.agents["summarize"].request_timeout(),
        Duration::from_secs(8)
    );

    // The shapes the binaries' own test relies on (tests/tests/api/lifecycle.rs).
    let err = load_with_env(
        &yaml(""),
        &[("AGENTFLEET__AGENTS__SUMMARIZE__TIMEOUT_SECS", "0")],
    )
    .expect_err("zero");
    assert!(
        err.to_string().contains("agents.summarize.timeout_secs"),
        "{err}"
    );
    let err = load_with_env(
        &yaml(""),
        &[("AGENTFLEET__WORKER__SHUTDOWN_GRACE_SECS", "soon")],
    )
    .expect_err("not a number");
    assert!(err.to_string().contains("shutdown_grace_secs"), "{err}");
    let err = load_with_env(
        &yaml(""),
        &[("AGENTFLEET__DISPATCHER__SHUTDOWN_GRACE_SECS", "0")],
    )
    .expect_err("zero");
    assert!(
        err.to_string().contains("dispatcher.shutdown_grace_secs"),
        "{err}"
    );
    let config = load_with_env(
        &yaml(""),
        &[("AGENTFLEET__DISPATCHER__SHUTDOWN_GRACE_SECS", "2")],
    )
    .expect("valid");
    assert_eq!(config.dispatcher.shutdown_grace, Duration::from_secs(2));
}

#[test]
fn serialized_parts_keep_the_file_keys() {
    // The API's agent listing serializes these: the wire shape is the file's.
    let config =
        Config::from_yaml(&yaml("retry: { attempts: 4, max_delay_secs: 9 }")).expect("valid");
    let agent = &config.agents["summarize"];
    assert_eq!(
        serde_json::to_value(&agent.retry).expect("json"),
        serde_json::json!({ "attempts": 4, "max_delay_secs": 9 })
    );
    assert_eq!(
        serde_json::to_value(&agent.circuit_breaker).expect("json"),
        serde_json::json!({ "failure_threshold": 5, "cooldown_secs": 30 })
    );
}

#[test]
fn shipped_configs_still_load() {
    // Deployed files keep their `*_secs` / `*_ms` keys: the ones in this repository must load,
    // the compose one with the URLs docker-compose.yml sets in the environment.
    let local = include_str!("../../../deploy/local/agentfleet.yaml");
    Config::from_yaml(local).unwrap_or_else(|e| panic!("deploy/local: {e}"));
    let compose = include_str!("../../../deploy/compose/agentfleet.yaml");
    load_with_env(
        compose,
        &[
            ("AGENTFLEET__AMQP__URL", "amqp://u:p@rabbitmq:5672/%2f"),
            ("AGENTFLEET__REDIS__URL", "redis://redis:6379/0"),
        ],
    )
    .unwrap_or_else(|e| panic!("deploy/compose: {e}"));
}

const TOOLS: &str = r#"
tools:
  lookup:
    description: "Looks a record up"
    parameters:
      type: object
      properties:
        recordId: { type: string }
        units: { type: string, enum: [metric, imperial] }
      required: [recordId]
    http:
      url: "http://127.0.0.1:9100/lookup/{recordId}?units={units}"
      headers:
        Authorization: { env: LOOKUP_TOKEN }
        X-Team: "agents"
    side_effect: read
    timeout_secs: 3
prices:
  m: { input_usd_per_million: 0.15, output_usd_per_million: 0.6 }
"#;

fn with_tools(agent_extra: &str, tools: &str) -> String {
    format!("{}{tools}", yaml(agent_extra))
}

#[test]
fn agents_get_tools_limits_prices_and_an_output_schema() {
    let config = Config::from_yaml(&with_tools(
        "tools: [lookup]\n    limits: { max_turns: 4 }\n    output_schema: { type: object, required: [answer] }",
        TOOLS,
    ))
    .expect("valid");
    let definition = config.agent_definition("summarize").expect("definition");
    assert_eq!(definition.tools.len(), 1);
    // Schema property names keep their case through the YAML loader.
    assert_eq!(definition.tools[0].parameters()["required"][0], "recordId");
    assert_eq!(definition.limits.max_turns, 4);
    assert_eq!(
        definition.limits.max_tool_calls,
        agentfleet_agent::Limits::default().max_tool_calls
    );
    assert!(definition.output_schema.is_some());
    assert_eq!(
        definition.price.map(|p| p.output_usd_per_million),
        Some(0.6)
    );
    assert_eq!(config.tools["lookup"].timeout, Duration::from_secs(3));

    let err = config.secrets(|_| None).expect_err("tool env missing");
    assert!(err.to_string().contains("ACME_SECRET"), "{err}");
    let secrets = config
        .secrets(|var| match var {
            "ACME_SECRET" => Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()),
            "LOOKUP_TOKEN" => Some("Bearer sk-tool".into()),
            _ => None,
        })
        .expect("secrets");
    assert_eq!(secrets.tool_headers["lookup"].len(), 2);
    assert!(!format!("{secrets:?}").contains("sk-tool"));
}

#[test]
fn bad_tools_name_their_key() {
    let cases = [
        (
            "tools: [nope]",
            TOOLS.to_owned(),
            "agents.summarize.tools[0]",
        ),
        (
            "tools: [lookup]",
            TOOLS.replace("type: object\n", "type: 7\n"),
            "tools.lookup.parameters",
        ),
        (
            "",
            TOOLS.replace("127.0.0.1:9100", "{host}"),
            "tools.lookup.http.url",
        ),
        (
            "",
            TOOLS.replace("side_effect: read", "side_effect: maybe"),
            "side_effect",
        ),
        (
            "limits: { max_turns: 0 }",
            TOOLS.to_owned(),
            "agents.summarize.limits.max_turns",
        ),
        (
            "output_schema: { type: 12 }",
            TOOLS.to_owned(),
            "agents.summarize.output_schema",
        ),
        (
            "",
            TOOLS.replace("output_usd_per_million: 0.6", "output_usd_per_million: -1"),
            "prices.m.output_usd_per_million",
        ),
    ];
    for (agent, tools, key) in cases {
        let err = Config::from_yaml(&with_tools(agent, &tools)).expect_err(key);
        assert!(err.to_string().contains(key), "{key}: {err}");
    }
}

#[test]
fn agents_name_pools_that_exist() {
    let pools = "pools:\n  openai-main: { requests_per_minute: 600, tokens_per_minute: 100000 }\n";
    let config =
        Config::from_yaml(&format!("{}{pools}", yaml("pool: openai-main"))).expect("valid");
    assert_eq!(
        config.agents["summarize"].pool.as_deref(),
        Some("openai-main")
    );
    assert_eq!(config.pools["openai-main"].tokens_per_minute, Some(100_000));
    let err = Config::from_yaml(&format!("{}{pools}", yaml("pool: other"))).expect_err("unknown");
    assert!(err.to_string().contains("agents.summarize.pool"), "{err}");
    let zero = pools.replace("600", "0");
    let err = Config::from_yaml(&format!("{}{zero}", yaml(""))).expect_err("zero");
    assert!(
        err.to_string()
            .contains("pools.openai-main.requests_per_minute"),
        "{err}"
    );
}

#[test]
fn tenants_get_weights_quotas_and_their_own_queues() {
    let tenant = "    webhook_secret_env: ACME_SECRET\n";
    let with = |fields: &str| yaml("").replace(tenant, &format!("{tenant}{fields}"));
    let config = Config::from_yaml(&with(
        "    weight: 3\n    quotas: { max_queued_jobs: 10, submissions_per_minute: 60, max_running_jobs: 2 }\n",
    ))
    .expect("valid");
    let acme = &config.tenants[0];
    assert_eq!(acme.weight, 3);
    assert_eq!(acme.quotas.max_running_jobs, Some(2));
    let queues = config.job_queues("summarize");
    assert_eq!(queues.len(), 2, "the shared queue and acme's");
    assert_eq!(queues[0].tenant, None);
    assert_eq!(queues[1].queue, "t1.jobs.summarize.acme");
    assert_eq!(queues[1].weight, 3);

    let fifo = Config::from_yaml(&yaml("fairness: fifo")).expect("valid");
    assert_eq!(fifo.job_queues("summarize").len(), 1, "fifo: one queue");
    assert_eq!(
        Config::from_yaml(&yaml("")).expect("valid").tenants[0].weight,
        1
    );

    for (fields, key) in [
        ("    weight: 0\n", "tenants[0].weight"),
        ("    weight: 101\n", "tenants[0].weight"),
        (
            "    quotas: { max_running_jobs: 0 }\n",
            "tenants[0].quotas.max_running_jobs",
        ),
        ("    quotas: { max_runing_jobs: 1 }\n", "max_runing_jobs"),
        (
            "    budget: { daily_usd: 0 }\n",
            "tenants[0].budget.daily_usd",
        ),
        (
            "    budget: { daily_usd: -1.5 }\n",
            "tenants[0].budget.daily_usd",
        ),
    ] {
        let err = Config::from_yaml(&with(fields)).expect_err(key);
        assert!(err.to_string().contains(key), "{key}: {err}");
    }
    let err = Config::from_yaml(&yaml("cache: { ttl_secs: 0 }")).expect_err("zero ttl");
    assert!(
        err.to_string().contains("agents.summarize.cache.ttl_secs"),
        "{err}"
    );
    let err = Config::from_yaml(&yaml("monthly_budget_usd: 0")).expect_err("zero budget");
    assert!(
        err.to_string()
            .contains("agents.summarize.monthly_budget_usd"),
        "{err}"
    );
    let budgeted = Config::from_yaml(&with("    budget: { daily_usd: 12.5 }\n")).expect("valid");
    assert_eq!(budgeted.tenants[0].budget.map(|b| b.daily_usd), Some(12.5));
    let err = Config::from_yaml(&yaml("fairness: random")).expect_err("unknown fairness");
    assert!(err.to_string().contains("fairness"), "{err}");
}

#[test]
fn the_dispatcher_runs_on_one_thread_unless_told_more() {
    let config = Config::from_yaml(&yaml("")).expect("valid");
    assert_eq!(config.dispatcher.runtime_threads, 1);
    let config =
        Config::from_yaml(&yaml_with("dispatcher: { runtime_threads: 4 }\n", "")).expect("valid");
    assert_eq!(config.dispatcher.runtime_threads, 4);
    let err = Config::from_yaml(&yaml_with("dispatcher: { runtime_threads: 0 }\n", ""))
        .expect_err("no thread");
    assert!(
        err.to_string().contains("dispatcher.runtime_threads"),
        "{err}"
    );
}

#[test]
fn per_replica_rates_are_checked() {
    let sections = "dispatcher: { per_key_rate: { per_second: 0, burst: 5 } }\n";
    let err = Config::from_yaml(&yaml_with(sections, "")).expect_err("zero");
    assert!(
        err.to_string()
            .contains("dispatcher.per_key_rate.per_second"),
        "{err}"
    );
    let sections = "webhooks: { per_host_rate: { per_second: 5, burst: 0 } }\n";
    let err = Config::from_yaml(&yaml_with(sections, "")).expect_err("zero");
    assert!(
        err.to_string().contains("webhooks.per_host_rate.burst"),
        "{err}"
    );
    let sections = "webhooks: { per_host_rate: { per_second: 5, burst: 10 } }\n";
    let config = Config::from_yaml(&yaml_with(sections, "")).expect("valid");
    assert_eq!(config.webhooks.per_host_rate.map(|r| r.burst), Some(10));
}

#[test]
fn tenants_may_have_several_keys_each_named_and_unique() {
    let tenant = "    api_key_sha256: \"{KEY_HASH}\"\n".replace("{KEY_HASH}", KEY_HASH);
    let other = "d".repeat(64);
    let with_keys = |keys: &str| yaml("").replace(&tenant, keys);
    let config = Config::from_yaml(&with_keys(&format!(
        "    api_keys: [{{ id: k1, sha256: \"{KEY_HASH}\" }}, {{ id: k2, sha256: \"{other}\", expires_at: \"2030-01-01T00:00:00Z\" }}]\n"
    )))
    .expect("valid");
    let keys = config.tenants[0].api_keys();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[1].id, "k2");
    assert!(keys[1].expires_at.is_some());
    for (keys, key) in [
        (String::new(), "tenants[0].api_keys"),
        (
            format!("    api_keys: [{{ id: k1, sha256: \"{KEY_HASH}\" }}, {{ id: k1, sha256: \"{other}\" }}]\n"),
            "tenants[0].api_keys[1].id",
        ),
        (
            format!("    api_keys: [{{ id: k1, sha256: \"{KEY_HASH}\" }}, {{ id: k2, sha256: \"{KEY_HASH}\" }}]\n"),
            "tenants[0].api_keys",
        ),
        (
            "    api_keys: [{ id: k1, sha256: \"nothex\" }]\n".to_owned(),
            "tenants[0].api_keys[0].sha256",
        ),
        (
            format!("    api_keys: [{{ id: k1, sha256: \"{KEY_HASH}\", expires_at: soon }}]\n"),
            "expires_at",
        ),
    ] {
        let err = Config::from_yaml(&with_keys(&keys)).expect_err(key);
        assert!(err.to_string().contains(key), "{key}: {err}");
    }
}

#[test]
fn privacy_defaults_keep_payloads_out_and_mask_every_builtin() {
    let config = Config::from_yaml(&yaml("")).expect("valid");
    assert!(!config.privacy.log_payloads);
    assert!(!config.privacy.mask_output);
    assert_eq!(config.privacy.mask, crate::privacy::Builtin::ALL.to_vec());
    let privacy = config.privacy().expect("privacy");
    assert_eq!(privacy.loggable("alice@example.com"), None);
    assert!(!privacy.masks_output("summarize"));
    assert_eq!(
        privacy.masker().mask("alice@example.com 4111111111111111"),
        "[email] [card_number]"
    );
}

#[test]
fn privacy_takes_patterns_and_agents_override_mask_output() {
    let sections = r#"privacy:
  log_payloads: true
  mask: [email]
  patterns: [{ name: employee_id, regex: "EMP-[0-9]{6}" }]
  mask_output: true"#;
    let config = Config::from_yaml(&yaml_with(sections, "mask_output: false")).expect("valid");
    let privacy = config.privacy().expect("privacy");
    assert_eq!(
        privacy
            .loggable("EMP-204816 a@b.io 4111111111111111")
            .as_deref(),
        Some("[employee_id] [email] 4111111111111111")
    );
    assert!(!privacy.masks_output("summarize"));
    assert!(privacy.masks_output("another"));

    let env = [
        ("AGENTFLEET__PRIVACY__LOG_PAYLOADS", "false"),
        ("AGENTFLEET__PRIVACY__MASK", "card_number,api_key"),
    ];
    let config = load_with_env(&yaml_with(sections, ""), &env).expect("valid");
    assert!(!config.privacy.log_payloads);
    use crate::privacy::Builtin;
    assert_eq!(
        config.privacy.mask,
        vec![Builtin::CardNumber, Builtin::ApiKey]
    );
}

#[test]
fn bad_privacy_patterns_name_their_key_and_pattern() {
    let with = |privacy: &str| Config::from_yaml(&yaml_with(privacy, ""));
    for (privacy, key, says) in [
        (
            r#"privacy: { patterns: [{ name: ok, regex: "x" }, { name: ticket, regex: "T-(" }] }"#,
            "privacy.patterns[1].regex",
            "`ticket`",
        ),
        (
            r#"privacy: { patterns: [{ name: anything, regex: "[0-9]*" }] }"#,
            "privacy.patterns[0].regex",
            "empty string",
        ),
        (
            r#"privacy: { patterns: [{ name: email, regex: "x" }] }"#,
            "privacy.patterns[0].name",
            "`email`",
        ),
        (
            r#"privacy: { patterns: [{ name: t, regex: "x" }, { name: t, regex: "y" }] }"#,
            "privacy.patterns[1].name",
            "`t`",
        ),
        (
            r#"privacy: { patterns: [{ name: "Has Space", regex: "x" }] }"#,
            "privacy.patterns[0].name",
            "lowercase",
        ),
        (r#"privacy: { mask: [phone] }"#, "privacy.mask", "phone"),
        (
            r#"privacy: { log_payload: true }"#,
            "log_payload",
            "unknown field",
        ),
    ] {
        let err = with(privacy).expect_err(key);
        let text = err.to_string();
        assert!(
            text.contains(key) && text.contains(says),
            "{privacy}: {err}"
        );
    }
}

#[test]
fn a_cluster_is_a_list_of_urls_tried_in_order() {
    let doc = yaml("").replace(
        r#"url: "amqp://guest:guest@127.0.0.1:5672/%2f", prefix: "t1""#,
        r#"urls: ["amqp://u:p@a:5672/%2f", "amqps://u:p@b:5671/%2f"], prefix: "t1", quorum_initial_group_size: 3"#,
    );
    let config = Config::from_yaml(&doc).expect("valid");
    let urls: Vec<&str> = config
        .amqp
        .endpoints()
        .iter()
        .map(|u| u.expose_secret())
        .collect();
    assert_eq!(urls, ["amqp://u:p@a:5672/%2f", "amqps://u:p@b:5671/%2f"]);
    assert_eq!(config.amqp.quorum_initial_group_size, Some(3));
    assert!(!format!("{:?}", config.amqp).contains("u:p"));

    let single = Config::from_yaml(&yaml("")).expect("valid");
    assert_eq!(single.amqp.endpoints().len(), 1);
    assert_eq!(single.amqp.quorum_initial_group_size, None);
}

#[test]
fn urls_can_come_from_the_environment() {
    let doc = yaml("").replace(r#"url: "amqp://guest:guest@127.0.0.1:5672/%2f", "#, "");
    let config = load_with_env(
        &doc,
        &[(
            "AGENTFLEET__AMQP__URLS",
            "amqp://u:p@a:5672/%2f,amqp://u:p@b:5672/%2f",
        )],
    )
    .expect("valid");
    assert_eq!(config.amqp.endpoints().len(), 2);
}

#[test]
fn url_and_urls_are_one_or_the_other_and_each_is_checked() {
    let single = r#"url: "amqp://guest:guest@127.0.0.1:5672/%2f", "#;
    let cases = [
        (
            yaml("").replace(single, r#"url: "amqp://a/%2f", urls: ["amqp://b/%2f"], "#),
            "`amqp.urls`: set either",
        ),
        (yaml("").replace(single, ""), "`amqp.url`: missing"),
        (
            yaml("").replace(single, "urls: [], "),
            "`amqp.urls`: must list at least one URL",
        ),
        (
            yaml("").replace(single, r#"urls: ["amqp://a/%2f", "http://u:secret@b/"], "#),
            "`amqp.urls[1]`: scheme must be one of amqp, amqps",
        ),
        (
            yaml("").replace(single, r#"urls: ["not a url"], "#),
            "`amqp.urls[0]`: not a URL",
        ),
        (
            yaml("").replace(
                r#"%2f", prefix: "t1" }"#,
                r#"%2f", prefix: "t1", quorum_initial_group_size: 0 }"#,
            ),
            "`amqp.quorum_initial_group_size`: must be greater than zero",
        ),
    ];
    for (doc, expected) in cases {
        let err = Config::from_yaml(&doc).expect_err(expected);
        assert!(err.to_string().contains(expected), "{expected}: {err}");
        assert!(!err.to_string().contains("secret"), "{err}");
    }
    let err = Config::from_yaml(&yaml("").replace(
        r#"%2f", prefix: "t1" }"#,
        r#"%2f", prefix: "t1", quorum_initial_group_size: -1 }"#,
    ))
    .expect_err("negative");
    assert!(
        err.to_string().contains("amqp.quorum_initial_group_size"),
        "{err}"
    );
}

const SINGLE_REDIS: &str = r#"redis: { url: "redis://127.0.0.1:6379/0", prefix: "t1" }"#;

/// The test document with its `redis:` entry replaced.
fn with_redis(redis: &str) -> String {
    yaml("").replace(SINGLE_REDIS, redis)
}

#[test]
fn redis_sentinel_loads_and_the_topology_says_which() {
    let config = Config::from_yaml(&with_redis(
        r#"redis: { prefix: "t1", sentinel: { urls: ["redis://127.0.0.1:26379", "redis://:pw@127.0.0.1:26380"], master_name: "main", password: "m", db: 2 } }"#,
    ))
    .expect("valid");
    let Ok(RedisTopology::Sentinel(sentinel)) = config.redis.topology("redis") else {
        panic!("a sentinel topology");
    };
    assert_eq!(sentinel.urls.len(), 2);
    assert_eq!(sentinel.master_name, "main");
    assert_eq!(sentinel.db, 2);
    // Secrets stay out of the debug form (and so out of any log line).
    let shown = format!("{:?}", config.redis);
    assert!(
        !shown.contains("pw@") && !shown.contains("\"m\""),
        "{shown}"
    );
    let single = Config::from_yaml(&yaml("")).expect("valid");
    assert!(matches!(
        single.redis.topology("redis"),
        Ok(RedisTopology::Single(_))
    ));
    assert_eq!(single.redis.min_replicas_acked, 0);
    assert_eq!(single.redis.wait_timeout, Duration::from_millis(500));
}

#[test]
fn redis_needs_exactly_one_of_url_and_sentinel() {
    let cases = [
        (
            r#"redis: { prefix: "t1" }"#,
            "`redis.url`: missing: give redis.url (one server), redis.sentinel or redis.cluster",
        ),
        (
            r#"redis: { url: "redis://127.0.0.1:6379/0", prefix: "t1", sentinel: { urls: ["redis://127.0.0.1:26379"], master_name: "main" } }"#,
            "`redis.sentinel`: give only one of redis.url, redis.sentinel and redis.cluster",
        ),
        (
            r#"redis: { prefix: "t1", sentinel: { urls: [], master_name: "main" } }"#,
            "`redis.sentinel.urls`: must name at least one sentinel",
        ),
        (
            r#"redis: { prefix: "t1", sentinel: { urls: ["redis://127.0.0.1:26379", "rediss://h:26379"], master_name: "main" } }"#,
            "`redis.sentinel.urls[1]`: scheme must be one of redis",
        ),
        (
            r#"redis: { prefix: "t1", sentinel: { urls: ["redis://127.0.0.1:26379"], master_name: "" } }"#,
            "`redis.sentinel.master_name`",
        ),
        (
            r#"redis: { prefix: "t1", sentinel: { urls: ["redis://127.0.0.1:26379"], master_name: "main", password: "" } }"#,
            "`redis.sentinel.password`",
        ),
    ];
    for (redis, expected) in cases {
        let err = Config::from_yaml(&with_redis(redis)).expect_err(expected);
        assert!(err.to_string().contains(expected), "{expected}: {err}");
    }
    // An unknown key inside `sentinel` is refused by name too.
    let err = Config::from_yaml(&with_redis(
        r#"redis: { prefix: "t1", sentinel: { urls: ["redis://127.0.0.1:26379"], master: "main" } }"#,
    ))
    .expect_err("unknown key");
    assert!(err.to_string().contains("master"), "{err}");
}

#[test]
fn replica_acknowledgements_need_a_wait_shorter_than_the_command_timeout() {
    let acked = |fields: &str| {
        Config::from_yaml(&with_redis(&format!(
            r#"redis: {{ url: "redis://127.0.0.1:6379/0", prefix: "t1", {fields} }}"#
        )))
    };
    let config = acked("min_replicas_acked: 1, wait_timeout_ms: 300").expect("valid");
    assert_eq!(config.redis.min_replicas_acked, 1);
    assert_eq!(config.redis.wait_timeout, Duration::from_millis(300));
    let err = acked("min_replicas_acked: 1, wait_timeout_ms: 800").expect_err("too long");
    assert!(
        err.to_string()
            .contains("`redis.wait_timeout_ms`: must be shorter than redis.timeout_ms"),
        "{err}"
    );
    let err = acked("min_replicas_acked: 2, wait_timeout_ms: 0").expect_err("zero");
    assert!(err.to_string().contains("`redis.wait_timeout_ms`"), "{err}");
    // Off, the wait timeout is not looked at.
    acked("wait_timeout_ms: 0").expect("valid when off");
}

#[test]
fn sentinel_urls_come_from_the_environment_as_a_list() {
    let doc = with_redis(r#"redis: { prefix: "t1", sentinel: { master_name: "main" } }"#);
    let config = load_with_env(
        &doc,
        &[(
            "AGENTFLEET__REDIS__SENTINEL__URLS",
            "redis://s1:26379,redis://s2:26379",
        )],
    )
    .expect("valid");
    let sentinel = config.redis.sentinel.expect("sentinel");
    assert_eq!(sentinel.urls.len(), 2);
}

#[test]
fn redis_cluster_loads_and_the_topology_says_which() {
    let config = Config::from_yaml(&with_redis(
        r#"redis: { prefix: "t1", cluster: { nodes: ["redis://:pw@10.0.0.1:7000", "redis://:pw@10.0.0.2:7000/0"] }, min_replicas_acked: 1, wait_timeout_ms: 300 }"#,
    ))
    .expect("valid");
    let Ok(RedisTopology::Cluster(cluster)) = config.redis.topology("redis") else {
        panic!("a cluster topology");
    };
    assert_eq!(cluster.nodes.len(), 2);
    let shown = format!("{:?}", config.redis);
    assert!(!shown.contains("pw@"), "{shown}");
}

#[test]
fn a_redis_cluster_is_refused_with_the_key_named() {
    let cases = [
        (
            r#"redis: { prefix: "t1", cluster: { nodes: [] } }"#,
            "`redis.cluster.nodes`: must name at least one node",
        ),
        (
            r#"redis: { prefix: "t1", cluster: { nodes: ["redis://a:7000", "rediss://b:7000"] } }"#,
            "`redis.cluster.nodes[1]`: scheme must be one of redis",
        ),
        (
            r#"redis: { prefix: "t1", cluster: { nodes: ["redis://a:7000/2"] } }"#,
            "`redis.cluster.nodes[0]`: a cluster has only database 0",
        ),
        (
            r#"redis: { prefix: "t1", cluster: { nodes: ["redis://:pw@a:7000", "redis://b:7000"] } }"#,
            "`redis.cluster.nodes[1]`: every node must carry the same credentials as the first",
        ),
        (
            r#"redis: { prefix: "t1", cluster: { nodes: ["not a url"] } }"#,
            "`redis.cluster.nodes[0]`: not a URL",
        ),
        (
            r#"redis: { url: "redis://127.0.0.1:6379/0", prefix: "t1", cluster: { nodes: ["redis://a:7000"] } }"#,
            "`redis.cluster`: give only one of redis.url, redis.sentinel and redis.cluster",
        ),
        (
            r#"redis: { prefix: "t1", cluster: { nodes: ["redis://a:7000"], node: "x" } }"#,
            "node",
        ),
    ];
    for (redis, expected) in cases {
        let err = Config::from_yaml(&with_redis(redis)).expect_err(expected);
        assert!(err.to_string().contains(expected), "{expected}: {err}");
    }
}

#[test]
fn cluster_nodes_come_from_the_environment_as_a_list() {
    // The nodes alone make the topology (Helm sets only the variable, from a Secret).
    let doc = with_redis(r#"redis: { prefix: "t1" }"#);
    let config = load_with_env(
        &doc,
        &[(
            "AGENTFLEET__REDIS__CLUSTER__NODES",
            "redis://n1:7000,redis://n2:7000,redis://n3:7000",
        )],
    )
    .expect("valid");
    assert_eq!(config.redis.cluster.expect("cluster").nodes.len(), 3);
}
