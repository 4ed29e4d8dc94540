#!/usr/bin/env bash
# The full Sentinel chaos test: the fleet on a Redis master with two replicas and three
# sentinels (started by the test on free ports), the master SIGKILLed a third of the way into
# 2,000 jobs (override with AGENTFLEET_SENTINEL_JOBS), once with redis.min_replicas_acked: 1
# (asserts 0 accepted jobs lost, 0 double runs) and once without (prints what it measured).
# Also the READONLY follow-up after a demotion and the latency of WAIT on a job's creation.
# Prints its figures. (scripts/test.sh runs the short form, 200 jobs a run.)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
AGENTFLEET_SENTINEL_JOBS="${AGENTFLEET_SENTINEL_JOBS:-2000}" \
  cargo test --locked -p agentfleet-tests --test sentinel -- --nocapture
