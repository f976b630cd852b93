# shellcheck shell=bash
# bench/lib.sh - what the benchmark scripts share: messages, and finding,
# checking and stopping a server's whole tree of processes. Sourced.

say() { printf '== %s\n' "$*" >&2; }

# ------------------------------------------------------------ processes

# Prints PID and all its descendants, one a line. Children may sit in
# process groups of their own, so this follows parent links, not groups.
tree_pids() {
    ps -e -o pid=,ppid= | awk -v root="$1" '
        { kids[$2] = kids[$2] " " $1 }
        END {
            n = 1; q[1] = root
            for (i = 1; i <= n; i++) {
                m = split(kids[q[i]], k, " ")
                for (j = 1; j <= m; j++) q[++n] = k[j]
            }
            for (i = 1; i <= n; i++) print q[i]
        }'
}

# Is PID running (and not a zombie waiting for us to reap it)?
alive() {
    local st
    st=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
    [[ $st != Z* ]]
}

# Stops a server: TERM to it and every descendant, up to 15 s to go,
# then KILL to whatever is left. Leaves no process behind.
stop_tree() {
    local pid=$1 pids left i
    mapfile -t pids < <(tree_pids "$pid")
    kill -TERM "${pids[@]}" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do
        left=0
        for p in "${pids[@]}"; do
            if alive "$p"; then left=1; break; fi
        done
        ((left)) || break
        sleep 0.1
    done
    if ((left)); then
        say "some processes outlived SIGTERM by 15 s: SIGKILL"
        kill -KILL "${pids[@]}" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

# Builds the bench program $1 (a ninja target, e.g. bench/chatload), and
# sockfork too unless SOCKFORK names another binary. Needs ROOT, BUILD and
# SOCKFORK set by the script.
build_bench() {
    if [[ ! -f $BUILD/build.ninja ]]; then
        meson setup "$BUILD" "$ROOT" >&2
    fi
    if [[ $SOCKFORK == "$BUILD/sockfork" ]]; then
        ninja -C "$BUILD" "$1" sockfork >&2
    else
        ninja -C "$BUILD" "$1" >&2
    fi
}
