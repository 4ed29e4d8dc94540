#!/usr/bin/env bash
# Fuzzes what agentfleet reads from outside (submitted requests, broker messages, provider
# responses (HTTP/1.1 framing, bodies, rate-limit headers), model tool calls and final answers,
# the stored step log) with cargo-fuzz (libFuzzer, nightly toolchain): each target for a bounded time, one a core,
# starting from the hand-written seeds in fuzz/seeds/<target>/. Fails on any crash: a panic
# (overflow checks and debug assertions are on), a stack overflow, an input taking longer than
# -timeout or memory past -rss_limit_mb.
#
#   scripts/fuzz.sh [--short | --seconds N] [TARGET...]
#
#   --short      30 seconds a target (the default; what CI runs)
#   --seconds N  N seconds a target
#   TARGET...    only these targets (default: every one in fuzz/fuzz_targets/)
#
# The corpus grows in a temporary directory, so the repository keeps only the seeds. A crash's
# input is kept in fuzz/artifacts/<target>/; run the target on it to see the panic:
# `fuzz/target/x86_64-unknown-linux-gnu/debug/<target> fuzz/artifacts/<target>/<file>`.
#
# Built with fuzz/Cargo.toml's dev profile (why there) and no sanitizer: the code under test
# forbids `unsafe`, so AddressSanitizer would cost build and run time for little. Installs
# cargo-fuzz when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_EACH=30
TARGETS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --short) SECONDS_EACH=30 ;;
        --seconds)
            SECONDS_EACH=${2:?--seconds needs a number}
            shift
            ;;
        -*)
            echo "usage: scripts/fuzz.sh [--short | --seconds N] [TARGET...]" >&2
            exit 2
            ;;
        *) TARGETS+=("$1") ;;
    esac
    shift
done
if [ ${#TARGETS[@]} -eq 0 ]; then
    for file in fuzz/fuzz_targets/*.rs; do
        TARGETS+=("$(basename "$file" .rs)")
    done
fi

TOOLCHAIN=${AGENTFLEET_FUZZ_TOOLCHAIN:-nightly}
if ! rustup run "$TOOLCHAIN" rustc --version >/dev/null 2>&1; then
    rustup toolchain install "$TOOLCHAIN" --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install --locked cargo-fuzz
fi

# The fuzz crate resolves its dependencies from the workspace's lock file, so it runs the
# versions everything else does; only its own (libfuzzer-sys) are added.
cp Cargo.lock fuzz/Cargo.lock
cd fuzz

# The worker and dispatcher crates depend on jemalloc for their binaries; no fuzz target uses
# it, so an empty archive stands in for the library (building it takes a minute and a half).
mkdir -p target/no-jemalloc
if [ ! -f target/no-jemalloc/libjemalloc.a ]; then
    ar rc target/no-jemalloc/libjemalloc.a
fi
export JEMALLOC_OVERRIDE="$PWD/target/no-jemalloc/libjemalloc.a"

started=$(date +%s)
cargo "+$TOOLCHAIN" fuzz build --dev --sanitizer none
echo "fuzz build: $(($(date +%s) - started)) s"
BIN="target/$(rustc "+$TOOLCHAIN" -vV | sed -n 's/^host: //p')/debug"
for target in "${TARGETS[@]}"; do
    if [ ! -x "$BIN/$target" ]; then
        echo "error: no fuzz target $target (see fuzz/fuzz_targets/)" >&2
        exit 2
    fi
done

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# Runs one target; its line of the table goes to $WORK/<target>.row, its output to .log.
fuzz_one() {
    local target=$1 corpus="$WORK/corpus/$1" artifacts="artifacts/$1" log="$WORK/$1.log"
    local started result=ok execs
    mkdir -p "$corpus" "$artifacts"
    cp "seeds/$target"/* "$corpus"/ 2>/dev/null || true
    started=$(date +%s)
    # -timeout: one input taking this long (seconds) is a hang; -rss_limit_mb: past this, a
    # leak or a huge allocation. Either fails the run as a panic does.
    if ! "$BIN/$target" "$corpus" -max_total_time="$SECONDS_EACH" -timeout=10 \
        -rss_limit_mb=2048 -artifact_prefix="$artifacts/" -print_final_stats=1 >"$log" 2>&1; then
        result=FAILED
    fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    printf '%-18s %7s %10s %8s %8s  %s\n' "$target" "$(($(date +%s) - started))" "${execs:-?}" \
        "$(find "$corpus" -type f | wc -l)" "$(($(cat "$corpus"/* | wc -c) / 1024))K" "$result" \
        >"$WORK/$target.row"
}

# One target a core.
for target in "${TARGETS[@]}"; do
    while [ "$(jobs -pr | wc -l)" -ge "$(nproc)" ]; do
        wait -n || true
    done
    fuzz_one "$target" &
done
wait

printf '%-18s %7s %10s %8s %8s  %s\n' target seconds execs corpus size result
failed=()
for target in "${TARGETS[@]}"; do
    cat "$WORK/$target.row"
    grep -q ' ok$' "$WORK/$target.row" || failed+=("$target")
done
for target in "${failed[@]}"; do
    echo "fuzz target $target FAILED (its input is in fuzz/artifacts/$target/); the end of its output:" >&2
    tail -n 40 "$WORK/$target.log" >&2
done
[ ${#failed[@]} -eq 0 ]
