# shellcheck shell=bash
# bench/netns.sh - several hosts on one machine for a benchmark (issue 17's
# "two workers in two namespaces"): the same layout as
# tests/integration/netns.py. Sourced; needs root. Nothing is done in the
# caller's own network namespace: the devices are made inside the bridge's
# namespace, the addresses are on the hosts' eth0 only.
#
#   source bench/netns.sh
#   netns_setup redis w1 w2 || exit 1    # refuses (returns 1) without root
#   trap netns_teardown EXIT
#   netns_exec w1 sockfork worker "redis://$(netns_addr redis):6379/q" -j 8 &
#   ...
# netns_exec NAME CMD... runs CMD in host NAME (`ip netns exec`, which execs:
# $! is CMD's pid). netns_teardown kills every process in every host and
# deletes the namespaces; it is safe to call twice.

NETNS_TAG=
NETNS_SUBNET=
NETNS_HOSTS=()

# netns_setup NAME... : a bridge and one host per NAME.
netns_setup() {
    local name i=1 ns err
    NETNS_TAG=sfb$$-$(printf '%06x' $((RANDOM * 32768 + RANDOM)))
    NETNS_SUBNET=$((RANDOM % 256))
    if ! err=$(ip netns add "$NETNS_TAG-bridge" 2>&1); then
        printf '== cannot make network namespaces (%s): needs root\n' "$err" >&2
        NETNS_TAG=
        return 1
    fi
    if ! { ip -n "$NETNS_TAG-bridge" link set lo up &&
        ip -n "$NETNS_TAG-bridge" link add br0 type bridge &&
        ip -n "$NETNS_TAG-bridge" link set br0 up; }; then
        netns_teardown
        return 1
    fi
    for name in "$@"; do
        ns=$NETNS_TAG-$name
        ip netns add "$ns" || { netns_teardown; return 1; }
        NETNS_HOSTS+=("$name")
        if ! { ip -n "$NETNS_TAG-bridge" link add "p$i" type veth peer name eth0 netns "$ns" &&
            ip -n "$NETNS_TAG-bridge" link set "p$i" master br0 &&
            ip -n "$NETNS_TAG-bridge" link set "p$i" up &&
            ip -n "$ns" link set lo up &&
            ip -n "$ns" addr add "10.213.$NETNS_SUBNET.$((i + 1))/24" dev eth0 &&
            ip -n "$ns" link set eth0 up; }; then
            netns_teardown
            return 1
        fi
        i=$((i + 1))
    done
}

# netns_addr NAME: the host's address.
netns_addr() {
    local i
    for i in "${!NETNS_HOSTS[@]}"; do
        if [[ ${NETNS_HOSTS[$i]} == "$1" ]]; then
            echo "10.213.$NETNS_SUBNET.$((i + 2))"
            return 0
        fi
    done
    echo "netns_addr: no host $1" >&2
    return 1
}

netns_exec() {
    local ns=$NETNS_TAG-$1
    shift
    ip netns exec "$ns" "$@"
}

# Kills every process of every host (bounded), deletes the namespaces.
netns_teardown() {
    local name ns pids i
    [[ -n $NETNS_TAG ]] || return 0
    for name in "${NETNS_HOSTS[@]}" bridge; do
        ns=$NETNS_TAG-$name
        for ((i = 0; i < 100; i++)); do
            pids=$(ip netns pids "$ns" 2>/dev/null)
            [[ -n $pids ]] || break
            # shellcheck disable=SC2086
            kill -KILL $pids 2>/dev/null || true
            sleep 0.05  # a zombie leaves `ip netns pids`: no need to reap here
        done
        ip netns delete "$ns" 2>/dev/null || true
    done
    NETNS_TAG=
    NETNS_HOSTS=()
}
