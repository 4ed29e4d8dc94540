#!/usr/bin/env bash
# Profiles the whole path (bench scenario 1) with perf: samples the worker and the dispatcher
# processes with DWARF call graphs while the scenario runs, and writes, under target/profile/,
# perf.data files and text reports (hottest symbols, self and with children). Needs `perf`
# (Debian: linux-perf); software clock sampling, so it works in VMs without PMU counters.
#
#   scripts/bench-profile.sh [extra agentfleet-bench args, e.g. --short]
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/profile
mkdir -p "$out"
command -v perf >/dev/null || { echo "error: perf is not installed (apt-get install linux-perf)" >&2; exit 1; }
scripts/services.sh
cargo build --release --locked -q -p agentfleet-bench -p agentfleet-dispatcher -p agentfleet-worker

target/release/agentfleet-bench --only 1 --json "$out/bench.json" "$@" >"$out/bench.md" &
bench=$!

# The fleet starts after the suite's set-up: wait for the bench's own children to appear.
child() { pgrep -P "$bench" -x "$1" | head -n 1; }
for _ in $(seq 1 200); do
  worker=$(child agentfleet-work || true)
  dispatcher=$(child agentfleet-disp || true)
  [ -n "$worker" ] && [ -n "$dispatcher" ] && break
  sleep 0.05
done
[ -n "${worker:-}" ] && [ -n "${dispatcher:-}" ] || { echo "error: the fleet did not start" >&2; wait "$bench"; exit 1; }

secs=${PROFILE_SECS:-8}
perf record -q -F 499 --call-graph dwarf,16384 -p "$worker" -o "$out/worker.data" -- sleep "$secs" 2>/dev/null &
perf record -q -F 499 --call-graph dwarf,16384 -p "$dispatcher" -o "$out/dispatcher.data" -- sleep "$secs" 2>/dev/null &
wait "$bench"
wait

for who in worker dispatcher; do
  perf report -i "$out/$who.data" --stdio --no-children --sort dso,sym --percent-limit 0.7 -g none \
    >"$out/$who-self.txt" 2>/dev/null
  perf report -i "$out/$who.data" --stdio --children --sort sym --percent-limit 2 -g none \
    >"$out/$who-children.txt" 2>/dev/null
done
cat "$out/bench.md"
echo "profiles: $out/{worker,dispatcher}-{self,children}.txt (perf report -i $out/worker.data for more)"
