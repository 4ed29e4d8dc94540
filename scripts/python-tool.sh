#!/usr/bin/env bash
# Prints the path of a Python virtual environment that holds REQUIREMENT (pip syntax, pinned),
# creating or updating it first: the Python tools of the test suite (the Standard Webhooks
# library, schemathesis) come from PyPI by name and live outside the repository.
#
#   scripts/python-tool.sh NAME REQUIREMENT     # e.g. webhooks standardwebhooks==1.1.0
#
# The venv is $AGENTFLEET_TOOLS/NAME-venv (default ~/.cache/agentfleet-tools). Installs
# python3-venv (Debian) when the machine lacks it. Everything but the path goes to stderr.
set -euo pipefail
if [ $# -ne 2 ]; then
    echo "usage: $0 NAME REQUIREMENT" >&2
    exit 2
fi
NAME=$1
REQUIREMENT=$2
TOOLS=${AGENTFLEET_TOOLS:-$HOME/.cache/agentfleet-tools}
VENV="$TOOLS/$NAME-venv"

if [ ! -x "$VENV/bin/python" ]; then
    mkdir -p "$TOOLS"
    if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
        if [ "$(id -u)" -eq 0 ]; then
            apt-get update -qq >&2 && apt-get install -y -qq python3-venv >&2
        else
            sudo apt-get update -qq >&2 && sudo apt-get install -y -qq python3-venv >&2
        fi
        rm -rf "$VENV"
        python3 -m venv "$VENV" >&2
    fi
fi
if [ "$(cat "$VENV/.requirement" 2>/dev/null || true)" != "$REQUIREMENT" ]; then
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$REQUIREMENT" >&2
    printf '%s' "$REQUIREMENT" >"$VENV/.requirement"
fi
echo "$VENV"
