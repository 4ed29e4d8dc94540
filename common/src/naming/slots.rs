//! In a Redis Cluster a Lua script or a `MULTI` may only touch keys of one hash slot; anything
//! else is answered `CROSSSLOT`. These tests compute the slot of every key each atomic
//! operation of the code base touches (with the client's own slot function: CRC16/XMODEM of
//! the hash tag, or of the whole key without one) and require them to be equal.

use redis::cluster_routing::Slot;
use uuid::Uuid;

use super::{LimitScope, Names, RateKind, SpendOwner};
use crate::config::RateLimitConfig;
use crate::rate::Gcra;

/// The scripts in `common` that take more than one key, each covered by a test below. A new
/// one must be added here and to a test, or [`every_multi_key_script_is_covered`] fails.
const MULTI_KEY_SCRIPTS: &[&str] = &[
    // store.rs: the job's lease and hash (`lease_key`, `job_key`).
    "TRANSITION",
    "BEGIN",
    "RENEW",
    "CLOSE",
    "APPEND_STEPS",
    // rate.rs: a bucket and its pause key (`rate_key`, `pause_key`).
    "GCRA",
];

fn assert_one_slot(what: &str, keys: &[String]) {
    let Some(first) = keys.first() else { return };
    for key in keys {
        assert_eq!(
            Slot::for_key(key),
            Slot::for_key(first),
            "{what}: `{key}` and `{first}` are in different slots"
        );
    }
}

fn names() -> Vec<Names> {
    [
        "p",
        "agentfleet",
        "aftest-0192f0c1e2d37a4b8c9d0e1f2a3b4c5d",
        "a.b-c_d",
    ]
    .iter()
    .map(|prefix| Names::new(prefix, prefix))
    .collect()
}

#[test]
fn the_slot_function_is_the_servers() {
    // Values from the cluster specification: CRC16/XMODEM("123456789") = 0x31C3.
    assert_eq!(
        Slot::for_key("123456789"),
        Slot::new(0x31C3).expect("a slot")
    );
    assert_eq!(Slot::for_key("foo"), Slot::new(12182).expect("a slot"));
    // Only the first `{...}` counts, and an empty one does not.
    assert_eq!(Slot::for_key("x{foo}y{bar}"), Slot::for_key("foo"));
    assert_eq!(Slot::for_key("{}foo"), Slot::for_key("{}foo"));
    assert_ne!(Slot::for_key("{}foo"), Slot::for_key("foo"));
}

#[test]
fn a_jobs_scripts_and_its_create_touch_one_slot() {
    for names in names() {
        for _ in 0..200 {
            for id in [Uuid::now_v7(), Uuid::new_v4()] {
                // TRANSITION, BEGIN, RENEW, CLOSE, APPEND_STEPS; `create` is one key.
                assert_one_slot("a job's scripts", &[names.lease_key(id), names.job_key(id)]);
            }
        }
    }
}

#[test]
fn a_limiters_buckets_and_pause_key_share_a_slot() {
    let limit = RateLimitConfig {
        requests_per_minute: 60,
        tokens_per_minute: Some(10_000),
    };
    for names in names() {
        for name in ["sum", "pool", "agent", "a-b_c", "x1"] {
            for scope in [LimitScope::Agent(name), LimitScope::Pool(name)] {
                let buckets = Gcra::of(&names, scope, &limit);
                assert_eq!(buckets.len(), 2);
                for bucket in &buckets {
                    // The keys the GCRA script is given: `KEYS[1]`, `KEYS[2]`.
                    let pause = bucket
                        .pause_key
                        .clone()
                        .expect("a provider bucket checks a pause");
                    assert_one_slot("GCRA", &[bucket.key.clone(), pause]);
                }
                assert_one_slot(
                    "a limiter",
                    &[
                        names.rate_key(scope, RateKind::Requests),
                        names.rate_key(scope, RateKind::Tokens),
                        names.pause_key(scope),
                    ],
                );
            }
        }
    }
}

#[test]
fn a_tenants_keys_share_a_slot_and_its_jobs_do_not() {
    for names in names() {
        let tenant = "acme";
        let keys = [
            names.submissions_key(tenant),
            names.running_key(tenant),
            names.spend_key(SpendOwner::Tenant(tenant), "2026-11-23"),
            names.audit_stream(tenant),
            names.idempotency_key(tenant, "key-1"),
            names.idempotency_key(tenant, "{not-a-tag}"),
        ];
        assert_one_slot("a tenant", &keys);
        let agent = [
            names.spend_key(SpendOwner::Agent("sum"), "2026-11"),
            names.spend_key(SpendOwner::Agent("sum"), "2026-12"),
        ];
        assert_one_slot("an agent's ledger", &agent);
        // Jobs spread: 200 ids land in many slots, not the tenant's one.
        let slots: std::collections::HashSet<String> = (0..200)
            .map(|_| format!("{:?}", Slot::for_key(names.job_key(Uuid::now_v7()))))
            .collect();
        assert!(slots.len() > 150, "jobs spread over slots: {}", slots.len());
    }
}

/// The `const NAME: &str = r"..."` Lua scripts of `source` that read `KEYS[2]`.
fn multi_key_scripts(source: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = source;
    while let Some(start) = rest.find("const ") {
        rest = &rest[start + "const ".len()..];
        let Some((name, body)) = rest.split_once(": &str = r") else {
            continue;
        };
        if name.contains(char::is_whitespace) {
            continue;
        }
        let end = body.find("\";").unwrap_or(body.len());
        if body[..end].contains("KEYS[2]") {
            found.push(name.to_owned());
        }
    }
    found
}

#[test]
fn every_multi_key_script_is_covered() {
    let sources = [
        include_str!("../store.rs"),
        include_str!("../rate.rs"),
        include_str!("../budget.rs"),
    ];
    let found: Vec<String> = sources.iter().flat_map(|s| multi_key_scripts(s)).collect();
    // The scan sees them (a job script and the limiter's), so a new one would not slip by.
    assert!(
        found.len() >= 2 && found.iter().any(|n| n == "GCRA"),
        "the scan finds scripts: {found:?}"
    );
    for name in &found {
        assert!(
            MULTI_KEY_SCRIPTS.contains(&name.as_str()),
            "the script {name} takes several keys: add it to MULTI_KEY_SCRIPTS and test its slots"
        );
    }
}
