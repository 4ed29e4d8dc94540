#!/usr/bin/env bash
# The full chaos test: 2,000 jobs (override with AGENTFLEET_CHAOS_JOBS) over 3 worker
# processes SIGKILLed every 3 s, a broker restart, a Redis (AOF) restart, provider faults and
# a failing webhook receiver, against private RabbitMQ and Redis servers. Prints its figures.
# (scripts/test.sh runs the short form, 400 jobs.)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
AGENTFLEET_CHAOS_JOBS="${AGENTFLEET_CHAOS_JOBS:-2000}" \
  cargo test --locked -p agentfleet-tests --test chaos -- --nocapture
