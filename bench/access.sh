#!/usr/bin/env bash
# bench/access.sh - what issue 14's access checks cost, each measured beside
# the same server without it, alternating, in one run on this machine:
#
#   plain        sockfork serve -q --echo -l 127.0.0.1:PORT
#   proxy        the same with -l 127.0.0.1:PORT,proxy --proxy-from 127.0.0.1;
#                loadgen sends a PROXY v2 header first (--proxy-v2)
#   rules-10     --rules with 10 rules (none matches 127.0.0.1; the default allows)
#   rules-10000  --rules with 10,000 such rules
#
# Connections per second at c=ACCESS_CONC, ACCESS_REPS repetitions of every
# server in rotated orders; prints each run and the medians, and the
# ratios against `plain` (the issue's targets: proxy >= 0.9, rules-10000 not
# measurably below rules-10). Loopback only; every run is bounded.
#
#   ACCESS_SECS=3 ACCESS_CONC=64 ACCESS_REPS=3 ACCESS_MODE="" (or "--workers 2:8")
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${BUILD:-$ROOT/build}
SOCKFORK=${SOCKFORK:-$BUILD/sockfork}
LOADGEN=$BUILD/bench/loadgen
SECS=${ACCESS_SECS:-3}
CONC=${ACCESS_CONC:-64}
REPS=${ACCESS_REPS:-3}
read -r -a MODE <<<"${ACCESS_MODE:-}"
WORK=$(mktemp -d /tmp/sockfork-access.XXXXXX)
SERVER_PID=""

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

cleanup() {
    [[ -n $SERVER_PID ]] && stop_tree "$SERVER_PID"
    rm -rf "$WORK"
}
trap cleanup EXIT

make -C "$ROOT" >/dev/null

# N rules, none of which matches 127.0.0.1: random /24s in 10.0.0.0/8 and
# /48s in 2001:db8::/32, the default allowing.
make_rules() {
    awk -v n="$1" 'BEGIN {
        srand(42)
        for (i = 0; i < n; i++) {
            if (i % 2)
                printf "deny 10.%d.%d.0/24\n", int(rand() * 256), int(rand() * 256)
            else
                printf "allow 2001:db8:%x:%x::/64 K%d=v\n", int(rand() * 65536), int(rand() * 65536), i % 7
        }
        print "default allow"
    }' >"$2"
}
make_rules 10 "$WORK/rules-10"
make_rules 10000 "$WORK/rules-10000"

start() {   # start NAME PORT
    local args=(serve -q --echo --no-control "${MODE[@]}")
    case $1 in
    plain) args+=(-l "127.0.0.1:$2") ;;
    proxy) args+=(-l "127.0.0.1:$2,proxy" --proxy-from 127.0.0.1) ;;
    rules-10 | rules-10000) args+=(-l "127.0.0.1:$2" --rules "$WORK/$1") ;;
    esac
    "$SOCKFORK" "${args[@]}" 2>"$WORK/$1.log" &
    SERVER_PID=$!
    "$LOADGEN" probe -a "127.0.0.1:$2" -d 10 ||
        { say "$1 did not start"; cat "$WORK/$1.log" >&2; exit 1; }
}

declare -A RATES
run_one() {   # run_one NAME
    local port line
    port=$("$LOADGEN" freeport)
    start "$1" "$port"
    line=$("$LOADGEN" rate -a "127.0.0.1:$port" -c "$CONC" -d "$SECS" \
        $([[ $1 == proxy ]] && echo --proxy-v2)) || true
    stop_tree "$SERVER_PID"
    SERVER_PID=""
    printf '%-12s %s\n' "$1" "$line"
    RATES[$1]+=" $(sed -n 's/.*ops_per_s=\([0-9.]*\).*/\1/p' <<<"$line")"
}

orders=("plain proxy rules-10 rules-10000" "rules-10000 rules-10 proxy plain"
        "proxy plain rules-10000 rules-10")
for ((r = 0; r < REPS; r++)); do
    for name in ${orders[r % 3]}; do
        run_one "$name"
    done
done

median() { tr ' ' '\n' | grep . | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
echo
echo "medians (conn/s at c=$CONC, $REPS runs each, ${MODE[*]:-fork mode}):"
for name in plain proxy rules-10 rules-10000; do
    m=$(median <<<"${RATES[$name]}")
    p=$(median <<<"${RATES[plain]}")
    printf '  %-12s %8.0f   %.2fx plain\n' "$name" "$m" "$(awk -v a="$m" -v b="$p" 'BEGIN { print a / b }')"
done
