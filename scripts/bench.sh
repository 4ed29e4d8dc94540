#!/usr/bin/env bash
# The benchmark suite: makes sure RabbitMQ and Redis are up (scripts/services.sh), builds the
# release binaries it measures (dispatcher, worker) and the suite, and runs it with the given
# arguments. Every scenario is bounded in count and time and talks only to 127.0.0.1.
#
#   scripts/bench.sh                 # full suite, under 10 minutes
#   scripts/bench.sh --short         # about 2 minutes, bounded at 3 (CI)
#   scripts/bench.sh --soak          # full suite plus a 30-minute soak (--soak-minutes N)
#   scripts/bench.sh --only 1,3 --json target/bench.json --markdown target/bench.md
#
# Prints a markdown table, writes JSON (default target/bench.json). Goals are reported, not
# asserted: exits 0 when every scenario ran, non-zero when one could not.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/services.sh
cargo build --release --locked -q -p agentfleet-bench -p agentfleet-dispatcher -p agentfleet-worker

# The BullMQ peer (scenario 1's baseline): its npm dependencies, pinned by package.json and the
# lock file (`npm install`, not `npm ci`: the lock leaves out the optional native builds of other
# platforms, which `npm ci` insists on). Without Node the suite runs and says loudly that the
# peer was skipped.
if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
  if [ ! -d bench/bullmq/node_modules/bullmq ] || [ ! -d bench/bullmq/node_modules/ioredis ]; then
    (cd bench/bullmq && npm install --no-audit --no-fund --loglevel=error >&2)
  fi
else
  echo "bench: WARNING: Node is not installed; the BullMQ peer will be SKIPPED" >&2
fi

# Scenario 3 keeps 2,000 provider calls in flight: the worker and the stub (in the suite's
# process) each hold that many sockets.
want=16384
soft=$(ulimit -n)
if [ "$soft" != unlimited ] && [ "$soft" -lt "$want" ]; then
  hard=$(ulimit -Hn)
  if [ "$hard" = unlimited ] || [ "$hard" -ge "$want" ]; then
    ulimit -n "$want"
  else
    ulimit -n "$hard"
    echo "bench: warning: open-file limit is $hard (< $want); scenario 3 may fail" >&2
  fi
fi

exec target/release/agentfleet-bench "$@"
