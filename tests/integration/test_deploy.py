"""Deploying sockfork as a service (issue 14): dropping root (-u), systemd's
socket activation (the real systemd-socket-activate) and its notification
socket (READY, STATUS, WATCHDOG, STOPPING), with the variables kept from
children."""
import os
import re
import shutil
import signal
import socket
import subprocess
import time

import pytest

from conftest import (BIN, LONG_WAIT, WAIT, Log, expect_eof, recv_line, recv_until_eof, run_cli,
                      server_env, unused_port)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")


def ids_of(pid):
    """(uids, gids, groups) of a live process, from /proc/PID/status."""
    uids = gids = groups = None
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            key, _, value = line.partition(":")
            if key == "Uid":
                uids = [int(v) for v in value.split()]
            elif key == "Gid":
                gids = [int(v) for v in value.split()]
            elif key == "Groups":
                groups = sorted(int(v) for v in value.split())
    return uids, gids, groups


def nobody():
    import pwd
    pw = pwd.getpwnam("nobody")
    return pw.pw_uid, pw.pw_gid


def stats(path):
    import json
    rc, out, err = run_cli("ctl", "--control", path, "--json", "stats")
    assert rc == 0, (rc, out, err)
    return json.loads(out)


# ------------------------------------------------------------- dropping root

@needs_root
def test_user_drop_reaches_supervisor_spawner_and_program(sockfork, tmp_path):
    uid, gid = nobody()
    srv = sockfork("-u", "nobody", "--", "sh", "-c", "id -u; id -g; id -G")
    srv.log.wait_one(r"^sockfork: running as uid %d, gid %d$" % (uid, gid))
    # The default control socket is the user's, in the user's directory.
    _, m = srv.log.wait_one(r"^sockfork: control socket unix:(.+)$")
    path = m.group(1)
    assert path.startswith("/tmp/sockfork-%d/" % uid), path
    st = os.stat(path)
    assert (st.st_uid, st.st_gid) == (uid, gid)

    sock = srv.connect()
    out = recv_until_eof(sock).decode().split()
    assert out == [str(uid), str(gid), str(gid)], out
    sock.close()

    # Real, effective, saved and filesystem ids: all the user's, for good.
    spawner = stats(path)["spawner_pid"]
    for pid in (srv.pid, spawner):
        uids, gids, groups = ids_of(pid)
        assert uids == [uid] * 4, (pid, uids)
        assert gids == [gid] * 4, (pid, gids)
        assert groups == [gid], (pid, groups)
    srv.stop()
    assert not os.path.exists(path), "the control socket was left behind"


@needs_root
def test_user_and_group_by_number(sockfork):
    srv = sockfork("-u", "12345:23456", "--", "sh", "-c", "id -u; id -g; id -G")
    srv.log.wait_one(r"^sockfork: running as uid 12345, gid 23456$")
    sock = srv.connect()
    assert recv_until_eof(sock).decode().split() == ["12345", "23456", "23456"]
    sock.close()


@pytest.mark.parametrize("arg, why", [
    ("nosuchuser-sf", r"no such user 'nosuchuser-sf'"),
    ("nobody:nosuchgroup-sf", r"no such group 'nosuchgroup-sf'"),
    ("4242424", r"user '4242424': no such uid \(give a group too: -u UID:GID\)"),
    ("", r"-u wants USER or USER:GROUP"),
    ("nobody:", r"-u wants USER or USER:GROUP"),
])
def test_user_errors_at_start(arg, why):
    rc, out, err = run_cli("serve", "-u", arg, "--echo", "-l", "127.0.0.1:0")
    assert rc == 2, (rc, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and re.search(why, lines[0]), err


@needs_root
def test_user_drop_not_permitted_is_refused(tmp_path):
    """Not root: the drop cannot happen, and the server says so and exits 2
    instead of serving as the wrong user."""
    proc = subprocess.run(["runuser", "-u", "nobody", "--", BIN, "serve", "-u", "daemon", "--echo",
                           "-l", "127.0.0.1:0", "--no-control"], stdin=subprocess.DEVNULL,
                          capture_output=True, timeout=WAIT, cwd="/")
    assert proc.returncode == 2, proc
    err = proc.stderr.decode()
    assert "cannot run as user daemon" in err and "not permitted" in err, err
    assert "listening on" not in err


# ---------------------------------------------------------- systemd: sockets

def socket_activate(tmp_path, listen, args, names=None, env=None):
    """systemd-socket-activate LISTEN... sockfork serve ARGS: the real
    program from Debian's systemd package. It binds, waits for the first
    connection, then execs sockfork with LISTEN_FDS and LISTEN_PID set."""
    tool = shutil.which("systemd-socket-activate")
    if not tool:
        pytest.fail("systemd-socket-activate not installed (./dev installs systemd)")
    cmd = [tool]
    for i, a in enumerate(listen):
        cmd += ["-l", a]
    for n in names or []:
        cmd += ["--fdname=" + n]
    cmd += [BIN, "serve"] + list(args)
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=server_env(env), start_new_session=True,
                            cwd=str(tmp_path))
    log = Log(proc.stderr)
    log.wait(r"^Listening on .* as \d+\.$", count=len(listen))
    return proc, log


