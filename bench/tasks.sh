#!/usr/bin/env bash
# bench/tasks.sh - many trivial tasks: `sockfork run` beside xargs -P and
# GNU parallel from Debian, and the task pool's C API beside bare loops,
# all in one run on this machine.
#
#   sockfork, stdin  seq N | sockfork run -j J -q TRUE
#   sockfork, :::    sockfork run -j J -q TRUE ::: 1 2 ... N
#   xargs            seq N | xargs -P J -n 1 TRUE
#   parallel         seq M | parallel --will-cite -j J TRUE
#
# TRUE is the absolute path of true(1) (`type -P true`: bash's `command -v`
# names the builtin); every tool gets one argument appended per task, the
# output goes to /dev/null. GNU parallel runs each command through a shell
# and is slow (some hundreds of tasks/s), so it gets M = TASKS_PAR_N tasks
# (default 500) and is compared by tasks/s. Every run must exit 0, or the
# script stops with its stderr.
#
# The C API (build/bench/poolbench, see bench/poolbench.c): tasks/s of a
# bare fork()+_exit(0)+waitpid loop, of an sf_pool with one fork per task
# (max_tasks_per_worker = 1) and with worker reuse (0: no limit), at the
# same concurrency (tasks submitted from the pool's feed callback, as
# sockfork run feeds its input); and, to tell where a command's time goes, bare
# posix_spawn(TRUE N)+waitpid and vfork+execve loops and the pool running TRUE N as a command,
# without and with its output captured through pipes (as sockfork run does).
# Every command gets one argument, N, as with the tools above: GNU true
# loads its locale when it has exactly one argument, which is most of the
# cost of a task here.
#
# Each repeat runs every tool once at every -j, the order rotated from one
# repeat to the next; tables give medians of tasks/s and ratios of the
# medians. Printed, and written to bench/results/tasks-latest.md with the
# raw lines. Each run is bounded by `timeout`. Needs root to install GNU
# parallel (Debian package parallel) when missing; without it the parallel
# column is empty. About two and a half minutes on 2 CPUs.
#
# Environment:
#   BUILD=dir             meson build directory (default: build)
#   TASKS_N=2000          tasks per run of sockfork run and xargs
#   TASKS_PAR_N=500       tasks per run of GNU parallel
#   TASKS_JOBS="2 8"      -j values of the command-line tools
#   TASKS_C_JOBS="1 2 8"  jobs of the C API runs
#   TASKS_FORK_N=5000     tasks per run of bare and pool-fork
#   TASKS_REUSE_N=50000   tasks per run of pool-reuse
#   TASKS_CMD_N=$TASKS_N  tasks per run of spawn and pool-cmd
#   TASKS_REPEATS=3       runs of each, alternating
#   TASKS_PROFILE=0       1: afterwards, at -j 2 over TASKS_N tasks: `perf stat`
#                         (CPU, context switches, page faults per task) of
#                         sockfork run, the pool's commands, the spawn loop and
#                         xargs; one sockfork run under `perf record -e cpu-clock -c 100000
#                         -g -a` (fixed period: every sample weighs 100 µs), one
#                         under `strace -c` (the parent) and one under
#                         `strace -f -c`; to bench/results/tasks-perf.txt
#   SOCKFORK=path         sockfork binary (default: $BUILD/sockfork)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${BUILD:-build}
[[ $BUILD == /* ]] || BUILD=$ROOT/$BUILD
TASKS_N=${TASKS_N:-2000}
TASKS_PAR_N=${TASKS_PAR_N:-500}
TASKS_JOBS=${TASKS_JOBS:-2 8}
TASKS_C_JOBS=${TASKS_C_JOBS:-1 2 8}
TASKS_FORK_N=${TASKS_FORK_N:-5000}
TASKS_REUSE_N=${TASKS_REUSE_N:-50000}
TASKS_CMD_N=${TASKS_CMD_N:-$TASKS_N}
TASKS_REPEATS=${TASKS_REPEATS:-3}
TASKS_PROFILE=${TASKS_PROFILE:-0}
SOCKFORK=${SOCKFORK:-$BUILD/sockfork}
POOLBENCH=$BUILD/bench/poolbench
RESULTS=$ROOT/bench/results
RUN_SECS=300        # bound on any one run
TRUE=$(type -P true) || { echo "tasks.sh: no true(1) in PATH" >&2; exit 2; }

WORK=$(mktemp -d /tmp/sockfork-tasks.XXXXXX)
STARTED=$SECONDS

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

trap 'rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM

die() { say "FAILED: $*"; exit 1; }

# ---------------------------------------------------------------- setup

# (awk reads all the output: no SIGPIPE for parallel under pipefail)
have_parallel() {
    command -v parallel >/dev/null &&
        parallel --will-cite --version 2>/dev/null | awk '/GNU parallel/ { f = 1 } END { exit !f }'
}

install_parallel() {
    # moreutils has a `parallel` of its own: only GNU parallel will do.
    have_parallel && return 0
    if ((EUID != 0)); then
        say "GNU parallel is not installed and we are not root: parallel is skipped"
        return 0
    fi
    say "installing parallel"
    DEBIAN_FRONTEND=noninteractive apt-get install -y parallel </dev/null >&2 ||
        { apt-get update </dev/null >&2 &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y parallel </dev/null >&2; } ||
        say "could not install parallel: parallel is skipped"
}

# ---------------------------------------------------------------- runs

declare -A V          # V["tool J"]: tasks/s of each run, one a line
RAW=$WORK/raw.txt
ARGS=()               # 1 .. TASKS_N, for the ::: runs (expanded before timing)
mapfile -t ARGS < <(seq "$TASKS_N")

# Value of key $2 in the key=value line $1.
field() { awk -v k="$2=" '{ for (i = 1; i <= NF; i++) if (index($i, k) == 1) { print substr($i, length(k) + 1); exit } }' <<<"$1"; }

# Median of the numbers in $1, one a line.
median() {
    grep . <<<"$1" | sort -g |
        awk '{ v[NR] = $1 } END { if (NR) print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'
}

# awk arithmetic on values that may be empty: prints "" if any is.
calc() { awk -v a="${2:-}" -v b="${3:-}" "BEGIN { if (a == \"\" || b == \"\" || b + 0 == 0) exit; $1 }"; }

# One run of command-line tool $1 at -j $2: records its tasks/s, dies if
# it does not exit 0.
run_cli() {
    local tool=$1 j=$2 n=$TASKS_N t0 t1 rc=0 err=$WORK/$1-$2.err rate
    t0=$EPOCHREALTIME
    case $tool in
    sockfork)
        seq "$n" | timeout -k 5 "$RUN_SECS" "$SOCKFORK" run -j "$j" -q "$TRUE" >/dev/null 2>"$err" || rc=$? ;;
    sockfork-args)
        timeout -k 5 "$RUN_SECS" "$SOCKFORK" run -j "$j" -q "$TRUE" ::: "${ARGS[@]}" \
            </dev/null >/dev/null 2>"$err" || rc=$? ;;
    xargs)
        seq "$n" | timeout -k 5 "$RUN_SECS" xargs -P "$j" -n 1 "$TRUE" >/dev/null 2>"$err" || rc=$? ;;
    parallel)
        n=$TASKS_PAR_N
        seq "$n" | timeout -k 5 "$RUN_SECS" parallel --will-cite -j "$j" "$TRUE" >/dev/null 2>"$err" || rc=$? ;;
    esac
    t1=$EPOCHREALTIME
    if ((rc != 0)); then
        say "$tool -j $j exited with status $rc; its stderr:"
        tail -n 20 "$err" >&2 || true
        die "$tool -j $j: exit status $rc (expected 0)"
    fi
    rate=$(awk -v n="$n" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", n / (b - a) }')
    printf 'tool=%s jobs=%s tasks=%s secs=%s tasks_per_s=%s\n' "$tool" "$j" "$n" \
        "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f", b - a }')" "$rate" >>"$RAW"
    printf '   %-14s -j %-2s %5s tasks: %8s tasks/s\n' "$tool" "$j" "$n" "$rate" >&2
    V["$tool $j"]+="$rate"$'\n'
}

# One run of poolbench mode $1 with $2 jobs.
run_c() {
    local mode=$1 j=$2 n line err=$WORK/poolbench.err
    case $mode in
    bare | pool-fork) n=$TASKS_FORK_N ;;
    pool-reuse) n=$TASKS_REUSE_N ;;
    spawn | vfork | pool-cmd | pool-cmd-out) n=$TASKS_CMD_N ;;
    esac
    if ! line=$(timeout -k 5 "$RUN_SECS" "$POOLBENCH" "$mode" -j "$j" -n "$n" -c "$TRUE" \
        -d "$RUN_SECS" 2>"$err"); then
        tail -n 20 "$err" >&2 || true
        die "poolbench $mode -j $j failed"
    fi
    echo "$line" >>"$RAW"
    printf '   %-14s -j %-2s %5s tasks: %8s tasks/s (%s processes)\n' "$mode" "$j" "$n" \
        "$(field "$line" tasks_per_s)" "$(field "$line" processes)" >&2
    V["$mode $j"]+="$(field "$line" tasks_per_s)"$'\n'
}

# Prints the words of $2 rotated left by $1.
rotate() {
    local -a w
    read -ra w <<<"$2"
    local n=${#w[@]} i
    for ((i = 0; i < n; i++)); do printf '%s ' "${w[(i + $1) % n]}"; done
}

# ------------------------------------------------------------- profile

# The first $1 lines of stdin that are neither comments nor empty; reads
# it all (no SIGPIPE for the writer under pipefail).
top() { awk -v n="$1" '!/^#/ && NF && k++ < n'; }

# perf script (comm,pid,ip,sym,dso, call chains) to the samples of pid p by
# how they got into the kernel: the outermost syscall in the chain, a page
# fault, an interrupt; else the leaf symbol.
# shellcheck disable=SC2016 # awk's own $ fields
BY_SYSCALL_AWK='
    BEGIN { RS = ""; FS = "\n"; re = "^(__x64_sys_|__do_sys_|__se_sys_)" }
    {
        split($1, h, " ")
        if (h[2] != p) next
        n++
        how = ""
        for (i = 2; i <= NF; i++) {
            split($i, f, " ")
            s = f[2]
            if (s ~ re) { sub(re, "", s); how = "syscall " s }
            else if (how == "" && s == "asm_exc_page_fault") how = "page fault"
            else if (how == "" && s ~ /^(asm_sysvec_|asm_common_interrupt)/) how = "interrupt"
        }
        if (how == "") {
            split($2, f, " ")
            how = (f[3] ~ /kernel/ ? "kernel, other: " f[2] : "user: " f[2] " " f[3])
        }
        c[how]++
    }
    END {
        for (k in c) printf "%6d %5.1f%%  %s\n", c[k], 100 * c[k] / n, k
        printf "%6d 100.0%%  all samples of pid %s\n", n, p
    }'

profile() {
    local out=$RESULTS/tasks-perf.txt data=$WORK/perf.data parent c name t0 t1
    local -a cmds=(
        "sockfork run|seq $TASKS_N | $SOCKFORK run -j 2 -q $TRUE"
        "pool-cmd-out|$POOLBENCH pool-cmd-out -j 2 -n $TASKS_N -c $TRUE"
        "pool-cmd|$POOLBENCH pool-cmd -j 2 -n $TASKS_N -c $TRUE"
        "spawn|$POOLBENCH spawn -j 2 -n $TASKS_N -c $TRUE"
        "xargs|seq $TASKS_N | xargs -P 2 -n 1 $TRUE"
    )
    say "profiling sockfork run -j2 over $TASKS_N tasks"
    {
        echo "# sockfork run -j2 -q $TRUE, $TASKS_N tasks from stdin: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs"
        echo "# tree $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)"
        echo
        if ! command -v perf >/dev/null; then
            echo "(perf is not installed)"
        else
            echo "## perf stat of the whole tree (the tool and every task), -j 2, $TASKS_N tasks; per task"
            printf '%-14s %10s %10s %10s %12s\n' "" "tasks/s" "CPU, µs" "switches" "page faults"
            for c in "${cmds[@]}"; do
                name=${c%%|*}
                t0=$EPOCHREALTIME
                perf stat -x, -e task-clock,context-switches,page-faults -o "$WORK/stat.txt" -- \
                    sh -c "${c#*|} >/dev/null 2>&1" >/dev/null 2>&1 || true
                t1=$EPOCHREALTIME
                awk -F, -v n="$TASKS_N" -v name="$name" -v w="$(calc 'print a - b' "$t1" "$t0")" '
                    $3 == "task-clock" { cpu = $1 } $3 == "context-switches" { cs = $1 }
                    $3 == "page-faults" { pf = $1 }
                    END { printf "%-14s %10.0f %10.0f %10.1f %12.1f\n", name, n / w, cpu * 1000 / n, cs / n, pf / n }
                ' "$WORK/stat.txt"
            done
            echo
            perf record -q -e cpu-clock -c 100000 -g -a -o "$data" -- \
                sh -c "seq $TASKS_N | $SOCKFORK run -j 2 -q $TRUE >/dev/null" >/dev/null 2>&1 || true
            echo "## perf record -e cpu-clock -c 100000 -g -a of sockfork run (one sample = 100 µs): all CPU samples, by command and object"
            echo "## (\"sockfork\" includes the spawned children until their exec has replaced the name)"
            perf report -i "$data" --no-children --sort comm,dso -g none --stdio 2>/dev/null | top 16
            echo
            # perf report's --pid/--tid filters gave other processes' samples
            # here (perf 6.x): the parent's samples are counted from perf script.
            perf script -i "$data" -F comm,pid,ip,sym,dso >"$WORK/perf.script" 2>/dev/null || true
            parent=$(awk '/^[^ \t]/ && $1 == "sockfork" { c[$2]++ }
                END { for (k in c) if (c[k] > m) { m = c[k]; p = k } print p }' "$WORK/perf.script")
            echo "## by process: the parent, and the busiest others"
            awk '/^[^ \t]/ { n++; c[$1 " " $2]++ }
                END { for (k in c) printf "%6d %5.1f%%  %s\n", c[k], 100 * c[k] / n, k }' "$WORK/perf.script" |
                sort -rn | top 6
            if [[ -n $parent ]]; then
                echo
                echo "## the parent (pid $parent), by the way into the kernel (from the call chains)"
                awk -v p="$parent" "$BY_SYSCALL_AWK" "$WORK/perf.script" | sort -rn | top 22
                echo
                echo "## the parent: where the samples landed (leaf symbols)"
                awk -v p="$parent" '
                    BEGIN { RS = ""; FS = "\n" }
                    { split($1, h, " "); if (h[2] != p) next; n++; split($2, f, " "); c[f[2] " " f[3]]++ }
                    END { for (k in c) printf "%6d %5.1f%%  %s\n", c[k], 100 * c[k] / n, k }' "$WORK/perf.script" |
                    sort -rn | top 25
            fi
            echo
        fi
        if command -v strace >/dev/null; then
            echo "## strace -c: the sockfork process alone"
            seq "$TASKS_N" | strace -c -o "$WORK/strace.txt" "$SOCKFORK" run -j 2 -q "$TRUE" >/dev/null 2>&1 || true
            top 30 <"$WORK/strace.txt"
            echo
            echo "## strace -f -c: sockfork and its children (the children's exec of true included)"
            seq "$TASKS_N" | strace -f -c -o "$WORK/strace-f.txt" "$SOCKFORK" run -j 2 -q "$TRUE" >/dev/null 2>&1 || true
            top 30 <"$WORK/strace-f.txt"
        else
            echo "(strace is not installed)"
        fi
    } >"$out"
    say "profile written to ${out#"$ROOT"/}"
}

# ---------------------------------------------------------------- tables

# Median of V[$1 $2], or "".
med() { if [[ -n ${V["$1 $2"]:-} ]]; then median "${V["$1 $2"]}"; fi; }
num() { [[ -n $1 ]] && printf '%.0f' "$1" || printf '–'; }
ratio() { local r; r=$(calc 'printf "%.2f", a / b' "$1" "$2"); [[ -n $r ]] && printf '%s×' "$r" || printf '–'; }
# "1.234× (target ≥ 1.2×): met" for the ratio $1 / $2 against target $3.
verdict() {
    local r
    r=$(calc 'printf "%.3f", a / b' "$1" "$2")
    [[ -n $r ]] || { printf 'not measured'; return; }
    printf '%s× (target ≥ %s×): %s' "$r" "$3" "$(calc 'printf "%s", (a >= b ? "met" : "MISSED")' "$r" "$3")"
}

table_cli() {
    local j s sa x p
    echo "| -j | sockfork run, stdin | sockfork run, \`:::\` | \`xargs -P\` | GNU parallel ($TASKS_PAR_N tasks) | sockfork / xargs | sockfork / parallel |"
    echo "|---:|---:|---:|---:|---:|---:|---:|"
    for j in $TASKS_JOBS; do
        s=$(med sockfork "$j"); sa=$(med sockfork-args "$j"); x=$(med xargs "$j"); p=$(med parallel "$j")
        echo "| $j | $(num "$s") | $(num "$sa") | $(num "$x") | $(num "$p") | $(ratio "$s" "$x") | $(ratio "$s" "$p") |"
    done
}

table_c() {
    local j b f r
    echo "| jobs | bare fork+waitpid | pool, fork per task | pool, worker reuse | fork per task / bare | reuse / bare |"
    echo "|---:|---:|---:|---:|---:|---:|"
    for j in $TASKS_C_JOBS; do
        b=$(med bare "$j"); f=$(med pool-fork "$j"); r=$(med pool-reuse "$j")
        echo "| $j | $(num "$b") | $(num "$f") | $(num "$r") | $(ratio "$f" "$b") | $(ratio "$r" "$b") |"
    done
}

table_cmd() {
    local j sp vf pc po s
    echo "| jobs | bare posix_spawn+waitpid | bare vfork+execve | pool, commands | pool, commands, output captured | sockfork run, stdin | posix_spawn / vfork | pool commands / vfork | captured / vfork | sockfork run / vfork | sockfork run / captured |"
    echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    # shellcheck disable=SC2086 # lists of words
    for j in $(printf '%s\n' $TASKS_C_JOBS $TASKS_JOBS | sort -nu); do
        sp=$(med spawn "$j"); vf=$(med vfork "$j"); pc=$(med pool-cmd "$j")
        po=$(med pool-cmd-out "$j"); s=$(med sockfork "$j")
        echo "| $j | $(num "$sp") | $(num "$vf") | $(num "$pc") | $(num "$po") | $(num "$s") |" \
            "$(ratio "$sp" "$vf") | $(ratio "$pc" "$vf") | $(ratio "$po" "$vf") | $(ratio "$s" "$vf") |" \
            "$(ratio "$s" "$po") |"
    done
}

targets() {
    local j
    for j in $TASKS_JOBS; do
        echo "- -j $j: sockfork run / xargs -P = $(verdict "$(med sockfork "$j")" "$(med xargs "$j")" 1.2);" \
            "sockfork run / GNU parallel = $(verdict "$(med sockfork "$j")" "$(med parallel "$j")" 4)."
    done
    for j in $TASKS_C_JOBS; do
        echo "- jobs $j: pool, fork per task / bare = $(verdict "$(med pool-fork "$j")" "$(med bare "$j")" 0.5);" \
            "pool, reuse / bare = $(verdict "$(med pool-reuse "$j")" "$(med bare "$j")" 5)."
    done
}

tables() {
    echo "## \`sockfork run\` beside xargs and GNU parallel: tasks/s (\`true\`, $TASKS_N tasks; parallel $TASKS_PAR_N)"
    echo
    table_cli
    echo
    echo "## The C API beside a bare fork+waitpid loop: tasks/s ($TASKS_FORK_N tasks forked, $TASKS_REUSE_N with reuse)"
    echo
    table_c
    echo
    echo "## Commands: where a task's time goes ($TASKS_CMD_N tasks of \`$TRUE N\` each)"
    echo
    table_cmd
    echo
    echo "## Targets"
    echo
    targets
}

report() {
    local cpu
    cpu=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)
    echo "# Many trivial tasks: sockfork run, xargs, GNU parallel, the pool's C API: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "Machine: $(nproc) CPUs ($cpu), Linux $(uname -r);" \
        "$("$SOCKFORK" --version 2>/dev/null | awk 'NR == 1' || echo sockfork ?)," \
        "$(xargs --version 2>/dev/null | awk 'NR == 1' || echo xargs ?)," \
        "$(have_parallel && parallel --will-cite --version 2>/dev/null | awk 'NR == 1' || echo 'no GNU parallel')" \
        "(tree $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown))."
    echo "Run: TASKS_N=$TASKS_N TASKS_PAR_N=$TASKS_PAR_N TASKS_JOBS=\"$TASKS_JOBS\" TASKS_C_JOBS=\"$TASKS_C_JOBS\"" \
        "TASKS_FORK_N=$TASKS_FORK_N TASKS_REUSE_N=$TASKS_REUSE_N TASKS_CMD_N=$TASKS_CMD_N" \
        "TASKS_REPEATS=$TASKS_REPEATS bench/tasks.sh"
    echo
    echo "Medians of $TASKS_REPEATS runs each, the tools alternating (order rotated every repeat);"
    echo "ratios are of the medians. Task: \`$TRUE\` with one argument appended, output to /dev/null:"
    echo "\`seq N | sockfork run -j J -q $TRUE\`, \`sockfork run -j J -q $TRUE ::: 1 .. N\`,"
    echo "\`seq N | xargs -P J -n 1 $TRUE\`, \`seq N | parallel --will-cite -j J $TRUE\`."
    echo "Wall time of the whole command. C API: build/bench/poolbench (bench/poolbench.c); a task"
    echo "there is fn returning 0 (fork per task: max_tasks_per_worker 1; reuse: 0), submitted from the"
    echo "pool's feed callback (at most J queued), or, for"
    echo "\"commands\", \`$TRUE N\` through sf_pool_submit_cmd (\"output captured\": capture_output 1,"
    echo "as sockfork run sets it); bare loops fork()+_exit(0), posix_spawn($TRUE N) or vfork+execve of it,"
    echo "reaped with waitpid(-1), at most J at once. Every command gets one argument, as"
    echo "with xargs -n 1 (GNU true sets up its locale only when it has exactly one)."
    echo
    tables
    echo
    echo "Raw lines:"
    echo
    echo '```'
    cat "$RAW"
    echo '```'
}

# ----------------------------------------------------------------- main

build_bench bench/poolbench
install_parallel
: >"$RAW"
CLI_TOOLS="sockfork sockfork-args xargs"
if have_parallel; then CLI_TOOLS+=" parallel"; else say "no GNU parallel: its column stays empty"; fi
C_MODES="bare pool-fork pool-reuse spawn vfork pool-cmd pool-cmd-out"
"$SOCKFORK" --version >/dev/null 2>&1 || die "$SOCKFORK does not run"

for ((rep = 1; rep <= TASKS_REPEATS; rep++)); do
    say "repeat $rep of $TASKS_REPEATS"
    for j in $TASKS_JOBS; do
        for tool in $(rotate $((rep - 1)) "$CLI_TOOLS"); do
            run_cli "$tool" "$j"
        done
    done
    for j in $TASKS_C_JOBS; do
        for mode in $(rotate $((rep - 1)) "$C_MODES"); do
            run_c "$mode" "$j"
        done
    done
done

mkdir -p "$RESULTS"
((TASKS_PROFILE)) && profile
report >"$RESULTS/tasks-latest.md"
echo
tables
echo
say "written to ${RESULTS#"$ROOT"/}/tasks-latest.md; $((SECONDS - STARTED)) s in all"
