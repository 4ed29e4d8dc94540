#!/usr/bin/env bash
# Verifies agentfleet's webhook signatures with the reference Python `standardwebhooks`
# library (PyPI): a delivery signed during a secret rotation (two secrets, both signing)
# verifies with either secret, and a tampered id, timestamp or body, or a third secret, is
# refused. The signature comes from agentfleet's own signer (`agentfleet-stub sign`).
#
#   scripts/check-webhooks.sh
#
# Installs what it needs when missing (scripts/python-tool.sh): python3-venv (Debian) and the
# library into a venv under $AGENTFLEET_TOOLS (default ~/.cache/agentfleet-tools/webhooks-venv).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=$(scripts/python-tool.sh webhooks standardwebhooks==1.1.0)

cargo build -q --locked -p agentfleet-stub
STUB=target/debug/agentfleet-stub
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

secret() { "$VENV/bin/python" -c 'import base64, os; print("whsec_" + base64.b64encode(os.urandom(32)).decode())'; }
OLD=$(secret)
NEW=$(secret)
printf '%s' '{"type":"job.succeeded","data":{"id":"0199","output":"ok"}}' >"$WORK/body.json"
ID=msg_0199_job.succeeded
TS=$(date +%s)
SIGNATURE=$(AF_SECRETS="$NEW $OLD" "$STUB" sign --secrets-env AF_SECRETS --id "$ID" --timestamp "$TS" <"$WORK/body.json")

OLD="$OLD" NEW="$NEW" ID="$ID" TS="$TS" SIGNATURE="$SIGNATURE" BODY="$WORK/body.json" \
    "$VENV/bin/python" - <<'PY'
import base64, os, sys
from standardwebhooks.webhooks import Webhook

body = open(os.environ["BODY"], "rb").read()
ident, ts, sig = os.environ["ID"], os.environ["TS"], os.environ["SIGNATURE"]

def verifies(secret, *, ident=ident, ts=ts, body=body):
    headers = {"webhook-id": ident, "webhook-timestamp": ts, "webhook-signature": sig}
    try:
        Webhook(secret).verify(body, headers)
        return True
    except Exception:
        return False

stranger = "whsec_" + base64.b64encode(os.urandom(32)).decode()
cases = [
    ("old secret, genuine delivery", verifies(os.environ["OLD"]), True),
    ("new secret, genuine delivery", verifies(os.environ["NEW"]), True),
    ("a third secret", verifies(stranger), False),
    ("tampered id", verifies(os.environ["NEW"], ident="msg_other"), False),
    ("tampered timestamp", verifies(os.environ["OLD"], ts=str(int(ts) + 1)), False),
    ("tampered body", verifies(os.environ["NEW"], body=body + b" "), False),
]
failed = [name for name, got, want in cases if got != want]
for name, got, want in cases:
    print(f"{'PASS' if got == want else 'FAIL'}  standardwebhooks (Python): {name}: {'verifies' if got else 'refused'}")
sys.exit(1 if failed else 0)
PY
