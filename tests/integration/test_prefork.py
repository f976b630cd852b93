"""Prefork mode (issue 13): `sockfork serve|chat --workers MIN[:MAX]` and the
same fields of sf_server_opts (tests/helpers/chanserver), against the real
binaries over loopback.

Workers are children of the spawner (the server's `ctl stats` names it),
so the processes a test counts are the spawner's children that are not
zombies. Every wait waits on a condition (a log line, a counter of `ctl
stats`, a process gone from /proc) and is bounded; the one measurement
over a window of time (the crash loop's starts) asserts a count a spin
would exceed a hundredfold.
"""
import errno
import json
import os
import re
import selectors
import signal
import socket
import time

import pytest

from conftest import (LONG_WAIT, WAIT, BusClient, Control, children_of, expect_eof, helper,
                      peer_text, proc_stat, recv_exact, recv_line, recv_until_eof, run_cli)
from test_chat import HELLO, Chat, sync

WORKER_DIED_RE = r"^sockfork: worker pid=%d died: %s \(served (\d+), (busy|idle)\)$"


# ------------------------------------------------------------ helpers

@pytest.fixture
def prefork(sockfork, tmp_path):
    """Factory: a server (sockfork serve, chat, or chanserver with bin=) with
    a control socket in tmp_path; returns the Server with .ctl (a Control)
    and .ctl_path. The control connections close before the servers stop."""
    controls = []

    def start(*args, command="serve", bin=None):
        path = str(tmp_path / ("c%d.sock" % len(controls)))
        assert len(path) < 100, "tmp_path too long for a Unix socket: %s" % path
        srv = sockfork("--control", path, *args, command=command, bin=bin)
        srv.log.wait_one(r"^sockfork: control socket unix:%s$" % re.escape(path))
        srv.ctl_path = path
        srv.ctl = Control(path)
        controls.append(srv.ctl)
        return srv

    yield start
    for c in controls:
        c.close()


def chanserver():
    return helper("chanserver")


def stats(srv):
    st = srv.ctl(cmd="stats")
    assert st["ok"] is True, st
    return st


def wait_stats(srv, cond, what, timeout=WAIT):
    """Polls `ctl stats` (every 20 ms, bounded) until cond(stats) holds;
    returns those stats."""
    deadline = time.monotonic() + timeout
    while True:
        st = stats(srv)
        if cond(st):
            return st
        if time.monotonic() >= deadline:
            raise AssertionError("not within %.0f s: %s; last stats: %s\nlog:\n%s"
                                 % (timeout, what, json.dumps(st.get("workers")),
                                    "\n".join(srv.log.snapshot()[-40:])))
        time.sleep(0.02)


def pool_is(srv, idle=None, busy=None, timeout=WAIT):
    """Waits until the pool has exactly these idle and busy workers, none
    starting or retiring, and as many live processes."""
    def ok(st):
        w = st["workers"]
        if w["starting"] or w["retiring"]:
            return False
        if idle is not None and w["idle"] != idle:
            return False
        if busy is not None and w["busy"] != busy:
            return False
        return len(live_workers(st["spawner_pid"])) == w["idle"] + w["busy"]
    return wait_stats(srv, ok, "pool of %s idle, %s busy" % (idle, busy), timeout)


def live_workers(spawner):
    """The spawner's children that are alive (not zombies)."""
    return sorted(pid for pid, state in children_of(spawner) if state != "Z")


def worker_pids(st):
    return sorted(int(p) for p in st["workers"]["served"])


def no_zombies(srv, timeout=WAIT):
    """No <defunct> child of the server or of its spawner stays: a zombie
    may be seen for a moment, between an exit and its reaping."""
    spawner = stats(srv)["spawner_pid"]
    deadline = time.monotonic() + timeout
    while True:
        z = [(pid, ppid) for ppid in (srv.pid, spawner)
             for pid, state in children_of(ppid) if state == "Z"]
        if not z:
            return
        if time.monotonic() >= deadline:
            raise AssertionError("zombies (pid, parent) left: %r" % z)
        time.sleep(0.02)


def gone(pid, timeout=WAIT):
    """Waits until pid is no process at all (not even a zombie)."""
    deadline = time.monotonic() + timeout
    while proc_stat(pid) is not None:
        if time.monotonic() >= deadline:
            raise AssertionError("pid %d still there: %r" % (pid, proc_stat(pid)))
        time.sleep(0.01)


