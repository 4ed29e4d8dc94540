#!/usr/bin/env bash
# The full cluster chaos test: 1,000 jobs (override with AGENTFLEET_CLUSTER_JOBS) through two
# dispatchers and three workers on a private three-node RabbitMQ cluster, the node leading the
# work queues stopped mid-run. Prints jobs lost, double runs and each dispatcher's 503 window.
# (scripts/test.sh runs the short form, 200 jobs.)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
AGENTFLEET_CLUSTER_JOBS="${AGENTFLEET_CLUSTER_JOBS:-1000}" \
  cargo test --locked -p agentfleet-tests --test cluster -- --nocapture
