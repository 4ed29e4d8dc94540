#!/usr/bin/env bash
# The whole test suite: unit tests and the integration tests against the real RabbitMQ and
# Redis (started or installed first by scripts/services.sh), then the webhook signatures
# against the reference Python library (scripts/check-webhooks.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
cargo test --workspace --locked "$@"
# Webhook signatures, checked by the reference Python Standard Webhooks library.
scripts/check-webhooks.sh
