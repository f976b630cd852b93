"""Zero-downtime upgrade (SIGUSR2, `sockfork ctl upgrade`): the listeners
handed to a new generation started from the binary on disk, the old one
draining its connections; a new binary that fails changes nothing."""
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import (BIN, LONG_WAIT, WAIT, Control, Log, control_path, proc_stat,
                      recv_exact, recv_until_eof, run_cli, server_env, session_members)
from test_deploy import Notifications


def ctl(path, *args, timeout=LONG_WAIT + 10):
    return run_cli("ctl", "--control", path, *args, timeout=timeout)


def stats_pid(path):
    c = Control(path)
    try:
        return c(cmd="stats")["pid"]
    finally:
        c.close()


def upgrade(path):
    rc, out, err = ctl(path, "upgrade")
    assert rc == 0, (out, err)
    m = re.match(r"^upgraded: pid (\d+) is ready and serves; this generation drains$", out.strip())
    assert m, out
    return int(m.group(1))


def echo_once(port, payload, timeout=WAIT):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = s.recv(len(payload) - len(got))
            if not chunk:
                break
            got += chunk
        return got
    finally:
        s.close()


def echo_unix(path, payload):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(WAIT)
    try:
        s.connect(path)
        s.sendall(payload)
        return recv_exact(s, len(payload))
    finally:
        s.close()


class Load:
    """Opens connections one after another (connect, line, echo, close)
    until stopped; counts what went wrong. Bounded in count and time."""

    def __init__(self, port, limit=200000, seconds=120):
        self.port = port
        self.ok = 0
        self.failures = []
        self.stop_flag = threading.Event()
        self.limit = limit
        self.deadline = time.monotonic() + seconds
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        n = 0
        while not self.stop_flag.is_set() and n < self.limit and time.monotonic() < self.deadline:
            payload = b"load %d\n" % n
            n += 1
            try:
                got = echo_once(self.port, payload)
                if got == payload:
                    self.ok += 1
                else:
                    self.failures.append("short echo %r" % got)
            except OSError as e:
                self.failures.append(repr(e))

    def wait_for(self, count, timeout=LONG_WAIT):
        deadline = time.monotonic() + timeout
        while self.ok < count and time.monotonic() < deadline and self.thread.is_alive():
            time.sleep(0.02)  # bounded: a condition polled with a deadline
        assert self.ok >= count, (self.ok, self.failures[:5])

    def stop(self):
        self.stop_flag.set()
        self.thread.join(LONG_WAIT)
        assert not self.thread.is_alive()


