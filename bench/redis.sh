#!/usr/bin/env bash
# bench/redis.sh - how many commands a second one rconn (src/redis/rconn.c)
# pipelines to a local redis-server, beside redis-benchmark on the same
# server in the same run:
#
#   redisbench      build/bench/redisbench -t REDIS_SECS -w W redis://127.0.0.1:PORT
#                   (one connection, W SETs in flight, W in REDIS_WINDOWS), and
#                   the same over a unix socket
#   redis-benchmark redis-benchmark -q -t set -P 16 -n 100000 (50 connections,
#                   16 commands pipelined on each)
#
# One fresh redis-server on 127.0.0.1 (a free port) and a unix socket in a
# temporary directory, --save '' --appendonly no, stopped at the end (trap).
# Loopback only. About 10 s.
#
# Environment:
#   BUILD=dir          meson build directory (default: build)
#   REDIS_SECS=2       seconds per redisbench run
#   REDIS_WINDOWS="1 16 1000"
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${BUILD:-build}
[[ $BUILD == /* ]] || BUILD=$ROOT/$BUILD
REDIS_SECS=${REDIS_SECS:-2}
REDIS_WINDOWS=${REDIS_WINDOWS:-1 16 1000}
BENCH=$BUILD/bench/redisbench

command -v redis-server >/dev/null || { echo "redis.sh: redis-server is not installed" >&2; exit 1; }
[[ -x $BENCH ]] || { echo "redis.sh: $BENCH is missing (make)" >&2; exit 1; }

tmp=$(mktemp -d)
redis_pid=
cleanup() {
    [[ -n $redis_pid ]] && kill "$redis_pid" 2>/dev/null && wait "$redis_pid" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT

port=$(/usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --bind 127.0.0.1 --port "$port" --unixsocket "$tmp/r.sock" --save '' \
    --appendonly no --dir "$tmp" --daemonize no >"$tmp/redis.log" 2>&1 &
redis_pid=$!
for ((i = 0; i < 500; i++)); do
    redis-cli -p "$port" ping >/dev/null 2>&1 && break
    sleep 0.01
done
redis-cli -p "$port" ping >/dev/null

for w in $REDIS_WINDOWS; do
    "$BENCH" -t "$REDIS_SECS" -w "$w" "redis://127.0.0.1:$port"
done
"$BENCH" -t "$REDIS_SECS" -w 1000 "unix:$tmp/r.sock"
printf 'redis-benchmark -q -t set -P 16 -n 100000: '
redis-benchmark -p "$port" -q -t set -P 16 -n 100000 | tr '\r' '\n' | grep -E '^SET: .*requests per second' | tail -n 1
