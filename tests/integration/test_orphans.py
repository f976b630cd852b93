"""kill -9 leaves nothing running: of the supervisor (`serve`, `chat`), whose
spawner then ends every child's process group, and of `sockfork run`, whose
guard ends every task's group. Each time with processes that ignore SIGTERM
and grandchildren, so that only the whole sequence (TERM, the kill grace,
KILL, to the whole group) gets them all."""
import os
import signal
import subprocess
import time

import pytest

from conftest import (BIN, LONG_WAIT, WAIT, children_of, expect_eof, kill_session, proc_stat,
                      recv_line, server_env, session_members)

# The shell and its background sleep both ignore SIGTERM (an ignored signal
# stays ignored across exec); "ready" once the grandchild runs.
TERM_PROOF = 'trap "" TERM; sleep 1000 & echo ready; wait'


def pgrp_of(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            data = f.read()
    except OSError:
        return None
    return int(data[data.rindex(")") + 2:].split()[2])


def group_members(pgid):
    out = set()
    for d in os.listdir("/proc"):
        if d.isdigit() and pgrp_of(int(d)) == pgid:
            out.add(int(d))
    return out


def alive(pid):
    st = proc_stat(pid)
    return st is not None and st[0] != "Z"


def wait_gone(pids, timeout=LONG_WAIT):
    deadline = time.monotonic() + timeout
    while True:
        left = sorted(p for p in pids if alive(p))
        if not left:
            return
        if time.monotonic() >= deadline:
            raise AssertionError("still running %.0f s later: %r" % (timeout, left))
        time.sleep(0.05)  # a bounded poll of /proc


def kill9_server_and_check(srv, clients):
    pids = [int(srv.wait_connected(c)[1].group(1)) for c in clients]
    members = set()
    for pid in pids:
        members |= group_members(pid)
    assert len(members) >= 2 * len(pids), members  # each a shell and its sleep
    spawners = [pid for pid, _ in children_of(srv.pid)]
    assert len(spawners) == 1, spawners
    srv.checked = True  # it dies by SIGKILL: no clean exit to check
    os.kill(srv.pid, signal.SIGKILL)
    for c in clients:
        expect_eof(c, timeout=LONG_WAIT)
    wait_gone(members | set(spawners))


def test_kill9_of_serve_ends_children_that_ignore_sigterm_and_grandchildren(sockfork, tmp_path):
    srv = sockfork("--control", str(tmp_path / "ctl.sock"), "--", "/bin/sh", "-c", TERM_PROOF)
    clients = [srv.connect() for _ in range(3)]
    for c in clients:
        assert recv_line(c) == b"ready\n"
    kill9_server_and_check(srv, clients)


@pytest.mark.parametrize("command", ["serve", "chat"])
def test_kill9_of_serve_with_c_handlers_ends_them(sockfork, tmp_path, command):
    """The built-in handlers (C children of the spawner) are ended too."""
    srv = sockfork("--control", str(tmp_path / "ctl.sock"), command=command)
    clients = [srv.connect() for _ in range(3)]
    for c in clients:
        assert recv_line(c)  # the greeting: the child runs
    pids = [int(srv.wait_connected(c)[1].group(1)) for c in clients]
    srv.checked = True
    os.kill(srv.pid, signal.SIGKILL)
    for c in clients:
        c.settimeout(LONG_WAIT)
        # The handler's goodbye, if any, then EOF.
        data = b""
        while True:
            chunk = c.recv(4096)
            if not chunk:
                break
            data += chunk
            assert len(data) < 4096, data
    wait_gone(set(pids))


def test_a_normal_stop_still_waits_for_every_child(sockfork):
    """Closing the spawner's socket at a clean exit finds nothing left."""
    srv = sockfork("--grace", "0", "--", "/bin/sh", "-c", TERM_PROOF)
    c = srv.connect()
    assert recv_line(c) == b"ready\n"
    srv.wait_connected(c)
    srv.signal(signal.SIGTERM)
    expect_eof(c, timeout=LONG_WAIT)
    assert srv.wait_exit(LONG_WAIT) == 0
    srv.stop()


# ------------------------------------------------------------ sockfork run

def test_kill9_of_run_ends_its_tasks_and_their_children(tmp_path):
    script = tmp_path / "task.sh"
    script.write_text('trap "" TERM\nsleep 1000 &\n: > "$1.started"\nwait\n')
    n = 3
    proc = subprocess.Popen(
        [BIN, "run", "-j", str(n), "--no-progress", "sh", str(script), ":::"] +
        [str(tmp_path / ("t%d" % i)) for i in range(n)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=server_env(), start_new_session=True)
    try:
        deadline = time.monotonic() + WAIT
        while not all((tmp_path / ("t%d.started" % i)).exists() for i in range(n)):
            assert time.monotonic() < deadline, "tasks did not start"
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.02)  # a bounded poll for the tasks' marks
        members = {pid: cmd for pid, _, cmd in session_members(proc.pid, exclude=(proc.pid,))}
        tasks = [pid for pid, cmd in members.items() if pgrp_of(pid) == pid and cmd.startswith("sh ")]
        assert len(tasks) == n, members
        below = [pid for pid in members if pgrp_of(pid) in tasks and pid not in tasks]
        assert len(below) == n, members
        proc.kill()
        proc.wait(WAIT)
        wait_gone(set(members))
        # Its output pipes close: nothing of it holds them any more.
        out, err = proc.communicate(timeout=WAIT)
    finally:
        kill_session(proc.pid)
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_run_leaves_no_guard_behind(tmp_path):
    """A normal run: the guard exits with it, reaped."""
    proc = subprocess.Popen([BIN, "run", "-j", "2", "--no-progress", "true", ":::", "1", "2", "3"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=server_env(), start_new_session=True)
    try:
        out, err = proc.communicate(timeout=WAIT)
        assert proc.returncode == 0, err
        deadline = time.monotonic() + WAIT
        while [m for m in session_members(proc.pid) if m[1] != "Z"]:
            assert time.monotonic() < deadline, session_members(proc.pid)
            time.sleep(0.02)
    finally:
        kill_session(proc.pid)


def test_run_with_its_guard_stopped_completes(tmp_path):
    """The pool never waits for its guard: with the guard stopped (SIGSTOP)
    thousands of tasks still run to the end, and run still exits (it
    continues the guard, which finds no group left, and reaps it). Before,
    each task sent the guard two records and the socket filled after a few
    hundred: the run froze, its tasks piling up as zombies."""
    n = 3000
    proc = subprocess.Popen([BIN, "run", "-j", "8", "--no-progress", "true"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=server_env(), start_new_session=True)
    try:
        deadline = time.monotonic() + WAIT
        while len(children_of(proc.pid)) != 1:  # the guard, before any task
            assert time.monotonic() < deadline, children_of(proc.pid)
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.02)  # a bounded poll of /proc
        guard = children_of(proc.pid)[0][0]
        os.kill(guard, signal.SIGSTOP)
        while proc_stat(guard)[0] != "T":
            assert time.monotonic() < deadline, proc_stat(guard)
            time.sleep(0.02)
        try:
            out, err = proc.communicate(b"x\n" * n, timeout=LONG_WAIT * 2)
        except subprocess.TimeoutExpired:
            raise AssertionError("run blocked with its guard stopped")
        assert proc.returncode == 0, err
        assert b"%d tasks" % n in err and b"%d succeeded" % n in err, err
        assert not [m for m in session_members(proc.pid) if m[1] != "Z"], session_members(proc.pid)
    finally:
        kill_session(proc.pid)
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
