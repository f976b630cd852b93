#!/usr/bin/env bash
# bench/upgrade.sh - the connection rate during a zero-downtime upgrade
# against the steady rate of the same run (issue 15):
#
#   loadgen rate -c UPGRADE_CONC -i 100 runs for UPGRADE_SECS against
#   sockfork serve --echo (UPGRADE_MODE: "" = fork mode, or "--workers 2:8");
#   at 40 % of the run `sockfork ctl upgrade` is sent; its answer comes when
#   the new generation serves.
#
# Prints every 100 ms interval, then: the steady rate (median of the
# intervals before the upgrade, the first second left out), the lowest
# interval after it as a fraction of steady, how long the rate stayed below
# 90 % of steady, how long `ctl upgrade` took, and every error loadgen saw
# (a refused or reset connection is one: the target is zero). UPGRADE_REPS
# upgrades are measured, each in a run of its own. Loopback only; bounded.
#
#   UPGRADE_SECS=8 UPGRADE_CONC=64 UPGRADE_REPS=3 UPGRADE_MODE=""
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${BUILD:-$ROOT/build}
SOCKFORK=${SOCKFORK:-$BUILD/sockfork}
LOADGEN=$BUILD/bench/loadgen
SECS=${UPGRADE_SECS:-8}
CONC=${UPGRADE_CONC:-64}
REPS=${UPGRADE_REPS:-3}
read -r -a MODE <<<"${UPGRADE_MODE:-}"
WORK=$(mktemp -d /tmp/sockfork-upgrade.XXXXXX)
SERVER_PID=""

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

# Every generation: the first one's tree, and the newest one's (an orphan
# once the first has gone).
cleanup() {
    local p
    [[ -n $SERVER_PID ]] && stop_tree "$SERVER_PID"
    for p in $(pgrep -f -- "--control $WORK/c.sock" || true); do
        stop_tree "$p"
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

make -C "$ROOT" >/dev/null

run_one() {   # run_one REP
    local port t0 t1 at
    port=$("$LOADGEN" freeport)
    "$SOCKFORK" serve -q --echo -l "127.0.0.1:$port" --control "$WORK/c.sock" --grace 30 \
        "${MODE[@]}" 2>"$WORK/serve.log" &
    SERVER_PID=$!
    "$LOADGEN" probe -a "127.0.0.1:$port" -d 10 ||
        { say "sockfork did not start"; cat "$WORK/serve.log" >&2; exit 1; }
    "$LOADGEN" rate -a "127.0.0.1:$port" -c "$CONC" -d "$SECS" -i 100 >"$WORK/ticks" &
    local lg=$!
    at=$(awk -v s="$SECS" 'BEGIN { print s * 0.4 }')
    sleep "$at"
    t0=$(date +%s%N)
    "$SOCKFORK" ctl --control "$WORK/c.sock" upgrade >"$WORK/ctl.out" 2>&1 ||
        { say "upgrade failed"; cat "$WORK/ctl.out" "$WORK/serve.log" >&2; exit 1; }
    t1=$(date +%s%N)
    wait "$lg" || true
    # The interval in which the upgrade began, from loadgen's clock: the
    # run began about when its first tick's interval did.
    awk -v at="$at" -v took_ms="$(( (t1 - t0) / 1000000 ))" -v rep="$1" '
        /^tick/ {
            split($2, a, "="); split($3, b, "="); split($4, c, "=")
            ms[++n] = a[2]; ops[n] = b[2]; err += c[2]
        }
        /^mode=rate/ { final = $0 }
        END {
            up = at * 1000
            k = 0
            for (i = 1; i <= n; i++) if (ms[i] > 1000 && ms[i] <= up) st[++k] = ops[i]
            for (i = 2; i <= k; i++)   # insertion sort: mawk has no asort
                for (j = i; j > 1 && st[j - 1] > st[j]; j--) { t = st[j]; st[j] = st[j - 1]; st[j - 1] = t }
            steady = st[int((k + 1) / 2)]
            # The second after the upgrade began against the second before
            # it: the dip, and how long the rate stayed under 0.9x steady
            # (later seconds belong to the machine, not to the upgrade).
            low = -1; below = 0; sa = 0; sb = 0; lowb = -1; belowb = 0
            for (i = 1; i <= n; i++) {
                if (ms[i] > up && ms[i] <= up + 1000) {
                    sa += ops[i]
                    if (low < 0 || ops[i] < low) low = ops[i]
                    if (ops[i] < 0.9 * steady) below += 100
                }
                if (ms[i] > up - 1000 && ms[i] <= up) {
                    sb += ops[i]
                    if (lowb < 0 || ops[i] < lowb) lowb = ops[i]
                    if (ops[i] < 0.9 * steady) belowb += 100
                }
            }
            printf "rep %d: steady %d conn/100ms; the second after the upgrade began: %d conn (%.2fx the second before, %d), lowest 100 ms %d (%.2fx steady; before: %d), %d ms under 0.9x (before: %d ms); ctl upgrade took %d ms; loadgen errors %d\n",
                rep, steady, sa, sa / sb, sb, low, low / steady, lowb, below, belowb, took_ms, err
            print "  " final
            line = "  ticks:"
            for (i = 1; i <= n; i++) line = line " " ops[i] (ms[i] > up && ms[i] - 100 <= up ? "*" : "")
            print line
        }' "$WORK/ticks"
    stop_tree "$SERVER_PID"
    SERVER_PID=""
    local p
    for p in $(pgrep -f -- "--control $WORK/c.sock" || true); do
        stop_tree "$p"
    done
}

say "sockfork serve --echo ${MODE[*]:-(fork mode)}, loadgen rate -c $CONC for $SECS s, upgrade at 40 %"
for ((r = 1; r <= REPS; r++)); do
    run_one "$r"
done
