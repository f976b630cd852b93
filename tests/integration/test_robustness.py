"""A child that dies costs only itself; reaping keeps up; failing fork()
and accept() back off and recover (failures injected with failinject.so)."""
import re
import socket
import threading

import pytest

from conftest import (LONG_WAIT, children_of, helper, peer_text, recv_exact, recv_line,
                      recv_until_eof)

# Reads one line: "die" and "segv" kill the shell with that signal, anything
# else is acknowledged and the connection becomes a cat.
HANDLER = ('ulimit -c 0; read line; case "$line" in die) kill -KILL $$;; '
           'segv) kill -SEGV $$;; esac; echo "got $line"; exec cat')


def echo_ok(sock, text=b"ping\n"):
    sock.sendall(text)
    assert recv_exact(sock, len(text)) == text


@pytest.mark.parametrize("how,status", [("die", "killed by SIGKILL"),
                                        ("segv", "killed by SIGSEGV")])
def test_killed_handler_is_logged_and_siblings_keep_working(sockfork, how, status):
    srv = sockfork("--", "/bin/sh", "-c", HANDLER)
    sibling = srv.connect()
    sibling.sendall(b"hello\n")
    assert recv_line(sibling) == b"got hello\n"

    victim = srv.connect()
    peer = peer_text(victim)
    _, m = srv.wait_connected(victim)
    victim.sendall(how.encode() + b"\n")
    assert recv_until_eof(victim) == b""
    _, d = srv.wait_disconnected(peer)
    assert d.group("pid") == m.group(1)
    assert d.group("status") == status, d.group(0)

    echo_ok(sibling, b"after the crash\n")
    late = srv.connect()
    late.sendall(b"late\n")
    assert recv_line(late) == b"got late\n"
    echo_ok(late)


def test_no_zombie_after_1000_short_connections(sockfork):
    n, workers = 1000, 8
    srv = sockfork("--echo")
    errors = []

    def run(count, wid):
        try:
            for i in range(count):
                s = socket.create_connection(("127.0.0.1", srv.port), timeout=LONG_WAIT)
                try:
                    msg = b"w%d c%d\n" % (wid, i)
                    s.sendall(msg)
                    assert recv_exact(s, len(msg)) == msg
                finally:
                    s.close()
        except Exception as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(n // workers, w), daemon=True)
               for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "clients still running after 60 s"
    assert not errors, errors[:3]
    # Every child has exited and been logged: the server has reaped them all.
    srv.log.wait(r"disconnected pid=\d+ .*status=exited 0$", count=n, timeout=LONG_WAIT)
    assert len(srv.log.find(r"\] connected pid=")) == n
    # Its one child is the spawner, which forks (and reaps) the others.
    kids = children_of(srv.pid)
    assert len(kids) == 1 and kids[0][1] != "Z", "children of the server: %r" % kids
    grandkids = children_of(kids[0][0])
    assert grandkids == [], "children of the spawner after all disconnects: %r" % grandkids
    # And it still serves.
    c = srv.connect()
    echo_ok(c)


def retry_delays(log, pattern):
    return [float(m.group(1)) for _, m in log.find(pattern)]


def check_backoff(delays, first_max):
    """The first pause is short (at most first_max), each next one doubles,
    capped at 1 s."""
    assert delays, "no retry line"
    assert 0 < delays[0] <= first_max, delays
    for a, b in zip(delays, delays[1:]):
        assert b == pytest.approx(min(2 * a, 1.0)), "backoff should double up to 1 s: %r" % delays
    assert max(delays) <= 1.0, delays


@pytest.mark.parametrize("var, word, pattern, first_max", [
    # The supervisor's own fork: starting the spawner.
    ("SF_FAIL_FORK", "fork",
     r"^sockfork: cannot fork: Resource temporarily unavailable; retrying in ([\d.]+) s$", 0.05),
    # The spawner's: the connection's child.
    ("SF_FAIL_SPAWN", "fork",
     r"^sockfork: cannot fork: Resource temporarily unavailable; retrying in ([\d.]+) s$", 0.05),
    ("SF_FAIL_ACCEPT", "accept",
     r"^sockfork: cannot accept: Too many open files; pausing accept for ([\d.]+) s$", 0.1),
])
def test_failure_backs_off_and_recovers(sockfork, var, word, pattern, first_max):
    """Three injected failures of fork() or accept(): the supervisor logs
    each, backs off (doubling, at most 1 s), and still serves the client."""
    srv = sockfork("--echo", env={var: "3"}, preload=helper("failinject.so"))
    c = srv.connect()
    payload = b"served despite %s failures\n" % word.encode()
    c.sendall(payload)
    assert recv_exact(c, len(payload), timeout=LONG_WAIT) == payload
    srv.wait_connected(c)
    delays = retry_delays(srv.log, pattern)
    assert 1 <= len(delays) <= 10, delays
    check_backoff(delays, first_max)
    # Later connections are served at once.
    mark = srv.log.mark()
    d = srv.connect()
    echo_ok(d)
    srv.wait_connected(d, start=mark)
    assert not srv.log.find(r"cannot %s" % word, mark)


def test_injected_failures_reach_only_the_supervisor(sockfork):
    """The shim's counters are the supervisor's: an exec'd program that
    forks (a shell pipeline) is not affected, and never sees the variables."""
    srv = sockfork("--", "/bin/sh", "-c", 'env | grep -c "^SF_FAIL" ; echo x | cat',
                   env={"SF_FAIL_FORK": "1"}, preload=helper("failinject.so"))
    c = srv.connect()
    assert recv_until_eof(c, timeout=LONG_WAIT) == b"0\nx\n"
    assert len(srv.log.find(r"cannot fork")) == 1


def test_fork_failures_are_logged_once_per_episode_with_a_count(sockfork):
    """20 failed forks while 10 connections wait: one line as it begins, one
    with the count as it ends, not one per connection per retry."""
    n, fails = 10, 20
    srv = sockfork("--echo", env={"SF_FAIL_SPAWN": str(fails)}, preload=helper("failinject.so"))
    clients = [srv.connect() for _ in range(n)]
    for i, c in enumerate(clients):
        c.sendall(b"c%d\n" % i)
    for i, c in enumerate(clients):
        assert recv_exact(c, len(b"c%d\n" % i), timeout=LONG_WAIT) == b"c%d\n" % i
    srv.log.wait_one(r"^sockfork: starting children again after %d failed attempts in [\d.]+ s$"
                     % fails)
    assert len(srv.log.find(r"cannot fork")) == 1, srv.log.text()
    assert not srv.log.find(r"dropped"), srv.log.text()
