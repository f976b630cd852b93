"""SIGTERM/SIGINT: listeners close at once, connected clients finish within
the grace period, then the children's process groups get SIGTERM and, 2 s
later, SIGKILL. The server exits 0 with nothing left behind."""
import os
import re
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import (BIN, LONG_WAIT, WAIT, expect_eof, kill_session, peer_text, recv_exact,
                      recv_until_eof, server_env)


def echo_ok(sock, text=b"ping\n"):
    sock.sendall(text)
    assert recv_exact(sock, len(text)) == text


def assert_refused(srv):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        with pytest.raises((ConnectionRefusedError, ConnectionResetError)):
            s.connect(("127.0.0.1", srv.port))
            # Connected to a listener the server no longer serves: the
            # kernel would hold it; a refused connect is what we want.
            s.recv(1)
    finally:
        s.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_clients_finish_then_server_exits(sockfork, sig):
    srv = sockfork("--echo")
    clients = [srv.connect() for _ in range(3)]
    for c in clients:
        srv.wait_connected(c)
        echo_ok(c)
    srv.signal(sig)
    srv.log.wait_one(r"^sockfork: shutting down: 3 children, up to 10 s to finish$")
    assert_refused(srv)
    # The connected ones are still served, one after the other finishing.
    for i, c in enumerate(clients):
        for c2 in clients[i:]:
            echo_ok(c2, b"still served %d\n" % i)
        c.shutdown(socket.SHUT_WR)
        assert recv_until_eof(c) == b""
        _, d = srv.wait_disconnected(c)
        assert d.group("status") == "exited 0", d.group(0)
    assert srv.wait_exit(5) == 0  # well before the 10 s of grace
    srv.stop()
    assert srv.log.snapshot()[-1] == "sockfork: exiting"


def test_shutdown_with_no_children(sockfork):
    srv = sockfork("--echo")
    srv.signal(signal.SIGTERM)
    assert srv.wait_exit(5) == 0
    srv.stop()
    assert srv.log.find(r"^sockfork: shutting down: 0 children")


def test_grace_expiry_terminates_children(sockfork):
    srv = sockfork("--grace", "1", "--echo")
    c = srv.connect()
    peer = peer_text(c)
    _, m = srv.wait_connected(c)
    echo_ok(c)
    t0 = time.monotonic()
    srv.signal(signal.SIGTERM)
    srv.log.wait_one(r"^sockfork: shutting down: 1 child, up to 1 s to finish$")
    echo_ok(c, b"during the grace\n")
    expect_eof(c, timeout=LONG_WAIT)
    assert srv.wait_exit(LONG_WAIT) == 0
    elapsed = time.monotonic() - t0
    assert 0.9 <= elapsed < 8, elapsed
    srv.stop()
    _, d = srv.wait_disconnected(peer)
    assert d.group("pid") == m.group(1)
    assert d.group("status") == "killed by SIGTERM", d.group(0)


def test_grace_expiry_kills_children_that_ignore_sigterm(sockfork):
    # `trap "" TERM` makes the shell and the cat it execs ignore SIGTERM.
    srv = sockfork("--grace", "1", "--", "/bin/sh", "-c", 'trap "" TERM; exec cat')
    c = srv.connect()
    peer = peer_text(c)
    _, m = srv.wait_connected(c)
    echo_ok(c)
    t0 = time.monotonic()
    srv.signal(signal.SIGTERM)
    srv.log.wait_one(r"shutting down: 1 child, up to 1 s to finish$")
    expect_eof(c, timeout=LONG_WAIT)
    assert srv.wait_exit(LONG_WAIT) == 0
    elapsed = time.monotonic() - t0
    assert 2.9 <= elapsed < 10, "grace 1 s + 2 s to SIGKILL, took %.1f s" % elapsed
    srv.stop()
    _, d = srv.wait_disconnected(peer)
    assert d.group("status") == "killed by SIGKILL", d.group(0)


def test_grace_reaches_the_whole_process_group(sockfork):
    """The child's own children (a pipeline) are stopped with it."""
    srv = sockfork("--grace", "1", "--", "/bin/sh", "-c",
                   'cat | cat; echo never >&2')
    c = srv.connect()
    peer = peer_text(c)
    echo_ok(c)
    srv.signal(signal.SIGTERM)
    expect_eof(c, timeout=LONG_WAIT)
    assert srv.wait_exit(LONG_WAIT) == 0
    srv.stop()  # checks that no process of the session is left
    srv.wait_disconnected(peer)


def test_second_sigterm_skips_the_grace(sockfork):
    srv = sockfork("--grace", "60", "--echo")
    c = srv.connect()
    srv.wait_connected(c)
    echo_ok(c)
    srv.signal(signal.SIGTERM)
    i, _ = srv.log.wait_one(r"shutting down: 1 child, up to 60 s to finish$")
    echo_ok(c)
    t0 = time.monotonic()
    srv.signal(signal.SIGTERM)
    expect_eof(c, timeout=LONG_WAIT)
    assert srv.wait_exit(LONG_WAIT) == 0
    assert time.monotonic() - t0 < 10
    srv.stop()


