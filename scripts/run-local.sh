#!/usr/bin/env bash
# Brings up the whole fleet on this machine: RabbitMQ and Redis (started, or installed from
# the OS packages), the stub LLM, a tool server, a verifying webhook receiver, the dispatcher
# and a worker. Submits a sample job and shows its verified webhook, then runs the
# `researcher` agent, which calls a tool, and shows its steps; keeps running until Ctrl-C.
# `--once` stops everything after the sample job (used by CI as a smoke test).
set -euo pipefail
cd "$(dirname "$0")/.."
once=false
[ "${1:-}" = "--once" ] && once=true

scripts/services.sh
cargo build --locked --bins -q
bin=target/debug
run=.run
mkdir -p "$run"

# Demo-only secret: a real deployment takes it from its secret store.
export DEMO_WEBHOOK_SECRET="whsec_ZGVtby1vbmx5LXdlYmhvb2stc2VjcmV0LTEyMzQ1Njc4"
config=deploy/local/agentfleet.yaml
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

# The researcher's model plays a scripted tool-calling conversation (see stub/src/script.rs).
"$bin/agentfleet-stub" llm --listen 127.0.0.1:8000 --latency-ms 200 \
  --scenario stub-researcher=tool-then-answer >"$run/llm.log" 2>&1 & pids+=($!)
"$bin/agentfleet-stub" tools --listen 127.0.0.1:9100 >"$run/tools.log" 2>&1 & pids+=($!)
"$bin/agentfleet-stub" webhook --listen 127.0.0.1:9000 --secret-env DEMO_WEBHOOK_SECRET >"$run/webhook.log" 2>&1 & pids+=($!)
"$bin/agentfleet-dispatcher" --config "$config" >"$run/dispatcher.log" 2>&1 & pids+=($!)
"$bin/agentfleet-worker" --config "$config" >"$run/worker.log" 2>&1 & pids+=($!)

for url in http://127.0.0.1:8080/readyz http://127.0.0.1:9091/readyz; do
  for i in $(seq 1 100); do
    curl -fsS "$url" >/dev/null 2>&1 && break
    [ "$i" = 100 ] && { echo "error: $url not ready; see $run/*.log" >&2; exit 1; }
    sleep 0.2
  done
done
echo "fleet up: dispatcher http://127.0.0.1:8080, worker metrics http://127.0.0.1:9091, logs in $run/"

echo "submitting a sample job:"
curl -sS -X POST http://127.0.0.1:8080/v1/jobs \
  -H "Authorization: Bearer demo-token" -H "Content-Type: application/json" \
  -d '{"agent":"summarize","input":"agentfleet runs AI-agent jobs for other services.","webhook_url":"http://127.0.0.1:9000/hooks/demo"}' \
  | tee "$run/accepted.json"
echo
id=$(sed -E 's/.*"id":"([^"]+)".*/\1/' "$run/accepted.json")

for i in $(seq 1 100); do
  if grep -q "\"job_id\":\"$id\"" "$run/webhook.log" 2>/dev/null; then break; fi
  [ "$i" = 100 ] && { echo "error: no webhook for $id; see $run/*.log" >&2; exit 1; }
  sleep 0.2
done
echo "webhook received by the receiver (signature checked):"
grep "\"job_id\":\"$id\"" "$run/webhook.log"
grep -q "\"job_id\":\"$id\".*" "$run/webhook.log" && grep "\"job_id\":\"$id\"" "$run/webhook.log" | grep -q '"verified":true' \
  || { echo "error: the webhook did not verify" >&2; exit 1; }
echo "the job record:"
curl -sS -H "Authorization: Bearer demo-token" "http://127.0.0.1:8080/v1/jobs/$id"
echo

echo "an agent that uses a tool (researcher: model → lookup tool → model):"
curl -sS -X POST http://127.0.0.1:8080/v1/jobs \
  -H "Authorization: Bearer demo-token" -H "Content-Type: application/json" \
  -d '{"agent":"researcher","input":"What is in record 42?"}' >"$run/researcher.json"
rid=$(sed -E 's/.*"id":"([^"]+)".*/\1/' "$run/researcher.json")
for i in $(seq 1 100); do
  curl -sS -H "Authorization: Bearer demo-token" "http://127.0.0.1:8080/v1/jobs/$rid" >"$run/researcher.json"
  grep -q '"status":"succeeded"' "$run/researcher.json" && break
  grep -q '"status":"failed"' "$run/researcher.json" && { cat "$run/researcher.json"; echo; exit 1; }
  [ "$i" = 100 ] && { echo "error: the researcher job did not finish; see $run/*.log" >&2; exit 1; }
  sleep 0.2
done
echo "its record, with the steps (GET /v1/jobs/$rid?include=steps):"
curl -sS -H "Authorization: Bearer demo-token" "http://127.0.0.1:8080/v1/jobs/$rid?include=steps"
echo

if $once; then exit 0; fi
echo "running; Ctrl-C to stop"
wait
