#!/usr/bin/env bash
# Regenerates benchmarks/test_durations_fast.txt and benchmarks/test_durations_full.txt: each
# tier's 25 slowest tests (pytest --durations=25), its wall time and the machine's load.
#
#   tests/durations.sh            # both tiers; `make durations` runs this
#   tests/durations.sh fast       # the fast tier only (`make test`)
#   tests/durations.sh full       # the full tier only (`make test-all`)
#
# Time them on a quiet machine: the load before and after is written beside the figures. For the
# full tier as CI runs it, start Slurm and install espeak-ng first (see .ci/run), or its Slurm
# and synthesis tests skip.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}

tier() {  # tier NAME PYTEST_ARGS...
    local name=$1 log rc start end load_before
    shift
    log="$(mktemp)"
    load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
    start=$(date +%s.%N)
    rc=0
    # a module that fails to import is reported (in the summary) without hiding the others' times
    "$PY" -m pytest -q -rfEs -p no:cacheprovider --continue-on-collection-errors --durations=25 \
        "$@" >"$log" 2>&1 || rc=$?
    end=$(date +%s.%N)
    {
        echo "# ${name} tier: python -m pytest -q -rfEs --continue-on-collection-errors" \
             "--durations=25${*:+ $(printf '%q ' "$@")}"
        echo "# date: $(date -u +%Y-%m-%dT%H:%M:%SZ)  commit: $(git rev-parse --short HEAD)$(
            git diff --quiet HEAD -- tome_lab tests || echo ' (with local changes)')"
        echo "# machine: $(nproc) CPUs, $(uname -m); load average (1, 5, 15 min) before:" \
             "${load_before}, after: $(cut -d' ' -f1-3 /proc/loadavg)"
        echo "# wall time: $(awk "BEGIN { printf \"%.0f\", $end - $start }") s;" \
             "pytest exit status: ${rc}"
        echo
        if grep -q "slowest 25 durations" "$log"; then
            sed -n '/slowest 25 durations/,$p' "$log"
        else  # it stopped before any test ran: say why
            tail -n 30 "$log"
        fi
    } >"benchmarks/test_durations_${name}.txt"
    rm -f "$log"
    echo "benchmarks/test_durations_${name}.txt: $(tail -n 1 "benchmarks/test_durations_${name}.txt")"
    return "$rc"
}

status=0
case "${1:-both}" in
    fast) tier fast -m "not full" || status=$? ;;
    full) tier full || status=$? ;;
    both) tier fast -m "not full" || status=$?
          tier full || status=$? ;;
    *) echo "usage: $0 [fast|full|both]" >&2; exit 2 ;;
esac
exit "$status"