def test_sigterm_right_after_listening_is_graceful(tmp_path):
    """Once `listening on` is printed the server is up: a SIGTERM at that
    moment must already mean a graceful exit 0, not death by the signal.
    Repeated, because the window (if any) is short."""
    from conftest import Server
    for i in range(40):
        d = tmp_path / str(i)
        d.mkdir()
        srv = Server(d, ["--echo"])
        try:
            srv.signal(signal.SIGTERM)
            rc = srv.wait_exit(10)
            assert rc == 0, "round %d: exit status %r right after 'listening on'; log:\n%s" % (
                i, rc, srv.log.text())
            srv.check_clean_exit(rc)
        finally:
            srv.kill_hard()
            srv.close()


# ------------------------------------------- SIGHUP and a broken stderr

def test_sighup_reloads_and_keeps_serving(sockfork, tmp_path):
    """SIGHUP is a reload (re-read the rules file, issue 14), as for nginx
    or HAProxy: the server keeps its connections and its sockets."""
    path = str(tmp_path / "hup.sock")
    ctl = str(tmp_path / "ctl.sock")
    srv = sockfork("--echo", "--control", ctl, listen=("127.0.0.1:0", "unix:" + path))
    c = srv.connect()
    srv.wait_connected(c)
    echo_ok(c)
    srv.signal(signal.SIGHUP)
    srv.log.wait_one(r"^sockfork: SIGHUP: reload done: nothing to re-read \(no rules file\)$")
    echo_ok(c, b"still served\n")
    d = srv.connect()
    srv.wait_connected(d)
    echo_ok(d, b"new ones too\n")
    assert not srv.log.find(r"shutting down")
    assert os.path.exists(path) and os.path.exists(ctl)
    c.close()
    d.close()
    srv.stop()
    assert not os.path.exists(path)
    assert not os.path.exists(ctl)


@pytest.mark.parametrize("command", ["serve", "chat"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
def test_a_stderr_nobody_reads_costs_lines_not_the_cleanup(tmp_path, command, sig):
    """`sockfork serve 2>&1 | tee log`, then Ctrl-C: tee is gone first, and
    every line after it goes to a pipe with no reader."""
    path = str(tmp_path / "s.sock")
    ctl = str(tmp_path / "ctl.sock")
    proc = subprocess.Popen([BIN, command, "-l", "unix:" + path, "--control", ctl],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=server_env(), start_new_session=True)
    try:
        # Read in a thread, so that a line that never comes fails the test
        # at the deadline instead of blocking it in readline.
        seen = threading.Event()

        def read_until_control_line():
            for line in proc.stderr:
                if line.startswith(b"sockfork: control socket"):
                    seen.set()
                    return

        reader = threading.Thread(target=read_until_control_line, daemon=True)
        reader.start()
        reader.join(LONG_WAIT)
        assert seen.is_set(), "no 'control socket' line in %.0f s" % LONG_WAIT
        proc.stderr.close()  # the reader leaves
        proc.send_signal(sig)
        rc = proc.wait(LONG_WAIT)
        assert rc == 0, "exit status %r" % rc
        assert not os.path.exists(path)
        assert not os.path.exists(ctl)
    finally:
        kill_session(proc.pid)
        if proc.poll() is None:
            proc.kill()
            proc.wait(WAIT)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_a_signal_while_starting_does_not_leave_the_control_socket(tmp_path, sig):
    """A signal between the control socket's creation and the start of the
    loop (the process stopped right there by failinject.so) is held until the
    loop handles it: a clean stop that removes the socket. Before, the
    default action killed the process and left the socket behind."""
    from conftest import helper, proc_stat
    ctl = str(tmp_path / "ctl.sock")
    proc = subprocess.Popen([BIN, "serve", "--echo", "-l", "127.0.0.1:0", "--control", ctl],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE,
                            env=server_env({"SF_STOP_AT_UNIX_LISTEN": "1"},
                                           helper("failinject.so")),
                            start_new_session=True)
    try:
        deadline = time.monotonic() + LONG_WAIT
        while (proc_stat(proc.pid) or "?")[0] != "T":
            assert time.monotonic() < deadline and proc.poll() is None, "never stopped"
            time.sleep(0.02)  # a bounded poll of /proc
        assert os.path.exists(ctl)
        os.kill(proc.pid, sig)
        os.kill(proc.pid, signal.SIGCONT)
        _, err = proc.communicate(timeout=LONG_WAIT)
        assert proc.returncode == 0, (proc.returncode, err)
        assert not os.path.exists(ctl), err
    finally:
        kill_session(proc.pid)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
