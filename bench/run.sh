#!/usr/bin/env bash
# bench/run.sh - benchmark `sockfork serve --echo` against other
# fork-per-connection echo servers, and prefork ones, all in one run on this
# machine:
#
#   sockfork       sockfork serve -q -l 127.0.0.1:PORT --echo -c 20000
#   sockfork-exec  sockfork serve -q -l 127.0.0.1:PORT -c 20000 -- cat (exec mode)
#   tcpserver      tcpserver -c 20000 -b 4096 -H -R -l 0 127.0.0.1 PORT cat
#   socat          socat TCP-LISTEN:PORT,...,fork,backlog=4096 PIPE
#   socat-exec     socat TCP-LISTEN:PORT,...,fork,backlog=4096 EXEC:cat
#   bare           build/bench/bare-forkserver PORT (accept, fork, echo: the floor)
#   bare-prefork   build/bench/bare-prefork PORT N (N workers blocking in accept)
#   bare-dispatch  build/bench/bare-prefork --dispatch PORT N (the parent accepts
#                  and hands each connection to an idle worker)
#   node-cluster   node bench/node_cluster_echo.js PORT N (Node's cluster + net)
#   sockfork-prefork  sockfork serve -q -l 127.0.0.1:PORT --echo --workers
#                  BENCH_PREFORK (prefork mode)
#
# For each: connection rate at concurrency 1, 16 and 64, round trips per
# second over 16 persistent connections, and PSS of all the server's
# processes while BENCH_HOLD connections are held open (not for the bare
# prefork servers: N workers serve N connections at once). Prints one
# markdown table and writes it to bench/results/latest.md.
#
# Everything runs on loopback and is bounded in time. Environment:
#   BUILD=dir           meson build directory (default: build)
#   BENCH_SECS=5        seconds per rate and rtt run
#   BENCH_CONCS="1 16 64"  concurrencies of the rate runs
#   BENCH_RTT_CONC=16   persistent connections of the rtt run (0: no rtt run)
#   BENCH_HOLD=10000    connections to hold (0: no hold test)
#   BENCH_HOLD_SECS=60  bound on opening them, and on echoing over them
#   BENCH_WORKERS=8     workers of the bare and Node prefork servers
#   BENCH_PREFORK=2:8   sockfork-prefork's --workers MIN:MAX
#   BENCH_SERVERS="sockfork tcpserver socat bare bare-prefork bare-dispatch
#                  node-cluster"   which servers, in order (sockfork-exec and
#                  socat-exec are not in the default: exec mode against the
#                  peers that exec cat too, e.g. BENCH_SERVERS="sockfork-exec
#                  tcpserver socat-exec" BENCH_CONCS=64 BENCH_HOLD=0)
#   SOCKFORK=path       sockfork binary (default: $BUILD/sockfork)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${BUILD:-build}
[[ $BUILD == /* ]] || BUILD=$ROOT/$BUILD
BENCH_SECS=${BENCH_SECS:-5}
BENCH_HOLD=${BENCH_HOLD:-10000}
BENCH_SERVERS=${BENCH_SERVERS:-sockfork tcpserver socat bare bare-prefork bare-dispatch node-cluster}
BENCH_WORKERS=${BENCH_WORKERS:-8}
BENCH_PREFORK=${BENCH_PREFORK:-2:8}
SOCKFORK=${SOCKFORK:-$BUILD/sockfork}
read -r -a RATE_CONCS <<<"${BENCH_CONCS:-1 16 64}"
RTT_CONC=${BENCH_RTT_CONC:-16}
HOLD_PHASE_SECS=${BENCH_HOLD_SECS:-60}  # bound on opening, and on the echo round
MAX_CONNS=20000      # the -c given to every server
RESULTS=$ROOT/bench/results

WORK=$(mktemp -d /tmp/sockfork-bench.XXXXXX)
SERVER_PID=""        # the server running now, for the exit trap
LOADGEN_PID=""       # a loadgen running in the background, for the trap

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

# ------------------------------------------------------------ processes

# CPU time (clock ticks) of PID and all its descendants, with what their
# reaped children used (cutime, cstime): a connection child that has exited
# still counts, in its parent's.
tree_cpu_ticks() {
    tree_pids "$1" | sed 's|.*|/proc/&/stat|' | { xargs cat 2>/dev/null || true; } |
        awk '{ sub(/.*\) /, ""); t += $12 + $13 + $14 + $15 } END { print t + 0 }'
}

# PSS in KiB summed over PID and all its descendants.
pss_kib() {
    tree_pids "$1" | sed 's|.*|/proc/&/smaps_rollup|' |
        { xargs cat 2>/dev/null || true; } |
        awk '/^Pss:/ { s += $2 } END { print s + 0 }'
}

cleanup() {
    [[ -n $LOADGEN_PID ]] && { kill -KILL "$LOADGEN_PID" 2>/dev/null || true; }
    [[ -n $SERVER_PID ]] && stop_tree "$SERVER_PID"
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- setup

# The node binary (Debian's nodejs installs it as node), or nothing.
node_bin() { command -v node || command -v nodejs || true; }

# Installs the Debian packages of the peers in BENCH_SERVERS that are missing.
install_peers() {
    local missing=() name
    for name in $BENCH_SERVERS; do
        case $name in
        tcpserver) command -v tcpserver >/dev/null || missing+=(ucspi-tcp) ;;
        socat | socat-exec) command -v socat >/dev/null || missing+=(socat) ;;
        node-cluster) [[ -n $(node_bin) ]] || missing+=(nodejs) ;;
        esac
    done
    ((${#missing[@]})) || return 0
    if ((EUID != 0)); then
        say "not root: cannot install ${missing[*]}; those servers are skipped"
        return 0
    fi
    say "installing ${missing[*]}"
    apt-get install -y "${missing[@]}" >&2 ||
        { apt-get update >&2 && apt-get install -y "${missing[@]}" >&2; } ||
        say "could not install ${missing[*]}; those servers are skipped"
}

# Builds everything; if the project does not build, builds at least the
# bench programs (into $WORK) so the peers can still be measured.
LOADGEN=""
BARE=""
PREFORK=""
SOCKFORK_OK=0
build() {
    if { [[ -f $BUILD/build.ninja ]] || meson setup "$BUILD" "$ROOT"; } &&
        ninja -C "$BUILD"; then
        LOADGEN=$BUILD/bench/loadgen
        BARE=$BUILD/bench/bare-forkserver
        PREFORK=$BUILD/bench/bare-prefork
        SOCKFORK_OK=1
        return 0
    fi
    say "the project does not build; compiling the bench programs alone"
    local cc=${CC:-cc} flags=(-O2 -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror)
    "$cc" "${flags[@]}" -o "$WORK/loadgen" "$ROOT/bench/loadgen.c" "$ROOT/bench/benchlib.c"
    "$cc" "${flags[@]}" -o "$WORK/bare-forkserver" "$ROOT/bench/bare_forkserver.c"
    "$cc" "${flags[@]}" -o "$WORK/bare-prefork" "$ROOT/bench/bare_prefork.c"
    LOADGEN=$WORK/loadgen
    BARE=$WORK/bare-forkserver
    PREFORK=$WORK/bare-prefork
}

# Room for the held connections in loadgen (the servers inherit it too).
raise_nofile() {
    local need=$((BENCH_HOLD + 1024)) hard
    hard=$(ulimit -Hn)
    if [[ $hard != unlimited ]] && ((hard < need)); then
        ulimit -Hn "$need" 2>/dev/null || true
        hard=$(ulimit -Hn)
    fi
    ulimit -Sn "$hard"
    if [[ $hard != unlimited ]] && ((hard < need)); then
        BENCH_HOLD=$((hard - 1024))
        say "fd hard limit is $hard: holding only $BENCH_HOLD connections"
    fi
}

# -------------------------------------------------------------- servers

# Why a server cannot run here, or nothing when it can.
unavailable() {
    case $1 in
    sockfork | sockfork-prefork | sockfork-exec)
        if [[ $SOCKFORK == "$BUILD/sockfork" ]] && ((!SOCKFORK_OK)); then
            echo "the project did not build"
        elif ! "$SOCKFORK" --version >/dev/null 2>&1; then
            echo "$SOCKFORK does not run"
        fi ;;
    tcpserver) command -v tcpserver >/dev/null || echo "tcpserver not installed" ;;
    socat | socat-exec) command -v socat >/dev/null || echo "socat not installed" ;;
    bare | bare-prefork | bare-dispatch) ;;
    node-cluster) [[ -n $(node_bin) ]] || echo "nodejs not installed" ;;
    *) echo "unknown server" ;;
    esac
}

# Starts server $1 on 127.0.0.1:$2, sets SERVER_PID, waits until it accepts.
start_server() {
    local name=$1 port=$2 log=$WORK/$1.log
    case $name in
    sockfork) "$SOCKFORK" serve -q -l "127.0.0.1:$port" --echo -c "$MAX_CONNS" 2>"$log" & ;;
    sockfork-prefork)
        "$SOCKFORK" serve -q -l "127.0.0.1:$port" --echo --workers "$BENCH_PREFORK" 2>"$log" & ;;
    sockfork-exec) "$SOCKFORK" serve -q -l "127.0.0.1:$port" -c "$MAX_CONNS" -- cat 2>"$log" & ;;
    # tcpserver's defaults are -c 40 and a backlog of 20: raise both.
    tcpserver) tcpserver -c "$MAX_CONNS" -b 4096 -H -R -l 0 127.0.0.1 "$port" cat 2>"$log" & ;;
    # Each forked socat child has its own unnamed pipe: bytes go out as they came.
    socat) socat "TCP-LISTEN:$port,bind=127.0.0.1,reuseaddr,fork,backlog=4096" PIPE 2>"$log" & ;;
    # The same, running cat as tcpserver does: socat forks, then execs.
    socat-exec) socat "TCP-LISTEN:$port,bind=127.0.0.1,reuseaddr,fork,backlog=4096" EXEC:cat 2>"$log" & ;;
    bare) "$BARE" "$port" 2>"$log" & ;;
    bare-prefork) "$PREFORK" "$port" "$BENCH_WORKERS" 2>"$log" & ;;
    bare-dispatch) "$PREFORK" --dispatch "$port" "$BENCH_WORKERS" 2>"$log" & ;;
    node-cluster) "$(node_bin)" "$ROOT/bench/node_cluster_echo.js" "$port" "$BENCH_WORKERS" 2>"$log" & ;;
    esac
    SERVER_PID=$!
    if ! "$LOADGEN" probe -a "127.0.0.1:$port" -d 10 || ! alive "$SERVER_PID"; then
        say "$name did not come up; its log:"
        cat "$log" >&2
        stop_tree "$SERVER_PID"
        SERVER_PID=""
        return 1
    fi
}

# Waits (at most 10 s) until the server is back to $2 processes: children
# of earlier runs may still be on their way out after the client closed.
settle() {
    local i
    for ((i = 0; i < 100; i++)); do
        (($(tree_pids "$1" | wc -l) <= $2)) && return 0
        sleep 0.1
    done
    say "server still has $(tree_pids "$1" | wc -l) processes, idle had $2"
}

# Value of key $2 in the key=value line $1.
field() { tr ' ' '\n' <<<"$1" | sed -n "s/^$2=//p" | head -n1; }

declare -A R          # R[server,key]: results
RAW=$WORK/raw.txt     # every loadgen line, for the record

record() {            # record SERVER TEST LINE
    local line=${3:-failed: loadgen printed nothing} e
    printf '%s %s %s\n' "$1" "$2" "$line" >>"$RAW"
    printf '   %-9s %-7s %s\n' "$1" "$2" "$line" >&2
    e=$(field "$line" errors)
    R[$1,errors]=$((${R[$1,errors]:-0} + ${e:-1}))
}

# Why the hold test does not apply to server $1, or nothing when it does.
no_hold() {
    case $1 in
    bare-prefork | bare-dispatch)
        echo "$BENCH_WORKERS workers serve $BENCH_WORKERS connections at once" ;;
    sockfork-prefork)
        if ((${BENCH_PREFORK#*:} < BENCH_HOLD)); then
            echo "--workers $BENCH_PREFORK serves at most ${BENCH_PREFORK#*:} connections at once"
        elif ((BENCH_HOLD == 0)); then
            echo "BENCH_HOLD=0"
        fi ;;
    *) ((BENCH_HOLD > 0)) || echo "BENCH_HOLD=0" ;;
    esac
}

# Holds BENCH_HOLD connections to the server and measures its PSS meanwhile.
hold_test() {
    local name=$1 addr=$2 out=$WORK/$1.hold hold_file=$WORK/$1.holding line i
    local bound=$((2 * HOLD_PHASE_SECS + 30))
    : >"$hold_file"
    "$LOADGEN" hold -a "$addr" -n "$BENCH_HOLD" -c 256 -d "$HOLD_PHASE_SECS" \
        --hold-file "$hold_file" --hold-seconds 600 >"$out" &
    LOADGEN_PID=$!
    for ((i = 0; i < bound * 10; i++)); do
        grep -q 'phase=held' "$out" && break
        alive "$LOADGEN_PID" || break
        sleep 0.1
    done
    line=$(grep 'phase=held' "$out" || true)
    if [[ -z $line ]]; then
        say "$name: loadgen hold never got to holding"
        kill -KILL "$LOADGEN_PID" 2>/dev/null || true
        wait "$LOADGEN_PID" 2>/dev/null || true
        LOADGEN_PID=""
        return 0
    fi
    R[$name,pss]=$(pss_kib "$SERVER_PID")
    R[$name,procs]=$(tree_pids "$SERVER_PID" | wc -l)
    rm -f "$hold_file"
    wait "$LOADGEN_PID" || true
    LOADGEN_PID=""
    line=$(grep 'phase=done' "$out" || echo "$line")
    record "$name" hold "$line"
    # Held = echoed on both rounds and still open when PSS was read.
    R[$name,held]=$(field "$(grep 'phase=held' "$out")" held)
    R[$name,open]=$(field "$line" open_secs)
}

bench_server() {
    local name=$1 port addr line c why
    why=$(unavailable "$name")
    if [[ -n $why ]]; then
        say "$name: skipped: $why"
        R[$name,skip]=$why
        return 0
    fi
    port=$("$LOADGEN" freeport)
    addr=127.0.0.1:$port
    say "$name on $addr"
    if ! start_server "$name" "$port"; then
        R[$name,skip]="did not start"
        return 0
    fi
    local idle_procs
    idle_procs=$(tree_pids "$SERVER_PID" | wc -l)
    R[$name,idle_pss]=$(pss_kib "$SERVER_PID")

    for c in "${RATE_CONCS[@]}"; do
        local t0 t1
        t0=$(tree_cpu_ticks "$SERVER_PID")
        line=$("$LOADGEN" rate -a "$addr" -c "$c" -d "$BENCH_SECS") || true
        t1=$(tree_cpu_ticks "$SERVER_PID")
        record "$name" "rate@$c" "$line"
        R[$name,rate$c]=$(field "$line" ops_per_s)
        # µs of server CPU per connection made in the run.
        R[$name,cpu$c]=$(calc 'printf "%.1f", a / b' \
            "$(((t1 - t0) * 1000000 / $(getconf CLK_TCK)))" \
            "$(calc 'print a * b' "${R[$name,rate$c]:-}" "$BENCH_SECS")")
        R[$name,p99_$c]=$(field "$line" p99_us)
    done
    if ((RTT_CONC > 0)); then
        line=$("$LOADGEN" rtt -a "$addr" -c "$RTT_CONC" -d "$BENCH_SECS") || true
        record "$name" "rtt@$RTT_CONC" "$line"
        R[$name,rtt]=$(field "$line" ops_per_s)
    fi

    R[$name,nohold]=$(no_hold "$name")
    if [[ -z ${R[$name,nohold]} ]]; then
        settle "$SERVER_PID" "$idle_procs"
        hold_test "$name" "$addr"
    fi

    stop_tree "$SERVER_PID"
    SERVER_PID=""
    # Anything beyond start and stop messages is worth a look.
    if grep -Evq 'listening on|shutting down|exiting' "$WORK/$name.log"; then
        say "$name wrote to stderr (last lines):"
        grep -Ev 'listening on|shutting down|exiting' "$WORK/$name.log" | tail -n 5 >&2
    fi
}

# ---------------------------------------------------------------- table

# awk arithmetic on strings that may be empty: prints "" if any input is.
calc() { awk -v a="${2:-}" -v b="${3:-}" "BEGIN { if (a == \"\" || b == \"\" || b + 0 == 0) exit; $1 }"; }

# Cell text: the value, and for rows other than sockfork, "(×R)" where
# R = sockfork's value / this row's value.
cell() {
    local name=$1 key=$2 fmt=$3 v s
    v=$(value "$name" "$key")
    [[ -z $v ]] && { echo "–"; return; }
    v=$(calc "printf \"$fmt\", a" "$v" 1)
    s=$(value sockfork "$key")
    if [[ $name != sockfork && -n $s ]]; then
        v="$v ($(calc 'printf "%.2f", a / b' "$s" "$(value "$name" "$key")")×)"
    fi
    echo "$v"
}

# A result derived or stored, or nothing.
value() {
    local name=$1 key=$2
    case $key in
    mib) calc 'printf "%.1f", a / 1024' "${R[$name,pss]:-}" 1 ;;
    kib) calc 'printf "%.1f", a / b' "${R[$name,pss]:-}" "${R[$name,held]:-}" ;;
    *) echo "${R[$name,$key]:-}" ;;
    esac
}

# One column per rate concurrency (BENCH_CONCS), then the fixed ones.
table() {
    local name held c rates="" head="" rule="" empty=""
    for c in "${RATE_CONCS[@]}"; do
        head+=" conn/s @$c |"
        rule+="---:|"
        empty+=" |"
    done
    echo "| server |$head round trips/s @$RTT_CONC | held of $BENCH_HOLD | PSS total MiB | KiB/conn | errors |"
    echo "|---|$rule---:|---:|---:|---:|---:|"
    for name in $BENCH_SERVERS; do
        if [[ -n ${R[$name,skip]:-} ]]; then
            echo "| $name | pending: ${R[$name,skip]} |${empty# |} | | | | |"
            continue
        fi
        rates=""
        for c in "${RATE_CONCS[@]}"; do
            rates+=" $(cell "$name" "rate$c" %.0f) |"
        done
        held=${R[$name,held]:-0}
        [[ -n ${R[$name,nohold]:-} ]] && held="–"
        echo "| $name |$rates $(cell "$name" rtt %.0f)" \
            "| $held | $(cell "$name" mib %.1f) | $(cell "$name" kib %.1f)" \
            "| ${R[$name,errors]:-0} |"
    done
}

# The targets sockfork is held to, checked against this run.
targets() {
    local s r
    s=$(value sockfork rate64)
    [[ -z $s ]] && { echo "Targets: not checked (no sockfork results)."; return; }
    echo "Targets (conn/s @64, 2-core machine):"
    check() {   # check PEER MIN
        r=$(calc 'printf "%.2f", a / b' "$s" "$(value "$1" rate64)")
        if [[ -z $r ]]; then echo "- sockfork / $1 ≥ $2: not measured"; return; fi
        echo "- sockfork / $1 = $r, target ≥ $2: $(calc 'print (a >= b ? "met" : "MISSED")' "$r" "$2")"
    }
    check tcpserver 2
    check socat 1.2
    check bare 0.8
    local mib held
    mib=$(value sockfork mib)
    held=${R[sockfork,held]:-0}
    echo "- sockfork holding $held connections: ${mib:-?} MiB PSS, target < 1024 MiB for 10000:" \
        "$( ((held >= 10000)) && calc 'print (a < 1024 ? "met" : "MISSED")' "${mib:-0}" 1 || echo "not reached ($held held)")"
}

# Prefork beside fork, and dispatching beside accepting (issue 13), at
# conn/s @64: printed when both servers of a ratio were measured.
prefork_ratios() {
    local lines=() a b r a_b
    for a_b in "sockfork-prefork bare-prefork" "sockfork-prefork sockfork" \
        "sockfork-prefork node-cluster" "bare-dispatch bare-prefork" "bare-prefork bare" \
        "node-cluster bare-prefork"; do
        read -r a b <<<"$a_b"
        r=$(calc 'printf "%.2f", a / b' "$(value "$a" rate64)" "$(value "$b" rate64)")
        [[ -n $r ]] && lines+=("- $a / $b = $r")
    done
    ((${#lines[@]})) || return 0
    echo "Prefork (conn/s @64; $BENCH_WORKERS workers, sockfork-prefork --workers $BENCH_PREFORK;" \
        "targets: sockfork-prefork / bare-prefork >= 0.9, / sockfork >= 2, / node-cluster > 1):"
    printf '%s\n' "${lines[@]}"
    echo
    echo "Server CPU per connection (µs, all its processes, at c=${RATE_CONCS[-1]}):"
    local name
    for name in $BENCH_SERVERS; do
        [[ -n ${R[$name,cpu${RATE_CONCS[-1]}]:-} ]] &&
            echo "- $name: ${R[$name,cpu${RATE_CONCS[-1]}]}"
    done
    echo
}

# Exec mode against the peers that exec cat too (issue 13: sockfork-exec
# >= 1.5x tcpserver and >= 1.3x socat-exec, conn/s @64 in the same run),
# with p99 beside; printed when sockfork-exec was measured.
exec_ratios() {
    local s peer r min p
    s=$(value sockfork-exec rate64)
    [[ -z $s ]] && return 0
    echo "Exec mode (conn/s @64; p99 in ms):"
    for p in sockfork-exec tcpserver socat-exec sockfork; do
        [[ -n ${R[$p,p99_64]:-} ]] && echo "- $p: $(value "$p" rate64) conn/s, p99 $(calc 'printf "%.0f", a / 1000' "${R[$p,p99_64]}" 1) ms"
    done
    for peer in "tcpserver 1.5" "socat-exec 1.3" "sockfork -"; do
        read -r p min <<<"$peer"
        r=$(calc 'printf "%.2f", a / b' "$s" "$(value "$p" rate64)")
        [[ -z $r ]] && continue
        if [[ $min == - ]]; then
            echo "- sockfork-exec / $p (fork mode, --echo) = $r"
        else
            echo "- sockfork-exec / $p = $r, target ≥ $min: $(calc 'print (a >= b ? "met" : "MISSED")' "$r" "$min")"
        fi
    done
    echo
}

report() {
    local cpu
    cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)
    echo "# sockfork benchmark: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "Machine: $(nproc) CPUs ($cpu), Linux $(uname -r)," \
        "$(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM."
    echo "Run: BENCH_SECS=$BENCH_SECS BENCH_CONCS=\"${RATE_CONCS[*]}\" BENCH_RTT_CONC=$RTT_CONC" \
        "BENCH_HOLD=$BENCH_HOLD BENCH_WORKERS=$BENCH_WORKERS BENCH_SERVERS=\"$BENCH_SERVERS\" bench/run.sh" \
        "(tree $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown))."
    echo
    echo "In parentheses: sockfork's value divided by this row's."
    echo
    table
    echo
    targets
    echo
    prefork_ratios
    exec_ratios
    echo "Idle PSS, and the hold test: seconds to open the connections"
    echo "(one echo each, 256 opening at a time), processes while holding:"
    local name
    for name in $BENCH_SERVERS; do
        [[ -n ${R[$name,skip]:-} ]] && continue
        if [[ -n ${R[$name,nohold]:-} ]]; then
            echo "- $name: idle ${R[$name,idle_pss]:-?} KiB; no hold test (${R[$name,nohold]})"
            continue
        fi
        echo "- $name: idle ${R[$name,idle_pss]:-?} KiB; opened in ${R[$name,open]:-?} s;" \
            "${R[$name,procs]:-?} processes while holding"
    done
    echo
    echo "Raw loadgen lines:"
    echo
    echo '```'
    cat "$RAW" 2>/dev/null || true
    echo '```'
}

# ----------------------------------------------------------------- main

install_peers
build >&2
raise_nofile
: >"$RAW"
for name in $BENCH_SERVERS; do
    bench_server "$name"
done
mkdir -p "$RESULTS"
report >"$RESULTS/latest.md"
echo
table
echo
targets
echo
prefork_ratios
exec_ratios
say "written to ${RESULTS#"$ROOT"/}/latest.md"
