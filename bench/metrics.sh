#!/usr/bin/env bash
# bench/metrics.sh - what a Prometheus scrape every second costs the
# connection rate (issue 15): sockfork serve --echo --metrics, with and
# without a scraper that GETs /metrics once a second, runs alternating
# (rotated orders), conn/s at c=METRICS_CONC for METRICS_SECS each.
# Prints each run, the medians and the ratio (the target: no measurable
# cost, i.e. within the run-to-run spread). Loopback only; bounded.
#
#   METRICS_SECS=5 METRICS_CONC=64 METRICS_REPS=4 METRICS_MODE="" (or "--workers 2:8")
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${BUILD:-$ROOT/build}
SOCKFORK=${SOCKFORK:-$BUILD/sockfork}
LOADGEN=$BUILD/bench/loadgen
SECS=${METRICS_SECS:-5}
CONC=${METRICS_CONC:-64}
REPS=${METRICS_REPS:-4}
read -r -a MODE <<<"${METRICS_MODE:-}"
WORK=$(mktemp -d /tmp/sockfork-metrics.XXXXXX)
SERVER_PID=""
SCRAPER_PID=""

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

cleanup() {
    [[ -n $SCRAPER_PID ]] && kill "$SCRAPER_PID" 2>/dev/null || true
    [[ -n $SERVER_PID ]] && stop_tree "$SERVER_PID"
    rm -rf "$WORK"
}
trap cleanup EXIT

make -C "$ROOT" >/dev/null

# GET /metrics once a second for at most $2 seconds; counts the answers.
scraper() {   # scraper MPORT SECONDS
    local i n=0
    for ((i = 0; i < $2; i++)); do
        if exec 3<>"/dev/tcp/127.0.0.1/$1"; then
            printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3
            grep -c '^sockfork_' <&3 >/dev/null && n=$((n + 1))
            exec 3<&-
        fi
        sleep 1
    done
    echo "$n" >"$WORK/scrapes"
}

declare -A RATES
run_one() {   # run_one plain|scraped
    local port mport line
    port=$("$LOADGEN" freeport)
    mport=$("$LOADGEN" freeport)
    "$SOCKFORK" serve -q --echo --no-control -l "127.0.0.1:$port" --metrics "127.0.0.1:$mport" \
        "${MODE[@]}" 2>"$WORK/serve.log" &
    SERVER_PID=$!
    "$LOADGEN" probe -a "127.0.0.1:$port" -d 10 ||
        { say "sockfork did not start"; cat "$WORK/serve.log" >&2; exit 1; }
    if [[ $1 == scraped ]]; then
        scraper "$mport" "$((${SECS%.*} + 1))" &
        SCRAPER_PID=$!
    fi
    line=$("$LOADGEN" rate -a "127.0.0.1:$port" -c "$CONC" -d "$SECS") || true
    if [[ -n $SCRAPER_PID ]]; then
        wait "$SCRAPER_PID" || true
        SCRAPER_PID=""
        line+=" scrapes=$(cat "$WORK/scrapes")"
    fi
    stop_tree "$SERVER_PID"
    SERVER_PID=""
    printf '%-8s %s\n' "$1" "$line"
    RATES[$1]+=" $(sed -n 's/.*ops_per_s=\([0-9.]*\).*/\1/p' <<<"$line")"
}

for ((r = 0; r < REPS; r++)); do
    if ((r % 2)); then run_one scraped; run_one plain; else run_one plain; run_one scraped; fi
done

median() { tr ' ' '\n' | grep . | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
p=$(median <<<"${RATES[plain]}")
q=$(median <<<"${RATES[scraped]}")
echo
printf 'medians (conn/s at c=%s, %s runs each, %s): plain %.0f, scraped every second %.0f: %.3fx\n' \
    "$CONC" "$REPS" "${MODE[*]:-fork mode}" "$p" "$q" "$(awk -v a="$q" -v b="$p" 'BEGIN { print a / b }')"