def echo_ok(sock, text=b"ping\n"):
    sock.sendall(text)
    assert recv_exact(sock, len(text)) == text


def greeting_pid(sock):
    """The interactive handler's greeting: the pid that serves."""
    line = recv_line(sock)
    m = re.match(rb"^Welcome to sockfork \(pid (\d+)\)\. ", line)
    assert m, line
    return int(m.group(1))


def connected_pid(srv, sock, start=0):
    return int(srv.wait_connected(sock, start)[1].group(1))


# ------------------------------------------------------------ usage

@pytest.mark.parametrize("args, why", [
    (["--workers", "0", "--echo"], r"--workers wants MIN or MIN:MAX"),
    (["--workers", "4:2", "--echo"], r"--workers wants MIN or MIN:MAX"),
    (["--workers", "x", "--echo"], r"--workers wants MIN or MIN:MAX"),
    (["--workers", "2", "--", "cat"], r"--workers .*PROGRAM"),
    (["--max-requests", "10", "--echo"], r"--max-requests works with --workers only"),
    (["--worker-idle", "1s", "--echo"], r"--worker-idle works with --workers only"),
    (["--workers", "4", "-c", "2", "--echo"], r"-c 2 is below --workers' minimum 4"),
])
def test_usage_errors(args, why):
    rc, out, err = run_cli("serve", "-l", "127.0.0.1:0", "--no-control", *args)
    assert rc == 2, (rc, out, err)
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("sockfork: ") and re.search(why, lines[0]), err


def test_chat_usage_error():
    rc, out, err = run_cli("chat", "-l", "127.0.0.1:0", "--no-control", "--workers", "3:1")
    assert rc == 2 and len(err.splitlines()) == 1 and "--workers" in err, (rc, err)


# ------------------------------------------------------------ sizing

def test_burst_of_300_stays_within_max_and_shrinks_back(prefork):
    srv = prefork("--echo", "--workers", "4:16", "--worker-idle", "0.5s")
    st = pool_is(srv, idle=4, busy=0)
    spawner = st["spawner_pid"]
    n = 300
    payload = [b"client %03d " % i * 20 + b"\n" for i in range(n)]
    clients = [srv.connect() for _ in range(n)]
    for c, data in zip(clients, payload):
        c.sendall(data)

    sel = selectors.DefaultSelector()
    got = {}
    for i, c in enumerate(clients):
        c.setblocking(False)
        sel.register(c, selectors.EVENT_READ, i)
        got[i] = b""
    done = set()
    answered = []       # served, not yet closed: closed once the pool is full
    most_procs = most_busy = 0
    released = False
    deadline = time.monotonic() + 60
    while len(done) < n:
        assert time.monotonic() < deadline, "%d of %d echoed; log:\n%s" % (
            len(done), n, "\n".join(srv.log.snapshot()[-30:]))
        procs = len(live_workers(spawner))
        most_procs = max(most_procs, procs)
        assert procs <= 16, "%d worker processes" % procs
        w = stats(srv)["workers"]
        most_busy = max(most_busy, w["busy"])
        assert w["idle"] + w["busy"] + w["starting"] + w["retiring"] <= 16, w
        # Hold what is served until every worker is busy: the ramp must
        # reach the maximum, and never pass it.
        if not released and w["busy"] == 16:
            released = True
        if released:
            for c in answered:
                sel.unregister(c)
                srv.close_client(c)
            answered = []
        for key, _ in sel.select(timeout=0.05):
            i = key.data
            try:
                data = key.fileobj.recv(1 << 16)
            except BlockingIOError:
                continue
            assert data, "client %d: EOF after %r" % (i, got[i])
            got[i] += data
            assert payload[i].startswith(got[i]), (i, got[i])
            if got[i] == payload[i]:
                done.add(i)
                answered.append(key.fileobj)
    for c in answered:
        sel.unregister(c)
        srv.close_client(c)
    sel.close()
    assert released and most_busy == 16 and most_procs == 16, (most_busy, most_procs)

    lines = srv.log.wait(r"\] disconnected pid=\d+ .* status=exited 0$", count=n)
    assert len(srv.log.find(r"\] connected pid=")) == n
    actives = [int(m.group(1)) for _, m in srv.log.find(r"\] connected pid=\d+ active=(\d+)$")]
    assert max(actives) == 16, max(actives)
    # Back to the minimum once they have idled half a second.
    st = pool_is(srv, idle=4, busy=0, timeout=LONG_WAIT)
    w = st["workers"]
    assert w["started"] == 16, w
    assert w["ended"]["idle"] == 12, w
    assert sum(w["ended"].values()) == 12, w
    assert st["accepted"] == n and st["exited"] == {"0": n} and st["active"] == 0, st
    assert len(lines) == n
    no_zombies(srv)


