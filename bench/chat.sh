#!/usr/bin/env bash
# bench/chat.sh - fan-out in one room: `sockfork chat` against redis pub/sub
# (issue 4), and two `sockfork chat` instances bridged over one Redis (issue
# 16), all driven by build/bench/chatload with the same client code:
#
#   sockfork  sockfork chat -q -l 127.0.0.1:PORT --no-control -c 1000
#                 --flood 100000/100000 --history 0
#             (the flood limit, 10 lines/s with bursts of 20 by default,
#             would drop the benchmark's lines; no history replays on join)
#   bus2      redis-server as below, and two instances with the same flags
#             plus --bus redis://127.0.0.1:RPORT, each on its own port; the
#             clients split 50/50 (chatload -a A -a B: even clients on A,
#             odd on B). Besides the rate and latency of all deliveries,
#             chatload gives p50 of the deliveries whose sender is on the
#             receiver's instance and of those whose sender is on the
#             other: their difference is the latency the bridge adds.
#   bus1      (not run by default) one instance with --bus, all its
#             clients on it: the bridge's cost without a second instance
#   redis     redis-server --bind 127.0.0.1 --port PORT --save '' --appendonly no
#
# CHAT_N clients in one room; in each round every client sends one line and
# each line reaches the CHAT_N - 1 others (redis also sends it back to its
# sender: chatload reads that copy and neither counts nor times it).
# Rounds are lock-step (CHAT_WINDOW=1: the next round starts when all
# CHAT_N * (CHAT_N - 1) deliveries of this one are in). Per run:
# deliveries/s, and p50/p99 latency from send to receipt. The two servers
# alternate CHAT_REPEATS times, each run on a fresh server on a free port;
# the table gives the medians and sockfork/redis ratios, printed and
# written to bench/results/chat.md.
#
# Everything runs on loopback, each chatload run bounded in time (-T, -d),
# and every process this starts is stopped at the end (trap). redis-server
# (Debian package redis-server) is installed with apt-get when missing and
# we are root; otherwise the redis rows are skipped. About a minute on 2 CPUs.
#
# Environment:
#   BUILD=dir          meson build directory (default: build)
#   CHAT_N=100         clients in the room
#   CHAT_ROUNDS=200    measured rounds per run
#   CHAT_WARMUP=5      rounds before those, not measured
#   CHAT_WINDOW=1      rounds in flight at once (1: lock-step)
#   CHAT_REPEATS=3     runs of each server, alternating
#   CHAT_SERVERS="sockfork bus2 redis"
#   CHAT_PERF=0        1: one more sockfork run under `perf record -e cpu-clock
#                      -g -a`; the profile summary goes to bench/results/chat-perf.txt
#   CHAT_COUNTS=0      1: counts per round for each server, which the load of a
#                      shared machine moves far less than it moves the rates:
#                      two more runs of each (CHAT_ROUNDS/4 and CHAT_ROUNDS
#                      rounds) with the server and chatload under `perf stat`
#                      (context switches, system calls, CPU time); the
#                      difference over the difference in rounds leaves out
#                      joining and start-up. Goes to the table in chat.md.
#   SOCKFORK=path      sockfork binary (default: $BUILD/sockfork)
#   SOCKFORK_OFFLOAD=path  the binary of the
#                      server "offload": `sockfork chat` as "sockfork", built
#                      with output offload; list it in CHAT_SERVERS
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${BUILD:-build}
[[ $BUILD == /* ]] || BUILD=$ROOT/$BUILD
CHAT_N=${CHAT_N:-100}
CHAT_ROUNDS=${CHAT_ROUNDS:-200}
CHAT_WARMUP=${CHAT_WARMUP:-5}
CHAT_WINDOW=${CHAT_WINDOW:-1}
CHAT_REPEATS=${CHAT_REPEATS:-3}
CHAT_SERVERS=${CHAT_SERVERS:-sockfork bus2 redis}
CHAT_PERF=${CHAT_PERF:-0}
CHAT_COUNTS=${CHAT_COUNTS:-0}
SOCKFORK=${SOCKFORK:-$BUILD/sockfork}
SOCKFORK_OFFLOAD=${SOCKFORK_OFFLOAD:-$BUILD/sockfork}
CHAT_BIN=$SOCKFORK  # the binary start_chat runs
CHATLOAD=$BUILD/bench/chatload
RESULTS=$ROOT/bench/results
STALL_MS=10000      # chatload -T: joining, sync, and a round's silence
RUN_SECS=120        # chatload -d: all the rounds of one run

WORK=$(mktemp -d /tmp/sockfork-chat.XXXXXX)
SERVER_PID=""       # the server running now, for the exit trap
BUS_PIDS=()         # bus1/bus2: the other instance, then the redis-server
ADDR_ARGS=()        # chatload's -a options for the server running now

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

cleanup() {
    [[ -n $SERVER_PID ]] && stop_tree "$SERVER_PID"
    stop_bus_pids
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- setup

install_redis() {
    command -v redis-server >/dev/null && return 0
    if ((EUID != 0)); then
        say "redis-server is not installed and we are not root: redis is skipped"
        return 0
    fi
    say "installing redis-server"
    # The package's own service is not used (on systemd machines it starts
    # one on 6379): each run below starts its own on a free port.
    DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server >&2 ||
        { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server >&2; } ||
        say "could not install redis-server: redis is skipped"
}

raise_nofile() {
    local need=$((2 * CHAT_N + 64)) hard
    hard=$(ulimit -Hn)
    if [[ $hard != unlimited ]] && ((hard < need)); then
        ulimit -Hn "$need" 2>/dev/null || true
    fi
    ulimit -Sn "$(ulimit -Hn)"
}

unavailable() {
    case $1 in
    sockfork) "$SOCKFORK" --version >/dev/null 2>&1 || echo "$SOCKFORK does not run" ;;
    offload) "$SOCKFORK_OFFLOAD" --version >/dev/null 2>&1 || echo "$SOCKFORK_OFFLOAD does not run" ;;
    redis) command -v redis-server >/dev/null || echo "redis-server not installed" ;;
    bus1 | bus2) unavailable sockfork; unavailable redis ;;
    *) echo "unknown server" ;;
    esac
}

# Stops what BUS_PIDS holds, the instances before their redis-server.
stop_bus_pids() {
    local pid
    for pid in "${BUS_PIDS[@]}"; do
        stop_tree "$pid"
    done
    BUS_PIDS=()
}

# A `sockfork chat` instance with the benchmark's flags and then "$@".
start_chat() {
    local port=$1 log=$2
    shift 2
    "$CHAT_BIN" chat -q -l "127.0.0.1:$port" --no-control -c 1000 \
        --flood 100000/100000 --history 0 "$@" 2>"$log" &
}

# bus1/bus2: a redis-server on a free port, then one or two instances
# bridged over it (the first on $2, its pid in SERVER_PID; the second and
# the redis-server in BUS_PIDS), each waited for. ADDR_ARGS gets their -a.
start_bus() {
    local name=$1 port=$2 log=$3 rport port2
    rport=$("$CHATLOAD" freeport)
    redis-server --bind 127.0.0.1 --port "$rport" --save '' --appendonly no \
        --daemonize no --dir "$WORK" --logfile "$log.redis" >/dev/null &
    BUS_PIDS=("$!")
    if ! "$CHATLOAD" probe -a "127.0.0.1:$rport" -d 10; then
        say "$name: its redis-server did not come up"
        stop_bus_pids
        return 1
    fi
    if [[ $name == bus2 ]]; then
        port2=$("$CHATLOAD" freeport)
        start_chat "$port2" "$log.2" --bus "redis://127.0.0.1:$rport"
        BUS_PIDS=("$!" "${BUS_PIDS[@]}")
        ADDR_ARGS+=(-a "127.0.0.1:$port2")
        if ! "$CHATLOAD" probe -a "127.0.0.1:$port2" -d 10 || ! alive "${BUS_PIDS[0]}"; then
            say "$name: its second instance did not come up; its log:"
            cat "$log.2" >&2 || true
            stop_bus_pids
            return 1
        fi
    fi
    start_chat "$port" "$log" --bus "redis://127.0.0.1:$rport"
}

# Starts server $1 on 127.0.0.1:$2 (log $3), sets SERVER_PID (and, for
# bus1/bus2, BUS_PIDS), and ADDR_ARGS; waits until it accepts.
start_server() {
    local name=$1 port=$2 log=$3
    ADDR_ARGS=(-a "127.0.0.1:$port")
    CHAT_BIN=$SOCKFORK
    [[ $name == offload ]] && CHAT_BIN=$SOCKFORK_OFFLOAD
    case $name in
    sockfork | offload) start_chat "$port" "$log" ;;
    bus1 | bus2) start_bus "$name" "$port" "$log" || return 1 ;;
    redis)
        redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no \
            --daemonize no --dir "$WORK" --logfile "$log" >/dev/null & ;;
    esac
    SERVER_PID=$!
    if ! "$CHATLOAD" probe -a "127.0.0.1:$port" -d 10 || ! alive "$SERVER_PID"; then
        say "$name did not come up; its log:"
        cat "$log" >&2 || true
        stop_tree "$SERVER_PID"
        SERVER_PID=""
        stop_bus_pids
        return 1
    fi
}

# ---------------------------------------------------------------- runs

# Value of key $2 in the key=value line $1.
field() { tr ' ' '\n' <<<"$1" | sed -n "s/^$2=//p" | head -n1; }

declare -A V          # V[server]: "rate p50 p99 [p50_same p50_cross]" of each run, one a line
declare -A NOTE       # NOTE[server]: what went wrong, if anything
RAW=$WORK/raw.txt

note() { NOTE[$1]="${NOTE[$1]:-}$2; "; say "$1: $2"; }

# The clients are gone: server $1 (pid $2) must still be up once its
# children have exited (a crash here is a finding, not a benchmark error).
# Stops it.
check_stop() {
    local name=$1 pid=$2 rep=$3 st i
    for ((i = 0; i < 30; i++)); do
        (($(tree_pids "$pid" | wc -l) <= 2)) && break
        alive "$pid" || break
        sleep 0.1
    done
    if ! alive "$pid"; then
        st=0
        wait "$pid" 2>/dev/null || st=$?
        note "$name" "run $rep: the server (pid $pid) died (exit status $st) after the clients disconnected"
    fi
    stop_tree "$pid" # or its children, if any are left
}

# One run of server $1 (repeat $2): a fresh server, chatload, the server
# stopped. Returns 1 if it could not be run at all.
run_one() {
    local name=$1 rep=$2 port log line mode f
    port=$("$CHATLOAD" freeport)
    log=$WORK/$name-$rep.log
    start_server "$name" "$port" "$log" || { note "$name" "run $rep: did not start"; return 1; }
    mode=$([[ $name == redis ]] && echo redis || echo chat)
    if line=$("$CHATLOAD" "$mode" "${ADDR_ARGS[@]}" -n "$CHAT_N" -r "$CHAT_ROUNDS" \
        -w "$CHAT_WINDOW" --warmup "$CHAT_WARMUP" -T "$STALL_MS" -d "$RUN_SECS" \
        2>>"$WORK/chatload.err"); then
        printf '%s %s\n' "$name" "$line" >>"$RAW"
        printf '   %-8s run %d: %s\n' "$name" "$rep" "$line" >&2
        V[$name]+="$(field "$line" deliveries_per_s) $(field "$line" p50_us) $(field "$line" p99_us)"
        [[ $name == bus2 ]] && V[$name]+=" $(field "$line" p50_same_us) $(field "$line" p50_cross_us)"
        V[$name]+=$'\n'
    else
        note "$name" "run $rep: chatload failed: $(tail -n 1 "$WORK/chatload.err")"
    fi
    check_stop "$name" "$SERVER_PID" "$rep"
    SERVER_PID=""
    # bus2: the second instance, then the redis-server (bus1: that alone).
    [[ $name == bus2 ]] && check_stop "$name" "${BUS_PIDS[0]}" "$rep"
    stop_bus_pids
    for f in "$log" "$log.2"; do
        [[ $name != redis && -f $f ]] && grep -q 'its channel is broken' "$f" &&
            NOTE[broken]=$((${NOTE[broken]:-0} + $(grep -c 'its channel is broken' "$f")))
    done
    return 0
}

# Median of column $2 of the lines in $1.
median() {
    awk -v c="$2" 'NF { print $c }' <<<"$1" | sort -g |
        awk '{ v[NR] = $1 } END { if (NR) print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'
}

# awk arithmetic on values that may be empty: prints "" if any is.
calc() { awk -v a="${2:-}" -v b="${3:-}" "BEGIN { if (a == \"\" || b == \"\" || b + 0 == 0) exit; $1 }"; }

# Profile of one more sockfork run: where the CPU goes, per process kind.
profile() {
    local port log data=$WORK/perf.data out=$RESULTS/chat-perf.txt sup kids
    command -v perf >/dev/null || { say "CHAT_PERF=1 but perf is not installed"; return 0; }
    port=$("$CHATLOAD" freeport)
    log=$WORK/perf-server.log
    start_server sockfork "$port" "$log" || return 0
    sup=$SERVER_PID
    say "profiling one sockfork run (perf record -e cpu-clock -g -a)"
    perf record -q -e cpu-clock -g -a -o "$data" -- "$CHATLOAD" chat -a "127.0.0.1:$port" \
        -n "$CHAT_N" -r "$CHAT_ROUNDS" -w "$CHAT_WINDOW" --warmup "$CHAT_WARMUP" \
        -T "$STALL_MS" -d "$RUN_SECS" >"$WORK/perf-run.txt" 2>&1 || true
    stop_tree "$SERVER_PID"
    SERVER_PID=""
    kids=$(perf report -i "$data" --no-children --sort pid -g none --stdio 2>/dev/null |
        awk -v s="$sup" '$2 ~ /:sockfork$/ { split($2, a, ":"); if (a[1] != s) printf "%s%s", n++ ? "," : "", a[1] }')
    {
        echo "# sockfork chat under perf: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs"
        echo "run: $(tail -n 1 "$WORK/perf-run.txt")"
        echo
        echo "## share of all CPU time, by command and object"
        perf report -i "$data" --no-children --sort comm,dso -g none --stdio 2>/dev/null | grep -v '^#' | grep -v '^$' | head -n 12
        echo
        echo "## the supervisor (pid $sup): symbols, % of all CPU time"
        perf report -i "$data" --no-children --pid "$sup" --sort sym -g none --stdio 2>/dev/null | grep -v '^#' | grep -v '^$' | head -n 25
        echo
        echo "## the chat children, together: symbols, % of all CPU time"
        [[ -n $kids ]] && perf report -i "$data" --no-children --pid "$kids" --sort sym -g none --stdio 2>/dev/null | grep -v '^#' | grep -v '^$' | head -n 30
        echo
        echo "## call chains into the top kernel symbols (all processes)"
        perf report -i "$data" --no-children --comm sockfork --sort sym -g caller,0.5,callee --percent-limit 5 --stdio 2>/dev/null | grep -v '^#' | grep -v '^$' | head -n 80
    } >"$out"
    say "profile written to ${out#"$ROOT"/}"
}

# ---------------------------------------------------------------- counts

# System calls counted by kind (the rest only in the total).
COUNT_KINDS="ppoll epoll_wait read write recvmsg sendmsg writev recvfrom sendto timerfd_settime epoll_ctl"
COUNT_EVENTS=context-switches,task-clock,raw_syscalls:sys_enter
for k in $COUNT_KINDS; do COUNT_EVENTS+=,syscalls:sys_enter_$k; done

# Value of event $2 in the CSV output of perf stat ($1; "-" if absent).
stat_value() { awk -F, -v e="$2" '$3 == e { v += $1; n++ } END { print n ? v : "-" }' "$1"; }

# "cs cpu_ms sys KIND..." of the perf stat CSV $1.
stat_line() {
    local k line
    line="$(stat_value "$1" context-switches) $(stat_value "$1" task-clock) $(stat_value "$1" raw_syscalls:sys_enter)"
    for k in $COUNT_KINDS; do line+=" $(stat_value "$1" "syscalls:sys_enter_$k")"; done
    echo "$line"
}

# Command $2... under perf stat into the CSV $1, in the background (its pid: $!).
counted() {
    local out=$1
    shift
    perf stat -x, -e "$COUNT_EVENTS" -o "$out" -- "$@" &
}

# perf stat of pid $2 alone (no children: the supervisor without its
# members) into $1, until it exits; its pid goes into ATTACHED.
ATTACHED=()
attach() {
    perf stat -x, --no-inherit -e "$COUNT_EVENTS" -o "$1" -p "$2" 2>/dev/null &
    ATTACHED+=("$!")
}

# The first child of perf stat $1 (the counted program), waited for.
counted_pid() {
    local i pid
    for ((i = 0; i < 100; i++)); do
        pid=$(ps -o pid= --ppid "$1" | head -n1 | tr -d ' ')
        [[ -n $pid ]] && { echo "$pid"; return 0; }
        sleep 0.05
    done
    return 1
}

# SIGINT to the program under perf stat $1 (servers stop cleanly on it),
# and perf stat waited for: it writes its counts once the program (and all
# it started) has exited.
stop_counted() {
    local perf_pid=$1 pid=${2:-} i
    [[ -n $pid ]] && kill -INT "$pid" 2>/dev/null
    for ((i = 0; i < 150; i++)); do
        alive "$perf_pid" || break
        sleep 0.1
    done
    alive "$perf_pid" && stop_tree "$perf_pid"
    wait "$perf_pid" 2>/dev/null || true
}

# One run of server $1 for $2 rounds, every process of it and chatload under
# perf stat. Writes $WORK/counts-$1-$2.txt: a line per counted thing,
# "label cs cpu_ms sys KIND...", and for bus2 "redis-commands xadd xread"
# (calls of each in redis-server, from INFO commandstats at the end).
count_run() {
    local name=$1 rounds=$2 port port2 rport log mode out=$WORK/counts-$1-$2.txt
    local -a perfs=() pids=() csv=() labels=() addrs=()
    local i p cstat=$WORK/count-chatload.csv
    port=$("$CHATLOAD" freeport)
    log=$WORK/count-$name.log
    ATTACHED=()
    rm -f "$WORK"/count-*.csv
    case $name in
    sockfork | offload)
        CHAT_BIN=$SOCKFORK
        [[ $name == offload ]] && CHAT_BIN=$SOCKFORK_OFFLOAD
        counted "$WORK/count-a.csv" "$CHAT_BIN" chat -q -l "127.0.0.1:$port" --no-control -c 1000 \
            --flood 100000/100000 --history 0 2>"$log"
        perfs+=("$!"); csv+=("$WORK/count-a.csv"); labels+=("instance")
        addrs=(-a "127.0.0.1:$port") ;;
    redis)
        counted "$WORK/count-r.csv" redis-server --bind 127.0.0.1 --port "$port" --save '' \
            --appendonly no --daemonize no --dir "$WORK" --logfile "$log" >/dev/null
        perfs+=("$!"); csv+=("$WORK/count-r.csv"); labels+=("redis-server")
        addrs=(-a "127.0.0.1:$port") ;;
    bus2)
        rport=$("$CHATLOAD" freeport)
        port2=$("$CHATLOAD" freeport)
        counted "$WORK/count-r.csv" redis-server --bind 127.0.0.1 --port "$rport" --save '' \
            --appendonly no --daemonize no --dir "$WORK" --logfile "$log.redis" >/dev/null
        perfs+=("$!"); csv+=("$WORK/count-r.csv"); labels+=("redis-server")
        "$CHATLOAD" probe -a "127.0.0.1:$rport" -d 10 >/dev/null || { stop_tree "${perfs[0]}"; return 1; }
        counted "$WORK/count-b.csv" "$SOCKFORK" chat -q -l "127.0.0.1:$port2" --no-control -c 1000 \
            --flood 100000/100000 --history 0 --bus "redis://127.0.0.1:$rport" 2>"$log.2"
        perfs+=("$!"); csv+=("$WORK/count-b.csv"); labels+=("instance-B")
        counted "$WORK/count-a.csv" "$SOCKFORK" chat -q -l "127.0.0.1:$port" --no-control -c 1000 \
            --flood 100000/100000 --history 0 --bus "redis://127.0.0.1:$rport" 2>"$log"
        perfs+=("$!"); csv+=("$WORK/count-a.csv"); labels+=("instance-A")
        addrs=(-a "127.0.0.1:$port" -a "127.0.0.1:$port2") ;;
    esac
    SERVER_PID=${perfs[-1]} # for the exit trap
    BUS_PIDS=("${perfs[@]:0:${#perfs[@]}-1}")
    for ((i = 1; i < ${#addrs[@]}; i += 2)); do
        if ! "$CHATLOAD" probe -a "${addrs[i]}" -d 10 >/dev/null; then
            for p in "${perfs[@]}"; do stop_tree "$p"; done
            SERVER_PID="" BUS_PIDS=()
            return 1
        fi
    done
    for p in "${perfs[@]}"; do pids+=("$(counted_pid "$p")"); done
    # The supervisors alone (their members are in the tree's counts).
    for ((i = 0; i < ${#perfs[@]}; i++)); do
        [[ ${labels[i]} == instance* ]] || continue
        attach "$WORK/count-sup$i.csv" "${pids[i]}"
    done
    mode=$([[ $name == redis ]] && echo redis || echo chat)
    counted "$cstat" "$CHATLOAD" "$mode" "${addrs[@]}" -n "$CHAT_N" -r "$rounds" \
        -w "$CHAT_WINDOW" --warmup "$CHAT_WARMUP" -T "$STALL_MS" -d "$RUN_SECS" \
        >/dev/null 2>>"$WORK/chatload.err"
    if ! wait "$!"; then
        for p in "${perfs[@]}" "${ATTACHED[@]}"; do stop_tree "$p"; done
        SERVER_PID="" BUS_PIDS=()
        return 1
    fi
    : >"$out"
    if [[ $name == bus2 ]]; then
        redis-cli -p "$rport" INFO commandstats | tr -d '\r' | awk -F'[:=,]' '
            $1 == "cmdstat_xadd" { a = $3 } $1 == "cmdstat_xread" { r = $3 }
            END { print "redis-commands", a + 0, r + 0 }' >>"$out"
    fi
    # The instances first (A before B), the redis-server last.
    for ((i = ${#perfs[@]} - 1; i >= 0; i--)); do stop_counted "${perfs[i]}" "${pids[i]}"; done
    for p in "${ATTACHED[@]}"; do stop_counted "$p"; done
    SERVER_PID="" BUS_PIDS=()
    for ((i = 0; i < ${#perfs[@]}; i++)); do
        [[ -s ${csv[i]} ]] || return 1
        echo "${labels[i]} $(stat_line "${csv[i]}")" >>"$out"
        [[ -s $WORK/count-sup$i.csv ]] && echo "${labels[i]}/supervisor $(stat_line "$WORK/count-sup$i.csv")" >>"$out"
    done
    echo "chatload $(stat_line "$cstat")" >>"$out"
}

declare -A COUNTS=()  # COUNTS[server]: "cs sys cpu_ms cl_cs cl_sys cl_cpu_ms" per round
declare -A DETAIL=()  # DETAIL[server]: per round, "label cs cpu_ms sys KIND..." lines

# Per round: (the hi run's counts - the lo run's) / (hi - lo) rounds, by label.
count_diff() {
    awk -v d="$3" 'FNR == NR { for (i = 2; i <= NF; i++) a[$1, i] = $i; next }
        { printf "%s", $1; for (i = 2; i <= NF; i++) printf " %.2f", ($i - a[$1, i]) / d; print "" }' "$1" "$2"
}

counts() {
    local name lo hi d
    command -v perf >/dev/null || { say "CHAT_COUNTS=1 but perf is not installed"; return 0; }
    hi=$CHAT_ROUNDS
    lo=$((CHAT_ROUNDS / 4 > 10 ? CHAT_ROUNDS / 4 : 10))
    ((hi > lo)) || { say "CHAT_COUNTS=1 needs CHAT_ROUNDS > 40"; return 0; }
    for name in $CHAT_SERVERS; do
        [[ -n ${SKIP[$name]:-} ]] && continue
        [[ $name == sockfork || $name == offload || $name == redis || $name == bus2 ]] || continue
        say "$name: counting ($lo and $hi rounds under perf stat)"
        if ! count_run "$name" "$lo" || ! count_run "$name" "$hi"; then
            note "$name" "counts: a run failed"
            continue
        fi
        d=$(count_diff "$WORK/counts-$name-$lo.txt" "$WORK/counts-$name-$hi.txt" $((hi - lo)))
        DETAIL[$name]=$d
        # The server: every process of it (both instances and redis-server for bus2).
        COUNTS[$name]=$(awk '$1 !~ /\// && $1 != "chatload" && $1 != "redis-commands" { cs += $2; cpu += $3; sys += $4 }
            $1 == "chatload" { ccs = $2; ccpu = $3; csys = $4 }
            END { printf "%.2f %.2f %.2f %.2f %.2f %.2f", cs, sys, cpu, ccs, csys, ccpu }' <<<"$d")
    done
}

counts_table() {
    local name label c
    echo "| per round ($((CHAT_N * (CHAT_N - 1))) deliveries) | server: context switches | system calls | CPU ms |" \
        "chatload: context switches | system calls | CPU ms |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    for name in $CHAT_SERVERS; do
        [[ -n ${COUNTS[$name]:-} ]] || continue
        label=$(label "$name")
        read -r -a c <<<"${COUNTS[$name]}"
        printf '| %s | %.0f | %.0f | %.2f | %.0f | %.0f | %.2f |\n' "$label" "${c[@]}"
    done
    for name in $CHAT_SERVERS; do
        [[ -n ${DETAIL[$name]:-} ]] || continue
        echo
        detail_table "$name"
    done
}

# Server $1's processes one by one (members: an instance's tree less its
# supervisor), system calls by kind; bus2: its Redis commands too.
detail_table() {
    local k head="| $(label "$1"), per round | context switches | CPU ms | system calls"
    for k in $COUNT_KINDS; do head+=" | $k"; done
    echo "$head |"
    printf '|---|---:|---:|---:'; for k in $COUNT_KINDS; do printf '|---:'; done; echo '|'
    awk '$1 == "redis-commands" { next }
        { for (i = 2; i <= NF; i++) v[$1, i] = $i; n[$1] = NF; if ($1 !~ /\//) order[++m] = $1 }
        function row(name, l, s,   i) {
            printf "| %s", name
            for (i = 2; i <= n[l]; i++) printf " | %.*f", (i == 3 ? 2 : 0), v[l, i] - (s != "" ? v[s, i] : 0)
            print " |"
        }
        END {
            for (j = 1; j <= m; j++) {
                l = order[j]; s = l "/supervisor"
                if (s in n) { row(l " supervisor", s, ""); row(l " members", l, s) }
                else row(l, l, "")
            }
        }' <<<"${DETAIL[$1]}"
    awk '$1 == "redis-commands" {
        printf "\nRedis commands per round: XADD %.1f, XREAD %.1f; entries per XREAD reply about %.1f " \
            "(each entry is read by both instances: 2 × XADD / XREAD).\n", $2, $3, ($3 > 0 ? 2 * $2 / $3 : 0) }' <<<"${DETAIL[$1]}"
}

# ---------------------------------------------------------------- table

label() {
    case $1 in
    sockfork) echo "sockfork chat" ;;
    offload) echo "sockfork chat, output offload" ;;
    bus1) echo "sockfork chat --bus, one instance" ;;
    bus2) echo "sockfork chat --bus, two instances" ;;
    redis) echo "redis pub/sub" ;;
    esac
}

table() {
    local name r p50 p99 runs label
    echo "| server | deliveries/s | p50 latency, ms | p99 latency, ms | runs |"
    echo "|---|---:|---:|---:|---:|"
    for name in $CHAT_SERVERS; do
        label=$(label "$name")
        if [[ -z ${V[$name]:-} ]]; then
            echo "| $label | – | – | – | 0 |"
            continue
        fi
        r=$(median "${V[$name]}" 1)
        p50=$(median "${V[$name]}" 2)
        p99=$(median "${V[$name]}" 3)
        runs=$(grep -c . <<<"${V[$name]}")
        echo "| $label | $(calc 'printf "%.0f", a' "$r" 1) | $(calc 'printf "%.2f", a / 1000' "$p50" 1)" \
            "| $(calc 'printf "%.2f", a / 1000' "$p99" 1) | $runs |"
    done
    if [[ -n ${V[sockfork]:-} && -n ${V[redis]:-} ]]; then
        local rr p5 p9
        rr=$(calc 'printf "%.3f", a / b' "$(median "${V[sockfork]}" 1)" "$(median "${V[redis]}" 1)")
        p5=$(calc 'printf "%.1f", a / b' "$(median "${V[sockfork]}" 2)" "$(median "${V[redis]}" 2)")
        p9=$(calc 'printf "%.1f", a / b' "$(median "${V[sockfork]}" 3)" "$(median "${V[redis]}" 3)")
        echo "| sockfork / redis | ${rr}× | ${p5}× | ${p9}× | |"
    fi
    if [[ -n ${V[offload]:-} && -n ${V[redis]:-} ]]; then
        rr=$(calc 'printf "%.3f", a / b' "$(median "${V[offload]}" 1)" "$(median "${V[redis]}" 1)")
        p5=$(calc 'printf "%.1f", a / b' "$(median "${V[offload]}" 2)" "$(median "${V[redis]}" 2)")
        p9=$(calc 'printf "%.1f", a / b' "$(median "${V[offload]}" 3)" "$(median "${V[redis]}" 3)")
        echo "| offload / redis | ${rr}× | ${p5}× | ${p9}× | |"
    fi
    for name in offload bus1 bus2; do
        [[ -n ${V[sockfork]:-} && -n ${V[$name]:-} ]] || continue
        rr=$(calc 'printf "%.3f", a / b' "$(median "${V[$name]}" 1)" "$(median "${V[sockfork]}" 1)")
        p5=$(calc 'printf "%.1f", a / b' "$(median "${V[$name]}" 2)" "$(median "${V[sockfork]}" 2)")
        p9=$(calc 'printf "%.1f", a / b' "$(median "${V[$name]}" 3)" "$(median "${V[sockfork]}" 3)")
        echo "| $name / sockfork | ${rr}× | ${p5}× | ${p9}× | |"
    done
    if [[ -n ${V[bus2]:-} ]]; then
        echo
        cross_table
    fi
}

# bus2: p50 of the deliveries within an instance and of those across, and
# the difference, per run and the median of the per-run differences.
cross_table() {
    local d
    echo "| two instances, run | p50 same instance, ms | p50 across instances, ms | added across, ms |"
    echo "|---|---:|---:|---:|"
    awk 'NF >= 5 { printf "| %d | %.2f | %.2f | %+.2f |\n", ++n, $4 / 1000, $5 / 1000, ($5 - $4) / 1000 }' <<<"${V[bus2]}"
    d=$(cross_added)
    echo "| median | | | $(calc 'printf "%+.2f", a / 1000' "$d" 1) |"
}

# Median over the bus2 runs of p50 across - p50 same, in µs.
cross_added() {
    median "$(awk 'NF >= 5 { print $5 - $4 }' <<<"${V[bus2]:-}")" 1
}

verdict() {
    local rr p9 d
    if [[ -n ${V[sockfork]:-} && -n ${V[bus2]:-} ]]; then
        rr=$(calc 'printf "%.3f", a / b' "$(median "${V[bus2]}" 1)" "$(median "${V[sockfork]}" 1)")
        d=$(cross_added)
        echo "Target (issue 16, two instances): deliveries/s of two instances / one instance = $rr, ≥ 0.8:" \
            "$(calc 'print (a >= b ? "met" : "MISSED")' "$rr" 0.8)."
        echo "Target (issue 16, cross-instance latency): p50 across - p50 within an instance" \
            "= $(calc 'printf "%.2f", a / 1000' "$d" 1) ms, ≤ 2 ms: $(calc 'print (a <= b ? "met" : "MISSED")' "$d" 2000)."
    elif [[ " $CHAT_SERVERS " == *" bus2 "* ]]; then
        echo "Target (issue 16, two instances) not checked: sockfork or bus2 has no results."
    fi
    [[ " $CHAT_SERVERS " == *" redis "* ]] || return 0
    [[ -n ${V[sockfork]:-} && -n ${V[redis]:-} ]] || { echo "Target not checked: a server has no results."; return; }
    rr=$(calc 'printf "%.3f", a / b' "$(median "${V[sockfork]}" 1)" "$(median "${V[redis]}" 1)")
    p9=$(calc 'printf "%.3f", a / b' "$(median "${V[sockfork]}" 3)" "$(median "${V[redis]}" 3)")
    echo "Target (issue 4): sockfork / redis deliveries/s = $rr, ≥ 0.5:" \
        "$(calc 'print (a >= b ? "met" : "MISSED")' "$rr" 0.5)."
    echo "Target (issue 16, one instance ahead of Redis): deliveries/s ≥ 1.0× and p99 ≤ 1.0× of redis's" \
        "(now $rr× and ${p9}×): $(calc 'print (a >= 1 && b <= 1 ? "met" : "MISSED")' "$rr" "$p9")."
}

report() {
    local cpu name
    cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)
    echo "# sockfork chat vs redis pub/sub: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "Machine: $(nproc) CPUs ($cpu), Linux $(uname -r), load average ${LOAD_BEFORE:-?} before the runs, $(uptime | sed "s/.*load average: //") after;" \
        "$("$SOCKFORK" --version 2>/dev/null || echo sockfork ?), $(redis-server --version 2>/dev/null | awk '{ print $1, $3 }' || echo redis ?)" \
        "(tree $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown))."
    echo "Run: CHAT_N=$CHAT_N CHAT_ROUNDS=$CHAT_ROUNDS CHAT_WARMUP=$CHAT_WARMUP" \
        "CHAT_WINDOW=$CHAT_WINDOW CHAT_REPEATS=$CHAT_REPEATS CHAT_SERVERS=\"$CHAT_SERVERS\" bench/chat.sh"
    echo
    echo "$CHAT_N clients in one room, every client sends one line per round, each line"
    echo "reaches the $((CHAT_N - 1)) others: $((CHAT_N * (CHAT_N - 1))) deliveries a round," \
        "$( ((CHAT_WINDOW == 1)) && echo "lock-step (a round starts when the last is all in)" || echo "up to $CHAT_WINDOW rounds in flight")."
    echo "Latency: from just before the sender's send() to the receiver's recv() (CLOCK_MONOTONIC, one process)."
    echo "Medians of $CHAT_REPEATS runs each, the servers alternating, a fresh server per run;"
    echo "all on loopback, the load generator (bench/chatload.c, one thread, epoll) the same for both."
    echo "sockfork: \`sockfork chat -q --no-control -c 1000 --flood 100000/100000 --history 0\`"
    echo "(the default flood limit of 10 lines/s, bursts of 20, would drop lines; no history on join)."
    if [[ " $CHAT_SERVERS " == *" bus"[12]" "* ]]; then
        echo "bus2: a redis-server (the same flags as below) and two such instances, each with"
        echo "\`--bus redis://127.0.0.1:PORT\` (default bridge options), the clients split 50/50"
        echo "(even ones on the first instance, odd on the second): every line reaches half its"
        echo "receivers through the bridge (XADD to the room's stream, XREAD on the other instance)."
        echo "\"Added across\": p50 of the deliveries whose sender is on the other instance minus"
        echo "p50 of those whose sender is on the receiver's (same run, same rounds)."
        echo "bus1 (if run): one instance with --bus, alone on its redis-server."
    fi
    echo "redis: \`redis-server --save '' --appendonly no\`, each client subscribed on one"
    echo "connection and publishing on a second; redis also sends each line back to its sender:"
    echo "that copy is read and parsed but neither counted nor timed."
    echo
    table
    echo
    verdict
    echo
    if ((${#COUNTS[@]})); then
        echo "Counts per measured round (CHAT_COUNTS=1: under perf stat, the difference between"
        echo "a run of $((CHAT_ROUNDS / 4 > 10 ? CHAT_ROUNDS / 4 : 10)) and one of $CHAT_ROUNDS rounds, so joining and start-up are left out):"
        echo
        counts_table
        echo
    fi
    for name in $CHAT_SERVERS; do
        [[ -n ${NOTE[$name]:-} ]] && echo "- $name: ${NOTE[$name]}"
    done
    [[ -n ${NOTE[broken]:-} ]] &&
        echo "- sockfork logged \"its channel is broken\" ${NOTE[broken]} times in all, as the clients disconnected."
    echo
    echo "Raw chatload lines:"
    echo
    echo '```'
    cat "$RAW" 2>/dev/null || true
    echo '```'
}

# ----------------------------------------------------------------- main

build_bench bench/chatload
[[ " $CHAT_SERVERS " == *" redis "* ]] && install_redis
raise_nofile
: >"$RAW"
: >"$WORK/chatload.err"
LOAD_BEFORE=$(uptime | sed "s/.*load average: //") # the 1, 5 and 15 min loads
declare -A SKIP
for name in $CHAT_SERVERS; do
    why=$(unavailable "$name")
    if [[ -n $why ]]; then
        say "$name: skipped: $why"
        SKIP[$name]=1
        NOTE[$name]="skipped: $why; "
    fi
done
for ((rep = 1; rep <= CHAT_REPEATS; rep++)); do
    for name in $CHAT_SERVERS; do
        [[ -n ${SKIP[$name]:-} ]] && continue
        say "$name, run $rep of $CHAT_REPEATS"
        run_one "$name" "$rep" || true
    done
done
mkdir -p "$RESULTS"
((CHAT_PERF)) && [[ -z ${SKIP[sockfork]:-} ]] && profile
((CHAT_COUNTS)) && counts
report >"$RESULTS/chat.md"
echo
table
if ((${#COUNTS[@]})); then
    echo
    counts_table
fi
echo
verdict
say "written to ${RESULTS#"$ROOT"/}/chat.md"
