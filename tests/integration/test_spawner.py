"""The spawner: the one process that forks the connections' children.

The supervisor holds a channel per child and so never forks them itself;
its one child is the spawner, which forks, reaps and signals them. These
tests check that shape, and what happens when the spawner is killed."""
import os
import signal

from conftest import LONG_WAIT, children_of, control_path, proc_stat, recv_line, wait_for
from test_ctl import ctl_json


def spawner_of(srv):
    reply = ctl_json(control_path(srv), "stats")
    assert reply["spawner_pid"] > 0, reply
    return reply["spawner_pid"]


def test_children_are_the_spawners_and_the_spawner_is_the_servers(sockfork):
    srv = sockfork()
    spawner = spawner_of(srv)
    assert [pid for pid, _ in children_of(srv.pid)] == [spawner]
    clients = [srv.connect() for _ in range(3)]
    pids = []
    for c in clients:
        assert recv_line(c).startswith(b"Welcome")
        pids.append(int(srv.wait_connected(c)[1].group(1)))
    assert sorted(pid for pid, _ in children_of(spawner)) == sorted(pids)
    # Each child leads a process group of its own.
    for pid in pids:
        assert os.getpgid(pid) == pid


def test_a_killed_spawner_costs_its_children_only_and_is_replaced(sockfork):
    srv = sockfork()
    path = control_path(srv)
    old = spawner_of(srv)
    clients = [srv.connect() for _ in range(3)]
    pids = set()
    for c in clients:
        assert recv_line(c).startswith(b"Welcome")
        pids.add(int(srv.wait_connected(c)[1].group(1)))

    mark = srv.log.mark()
    os.kill(old, signal.SIGKILL)
    srv.log.wait_one(r"the spawner is gone: 0 connections it was starting are dropped", start=mark)
    # Its children got SIGTERM (their parent-death signal); the supervisor,
    # their subreaper, reaped them with their real status.
    found = srv.log.wait(r"disconnected pid=(\d+) .*status=killed by SIGTERM$", count=3,
                         start=mark, timeout=LONG_WAIT)
    assert {int(m.group(1)) for _, m in found} == pids

    new = wait_for(lambda: (lambda p: p if p not in (0, old) else None)(
        ctl_json(path, "stats")["spawner_pid"]), "a new spawner")
    st = ctl_json(path, "stats")
    assert st["channel"]["spawner_restarts"] == 1, st
    assert st["active"] == 0, st
    # Nothing of the old one is left, and the new one serves.
    assert proc_stat(old) is None
    c = srv.connect()
    assert recv_line(c).startswith(b"Welcome")
    pid = int(srv.wait_connected(c)[1].group(1))
    assert proc_stat(pid)[1] == new


def test_a_spawner_stopped_by_sigint_keeps_serving(sockfork):
    """An operator's stray SIGINT to the spawner costs nothing."""
    srv = sockfork()
    spawner = spawner_of(srv)
    os.kill(spawner, signal.SIGINT)
    c = srv.connect()
    assert recv_line(c).startswith(b"Welcome")
    srv.wait_connected(c)
    assert spawner_of(srv) == spawner
    assert not srv.log.find(r"spawner")