# ------------------------------------------------------------ max-requests

def test_max_requests_recycles_workers(prefork):
    srv = prefork("--workers", "2:4", "--max-requests", "10")
    pool_is(srv, idle=2, busy=0)
    n = 200
    served = {}
    for i in range(n):
        c = srv.connect()
        pid = greeting_pid(c)
        c.sendall(b"quit\n")
        assert recv_exact(c, 6) == b"Bye.\r\n", i
        expect_eof(c)
        srv.close_client(c)
        served[pid] = served.get(pid, 0) + 1
    # The limit is 10 plus up to a tenth more, at random: 10 + (0..2).
    over = {p: k for p, k in served.items() if k > 12}
    assert not over, "workers past their limit: %r" % over

    st = pool_is(srv, busy=0, timeout=LONG_WAIT)
    w = st["workers"]
    live = {int(p): k for p, k in w["served"].items()}
    for pid, k in live.items():
        assert k == served.get(pid, 0), (pid, k, served.get(pid))
    ended = {p: k for p, k in served.items() if p not in live}
    assert all(10 <= k <= 12 for k in ended.values()), ended
    assert sum(live.values()) + sum(ended.values()) == n
    assert w["ended"]["max_requests"] == len(ended), (w, ended)
    assert sum(w["ended"].values()) == len(ended), w
    assert w["started"] == len(ended) + len(live), w
    assert st["accepted"] == n and st["exited"] == {"0": n}, st
    no_zombies(srv)


# ------------------------------------------------------------ deaths

def test_kill_9_of_a_busy_worker(prefork):
    srv = prefork("--echo", "--workers", "3")
    pool_is(srv, idle=3, busy=0)
    clients = [srv.connect() for _ in range(3)]
    pids = []
    for c in clients:
        echo_ok(c)
        pids.append(connected_pid(srv, c))
    assert len(set(pids)) == 3
    victim, others = clients[0], clients[1:]
    os.kill(pids[0], signal.SIGKILL)
    expect_eof(victim)
    for c in others:
        echo_ok(c, b"unaffected\n")
    _, d = srv.wait_disconnected(victim)
    assert int(d.group("pid")) == pids[0] and d.group("status") == "killed by SIGKILL", d.group(0)
    srv.log.wait_one(WORKER_DIED_RE % (pids[0], "killed by SIGKILL"))
    st = pool_is(srv, idle=1, busy=2)
    w = st["workers"]
    assert w["ended"]["crashed"] == 1 and sum(w["ended"].values()) == 1, w
    assert w["started"] == 4, w
    assert pids[0] not in worker_pids(st)
    assert st["killed"] == {"SIGKILL": 1}, st
    for c in others:
        echo_ok(c, b"still fine\n")
    # The new worker serves.
    c = srv.connect()
    echo_ok(c)
    assert connected_pid(srv, c) not in pids
    no_zombies(srv)


def test_conn_timeout_ends_and_replaces_the_worker(prefork):
    srv = prefork("--echo", "--workers", "2", "--conn-timeout", "1s")
    pool_is(srv, idle=2, busy=0)
    held = srv.connect()
    echo_ok(held)
    pid = connected_pid(srv, held)
    srv.log.wait_one(r"^sockfork: \[%s\] connection held for 1 s: ending pid=%d$"
                     % (re.escape(peer_text(held)), pid), timeout=WAIT)
    assert recv_until_eof(held) == b""
    _, d = srv.wait_disconnected(held)
    assert d.group("status") == "killed by SIGTERM", d.group(0)
    st = pool_is(srv, idle=2, busy=0)
    w = st["workers"]
    assert w["ended"]["conn_timeout"] == 1 and sum(w["ended"].values()) == 1, w
    assert st["conn_timed_out"] == 1, st
    assert pid not in worker_pids(st) and w["started"] == 3, w
    c = srv.connect()
    echo_ok(c)
    srv.close_client(c)
    no_zombies(srv)