def wait_gone(pid, timeout=LONG_WAIT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = proc_stat(pid)
        if st is None or st[0] == "Z":
            return
        time.sleep(0.02)  # bounded poll of /proc
    raise AssertionError("pid %d still runs" % pid)


def live_members(sid):
    """The session's processes, less the dead ones init has yet to reap:
    a generation outliving the first is reparented to init, which reaps it
    (systemd, the subreaper of a service, at once; a container's init may
    take its time)."""
    left = []
    for m in session_members(sid):
        st = proc_stat(m[0])
        if st is not None and not (m[1] == "Z" and st[1] == 1):
            left.append(m)
    return left


def stop_generation(srv, pid):
    """SIGTERM to the newest generation, then the checks every server gets
    (its session empty, every child logged, exit 0 of the first)."""
    os.kill(pid, signal.SIGTERM)
    wait_gone(pid)
    srv.stop()


@pytest.mark.parametrize("mode", [[], ["--workers", "2:32"]], ids=["fork", "prefork"])
def test_three_upgrades_under_load_lose_nothing(sockfork, tmp_path, mode):
    ctl_path = str(tmp_path / "c.sock")
    srv = sockfork("--echo", "-c", "64", "--grace", "60", "--control", ctl_path, *mode)
    port = srv.port
    first = srv.pid
    held = []
    for i in range(12):
        s = srv.connect()
        s.sendall(b"held %d\n" % i)
        assert s.recv(64) == b"held %d\n" % i
        held.append(s)
    load = Load(port)
    try:
        load.wait_for(50)
        pids = [first]
        for round_ in range(3):
            before = load.ok
            new = upgrade(ctl_path)
            assert new not in pids
            pids.append(new)
            # The control path is the new generation's from now on.
            assert stats_pid(ctl_path) == new
            srv.log.wait(r"^sockfork: upgrade: generation %d ready, taking over from pid %d$"
                         % (round_ + 2, pids[-2]))
            load.wait_for(before + 50)
        load.stop()
        assert load.failures == [], load.failures[:10]
        # Every held connection was the first generation's: it still echoes.
        for i, s in enumerate(held):
            s.sendall(b"again %d\n" % i)
            assert s.recv(64) == b"again %d\n" % i
        # The first generation answers on a path of its own while it drains.
        assert os.path.exists(ctl_path + ".%d" % first)
        c = Control(ctl_path + ".%d" % first)
        st = c(cmd="upgrade_status")
        c.close()
        assert st["state"] == "done" and st["draining"] is True and st["pid"] == pids[1], st
        for s in held:
            s.close()
        srv.clients = []
        # Drained: the first generation exits by itself, 0, its path gone.
        assert srv.wait_exit(LONG_WAIT) == 0
        assert not os.path.exists(ctl_path + ".%d" % first)
        for p in pids[1:-1]:
            wait_gone(p)
        assert echo_once(port, b"after\n") == b"after\n"
    finally:
        load.stop()
    stop_generation(srv, pids[-1])
    assert not os.path.exists(ctl_path)
    assert live_members(first) == []


def copy_binary(tmp_path):
    d = tmp_path / "bin"
    d.mkdir()
    exe = d / "sockfork"
    shutil.copy2(BIN, str(exe))
    return str(exe)


def replace_binary(exe, script):
    new = exe + ".new"
    with open(new, "w") as f:
        f.write("#!/bin/sh\n" + script + "\n")
    os.chmod(new, 0o755)
    os.rename(new, exe)


@pytest.mark.parametrize("script,why", [
    ("echo broken binary >&2; exit 1", r"the new process \(pid \d+\) exited 1 before it was ready"),
    ("kill -SEGV $$", r"the new process \(pid \d+\) killed by SIGSEGV"),
    ("exec sleep 30", r"the new process \(pid \d+\) was not ready within 1 s"),
], ids=["exit1", "crash", "never-ready"])
def test_a_broken_new_binary_changes_nothing(sockfork, tmp_path, script, why):
    exe = copy_binary(tmp_path)
    ctl_path = str(tmp_path / "c.sock")
    srv = sockfork("--echo", "--control", ctl_path, "--upgrade-timeout", "1", bin=exe)
    held = srv.connect()
    held.sendall(b"x")
    assert held.recv(1) == b"x"
    replace_binary(exe, script)
    load = Load(srv.port)  # under load: not one connection lost meanwhile
    try:
        load.wait_for(20)
        rc, out, err = ctl(ctl_path, "upgrade")
        before = load.ok
        load.wait_for(before + 20)
    finally:
        load.stop()
    assert load.failures == [], load.failures[:10]
    assert rc == 1, (out, err)
    assert re.search(r"ctl: upgrade failed, the server serves on: " + why, err), err
    srv.log.wait(r"^sockfork: upgrade failed, serving on: " + why)
    # Nothing changed: the same server answers on its path, serves the
    # connection it had and new ones; no second path left behind.
    assert stats_pid(ctl_path) == srv.pid
    assert not [n for n in os.listdir(str(tmp_path)) if n.startswith("c.sock.")]
    held.sendall(b"y")
    assert held.recv(1) == b"y"
    assert echo_once(srv.port, b"new\n") == b"new\n"
    if "broken binary" in script:
        srv.log.wait(r"^broken binary$")
    srv.stop()


def test_sigterm_while_the_new_one_starts_stops_both(sockfork, tmp_path):
    exe = copy_binary(tmp_path)
    ctl_path = str(tmp_path / "c.sock")
    srv = sockfork("--echo", "--control", ctl_path, bin=exe)
    replace_binary(exe, "exec sleep 60")
    srv.signal(signal.SIGUSR2)
    _, m = srv.log.wait_one(r"^sockfork: upgrade: started .* as pid (\d+) \(generation 2\)$")
    starting = int(m.group(1))
    srv.stop()  # SIGTERM: exit 0, nothing of the session left (the sleep included)
    srv.log.wait_one(r"^sockfork: upgrade failed, serving on: the server is stopping: the new "
                     r"process \(pid %d\) was killed$" % starting)
    assert proc_stat(starting) is None or proc_stat(starting)[0] == "Z"


def test_sigusr2_upgrades_and_a_draining_generation_refuses_another(sockfork, tmp_path):
    ctl_path = str(tmp_path / "c.sock")
    srv = sockfork("--echo", "--grace", "30", "--control", ctl_path)
    held = srv.connect()
    held.sendall(b"x")
    assert held.recv(1) == b"x"
    srv.signal(signal.SIGUSR2)
    _, m = srv.log.wait_one(r"^sockfork: upgrade: pid (\d+) serves now; draining 1 connections "
                            r"\(up to 30 s\), control socket (.+)$")
    new = int(m.group(1))
    assert m.group(2) == ctl_path + ".%d" % srv.pid
    assert stats_pid(ctl_path) == new
    # The old one drains: a second upgrade there is refused, and says why.
    rc, out, err = ctl(ctl_path + ".%d" % srv.pid, "upgrade")
    assert rc == 1 and "this generation was upgraded already and drains" in err, (out, err)
    # The new one knows where the old one answers.
    c = Control(ctl_path)
    st = c(cmd="upgrade_status")
    c.close()
    assert st["previous_pid"] == srv.pid and st["previous_control"] == ctl_path + ".%d" % srv.pid
    assert st["generation"] == 2
    # `ctl list` on either side says where the other generation is.
    rc, out, err = ctl(ctl_path, "list", timeout=WAIT)
    assert rc == 0 and ("the previous generation (pid %d) serves its own connections to their "
                        "end: sockfork ctl --control %s.%d list" % (srv.pid, ctl_path, srv.pid)) in out, out
    rc, out, err = ctl(ctl_path + ".%d" % srv.pid, "list", timeout=WAIT)
    assert rc == 0 and "upgraded: new connections go to pid %d; this generation drains" % new in out
    assert re.search(r"^\d+ +127\.0\.0\.1:%d +running" % held.getsockname()[1], out, re.M), out
    held.sendall(b"y")
    assert held.recv(1) == b"y"
    held.close()
    srv.clients = []
    assert srv.wait_exit(LONG_WAIT) == 0
    srv.log.wait(r"^sockfork: upgrade: the previous generation \(pid %d\) has gone: the peer "
                 r"closed the link$" % srv.pid)
    stop_generation(srv, new)


def test_upgrade_of_a_default_control_path_and_a_unix_listener(sockfork, tmp_path):
    """Without --control the path has the pid in it: the new generation has
    its own, the old one's is gone once it drained. A Unix listener's file
    stays the whole time and is removed by the last generation."""
    env = {"XDG_RUNTIME_DIR": str(tmp_path)}
    sock_path = str(tmp_path / "echo.sock")
    srv = sockfork("--echo", listen=("unix:" + sock_path,), env=env)
    old_ctl = control_path(srv)
    new = upgrade(old_ctl)
    new_ctl = os.path.join(str(tmp_path), "sockfork", "serve-%d.sock" % new)
    assert srv.wait_exit(LONG_WAIT) == 0  # nothing to drain
    assert os.path.exists(new_ctl) and not os.path.exists(old_ctl)
    assert not os.path.exists(old_ctl + ".%d" % srv.pid)
    assert echo_unix(sock_path, b"u") == b"u"
    stop_generation(srv, new)
    assert not os.path.exists(sock_path)
    assert not os.path.exists(new_ctl)


def test_systemd_hears_of_the_new_main_pid(sockfork, tmp_path):
    address = str(tmp_path / "notify.sock")
    n = Notifications(address)
    try:
        ctl_path = str(tmp_path / "c.sock")
        srv = sockfork("--echo", "--control", ctl_path, env={"NOTIFY_SOCKET": address})
        n.wait(r"^READY=1$")
        new = upgrade(ctl_path)
        n.wait(r"^RELOADING=1$")
        n.wait(r"^MAINPID=%d$" % new)
        n.wait(r"^READY=1$")
        assert srv.wait_exit(LONG_WAIT) == 0
        # The new generation goes on talking to systemd (its STATUS=).
        n.wait(r"^STATUS=0 connections active$", timeout=LONG_WAIT)
        stop_generation(srv, new)
        n.wait(r"^STOPPING=1$")
    finally:
        n.close()


def test_upgrade_of_a_socket_activated_server(tmp_path):
    """systemd's sockets go to the new generation as systemd gave them
    (LISTEN_FDS again): it serves them without a -l of its own."""
    tool = shutil.which("systemd-socket-activate")
    if not tool:
        pytest.fail("systemd-socket-activate not installed (./dev installs systemd)")
    path = str(tmp_path / "sa.sock")
    ctl_path = str(tmp_path / "c.sock")
    proc = subprocess.Popen([tool, "-l", path, BIN, "serve", "--echo", "--control", ctl_path],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=server_env(), start_new_session=True,
                            cwd=str(tmp_path))
    log = Log(proc.stderr)
    new = None
    try:
        log.wait(r"^Listening on .* as \d+\.$")

        def echo(data):
            return echo_unix(path, data)

        assert echo(b"1") == b"1"  # starts sockfork
        log.wait(r"^sockfork: control socket unix:")
        new = upgrade(ctl_path)
        assert proc.wait(timeout=LONG_WAIT) == 0
        log.wait(r"^sockfork: upgrade: generation 2 ready")
        assert not log.find(r"^sockfork: listening on 127\.0\.0\.1:4444$")
        assert echo(b"2") == b"2"
        assert stats_pid(ctl_path) == new
        os.kill(new, signal.SIGTERM)
        wait_gone(new)
        log.join(WAIT)
        assert live_members(proc.pid) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for m in session_members(proc.pid):
            os.kill(m[0], signal.SIGKILL)


def test_usage_errors(tmp_path):
    rc, out, err = run_cli("serve", "--upgrade-timeout", "0")
    assert rc == 2 and "--upgrade-timeout wants a duration above 0, up to 3600 s, not '0'" in err, err
    rc, out, err = run_cli("ctl", "--control", str(tmp_path / "none.sock"), "upgrade", "x")
    assert rc == 2 and "upgrade takes no arguments" in err, err


@pytest.mark.parametrize("mode", [[], ["--workers", "2:8"]], ids=["fork", "prefork"])
def test_chat_spans_both_generations_while_the_old_one_drains(sockfork, tmp_path, mode):
    """Clients of the old generation stay in their rooms and keep talking;
    new clients join the new generation; the two buses are bridged while
    the old one drains: rooms, /who, /msg, nicknames and departures span
    both."""
    from test_chat import NO_FLOOD, TAKEN, Chat, chat_server, lobby
    srv = chat_server(sockfork, tmp_path, "--history", "0", "--grace", "60", *NO_FLOOD, *mode)
    alice, bob = lobby(srv, "alice", "bob")
    first = srv.pid
    new = upgrade(srv.ctl_path)
    old_ctl = srv.ctl_path + ".%d" % first

    carol = Chat(srv)
    carol.welcome()
    carol.send("alice")  # the old generation's nickname is taken here too
    carol.expect(TAKEN % "alice")
    carol.login("carol")
    alice.expect("*** carol has joined lobby")
    bob.expect("*** carol has joined lobby")
    # Both ways, in the same room.
    carol.send("hello from the new one")
    for c in (alice, bob):
        c.expect("<carol> hello from the new one")
    alice.send("hi carol")
    bob.expect("<alice> hi carol")
    carol.expect("<alice> hi carol")
    # /who on either side lists both generations' members.
    carol.send("/who")
    who = carol.line()
    assert who.startswith("*** in lobby (3): ") and sorted(who.split(": ", 1)[1].split(", ")) == \
        ["alice", "bob", "carol"], who
    alice.send("/who")
    who = alice.line()
    assert sorted(who.split(": ", 1)[1].split(", ")) == ["alice", "bob", "carol"], who
    # Private messages across.
    carol.send("/msg bob psst")
    carol.expect("-> *bob* psst")
    bob.expect("*carol* psst")
    bob.send("/msg carol back")
    bob.expect("-> *carol* back")
    carol.expect("*bob* back")
    # Departures reach the other side once: a /quit, and a child killed.
    alice.send("/quit")
    assert alice.lines_to_eof() == ["*** Bye."]
    for c in (bob, carol):
        c.expect("*** alice has quit")
    os.kill(bob.pid, signal.SIGKILL)
    carol.expect("*** bob has left lobby (connection lost)")
    # The old generation has nothing left: it exits, and the new one goes on.
    assert srv.wait_exit(LONG_WAIT) == 0
    dave = Chat(srv, "dave")
    carol.expect("*** dave has joined lobby")
    dave.send("/who")
    who = dave.line()
    assert who in ("*** in lobby (2): carol, dave", "*** in lobby (2): dave, carol"), who
    srv.clients = [carol.sock, dave.sock]
    assert not os.path.exists(old_ctl)
    stop_generation(srv, new)


def test_a_second_upgrade_before_the_first_drained_moves_the_bridge(sockfork, tmp_path):
    """A bus has one bridge: upgraded again while generation 1 still drains,
    generation 2 bridges to generation 3 and leaves 1 on its own, and says
    so; 2's and 3's clients still see each other, 1's see the others leave."""
    from test_chat import NO_FLOOD, Chat, chat_server, lobby
    srv = chat_server(sockfork, tmp_path, "--history", "0", "--grace", "60", *NO_FLOOD)
    (alice,) = lobby(srv, "alice")
    second = upgrade(srv.ctl_path)
    bob = Chat(srv, "bob")
    alice.expect("*** bob has joined lobby")
    third = upgrade(srv.ctl_path)
    srv.log.wait_one(r"^sockfork: upgrade: the bus is bridged to the next generation now, no "
                     r"longer to generation 1 \(pid %d\), which still drains" % srv.pid)
    # Each side sees the other's members leave as the bridge moves.
    alice.expect("*** bob has left lobby (connection lost)")
    bob.expect("*** alice has left lobby (connection lost)")
    carol = Chat(srv, "carol")
    bob.expect("*** carol has joined lobby")
    carol.send("hi bob")
    bob.expect("<carol> hi bob")
    alice.send("/quit")
    assert alice.lines_to_eof() == ["*** Bye."]
    bob.send("/quit")
    assert bob.lines_to_eof() == ["*** Bye."]
    assert srv.wait_exit(LONG_WAIT) == 0
    wait_gone(second)
    srv.clients = [carol.sock]
    stop_generation(srv, third)


def test_a_new_one_failing_after_it_took_the_sockets_leaves_them_to_the_old_one(sockfork, tmp_path):
    """The new binary adopts the sockets, then fails (a listener of its own
    that cannot be bound): the old one's Unix socket file is still there
    and its clients are served; the metrics endpoint too."""
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    exe = copy_binary(tmp_path)
    real = exe + ".real"
    shutil.copy2(exe, real)
    sock_path = str(tmp_path / "u.sock")
    ctl_path = str(tmp_path / "c.sock")
    srv = sockfork("--echo", "--control", ctl_path, "--metrics", "127.0.0.1:0", bin=exe,
                   listen=("unix:" + sock_path, "127.0.0.1:0"))
    replace_binary(exe, 'exec "%s" "$@" -l 127.0.0.1:%d' % (real, busy.getsockname()[1]))
    rc, out, err = ctl(ctl_path, "upgrade")
    assert rc == 1 and re.search(r"exited 2 before it was ready", err), err
    assert os.path.exists(sock_path)
    assert echo_unix(sock_path, b"u") == b"u"
    assert echo_once(srv.address("tcp")[1], b"t\n") == b"t\n"
    busy.close()
    srv.stop()
    assert not os.path.exists(sock_path)


def test_the_metrics_socket_goes_to_the_new_generation(sockfork, tmp_path):
    ctl_path = str(tmp_path / "c.sock")
    srv = sockfork("--echo", "--control", ctl_path, "--metrics", "127.0.0.1:0")
    _, m = srv.log.wait_one(r"^sockfork: metrics on 127\.0\.0\.1:(\d+)$")
    mport = int(m.group(1))

    def scrape():
        s = socket.create_connection(("127.0.0.1", mport), timeout=WAIT)
        s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        data = recv_until_eof(s)
        s.close()
        return data.decode()

    assert "process_start_time_seconds" in scrape()
    new = upgrade(ctl_path)
    assert srv.wait_exit(LONG_WAIT) == 0
    # The same port, the new pid's numbers (bound once: never refused).
    for _ in range(3):
        body = scrape()
        assert body.startswith("HTTP/1.0 200") or body.startswith("HTTP/1.1 200"), body[:100]
    stop_generation(srv, new)


def test_two_upgrade_requests_on_one_connection_and_a_half_closed_client(sockfork, tmp_path):
    """The answer comes when the upgrade is done; a request after it is
    refused (this generation drains); a client that shut down its side
    still gets its answer."""
    ctl_path = str(tmp_path / "c.sock")
    srv = sockfork("--echo", "--control", ctl_path, "--grace", "30")
    held = srv.connect()
    held.sendall(b"x")
    assert held.recv(1) == b"x"
    c = socket.socket(socket.AF_UNIX)
    c.settimeout(LONG_WAIT)
    c.connect(ctl_path)
    c.sendall(b'{"cmd":"upgrade"}\n{"cmd":"upgrade"}\n')
    c.shutdown(socket.SHUT_WR)
    data = recv_until_eof(c, timeout=LONG_WAIT)
    c.close()
    import json
    first, second = [json.loads(line) for line in data.decode().splitlines()]
    assert first["ok"] is True and first["state"] == "done" and first["draining"] is True, first
    assert second["ok"] is False and "drains" in second["error"], second
    new = first["pid"]
    held.close()
    srv.clients = []
    assert srv.wait_exit(LONG_WAIT) == 0
    stop_generation(srv, new)


def test_a_symlink_deploy_runs_the_binary_the_link_names_now(sockfork, tmp_path):
    v1 = tmp_path / "v1"
    v2 = tmp_path / "v2"
    v1.mkdir()
    v2.mkdir()
    shutil.copy2(BIN, str(v1 / "sockfork"))
    with open(str(v2 / "sockfork"), "w") as f:
        f.write('#!/bin/sh\necho "this is v2" >&2\nexec "%s" "$@"\n' % BIN)
    os.chmod(str(v2 / "sockfork"), 0o755)
    current = tmp_path / "current"
    os.symlink("v1", str(current))
    ctl_path = str(tmp_path / "c.sock")
    srv = sockfork("--echo", "--control", ctl_path, bin=str(current / "sockfork"))
    os.symlink("v2", str(tmp_path / "current.new"))
    os.rename(str(tmp_path / "current.new"), str(current))
    new = upgrade(ctl_path)
    srv.log.wait_one(r"^this is v2$")
    assert srv.wait_exit(LONG_WAIT) == 0
    stop_generation(srv, new)


def test_upgrade_events_as_json_records(tmp_path):
    """Every upgrade event, as JSON records in the log file both
    generations append to."""
    from test_logs import FileLog
    exe = copy_binary(tmp_path)
    real = exe + ".real"
    shutil.copy2(exe, real)
    ctl_path = str(tmp_path / "c.sock")
    log = FileLog(str(tmp_path / "log.json"))
    proc = subprocess.Popen([exe, "serve", "--echo", "-l", "127.0.0.1:0", "--control", ctl_path,
                             "--grace", "1", "--upgrade-timeout", "1", "--metrics", "127.0.0.1:0",
                             "--log-format", "json", "--log-file", log.path],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=server_env(), start_new_session=True,
                            cwd=str(tmp_path))
    pids = [proc.pid]
    try:
        (listening,) = log.wait_event("listening")
        port = int(listening["addr"].rsplit(":", 1)[1])
        log.wait_event("metrics")
        # A new binary that is never ready: killed at the deadline.
        replace_binary(exe, "exec sleep 30")
        rc, out, err = ctl(ctl_path, "upgrade")
        assert rc == 1, err
        (started,) = log.wait_event("upgrade_started")
        assert started["generation"] == 2 and started["binary"] == exe, started
        (failed,) = log.wait_event("upgrade_failed")
        assert "was not ready within 1 s" in failed["why"], failed
        (gone,) = log.wait_event("upgrade_child_exited")
        assert gone["status"] == {"signal": "SIGKILL", "core": False} and gone["next"] is False, gone
        # The real one, with a connection held: grace over after 1 s.
        shutil.copy2(real, exe + ".new")
        os.rename(exe + ".new", exe)
        held = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        held.sendall(b"x")
        assert held.recv(1) == b"x"
        second = upgrade(ctl_path)
        pids.append(second)
        (ready,) = log.wait_event("upgrade_ready", pid=second)
        assert ready["generation"] == 2 and ready["previous_pid"] == proc.pid, ready
        (done,) = log.wait_event("upgrade_done", pid=second)
        assert done["draining"] == 1 and done["grace_s"] == 1 and \
            done["control"] == ctl_path + ".%d" % proc.pid, done
        rc, out, err = ctl(ctl_path + ".%d" % proc.pid, "upgrade")
        assert rc == 1, err
        (refused,) = log.wait_event("upgrade_refused")
        assert refused["from"] == "ctl" and "drains" in refused["why"], refused
        (over,) = log.wait_event("drain_grace_over")
        assert over["left"] == 1, over
        assert proc.wait(timeout=LONG_WAIT) == 0
        (prev,) = log.wait_event("previous_gone", pid=proc.pid)
        assert prev["why"] == "the peer closed the link", prev
        held.close()
        # Nothing to drain: the second generation says drained at once.
        third = upgrade(ctl_path)
        pids.append(third)
        log.wait_event("drained")
        wait_gone(second)
        os.kill(third, signal.SIGTERM)
        wait_gone(third)
        assert live_members(proc.pid) == []
    finally:
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        kill_group = live_members(proc.pid)
        for m in kill_group:
            os.kill(m[0], signal.SIGKILL)
        proc.wait()