def stop(proc, log):
    try:
        os.kill(proc.pid, signal.SIGTERM)
        rc = proc.wait(timeout=LONG_WAIT)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.join(WAIT)
    return rc


def connect_unix(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(WAIT)
    s.connect(path)
    return s


def test_socket_activation_serves_systemds_socket(tmp_path):
    path = str(tmp_path / "sa.sock")
    proc, log = socket_activate(tmp_path, [path], ["--echo", "--no-control"], names=["web"])
    try:
        # The first connection makes the activator exec sockfork; it waits
        # in the backlog meanwhile.
        s = connect_unix(path)
        s.sendall(b"hello\n")
        assert recv_line(s) == b"hello\n"
        s.close()
        log.wait_one(r"^sockfork: listening on unix:%s \(from systemd: web\)$" % re.escape(path))
        # Only systemd's socket: no default 127.0.0.1:4444.
        assert not log.find(r"^sockfork: listening on 127\.0\.0\.1:4444")
        s = connect_unix(path)
        s.sendall(b"again\n")
        assert recv_line(s) == b"again\n"
        s.close()
    finally:
        assert stop(proc, log) == 0, log.text()
    # systemd owns the socket file: sockfork leaves it.
    assert os.path.exists(path)




def test_socket_activation_tcp_plus_listen_and_clean_environment(tmp_path):
    """A TCP socket from systemd and one of our own (-l), both served; the
    program sees no LISTEN_* variable (nor NOTIFY_SOCKET)."""
    unix = str(tmp_path / "own.sock")
    for attempt in range(20):  # the activator cannot take port 0: retry a taken one
        port = unused_port()
        try:
            proc, log = socket_activate(tmp_path, ["127.0.0.1:%d" % port],
                                        ["-l", "unix:" + unix, "--no-control", "--", "sh", "-c",
                                         "env | grep -E '^(LISTEN_|NOTIFY_SOCKET|WATCHDOG_)' ;"
                                         " echo END"],
                                        env={"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
            break
        except AssertionError:
            continue
    else:
        pytest.fail("no free port for systemd-socket-activate")
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        assert recv_until_eof(s) == b"END\n"
        s.close()
        log.wait_one(r"^sockfork: listening on 127\.0\.0\.1:%d \(from systemd: .*\)$" % port)
        log.wait_one(r"^sockfork: listening on unix:%s$" % re.escape(unix))
        s = connect_unix(unix)
        assert recv_until_eof(s) == b"END\n"
        s.close()
    finally:
        assert stop(proc, log) == 0, log.text()


def test_passed_descriptor_that_is_no_listener_is_refused(tmp_path):
    """LISTEN_FDS naming a descriptor that is not a listening socket: exit 2,
    one line, nothing served."""
    r, w = os.pipe()
    try:
        env = server_env()
        env.update({"LISTEN_FDS": "1", "LISTEN_FDNAMES": "bogus"})
        # LISTEN_PID must be the server's own pid: set it in the child, then exec.
        code = ("import os,sys; os.dup2(%d, 3); os.environ['LISTEN_PID']=str(os.getpid()); "
                "os.execv(sys.argv[1], sys.argv[1:])" % r)
        proc = subprocess.run(["/usr/bin/python3", "-c", code, BIN, "serve", "--echo", "--no-control"],
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=WAIT, env=env,
                              pass_fds=(r,))
    finally:
        os.close(r)
        os.close(w)
    assert proc.returncode == 2, proc
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "cannot serve systemd's socket 3 (bogus): not a listening stream socket" in lines[0], lines


# ------------------------------------------------------ systemd: notifications

class Notifications:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, address):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.lines = []     # every line of every datagram, in order
        self.pos = 0        # wait() looks from here on

    def _read(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        self.sock.settimeout(left)
        try:
            self.lines += self.sock.recv(4096).decode().splitlines()
        except socket.timeout:
            return False
        return True

    def wait(self, pattern, timeout=WAIT):
        """The next line (after the last one matched) matching pattern."""
        deadline = time.monotonic() + timeout
        while True:
            for i in range(self.pos, len(self.lines)):
                if re.search(pattern, self.lines[i]):
                    self.pos = i + 1
                    return self.lines[i]
            if not self._read(deadline):
                raise AssertionError("no notification matching %r after %r"
                                     % (pattern, self.lines[:self.pos]))

    def close(self):
        self.sock.close()


@pytest.mark.parametrize("mode", [[], ["--workers", "2:4"]], ids=["fork", "prefork"])
@pytest.mark.parametrize("abstract", [False, True])
def test_notify_ready_status_watchdog_stopping(sockfork, tmp_path, abstract, mode):
    if abstract:
        name = "sockfork-test-%d-%d" % (os.getpid(), time.monotonic_ns())
        n = Notifications("\0" + name)
        address = "@" + name
    else:
        address = str(tmp_path / "notify.sock")
        n = Notifications(address)
    try:
        srv = sockfork("--echo", *mode, env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "200000"})
        n.wait(r"^READY=1$")
        n.wait(r"^STATUS=0 connections active$")
        # Every half of WATCHDOG_USEC (0.1 s): three in a bounded wait.
        for _ in range(3):
            n.wait(r"^WATCHDOG=1$")
        # A held connection shows in STATUS= (at most a second later), and
        # its end too.
        s = srv.connect()
        s.sendall(b"x")
        assert s.recv(1) == b"x"
        n.wait(r"^STATUS=1 connection active$", timeout=LONG_WAIT)
        s.close()
        n.wait(r"^STATUS=0 connections active$", timeout=LONG_WAIT)
        srv.stop()
        n.wait(r"^STOPPING=1$")
    finally:
        n.close()


def test_notify_socket_and_watchdog_are_kept_from_children(sockfork, tmp_path):
    address = str(tmp_path / "notify.sock")
    n = Notifications(address)
    try:
        srv = sockfork("--", "sh", "-c", "env | grep -E '^(NOTIFY_SOCKET|WATCHDOG_)'; echo END",
                       env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "5000000"})
        n.wait(r"^READY=1$")
        s = srv.connect()
        assert recv_until_eof(s) == b"END\n"
        s.close()
    finally:
        n.close()


def test_no_notify_socket_no_notifications(sockfork, tmp_path):
    """Without NOTIFY_SOCKET nothing is sent anywhere and nothing is logged
    about systemd."""
    srv = sockfork("--echo")
    s = srv.connect()
    s.sendall(b"ok")
    assert s.recv(2) == b"ok"
    s.close()
    srv.stop()
    assert not srv.log.find(r"systemd|notify")


# ------------------------------------------------ the same, in prefork mode

@needs_root
def test_user_drop_reaches_prefork_workers(sockfork, tmp_path):
    uid, gid = nobody()
    ctl = str(tmp_path / "ctl.sock")
    srv = sockfork("-u", "nobody", "--workers", "2", "--echo", "--control", ctl)
    s = srv.connect()
    s.sendall(b"x")
    assert s.recv(1) == b"x"
    import json
    # A worker may serve before the supervisor has heard from the spawner
    # that it started: it is listed from then on (a bounded wait).
    deadline = time.monotonic() + WAIT
    while True:
        rc, out, err = run_cli("ctl", "--control", ctl, "--json", "list")
        workers = [c["pid"] for c in json.loads(out)["children"]]
        if len(workers) == 2 or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    assert len(workers) == 2, out
    for pid in [srv.pid] + workers:
        uids, gids, groups = ids_of(pid)
        assert uids == [uid] * 4 and gids == [gid] * 4 and groups == [gid], (pid, uids, gids)
    s.close()


def test_socket_activation_with_prefork_workers(tmp_path):
    path = str(tmp_path / "sa.sock")
    proc, log = socket_activate(tmp_path, [path], ["--echo", "--no-control", "--workers", "2"],
                                names=["pre"])
    try:
        for text in (b"one\n", b"two\n", b"three\n"):
            s = connect_unix(path)
            s.sendall(text)
            assert recv_line(s) == text
            s.close()
        log.wait_one(r"^sockfork: listening on unix:%s \(from systemd: pre\)$" % re.escape(path))
    finally:
        assert stop(proc, log) == 0, log.text()
