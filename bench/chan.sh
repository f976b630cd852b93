#!/usr/bin/env bash
# bench/chan.sh - the channel codec and the supervisor's bus against a raw
# socketpair: builds build/bench/chanbench if needed and runs it twice,
# with the parent and the children on two CPUs (--pin split) and on one
# (--pin same; skipped on a single-CPU machine). Defaults of chanbench:
# 1,000,000 messages, 20,000 round trips, 200 broadcasts to 1000 children,
# median of 5 repeats; extra arguments are passed on to both runs. Prints
# the markdown tables and writes them to bench/results/chan.md with a line
# on the machine. Per-run numbers go to stderr. About two minutes on 2 CPUs.
#
# Environment: BUILD=dir        meson build directory (default: build)
#              CHAN_PINS="..."  the --pin modes to run (default: "split same")
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${BUILD:-build}
[[ $BUILD == /* ]] || BUILD=$ROOT/$BUILD
RESULTS=$ROOT/bench/results
PINS=${CHAN_PINS:-split same}

if [[ ! -f $BUILD/build.ninja ]]; then
    meson setup "$BUILD" "$ROOT"
fi
ninja -C "$BUILD" bench/chanbench >&2

if [[ $(nproc) -lt 2 ]]; then
    PINS=${PINS//split/}
fi

mkdir -p "$RESULTS"
tables=()
for pin in $PINS; do
    echo "chan.sh: chanbench --pin $pin $*" >&2
    tables+=("$("$BUILD/bench/chanbench" --pin "$pin" "$@")")
done
[[ ${#tables[@]} -gt 0 ]] || { echo "chan.sh: no --pin mode to run" >&2; exit 2; }

cpu=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)
{
    printf '# sockfork channel codec and bus vs raw socketpair\n\n'
    printf '%s, %s CPUs (%s), Linux %s, commit %s\n' "$(date -u +%Y-%m-%dT%H:%MZ)" \
        "$(nproc)" "${cpu:-unknown CPU}" "$(uname -r)" \
        "$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)"
    for t in "${tables[@]}"; do
        printf '\n%s\n' "$t"
    done
} >"$RESULTS/chan.md"
cat "$RESULTS/chan.md"
