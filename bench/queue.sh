#!/usr/bin/env bash
# bench/queue.sh - `sockfork run` over a Redis queue against `sockfork run`
# alone (issue 17): tasks/s for QUEUE_N trivial tasks, and the latency a task
# gains on its way through the queue. All in one run, alternating:
#
#   local     seq N | sockfork run -j J -q TRUE
#   queue1    redis-server on 127.0.0.1 (a free port); one
#             `sockfork worker -j J redis://127.0.0.1:PORT/NAME` started first
#             (it waits for the run), then, timed,
#             seq N | sockfork run --queue redis://127.0.0.1:PORT/NAME -q TRUE
#   queue2ns  the same across network namespaces (bench/netns.sh, needs
#             root): redis-server in one, the submitter in another, two
#             workers in two more, each `-j J/2` (the same J slots in all)
#   queue1ns  (not run by default) one worker -j J in a namespace: what the
#             veths cost beside queue1's loopback
#
# TRUE is the absolute path of true(1); one argument per task, as in
# bench/tasks.sh. The order of the modes rotates from one repeat to the
# next. Each run must exit 0 (every task succeeded), else the
# script stops with its stderr. Time: the submitter's (or the local run's)
# wall clock from start to exit; the workers are up and waiting before it
# starts and end by themselves when the run is over. A fresh queue name per
# run, and FLUSHALL after it, so runs do not see each other's streams.
#
# Latency: QUEUE_LAT_N tasks fed one every QUEUE_LAT_GAP_MS through a pipe,
# each input line the feeder's clock (epoch µs, $EPOCHREALTIME) when it
# wrote the line, so the pool never has a backlog. From --results, per task:
# start_time - that stamp, the time from the line being written to the
# task's process starting (the first 5 tasks, start-up, left out). Local:
# the submitter reads the line and forks.
# Queue (one worker, loopback): the submitter reads it, XADDs it, the
# worker's XREADGROUP returns it, the worker forks. The difference of the
# two p50s is the dispatch latency the queue adds. From the queue's own
# streams, p50s of: the task's start (start_us) - its task entry's id (the
# worker's part of that), and the result entry's id - the task's end
# (start_us + dur_us: the way back, the worker's XADD of the result; the
# submitter's XREAD of it is not in it). Ids are whole ms of the same
# machine's clock: ±0.5 ms.
#
# Printed, and written to bench/results/queue.md with the raw lines. Every
# process this starts is stopped at the end (trap), the namespaces deleted;
# every run bounded by `timeout`. About two minutes on 2 CPUs.
#
# Environment:
#   BUILD=dir            meson build directory (default: build)
#   QUEUE_N=5000         tasks per throughput run
#   QUEUE_JOBS=8         -j of the local run and of the one worker
#   QUEUE_REPEATS=3      runs of each mode, alternating
#   QUEUE_MODES="local queue1 queue2ns"
#   QUEUE_LAT_N=200      tasks of each latency run (0: none)
#   QUEUE_LAT_GAP_MS=10  between two of their input lines
#   SOCKFORK=path        sockfork binary (default: $BUILD/sockfork)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${BUILD:-build}
[[ $BUILD == /* ]] || BUILD=$ROOT/$BUILD
QUEUE_N=${QUEUE_N:-5000}
QUEUE_JOBS=${QUEUE_JOBS:-8}
QUEUE_REPEATS=${QUEUE_REPEATS:-3}
QUEUE_MODES=${QUEUE_MODES:-local queue1 queue2ns}
QUEUE_LAT_N=${QUEUE_LAT_N:-200}
QUEUE_LAT_GAP_MS=${QUEUE_LAT_GAP_MS:-10}
SOCKFORK=${SOCKFORK:-$BUILD/sockfork}
[[ $SOCKFORK == /* ]] || SOCKFORK=$PWD/$SOCKFORK
CHATLOAD=$BUILD/bench/chatload   # for freeport and probe
RESULTS=$ROOT/bench/results
RUN_SECS=300                     # bound on any one run
TRUE=$(type -P true) || { echo "queue.sh: no true(1) in PATH" >&2; exit 2; }
PY=/usr/bin/python3

WORK=$(mktemp -d /tmp/sockfork-queue.XXXXXX)
REDIS_PID=""                     # the loopback redis-server
REDIS_PORT=""
WORKER_PIDS=()                   # workers of the run under way
SUBMIT_PID=""                    # the run under way (submit)
FEED_PID=""                      # the latency runs' paced input
NS_UP=0
NS_REDIS=""                      # the namespaced redis-server's address:port

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
# shellcheck source=bench/netns.sh
source "$ROOT/bench/netns.sh"

cleanup() {
    local pid
    # The workers first: stopped, they give their tasks back, and a
    # submitter stopped after them finds nothing held and ends at once.
    for pid in $FEED_PID "${WORKER_PIDS[@]}" $SUBMIT_PID; do
        stop_tree "$pid"
    done
    [[ -n $REDIS_PID ]] && stop_tree "$REDIS_PID"
    ((NS_UP)) && netns_teardown
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

die() { say "FAILED: $*"; exit 1; }

# ---------------------------------------------------------------- setup

install_redis() {
    command -v redis-server >/dev/null && command -v redis-cli >/dev/null && return 0
    ((EUID == 0)) || die "redis-server is not installed and we are not root"
    say "installing redis-server"
    DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server </dev/null >&2 ||
        { apt-get update </dev/null >&2 &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server </dev/null >&2; } ||
        die "could not install redis-server"
}

REDIS_ARGS=(--save '' --appendonly no --daemonize no)

start_loopback_redis() {
    REDIS_PORT=$("$CHATLOAD" freeport)
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" "${REDIS_ARGS[@]}" --dir "$WORK" \
        --logfile "$WORK/redis.log" >/dev/null &
    REDIS_PID=$!
    "$CHATLOAD" probe -a "127.0.0.1:$REDIS_PORT" -d 10 || die "redis-server did not come up"
}

# Hosts redis, sub, w1, w2; redis-server in redis on port 6379.
start_namespaces() {
    local addr i
    netns_setup redis sub w1 w2 || return 1
    NS_UP=1
    addr=$(netns_addr redis)
    # protected mode refuses any client not on loopback; this one is
    # reachable only from the namespaces' own bridge.
    netns_exec redis redis-server --bind "$addr" --port 6379 --protected-mode no \
        "${REDIS_ARGS[@]}" --dir "$WORK" \
        --logfile "$WORK/redis-ns.log" >/dev/null 2>&1 &
    # (a function in the background: $! is a subshell around `ip netns
    # exec`, whose stderr would get a "Killed" when netns_teardown ends it)
    NS_REDIS=$addr:6379
    for ((i = 0; i < 100; i++)); do
        netns_exec sub timeout 2 redis-cli -h "$addr" -p 6379 ping 2>/dev/null | grep -q PONG && return 0
        sleep 0.1
    done
    say "the namespaced redis-server did not come up"
    return 1
}

# ---------------------------------------------------------------- runs

declare -A V          # V[mode]: tasks/s of each run, one a line
RAW=$WORK/raw.txt
RUNS=0

# Median of the numbers in $1, one a line.
median() {
    grep . <<<"$1" | sort -g |
        awk '{ v[NR] = $1 } END { if (NR) print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'
}

# awk arithmetic on values that may be empty: prints "" if any is.
calc() { awk -v a="${2:-}" -v b="${3:-}" "BEGIN { if (a == \"\" || b == \"\" || b + 0 == 0) exit; $1 }"; }

# Workers for mode $1 on queue URL $2 (for a namespaced mode, the hosts
# are w1 [w2]); their pids in WORKER_PIDS, their logs in $WORK.
start_workers() {
    local mode=$1 url=$2 host
    WORKER_PIDS=()
    case $mode in
    queue1)
        "$SOCKFORK" worker -j "$QUEUE_JOBS" "$url" 2>"$WORK/worker-$mode.log" &
        WORKER_PIDS+=("$!") ;;
    queue1ns)
        netns_exec w1 "$SOCKFORK" worker -j "$QUEUE_JOBS" --host w1 "$url" 2>"$WORK/worker-$mode-w1.log" &
        WORKER_PIDS+=("$!") ;;
    queue2ns)
        for host in w1 w2; do
            netns_exec "$host" "$SOCKFORK" worker -j "$(((QUEUE_JOBS + 1) / 2))" --host "$host" "$url" \
                2>"$WORK/worker-$mode-$host.log" &
            WORKER_PIDS+=("$!")
        done ;;
    esac
}

# The workers end by themselves once the run is over: wait for that
# (bounded), then stop whatever is left.
finish_workers() {
    local pid i left
    for ((i = 0; i < 100; i++)); do
        left=0
        for pid in "${WORKER_PIDS[@]}"; do
            alive "$pid" && left=1
        done
        ((left)) || break
        sleep 0.1
    done
    ((left)) && say "a worker had not ended 10 s after its run: stopped"
    for pid in "${WORKER_PIDS[@]}"; do
        stop_tree "$pid"
    done
    WORKER_PIDS=()
}

# FLUSHALL of the redis-server mode $1 used.
flush_redis() {
    case $1 in
    queue1) redis-cli -p "$REDIS_PORT" flushall >/dev/null ;;
    queue*ns) netns_exec sub redis-cli -h "${NS_REDIS%:*}" -p 6379 flushall >/dev/null ;;
    esac
}

# The queue URL of mode $1 for queue name $2.
queue_url() {
    case $1 in
    queue1) echo "redis://127.0.0.1:$REDIS_PORT/$2" ;;
    queue*ns) echo "redis://$NS_REDIS/$2" ;;
    esac
}

# `sockfork run` for mode $1 (queue name $2) reading the file $3, extra
# options after; stdout to /dev/null, stderr to $WORK/$1.err. Returns its
# exit status. It runs in the background and is waited for, so that a
# signal to this script runs the trap at once (bash would run it only once
# a foreground command ended; `timeout` puts itself in a process group of
# its own, which a ^C does not reach); SUBMIT_PID is for the trap.
submit() {
    local mode=$1 name=$2 input=$3 rc=0
    shift 3
    case $mode in
    local)
        timeout -k 5 "$RUN_SECS" "$SOCKFORK" run -j "$QUEUE_JOBS" -q "$@" "$TRUE" \
            <"$input" >/dev/null 2>"$WORK/$mode.err" & ;;
    queue1)
        timeout -k 5 "$RUN_SECS" "$SOCKFORK" run --queue "$(queue_url "$mode" "$name")" -q "$@" "$TRUE" \
            <"$input" >/dev/null 2>"$WORK/$mode.err" & ;;
    queue*ns)
        netns_exec sub timeout -k 5 "$RUN_SECS" "$SOCKFORK" run --queue "$(queue_url "$mode" "$name")" \
            -q "$@" "$TRUE" <"$input" >/dev/null 2>"$WORK/$mode.err" & ;;
    esac
    SUBMIT_PID=$!
    wait "$SUBMIT_PID" || rc=$?
    SUBMIT_PID=""
    return "$rc"
}

# "HOST=N ..." of queue $2's results stream (mode $1): which worker ran
# how many tasks (field and value lines alternate in --raw).
per_host() {
    local cli=(redis-cli -p "$REDIS_PORT")
    [[ $1 == queue*ns ]] && cli=(netns_exec sub redis-cli -h "${NS_REDIS%:*}" -p 6379)
    "${cli[@]}" --raw xrange "sfq:$2:results" - + |
        awk 'prev == "host" { n[$0]++ } { prev = $0 } END { for (h in n) printf "%s=%d ", h, n[h] }'
}

# One throughput run of mode $1 (repeat $2).
run_one() {
    local mode=$1 rep=$2 name t0 t1 rc=0 rate hosts=""
    RUNS=$((RUNS + 1))
    name=bench$$-$RUNS
    [[ $mode == local ]] || start_workers "$mode" "$(queue_url "$mode" "$name")"
    t0=$EPOCHREALTIME
    submit "$mode" "$name" "$WORK/input" || rc=$?
    t1=$EPOCHREALTIME
    if [[ $mode != local ]]; then
        finish_workers
        hosts=$(per_host "$mode" "$name")
        flush_redis "$mode"
    fi
    if ((rc != 0)); then
        cat "$WORK/$mode.err" >&2
        die "$mode, run $rep: exit status $rc"
    fi
    rate=$(awk -v n="$QUEUE_N" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", n / (b - a) }')
    printf '%s run=%d tasks=%d secs=%.3f tasks_per_s=%s %s\n' "$mode" "$rep" "$QUEUE_N" \
        "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" "$rate" "${hosts:+tasks by host: $hosts}" >>"$RAW"
    printf '   %-8s run %d: %s tasks/s\n' "$mode" "$rep" "$rate" >&2
    V[$mode]+="$rate"$'\n'
}

# ------------------------------------------------------------- latency

# QUEUE_LAT_N lines, one every QUEUE_LAT_GAP_MS, each the epoch µs now.
paced_input() {
    local i gap
    gap=$(awk -v m="$QUEUE_LAT_GAP_MS" 'BEGIN { printf "%.3f", m / 1000 }')
    for ((i = 0; i < QUEUE_LAT_N; i++)); do
        echo "${EPOCHREALTIME/./}"
        sleep "$gap"
    done
}

# p50 and p99 (µs) of start_time - the input stamp over the results file $1.
start_lag() {
    "$PY" - "$1" <<'EOF'
import json, sys
LAT_SKIP = 5
tasks = []
for line in open(sys.argv[1]):
    r = json.loads(line)
    cmd = r["command"]
    stamp = int((cmd if isinstance(cmd, str) else " ".join(cmd)).split()[-1])
    tasks.append((stamp, r["start_time"] * 1e6 - stamp))
# The first LAT_SKIP tasks in input order are left out: start-up (a worker
# waiting for a queue that does not exist yet polls for it).
tasks.sort()
lags = sorted(lag for _, lag in tasks[LAT_SKIP:])
pct = lambda p: lags[min(len(lags) - 1, int(p / 100 * len(lags)))]
print("%.0f %.0f %d" % (pct(50), pct(99), len(lags)))
EOF
}

# From queue $1's streams on the loopback redis-server, p50 in ms of: the
# task entry's id - the input stamp in its argv (the submitter's part of
# the way out, first 5 tasks left out), the task's start - its task
# entry's id (the worker's part), and
# the result entry's id - the task's end (the way back). Entry ids are
# Redis's clock in whole ms (the same machine's clock): each id is taken
# as its ms + 0.5, so these are ±0.5 ms.
stream_lags() {
    redis-cli -p "$REDIS_PORT" --raw xrange "sfq:$1:tasks" - + >"$WORK/tasks.dump"
    redis-cli -p "$REDIS_PORT" --raw xrange "sfq:$1:results" - + >"$WORK/results.dump"
    "$PY" - "$WORK/tasks.dump" "$WORK/results.dump" <<'EOF'
import re, sys
# --raw: an entry id on a line, then field and value lines in turn (true(1)
# writes nothing, and argv's NULs do not end lines: no value spans lines).
is_id = re.compile(r"^[0-9]{13}-[0-9]+$").match
def entries(path):
    lines = open(path, encoding="utf-8", errors="replace").read().split("\n")
    out, i = [], 0
    while i < len(lines):
        if not is_id(lines[i]):
            i += 1
            continue
        ms, f, i = int(lines[i].split("-")[0]) + 0.5, {}, i + 1
        while i + 1 < len(lines) and not is_id(lines[i]):
            f[lines[i]] = lines[i + 1]
            i += 2
        out.append((ms, f))
    return out
added, sub = {}, []
for ms, f in entries(sys.argv[1]):
    if f.get("attempt") == "1":
        added[f["seq"]] = ms
        # argv: its words, each followed by a NUL; the last is the stamp
        stamp = re.findall(r"[0-9]{16}", f.get("argv", ""))
        if stamp and int(f["seq"]) > 5:
            sub.append(ms - int(stamp[-1]) / 1000)
out, back = [], []
for ms, f in entries(sys.argv[2]):
    if "start_us" not in f:
        continue
    start = int(f["start_us"]) / 1000
    back.append(ms - start - int(f["dur_us"]) / 1000)
    if f["seq"] in added:
        out.append(start - added[f["seq"]])
med = lambda v: "%.1f" % sorted(v)[len(v) // 2] if v else "-"
print(med(sub), med(out), med(back))
EOF
}

declare -A LAT       # LAT[mode]: "p50_us p99_us n"
STREAM_MS=""        # queue1's latency run: "submitter_ms worker_ms back_ms" (stream_lags)

latency() {
    local mode name rc
    ((QUEUE_LAT_N > 0)) || return 0
    for mode in local queue1; do
        [[ " $QUEUE_MODES " == *" $mode "* ]] || continue
        RUNS=$((RUNS + 1))
        name=lat$$-$RUNS
        say "$mode: latency, $QUEUE_LAT_N tasks one every $QUEUE_LAT_GAP_MS ms"
        [[ $mode == local ]] || start_workers "$mode" "$(queue_url "$mode" "$name")"
        rc=0
        rm -f "$WORK/paced"
        mkfifo "$WORK/paced"
        paced_input >"$WORK/paced" &
        FEED_PID=$!
        submit "$mode" "$name" "$WORK/paced" --results "$WORK/lat-$mode.json" || rc=$?
        wait "$FEED_PID" 2>/dev/null || true
        FEED_PID=""
        if [[ $mode != local ]]; then
            finish_workers
            STREAM_MS=$(stream_lags "$name")
            flush_redis "$mode"
        fi
        if ((rc != 0)); then
            cat "$WORK/$mode.err" >&2
            die "$mode latency run: exit status $rc"
        fi
        LAT[$mode]=$(start_lag "$WORK/lat-$mode.json")
        printf '%s latency: p50_us p99_us tasks = %s\n' "$mode" "${LAT[$mode]}" >>"$RAW"
        say "$mode: start - input p50/p99 µs, tasks: ${LAT[$mode]}"
    done
    [[ -n $STREAM_MS ]] && printf 'queue1 streams: p50 ms of task entry id - input stamp, start - task entry id, result entry id - end = %s\n' "$STREAM_MS" >>"$RAW"
    return 0
}

# ---------------------------------------------------------------- table

label() {
    case $1 in
    local) echo "sockfork run -j $QUEUE_JOBS" ;;
    queue1) echo "run --queue, one worker -j $QUEUE_JOBS (loopback)" ;;
    queue1ns) echo "run --queue, one worker -j $QUEUE_JOBS (namespaces)" ;;
    queue2ns) echo "run --queue, two workers -j $(((QUEUE_JOBS + 1) / 2)) each (namespaces)" ;;
    esac
}

table() {
    local mode m runs ratio
    echo "| $QUEUE_N tasks of \`true\` | tasks/s (median) | runs | / local |"
    echo "|---|---:|---:|---:|"
    for mode in $QUEUE_MODES; do
        [[ -n ${V[$mode]:-} ]] || { echo "| $(label "$mode") | – | 0 | |"; continue; }
        m=$(median "${V[$mode]}")
        runs=$(grep -c . <<<"${V[$mode]}")
        ratio=$(calc 'printf "%.2f×", a / b' "$m" "$(median "${V[local]:-}")")
        echo "| $(label "$mode") | $(calc 'printf "%.0f", a' "$m" 1) | $runs | $ratio |"
    done
    if [[ -n ${LAT[local]:-} || -n ${LAT[queue1]:-} ]]; then
        echo
        echo "| $QUEUE_LAT_N tasks, one every $QUEUE_LAT_GAP_MS ms | input line → task started, p50 ms | p99 ms |"
        echo "|---|---:|---:|"
        for mode in local queue1; do
            [[ -n ${LAT[$mode]:-} ]] || continue
            read -r -a l <<<"${LAT[$mode]}"
            echo "| $(label "$mode") | $(calc 'printf "%.2f", a / 1000' "${l[0]}" 1) | $(calc 'printf "%.2f", a / 1000' "${l[1]}" 1) |"
        done
    fi
}

verdict() {
    local r a back m
    if [[ -n ${V[local]:-} && -n ${V[queue1]:-} ]]; then
        r=$(calc 'printf "%.2f", a / b' "$(median "${V[queue1]}")" "$(median "${V[local]}")")
        echo "Target (issue 17): queue with one worker / local tasks/s = $r, ≥ 0.5:" \
            "$(calc 'print (a >= b ? "met" : "MISSED")' "$r" 0.5)."
    fi
    if [[ -n ${LAT[local]:-} && -n ${LAT[queue1]:-} ]]; then
        a=$(awk -v q="${LAT[queue1]%% *}" -v l="${LAT[local]%% *}" 'BEGIN { printf "%.2f", (q - l) / 1000 }')
        back=""
        [[ -n $STREAM_MS ]] &&
            read -r -a m <<<"$STREAM_MS" &&
            back="; of those, ${m[0]} ms from the input line to the task entry in Redis (the submitter's part)
and ${m[1]} ms from there to the start (the worker's part); ${m[2]} ms on the way back, from the end of the
task to its result entry in Redis (all three from the entry ids, whole ms, so ±0.5 ms)"
        echo "Latency the queue adds to a task, p50: $a ms on the way out (input line to the start" \
            "of the task, queue minus local)$back."
    fi
}

report() {
    local cpu
    cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)
    echo "# sockfork run, local and over a Redis queue: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "Machine: $(nproc) CPUs ($cpu), Linux $(uname -r), load average ${LOAD_BEFORE:-?} before the runs, $(uptime | sed 's/.*load average: //') after;" \
        "$("$SOCKFORK" --version 2>/dev/null || echo sockfork ?), $(redis-server --version 2>/dev/null | awk '{ print $1, $3 }')" \
        "(tree $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown))."
    echo "Run: QUEUE_N=$QUEUE_N QUEUE_JOBS=$QUEUE_JOBS QUEUE_REPEATS=$QUEUE_REPEATS" \
        "QUEUE_MODES=\"$QUEUE_MODES\" QUEUE_LAT_N=$QUEUE_LAT_N QUEUE_LAT_GAP_MS=$QUEUE_LAT_GAP_MS bench/queue.sh"
    echo
    table
    echo
    verdict
    echo
    echo "Raw lines:"
    echo
    echo '```'
    cat "$RAW"
    echo '```'
}

# ----------------------------------------------------------------- main

build_bench bench/chatload
install_redis
: >"$RAW"
seq "$QUEUE_N" >"$WORK/input"
LOAD_BEFORE=$(uptime | sed "s/.*load average: //") # the 1, 5 and 15 min loads
[[ " $QUEUE_MODES " == *" queue1 "* ]] && start_loopback_redis
if [[ " $QUEUE_MODES " == *ns" "* ]]; then
    if ! start_namespaces; then
        say "no network namespaces: the namespaced modes are skipped"
        QUEUE_MODES=$(tr ' ' '\n' <<<"$QUEUE_MODES" | grep -v 'ns$' | tr '\n' ' ')
    fi
fi
read -r -a MODES <<<"$QUEUE_MODES"
for ((rep = 1; rep <= QUEUE_REPEATS; rep++)); do
    # The order rotated from one repeat to the next: no mode always
    # follows the same one.
    for ((k = 0; k < ${#MODES[@]}; k++)); do
        mode=${MODES[(k + rep - 1) % ${#MODES[@]}]}
        say "$mode, run $rep of $QUEUE_REPEATS"
        run_one "$mode" "$rep"
    done
done
latency
mkdir -p "$RESULTS"
report >"$RESULTS/queue.md"
echo
table
echo
verdict
say "written to ${RESULTS#"$ROOT"/}/queue.md"
