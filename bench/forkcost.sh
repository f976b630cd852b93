#!/usr/bin/env bash
# bench/forkcost.sh - what one connection costs in fork mode, counted, not
# timed: page faults, system calls and CPU time per connection, by process
# role, for `sockfork serve --echo` and the bare fork server
# (bench/bare_forkserver.c). Counts barely move when other work loads the
# machine, so they can steer changes where conn/s cannot.
#
# For each server, runs of `loadgen rate -c CONC`:
#   1. FORKCOST_RUNS times FORKCOST_SECS seconds untraced, summed: page faults (minflt) and CPU time
#      (utime + stime, in clock ticks) of each role from /proc/PID/stat,
#      before and after, divided by the connections loadgen completed.
#      The children's come from their parent's cminflt/cutime/cstime (the
#      spawner, or the bare server, reaps them), read after every child of
#      the run has been reaped. Also conn/s, which is noisy here.
#   2. FORKCOST_STRACE_SECS seconds under `strace -f` (attached to the
#      supervisor and spawner, or the bare server; children followed from
#      birth): system calls per connection by role, and the most frequent
#      ones.
# Roles: supervisor, spawner, child (sockfork); parent, child (bare).
#
# Environment:
#   BUILD=dir                 meson build directory (default: build)
#   SOCKFORK=path             sockfork binary (default: $BUILD/sockfork), e.g.
#                             an older build to compare with
#   FORKCOST_SERVERS="sockfork bare"   (also: sockfork-exec, `serve -- cat`)
#   FORKCOST_CONC=64          loadgen's concurrency
#   FORKCOST_SECS=3           seconds of the counted run
#   FORKCOST_STRACE_SECS=2    seconds of the traced run (0: none)
#   FORKCOST_TOP=8            system calls listed per role
#   FORKCOST_RUNS=3           counted runs, each with the server started anew
#                             (its stack lands elsewhere each time: a frame
#                             that straddles a page boundary is a fault more
#                             per connection); the traced run is in the last
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${BUILD:-build}
[[ $BUILD == /* ]] || BUILD=$ROOT/$BUILD
SOCKFORK=${SOCKFORK:-$BUILD/sockfork}
SERVERS=${FORKCOST_SERVERS:-sockfork bare}
CONC=${FORKCOST_CONC:-64}
SECS=${FORKCOST_SECS:-3}
STRACE_SECS=${FORKCOST_STRACE_SECS:-2}
TOP=${FORKCOST_TOP:-8}
RUNS=${FORKCOST_RUNS:-3}
LOADGEN=$BUILD/bench/loadgen
BARE=$BUILD/bench/bare-forkserver
TCK=$(getconf CLK_TCK)

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

WORK=$(mktemp -d /tmp/sockfork-forkcost.XXXXXX)
SERVER_PID=""
STRACE_PID=""
cleanup() {
    [[ -n $STRACE_PID ]] && kill -INT "$STRACE_PID" 2>/dev/null && wait "$STRACE_PID" 2>/dev/null
    [[ -n $SERVER_PID ]] && stop_tree "$SERVER_PID"
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

build_bench bench/loadgen
ninja -C "$BUILD" bench/bare-forkserver >&2

# ------------------------------------------------------------ the counts

# "minflt cminflt ticks cticks" of PID (ticks: utime + stime).
proc_counts() {
    awk '{ # the command name may hold spaces: count fields from its ")"
        sub(/^.*\) /, "")
        print $8, $9, $12 + $13, $14 + $15 }' "/proc/$1/stat"
}

# The server's processes by role: sets ROLE_PIDS (role -> pid) for the
# processes that exist between connections.
declare -A ROLE_PIDS
find_roles() {
    local name=$1 kids
    ROLE_PIDS=()
    case $name in
    sockfork | sockfork-exec)
        ROLE_PIDS[supervisor]=$SERVER_PID
        mapfile -t kids < <(ps -o pid= --ppid "$SERVER_PID" | tr -d ' ')
        case ${#kids[@]} in
        0) ;; # builds before the spawner (issue 3): the supervisor forks
        1) ROLE_PIDS[spawner]=${kids[0]} ;;
        *) say "sockfork has ${#kids[@]} children idle, expected 1 (the spawner)"
           return 1 ;;
        esac ;;
    bare) ROLE_PIDS[parent]=$SERVER_PID ;;
    esac
}

# The role whose cminflt/cutime/cstime hold the children's.
reaper_role() { # of the server running now
    if [[ -n ${ROLE_PIDS[spawner]:-} ]]; then echo spawner
    elif [[ -n ${ROLE_PIDS[supervisor]:-} ]]; then echo supervisor
    else echo parent; fi
}

start() {
    local name=$1 port=$2
    case $name in
    sockfork) "$SOCKFORK" serve -q -l "127.0.0.1:$port" --echo -c 20000 2>"$WORK/$name.log" & ;;
    sockfork-exec) "$SOCKFORK" serve -q -l "127.0.0.1:$port" -c 20000 -- cat 2>"$WORK/$name.log" & ;;
    bare) "$BARE" "$port" 2>"$WORK/$name.log" & ;;
    *) say "unknown server $name"; return 1 ;;
    esac
    SERVER_PID=$!
    if ! "$LOADGEN" probe -a "127.0.0.1:$port" -d 10 >/dev/null || ! alive "$SERVER_PID"; then
        say "$name did not come up"
        cat "$WORK/$name.log" >&2
        return 1
    fi
    sleep 0.3 # let the probe's child be reaped
}

# Until the tree is back to its idle size: every child of the run reaped.
settle_to() {
    local i
    for ((i = 0; i < 100; i++)); do
        (($(tree_pids "$SERVER_PID" | wc -l) <= $1)) && return 0
        sleep 0.1
    done
    say "server still has $(tree_pids "$SERVER_PID" | wc -l) processes, idle had $1"
}

ops_of() { tr ' ' '\n' <<<"$1" | sed -n 's/^ops=//p'; }
field_of() { tr ' ' '\n' <<<"$1" | sed -n "s/^$2=//p"; }

# Prints a per-connection figure with 2 decimals.
per() { awk -v a="$1" -v n="$2" 'BEGIN { printf "%.2f", (n > 0 ? a / n : 0) }'; }
per_us() { awk -v t="$1" -v n="$2" -v hz="$TCK" 'BEGIN { printf "%.0f", (n > 0 ? t * 1e6 / hz / n : 0) }'; }

# Totals over the counted runs of one server: SUM[role,faults|ticks],
# SUM[conns], SUM[rate] (the sum of the runs' conn/s), SUM[errors].
declare -A SUM
counted_run() {
    local name=$1 port=$2 idle role line reaper b a
    declare -A before after
    idle=$(tree_pids "$SERVER_PID" | wc -l)
    for role in "${!ROLE_PIDS[@]}"; do before[$role]=$(proc_counts "${ROLE_PIDS[$role]}"); done
    line=$("$LOADGEN" rate -a "127.0.0.1:$port" -c "$CONC" -d "$SECS")
    settle_to "$idle"
    for role in "${!ROLE_PIDS[@]}"; do after[$role]=$(proc_counts "${ROLE_PIDS[$role]}"); done
    # loadgen counts the cycles done in the window; the CONC still in
    # flight at its end are finished too, and cost what the others did.
    SUM[conns]=$((${SUM[conns]:-0} + $(ops_of "$line") + CONC))
    SUM[rate]=$(awk -v a="${SUM[rate]:-0}" -v b="$(field_of "$line" ops_per_s)" 'BEGIN { print a + b }')
    SUM[errors]=$((${SUM[errors]:-0} + $(field_of "$line" errors)))
    reaper=$(reaper_role)
    for role in "${!ROLE_PIDS[@]}"; do
        read -r -a b <<<"${before[$role]}"
        read -r -a a <<<"${after[$role]}"
        SUM[$role,faults]=$((${SUM[$role,faults]:-0} + a[0] - b[0]))
        SUM[$role,ticks]=$((${SUM[$role,ticks]:-0} + a[2] - b[2]))
        if [[ $role == "$reaper" ]]; then
            SUM[child,faults]=$((${SUM[child,faults]:-0} + a[1] - b[1]))
            SUM[child,ticks]=$((${SUM[child,ticks]:-0} + a[3] - b[3]))
        fi
    done
}

print_counts() {
    local name=$1 n=${SUM[conns]} role tf=0 tt=0
    printf '%s: %s connections in %s run(s) of %s s, %s conn/s on average (noisy: the machine is shared), errors=%s\n' \
        "$name" "$n" "$RUNS" "$SECS" "$(awk -v r="${SUM[rate]}" -v k="$RUNS" 'BEGIN { printf "%.0f", r / k }')" \
        "${SUM[errors]}"
    printf '  %-10s %12s %12s\n' role faults/conn "CPU us/conn"
    for role in supervisor spawner parent child; do
        [[ -n ${SUM[$role,faults]:-} ]] || continue
        tf=$((tf + SUM[$role,faults]))
        tt=$((tt + SUM[$role,ticks]))
        printf '  %-10s %12s %12s\n' "$role" "$(per "${SUM[$role,faults]}" "$n")" \
            "$(per_us "${SUM[$role,ticks]}" "$n")"
    done
    printf '  %-10s %12s %12s\n' all "$(per $tf "$n")" "$(per_us $tt "$n")"
}

# Attaches strace to the roles, waits until it has, runs loadgen.
traced_run() {
    local name=$1 port=$2 idle args=() role pid i
    idle=$(tree_pids "$SERVER_PID" | wc -l)
    for role in "${!ROLE_PIDS[@]}"; do args+=(-p "${ROLE_PIDS[$role]}"); done
    strace -f -qq -o "$WORK/trace" "${args[@]}" 2>"$WORK/strace.err" &
    STRACE_PID=$!
    for ((i = 0; i < 100; i++)); do
        local attached=1
        for role in "${!ROLE_PIDS[@]}"; do
            pid=${ROLE_PIDS[$role]}
            [[ $(awk '/^TracerPid:/ { print $2 }' "/proc/$pid/status") != 0 ]] || attached=0
        done
        ((attached)) && break
        sleep 0.05
    done
    sleep 0.2
    local skip # what strace printed before the run is not counted
    skip=$(wc -l <"$WORK/trace")
    "$LOADGEN" rate -a "127.0.0.1:$port" -c "$CONC" -d "$STRACE_SECS" >/dev/null
    settle_to "$idle"
    sleep 0.2
    kill -INT "$STRACE_PID" 2>/dev/null || true
    wait "$STRACE_PID" 2>/dev/null || true
    STRACE_PID=""
    local roles_map=""
    for role in "${!ROLE_PIDS[@]}"; do roles_map+="${ROLE_PIDS[$role]}=$role "; done
    printf '  system calls per connection (strace -f for %s s; a connection is a child process):\n' \
        "$STRACE_SECS"
    tail -n +"$((skip + 1))" "$WORK/trace" | awk -v map="$roles_map" -v top="$TOP" '
        BEGIN {
            m = split(map, kv, " ")
            for (i = 1; i <= m; i++) { split(kv[i], p, "="); role[p[1]] = p[2] }
        }
        $2 ~ /^<\.\.\./ || $2 == "+++" || $2 == "---" { next }
        {
            name = $2; sub(/\(.*/, "", name)
            r = ($1 in role) ? role[$1] : "child"
            total[r]++; calls[r, name]++; all++
            if (r == "child") kids[$1] = 1
        }
        END {
            n = 0; for (k in kids) n++
            if (n == 0) n = 1
            order = "supervisor spawner parent child"
            c = split(order, rs, " ")
            for (i = 1; i <= c; i++) {
                r = rs[i]
                if (!(r in total)) continue
                line = ""
                # the most frequent calls of this role, by count
                delete seen
                for (j = 0; j < top; j++) {
                    best = ""; bc = 0
                    for (key in calls) {
                        split(key, kk, SUBSEP)
                        if (kk[1] != r || (kk[2] in seen)) continue
                        if (calls[key] > bc) { bc = calls[key]; best = kk[2] }
                    }
                    if (best == "") break
                    seen[best] = 1
                    line = line sprintf(" %s %.1f", best, bc / n)
                }
                printf "  %-10s %6.1f  (%s )\n", r, total[r] / n, substr(line, 2)
            }
            printf "  %-10s %6.1f  (%d connections)\n", "all", all / n, n
        }'
}

port_of() { "$LOADGEN" freeport; }

for name in $SERVERS; do
    SUM=()
    for ((run = 1; run <= RUNS; run++)); do
        port=$(port_of)
        start "$name" "$port" || exit 1
        find_roles "$name" || exit 1
        counted_run "$name" "$port"
        if ((run == RUNS)); then
            print_counts "$name"
            if [[ $STRACE_SECS != 0 ]]; then
                traced_run "$name" "$port"
            fi
        fi
        stop_tree "$SERVER_PID"
        SERVER_PID=""
    done
done
