"""The control socket and `sockfork ctl`: list, kick, stats, and bad input
on the control socket, against the real binary."""
import json
import os
import re
import socket
import stat
import subprocess
import time

from conftest import BIN, WAIT, Control, control_path, expect_eof, peer_text, recv_exact, run_cli, server_env


def ctl(path, *args, env=None):
    proc = subprocess.run([BIN, "ctl", "--control", path] + list(args), stdin=subprocess.DEVNULL,
                          capture_output=True, timeout=WAIT, env=server_env(env))
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


def ctl_json(path, *args):
    rc, out, err = ctl(path, "--json", *args)
    assert rc == 0, (rc, out, err)
    return json.loads(out)


def test_list_shows_each_child_with_bytes(sockfork, tmp_path):
    srv = sockfork("--echo", "--control", str(tmp_path / "c.sock"))
    path = control_path(srv)
    assert path == str(tmp_path / "c.sock")
    clients = [srv.connect() for _ in range(3)]
    sent = [b"x" * (10 + i) + b"\n" for i in range(3)]
    for c, data in zip(clients, sent):
        c.sendall(data)
        assert recv_exact(c, len(data)) == data
    pids = {peer_text(c): int(srv.wait_connected(c)[1].group(1)) for c in clients}

    reply = ctl_json(path, "list")
    assert reply["ok"] is True
    by_peer = {ch["peer"]: ch for ch in reply["children"]}
    assert set(by_peer) == set(pids)
    for c, data in zip(clients, sent):
        ch = by_peer[peer_text(c)]
        assert ch["pid"] == pids[peer_text(c)]
        assert ch["state"] == "running"
        assert ch["bytes_in"] == len(data) and ch["bytes_out"] == len(data), ch
        assert ch["since"] > 0

    rc, out, err = ctl(path, "list")
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert lines[0].split()[:3] == ["PID", "PEER", "STATE"]
    assert len(lines) == 4
    for c in clients:
        assert any(peer_text(c) in l and str(pids[peer_text(c)]) in l for l in lines[1:])


def test_kick_ends_that_client_only(sockfork, tmp_path):
    srv = sockfork("--echo", "--control", str(tmp_path / "c.sock"))
    path = control_path(srv)
    victim, other = srv.connect(), srv.connect()
    vpid = int(srv.wait_connected(victim)[1].group(1))
    srv.wait_connected(other)

    rc, out, err = ctl(path, "kick", str(vpid))
    assert rc == 0, err
    assert out.strip() == "kicked %d" % vpid
    expect_eof(victim)
    srv.log.wait_one(r"\[%s\] kicked through the control socket: pid=%d" % (re.escape(peer_text(victim)), vpid))
    _, d = srv.wait_disconnected(victim)
    assert d.group("status") == "killed by SIGTERM"
    other.sendall(b"still here\n")
    assert recv_exact(other, 11) == b"still here\n"

    rc, out, err = ctl(path, "kick", "999999")
    assert rc == 1
    assert "no child with pid 999999" in err


def test_stats_count_what_happened(sockfork, tmp_path):
    srv = sockfork("--max-per-ip", "1", "--control", str(tmp_path / "c.sock"),
                   "--", "sh", "-c", "read x; exit $x")
    path = control_path(srv)
    for code in (0, 3, 3):
        c = srv.connect()
        srv.wait_connected(c)
        c.sendall(b"%d\n" % code)
        expect_eof(c)
        srv.wait_disconnected(c)
    held = srv.connect()
    srv.wait_connected(held)
    refused = srv.connect()
    srv.log.wait_one(r"refused: 1 connections from 127\.0\.0\.1")
    expect_eof(refused)

    st = ctl_json(path, "stats")
    assert st["accepted"] == 4
    assert st["active"] == 1
    assert st["refused_per_ip"] == 1
    assert st["exited"] == {"0": 1, "3": 2}
    assert st["killed"] == {}
    rc, out, _ = ctl(path, "stats")
    assert rc == 0 and "accepted: 4" in out and "exited: 0=1 3=2" in out
    held.close()


def test_control_socket_is_private_and_removed(sockfork, tmp_path):
    sock = tmp_path / "c.sock"
    srv = sockfork("--echo", "--control", str(sock))
    control_path(srv)
    st = os.stat(sock)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    srv.stop()
    assert not sock.exists()


def test_garbage_on_the_control_socket(sockfork, tmp_path):
    srv = sockfork("--echo", "--control", str(tmp_path / "c.sock"))
    path = control_path(srv)
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(WAIT)
    s.connect(path)
    f = s.makefile("rb")
    for bad in (b"not json\n", b"[1,2]\n", b"{\"nocmd\": 1}\n", b"{\"cmd\": \"launch\"}\n",
                b"{\"cmd\": \"kick\", \"pid\": \"x\"}\n", b"\xff\xfe\n"):
        s.sendall(bad)
        reply = json.loads(f.readline())
        assert reply["ok"] is False and reply["error"], (bad, reply)
    s.sendall(b"{\"cmd\": \"stats\"}\n")
    assert json.loads(f.readline())["ok"] is True
    # A line past the limit: an error, then the server hangs up.
    s.sendall(b"{" + b" " * (70 * 1024))
    reply = json.loads(f.readline())
    assert reply["ok"] is False and "longer than" in reply["error"]
    assert f.readline() == b""
    s.close()
    # The server goes on serving.
    c = srv.connect()
    c.sendall(b"ok\n")
    assert recv_exact(c, 3) == b"ok\n"
    assert ctl_json(path, "stats")["ok"] is True


def test_ctl_usage_and_missing_server(tmp_path):
    rc, _, err = run_cli("ctl")
    assert rc == 2 and err.startswith("sockfork: ")
    rc, _, err = run_cli("ctl", "--control", str(tmp_path / "none.sock"), "list")
    assert rc == 1 and "cannot connect" in err
    rc, _, err = run_cli("ctl", "kick", "abc")
    assert rc == 2


def test_ctl_finds_the_only_server(sockfork, tmp_path):
    env = {"XDG_RUNTIME_DIR": str(tmp_path)}
    srv = sockfork("--echo", env=env)
    path = control_path(srv)
    assert path == str(tmp_path / "sockfork" / ("serve-%d.sock" % srv.pid))
    assert stat.S_IMODE(os.stat(tmp_path / "sockfork").st_mode) == 0o700
    rc, out, err = ctl_found(tmp_path, "--json", "stats")
    assert rc == 0, err
    assert json.loads(out)["active"] == 0


# ------------------------------------------- what ctl trusts, what it prints

import threading  # noqa: E402  (the tests above do not need it)

import pytest  # noqa: E402

# What no answer may put on a terminal raw: ESC, BEL, DEL, C1 CSI, a bidi
# override, a zero-width space, a line separator.
UNSAFE = ("\x1b", "\x07", "\x7f", "\x9b", "\u202e", "\u200b", "\u2028")


class FakeServer:
    """Something listening where ctl looks for a server: it counts the
    connections it gets, keeps every request line, and answers each with
    `reply` (bytes; None: hang up at once without reading)."""

    def __init__(self, path, reply):
        self.reply = reply
        self.connections = 0
        self.requests = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(16)
        self.sock.settimeout(WAIT)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with c:
                if self.reply is None:
                    continue
                c.settimeout(WAIT)
                data = b""
                try:
                    while b"\n" not in data and len(data) < (1 << 20):
                        chunk = c.recv(1 << 16)
                        if not chunk:
                            break
                        data += chunk
                    if b"\n" in data:
                        self.requests.append(data)
                        c.sendall(self.reply)
                except OSError:
                    pass

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes accept()
        except OSError:
            pass
        self.sock.close()
        self.thread.join(WAIT)


# ctl also looks in /tmp/sockfork-UID, where every server of this user
# started without XDG_RUNTIME_DIR or --control lives (other test runs'
# too). Where the system allows a private mount namespace (root), each test
# gets its own directory mounted there, seen by its ctl and its servers
# only; elsewhere (CI runs one suite at a time) the real one is used.
TMP_DIR = "/tmp/sockfork-%d" % os.getuid()


def _private_mounts_work():
    try:
        return subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "true"],
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=WAIT).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


PRIVATE_TMP = _private_mounts_work()


def private_tmp(base):
    """The directory that stands for /tmp/sockfork-UID in this test."""
    d = base / "tmp-sockfork"
    d.mkdir(mode=0o700, exist_ok=True)
    return d


def in_private_tmp(priv, argv):
    """argv, run seeing priv as /tmp/sockfork-UID when that can be arranged."""
    if not PRIVATE_TMP:
        return list(argv)
    os.makedirs(TMP_DIR, mode=0o700, exist_ok=True)  # the mount point
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
            'mount --bind "$1" "$2" && shift 2 && exec "$@"', "sh", str(priv), TMP_DIR] + list(argv)


def ctl_found(xdg, *args, priv=None):
    """`sockfork ctl ARGS` without --control, looking under xdg/sockfork (xdg
    None: XDG_RUNTIME_DIR unset) and /tmp/sockfork-UID (priv, or one of
    its own under xdg)."""
    priv = priv or private_tmp(xdg)
    proc = subprocess.run(in_private_tmp(priv, [BIN, "ctl"] + list(args)), stdin=subprocess.DEVNULL,
                          capture_output=True, timeout=WAIT,
                          env=server_env({"XDG_RUNTIME_DIR": str(xdg) if xdg else ""}))
    return proc.returncode, proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")


def server_in_private_tmp(tmp_path, priv):
    """A program to give the sockfork fixture as bin: the server, seeing
    priv as /tmp/sockfork-UID (exec all the way: its pid is the server's)."""
    wrapper = tmp_path / "in-private-tmp.sh"
    wrapper.write_text("#!/bin/sh\nexec %s \"$@\"\n" % " ".join(
        "'%s'" % a for a in in_private_tmp(priv, [BIN])))
    wrapper.chmod(0o755)
    return str(wrapper)


def one_error_line(err):
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sockfork: ctl: "), err
    return lines[0]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a directory another user owns")
def test_ctl_refuses_a_directory_another_user_made(tmp_path):
    d = tmp_path / "sockfork"
    d.mkdir(mode=0o700)
    fake = FakeServer(d / "serve-1.sock", b'{"ok":true,"pid":1}\n')
    try:
        os.chown(d, 65534, 65534)
        rc, out, err = ctl_found(tmp_path, "send", "1", "my secret")
        line = one_error_line(err)
        assert rc == 1 and out == ""
        assert "is not private to you (owner uid 65534, mode 0700" in line, line
        assert "refusing" in line
        assert fake.connections == 0 and fake.requests == []
    finally:
        fake.close()


@pytest.mark.parametrize("kind", ["mode-0755", "mode-0777", "symlink", "file"])
def test_ctl_refuses_a_directory_open_to_others(tmp_path, kind):
    d = tmp_path / "sockfork"
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    fake = FakeServer(real / "serve-1.sock", b'{"ok":true,"pid":1}\n')
    try:
        if kind == "symlink":
            d.symlink_to(real)
        elif kind == "file":
            d.write_text("")
        else:
            d.mkdir()
            os.chmod(d, int(kind[-4:], 8))
            os.rename(real / "serve-1.sock", d / "serve-1.sock")
        rc, out, err = ctl_found(tmp_path, "list")
        line = one_error_line(err)
        assert rc == 1 and out == ""
        if kind.startswith("mode"):
            assert "is not private to you (owner uid %d, mode %s" % (os.getuid(), kind[-4:]) in line
        else:
            assert "is not a directory" in line, line
        assert fake.connections == 0
    finally:
        fake.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a socket to another user")
def test_ctl_ignores_a_socket_another_user_owns(tmp_path):
    d = tmp_path / "sockfork"
    d.mkdir(mode=0o700)
    fake = FakeServer(d / "serve-1.sock", b'{"ok":true,"pid":1}\n')
    try:
        os.chown(d / "serve-1.sock", 65534, 65534)
        rc, out, err = ctl_found(tmp_path, "list")
        assert rc == 1 and "no running server found" in one_error_line(err)
        assert fake.connections == 0
    finally:
        fake.close()


HOSTILE_LIST = {"ok": True, "children": [{
    "pid": 7, "peer": "\x1b[2J\x1b]0;owned\x07", "state": "\u202erunning", "since": 0,
    "bytes_in": None, "bytes_out": None, "status": "\u009b31m\u200bx\x7f\\ \u2028end"}]}


def test_ctl_list_escapes_what_the_server_says(tmp_path):
    fake = FakeServer(tmp_path / "c.sock", json.dumps(HOSTILE_LIST).encode() + b"\n")
    try:
        rc, out, err = ctl(str(tmp_path / "c.sock"), "list")
        assert rc == 0, err
        for ch in UNSAFE:
            assert ch not in out, (ch, out)
        row = out.splitlines()[1]
        assert "\\x1b[2J\\x1b]0;owned\\x07" in row, row
        assert "\\u202erunning" in row and "\\u009b31m\\u200bx\\x7f\\\\ \\u2028end" in row, row
    finally:
        fake.close()


def test_ctl_json_is_ascii_and_the_same_answer(tmp_path):
    fake = FakeServer(tmp_path / "c.sock", json.dumps(HOSTILE_LIST, ensure_ascii=False).encode() + b"\n")
    try:
        proc = subprocess.run([BIN, "ctl", "--control", str(tmp_path / "c.sock"), "list", "--json"],
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=WAIT, env=server_env())
        assert proc.returncode == 0, proc.stderr
        body = proc.stdout.rstrip(b"\n")
        assert all(0x20 <= b < 0x7f for b in body), body
        assert json.loads(body) == HOSTILE_LIST
    finally:
        fake.close()


def test_ctl_escapes_errors_and_stats_keys(tmp_path):
    fake = FakeServer(tmp_path / "e.sock", json.dumps(
        {"ok": False, "error": "\x1b[31mno\u202e"}).encode() + b"\n")
    try:
        rc, out, err = ctl(str(tmp_path / "e.sock"), "kick", "12")
        assert rc == 1 and out == ""
        assert one_error_line(err) == "sockfork: ctl: \\x1b[31mno\\u202e"
    finally:
        fake.close()
    fake = FakeServer(tmp_path / "s.sock", json.dumps(
        {"ok": True, "\x1b[2Jk": 1, "listeners": ["\x07a", "b"], "channel": {"\x9bx": 2}}).encode() + b"\n")
    try:
        rc, out, err = ctl(str(tmp_path / "s.sock"), "stats")
        assert rc == 0, err
        for ch in UNSAFE:
            assert ch not in out, (ch, out)
        assert out.splitlines() == ["\\x1b[2Jk: 1", "listeners: \\x07a b", "channel: \\u009bx=2"], out
    finally:
        fake.close()


# ------------------------------------------- a TEXT over the request limit

# A request line holds 65535 bytes (docs/protocol.md): broadcast's has
# room for 65535 - len('{"cmd":"broadcast","text":""}') bytes of TEXT.
BROADCAST_ROOM = 65535 - len('{"cmd":"broadcast","text":""}')


def test_text_over_the_limit_is_one_line_every_time(sockfork, tmp_path):
    srv = sockfork("--echo", "--control", str(tmp_path / "c.sock"))
    path = control_path(srv)
    c = srv.connect()
    pid = int(srv.wait_connected(c)[1].group(1))
    assert ctl(path, "broadcast", "a" * BROADCAST_ROOM)[0] == 0
    for _ in range(5):
        rc, out, err = ctl(path, "broadcast", "a" * (BROADCAST_ROOM + 1))
        assert (rc, out) == (1, ""), (rc, err)
        assert one_error_line(err) == ("sockfork: ctl: TEXT is too long: %d bytes; at most %d fit in a "
                                       "request" % (BROADCAST_ROOM + 1, BROADCAST_ROOM))
        rc, out, err = ctl(path, "send", str(pid), "x" * 100000)
        assert (rc, out) == (1, "") and "TEXT is too long: 100000 bytes; at most" in one_error_line(err)
    rc, _, err = ctl(path, "broadcast", '"' * 40000)
    assert rc == 1
    assert one_error_line(err) == ("sockfork: ctl: TEXT is too long: 40000 bytes, 80000 once escaped "
                                   "for JSON; at most %d fit in a request" % BROADCAST_ROOM)
    # Nothing reached the server: a request it would have refused is never sent.
    assert not srv.log.find(r"control client")


def test_ctl_survives_a_server_that_hangs_up(tmp_path):
    """SIGPIPE is ignored: a server that closes without reading is one line, status 1."""
    fake = FakeServer(tmp_path / "c.sock", None)
    try:
        for _ in range(5):
            rc, out, err = ctl(str(tmp_path / "c.sock"), "broadcast", "z" * 65000)
            assert (rc, out) == (1, ""), (rc, err)
            assert "the server closed the connection" in one_error_line(err) or \
                "cannot send" in one_error_line(err), err
    finally:
        fake.close()


# ------------------------------------------- options anywhere, several servers

def test_options_after_the_command(sockfork, tmp_path):
    srv = sockfork("--control", str(tmp_path / "c.sock"))
    path = control_path(srv)
    for args in (["list", "--json"], ["stats", "--json"], ["--json", "stats"]):
        rc, out, err = ctl(path, *args)
        assert rc == 0, (args, err)
        assert json.loads(out)["ok"] is True
    proc = subprocess.run([BIN, "ctl", "stats", "--control", path, "--json"], stdin=subprocess.DEVNULL,
                          capture_output=True, timeout=WAIT, env=server_env())
    assert proc.returncode == 0 and json.loads(proc.stdout)["pid"] == srv.pid, proc.stderr
    # A TEXT that begins with '-' goes after '--'.
    c = srv.connect()
    f = c.makefile("rb")
    pid = int(re.search(rb"pid (\d+)", f.readline()).group(1))
    srv.wait_connected(c)  # the supervisor knows the pid too
    rc, out, err = ctl(path, "send", str(pid), "--", "-1 to all")
    assert (rc, out.strip()) == (0, "queued for %d" % pid), err
    assert f.readline() == b"-1 to all\r\n"
    rc, _, err = ctl(path, "send", str(pid), "-1")
    assert rc == 2 and "'--'" in one_error_line(err)


def test_stats_say_the_pid_and_listeners(sockfork, tmp_path):
    srv = sockfork("--echo", "--control", str(tmp_path / "c.sock"),
                   listen=("127.0.0.1:0", "unix:%s" % (tmp_path / "s.sock")))
    st = ctl_json(control_path(srv), "stats")
    assert st["pid"] == srv.pid
    assert st["listeners"] == ["127.0.0.1:%d" % srv.port, "unix:%s" % (tmp_path / "s.sock")]


def test_ctl_lists_several_servers(sockfork, tmp_path):
    env = {"XDG_RUNTIME_DIR": str(tmp_path)}
    a = sockfork("--echo", env=env)
    b = sockfork("--echo", "-q", env=env, listen=("127.0.0.1:0", "unix:%s" % (tmp_path / "b.sock")))
    pa, pb = control_path(a), control_path(b)
    rc, out, err = ctl_found(tmp_path, "list", "--json")
    assert rc == 1 and out == ""
    lines = err.splitlines()
    assert lines[0] == ("sockfork: ctl: 2 servers run under %s/sockfork: say which with --control PATH"
                        % tmp_path), err
    assert lines[1].split() == ["PID", "LISTENING", "ON", "CONTROL", "COMMAND"]
    rows = {int(l.split()[0]): l for l in lines[2:]}
    assert set(rows) == {a.pid, b.pid}, err
    assert rows[a.pid].split()[1:3] == ["127.0.0.1:%d" % a.port, pa], rows[a.pid]
    assert rows[a.pid].split()[3:] == [os.path.basename(BIN), "serve", "-l", "127.0.0.1:0", "--echo"]
    assert rows[b.pid].split()[1:4] == ["127.0.0.1:%d" % b.port, "unix:%s" % (tmp_path / "b.sock"), pb]
    assert "--echo -q" in rows[b.pid]


# ------------------------------------------- U+0000 on the control socket

def test_nul_on_the_control_socket(sockfork, tmp_path):
    srv = sockfork("--control", str(tmp_path / "c.sock"))
    ctl_sock = Control(control_path(srv))
    c = srv.connect()
    f = c.makefile("rb")
    pid = int(re.search(rb"pid (\d+)", f.readline()).group(1))
    srv.wait_connected(c)  # the supervisor knows the pid too
    # Carried: the built-in handler writes the text, NUL and all.
    assert ctl_sock(cmd="send", pid=pid, text="a\0b") == {"ok": True, "pid": pid, "unread_before": False}
    assert f.readline() == b"a\0b\r\n"
    # Refused by name where it would be ambiguous.
    assert ctl_sock(cmd="stats\0x") == {"ok": False, "error": '"cmd" may not contain U+0000'}
    # A parse error says what and where.
    ctl_sock.sock.sendall(b'{"cmd": "stats",}\n')
    reply = json.loads(ctl_sock.sock.makefile("rb").readline())
    assert reply["ok"] is False and "column" in reply["error"], reply
    ctl_sock.close()


# ------------------------------------------- review of issue 11: one classifier

# What the library's classifier (sf_text_clean) neutralises and ctl's own
# copy of it let through: U+180E and the tag characters.
SNEAKY = {"ok": True, "children": [{
    "pid": 7, "peer": "1.2.3.4:5\u180e", "state": "running", "since": 0, "bytes_in": 1,
    "bytes_out": 2, "status": "hi\U000e0041\U000e007f"}]}


def test_ctl_list_escapes_what_the_library_neutralises(tmp_path):
    fake = FakeServer(tmp_path / "c.sock", json.dumps(SNEAKY).encode() + b"\n")
    try:
        rc, out, err = ctl(str(tmp_path / "c.sock"), "list")
        assert rc == 0, err
        assert "\u180e" not in out and "\U000e0041" not in out, out
        row = out.splitlines()[1]
        assert "1.2.3.4:5\\u180e" in row and row.endswith("hi\\U000e0041\\U000e007f"), row
    finally:
        fake.close()


def test_ctl_stats_prints_nested_values_as_json(tmp_path):
    fake = FakeServer(tmp_path / "s.sock", json.dumps(
        {"ok": True, "channel": {"n": 2, "deep": {"a": [1, "\x1b"]}, "r": 1.5, "t": True},
         "list": [[1, 2], "x"], "frac": 0.25, "none": None}).encode() + b"\n")
    try:
        rc, out, err = ctl(str(tmp_path / "s.sock"), "stats")
        assert rc == 0, err
        assert "\x1b" not in out
        assert out.splitlines() == ['channel: n=2 deep={"a":[1,"\\u001B"]} r=1.5 t=true',
                                    'list: [[1,2],"x"]', "frac: 0.25", "none: null"], out
    finally:
        fake.close()


def test_ctl_escapes_the_path_it_cannot_reach(tmp_path):
    rc, out, err = ctl(str(tmp_path / "\x1b[31mred\u202e.sock"), "list")
    assert rc == 1 and out == ""
    line = one_error_line(err)
    assert "\x1b" not in line and "\u202e" not in line
    assert "\\x1b[31mred\\u202e.sock: No such file or directory" in line, line


def test_the_table_of_servers_escapes_what_they_say(tmp_path):
    d = tmp_path / "sockfork"
    d.mkdir(mode=0o700)
    reply = json.dumps({"ok": True, "listeners": ["\x1b]0;x\x07", "a\u180e"]}).encode() + b"\n"
    fakes = [FakeServer(d / ("serve-%d.sock" % i), reply) for i in (1, 2)]
    try:
        rc, out, err = ctl_found(tmp_path, "list")
        assert rc == 1 and out == ""
        for ch in UNSAFE + ("\u180e",):
            assert ch not in err, (ch, err)
        rows = err.splitlines()[2:]
        assert len(rows) == 2 and all("\\x1b]0;x\\x07 a\\u180e" in r for r in rows), err
    finally:
        for f in fakes:
            f.close()


# ------------------------------------------- review of issue 11: the connection checked

def test_ctl_sends_on_the_connection_it_checked(tmp_path):
    """The request goes on the connection whose peer credentials were
    checked: a second connect by path could reach whatever was put there
    in between."""
    d = tmp_path / "sockfork"
    d.mkdir(mode=0o700)
    fake = FakeServer(d / "serve-1.sock", b'{"ok":true,"pid":1}\n')
    try:
        rc, out, err = ctl_found(tmp_path, "kick", "1")
        assert (rc, out.strip()) == (0, "kicked 1"), err
        fake.close()  # joins its thread: what it counted is final
        assert fake.connections == 1 and fake.requests == [b'{"cmd":"kick","pid":1}\n'], \
            (fake.connections, fake.requests)
    finally:
        fake.close()


def test_ctl_asks_each_of_several_servers_once(tmp_path):
    d = tmp_path / "sockfork"
    d.mkdir(mode=0o700)
    fakes = [FakeServer(d / ("serve-%d.sock" % i), b'{"ok":true,"listeners":["x"]}\n') for i in (1, 2)]
    try:
        rc, _, err = ctl_found(tmp_path, "stats")
        assert rc == 1 and "2 servers run under" in err, err
        for f in fakes:
            f.close()
            assert f.connections == 1 and f.requests == [b'{"cmd":"stats"}\n'], (f.connections, f.requests)
    finally:
        for f in fakes:
            f.close()


# ------------------------------------------- review of issue 11: both directories

def test_ctl_finds_a_server_started_without_xdg_runtime_dir(sockfork, tmp_path):
    """A server started from cron or `ssh host cmd` has no XDG_RUNTIME_DIR
    and lives in /tmp/sockfork-UID; ctl in a login shell, with it set,
    finds it there."""
    priv = private_tmp(tmp_path)
    srv = sockfork("--echo", env={"XDG_RUNTIME_DIR": ""}, bin=server_in_private_tmp(tmp_path, priv))
    assert control_path(srv) == "%s/serve-%d.sock" % (TMP_DIR, srv.pid)
    rc, out, err = ctl_found(tmp_path / "xdg", "--json", "stats", priv=priv)
    assert rc == 0, err
    assert json.loads(out)["pid"] == srv.pid
    # Beside one under XDG_RUNTIME_DIR: both are listed.
    (tmp_path / "xdg").mkdir(exist_ok=True)
    other = sockfork("--echo", env={"XDG_RUNTIME_DIR": str(tmp_path / "xdg")})
    rc, _, err = ctl_found(tmp_path / "xdg", "list", priv=priv)
    assert rc == 1, err
    assert err.splitlines()[0] == ("sockfork: ctl: 2 servers run under %s/xdg/sockfork and %s: say "
                                   "which with --control PATH" % (tmp_path, TMP_DIR)), err
    assert {int(l.split()[0]) for l in err.splitlines()[2:]} == {srv.pid, other.pid}, err


@pytest.mark.skipif(not PRIVATE_TMP, reason="needs a private /tmp/sockfork-UID (a mount namespace)")
def test_ctl_says_where_it_looked(tmp_path):
    rc, out, err = ctl_found(tmp_path, "list")
    assert (rc, out) == (1, "")
    assert one_error_line(err) == ("sockfork: ctl: no running server found under %s/sockfork or %s "
                                   "(give --control PATH)" % (tmp_path, TMP_DIR))
    rc, _, err = ctl_found(None, "list", priv=private_tmp(tmp_path))
    assert one_error_line(err) == "sockfork: ctl: no running server found under %s (give --control PATH)" % TMP_DIR


@pytest.mark.skipif(not PRIVATE_TMP, reason="needs a private /tmp/sockfork-UID (a mount namespace)")
def test_ctl_refuses_a_tmp_directory_open_to_others(tmp_path):
    """The same checks in both directories: a /tmp/sockfork-UID open to
    others stops ctl before it sends anything, a server under
    XDG_RUNTIME_DIR included."""
    d = tmp_path / "sockfork"
    d.mkdir(mode=0o700)
    good = FakeServer(d / "serve-1.sock", b'{"ok":true,"children":[]}\n')
    priv = private_tmp(tmp_path)
    bad = FakeServer(priv / "serve-2.sock", b'{"ok":true,"children":[]}\n')
    try:
        os.chmod(priv, 0o777)
        rc, out, err = ctl_found(tmp_path, "list", priv=priv)
        assert rc == 1 and out == ""
        assert "%s is not private to you (owner uid %d, mode 0777" % (TMP_DIR, os.getuid()) in one_error_line(err)
        good.close()
        bad.close()
        assert good.requests == [] and bad.connections == 0
    finally:
        good.close()
        bad.close()


# ------------------------------------------- review of issue 11: the bound on servers listed

def test_more_servers_than_listed_are_counted(tmp_path):
    d = tmp_path / "sockfork"
    d.mkdir(mode=0o700)
    fakes = [FakeServer(d / ("serve-%d.sock" % i), b'{"ok":true,"listeners":["x"]}\n') for i in range(66)]
    try:
        rc, _, err = ctl_found(tmp_path, "list")
        lines = err.splitlines()
        assert rc == 1 and lines[0].startswith("sockfork: ctl: 66 servers run under "), err
        assert len(lines) == 2 + 64 + 1, err
        assert lines[-1] == "  and 2 more (only the first 64 are listed)", err
    finally:
        for f in fakes:
            f.close()


STATS_KEYS = ["ok", "pid", "listeners", "accepted", "active", "max_conns", "refused_per_ip",
              "denied", "proxy_refused", "proxy_bad", "proxy_timed_out", "limit_reached", "idle_closed", "conn_timed_out", "kicked", "fork_failures", "accept_failures", "exited",
              "killed", "channel", "spawner_pid", "children", "messages_in", "messages_out",
              "messages_dropped", "bus", "top_topics", "process"]
STATS_CHANNEL_KEYS = ["frames_in", "frames_out", "dropped", "kicked_full", "kicked_bad",
                      "spawner_restarts"]
# Issue 15 (what /metrics renders too): the bus's ops and message kinds, in order.
STATS_OPS = ["send", "send_name", "broadcast", "publish", "subscribe", "unsubscribe", "claim",
             "release", "log", "status", "will", "members", "topics"]
STATS_KINDS = ["direct", "name", "broadcast", "topic", "history", "claimed", "error", "members",
               "topics"]
STATS_BUS_KEYS = ["channels", "queued_bytes", "topics", "subscriptions", "names",
                  "history_bytes"]


def test_stats_reply_has_every_key_in_order(sockfork, tmp_path):
    """The whole `stats` answer, raw from the socket: every key, in the order
    `ctl stats` prints them, and each value (issue 12: built from the
    supervisor's, the bus's and the server's snapshots, it must not move)."""
    srv = sockfork("--echo", "--max-conns", "7", "--control", str(tmp_path / "c.sock"))
    path = control_path(srv)
    c = srv.connect()
    pid = int(srv.wait_connected(c)[1].group(1))
    rc, _, err = ctl(path, "kick", str(pid))
    assert rc == 0, err
    expect_eof(c)
    srv.wait_disconnected(c)
    c = srv.connect()
    srv.wait_connected(c)

    s = socket.socket(socket.AF_UNIX)
    s.settimeout(WAIT)
    s.connect(path)
    s.sendall(b'{"cmd":"stats"}\n')
    line = s.makefile("rb").readline()
    s.close()
    pairs = json.loads(line, object_pairs_hook=lambda p: p)
    assert [k for k, _ in pairs] == STATS_KEYS, line
    st = dict(pairs)
    assert [k for k, _ in st["channel"]] == STATS_CHANNEL_KEYS, line
    assert st["spawner_pid"] > 0 and st["spawner_pid"] != srv.pid
    st["channel"] = dict(st["channel"])
    assert st["exited"] == [] and st["killed"] == [("SIGTERM", 1)]
    assert [k for k, _ in st["messages_in"]] == STATS_OPS, line
    assert [k for k, _ in st["messages_out"]] == STATS_KINDS, line
    assert [k for k, _ in st["messages_dropped"]] == STATS_KINDS, line
    assert [k for k, _ in st["bus"]] == STATS_BUS_KEYS, line
    for k in ("children", "messages_in", "messages_out", "messages_dropped", "bus", "process"):
        st[k] = dict(st[k])
    proc = st["process"]
    assert sorted(proc) == ["cpu_seconds", "resident_bytes", "start_time_seconds", "version"]
    assert proc["cpu_seconds"] > 0 and proc["resident_bytes"] > 4096, proc
    assert abs(proc["start_time_seconds"] - time.time()) < 3600, proc
    assert "sockfork %s\n" % proc["version"] == run_cli("serve", "--version")[1], proc
    assert st == {"ok": True, "pid": srv.pid, "listeners": ["127.0.0.1:%d" % srv.port],
                  "accepted": 2, "active": 1, "max_conns": 7, "refused_per_ip": 0,
                  "denied": 0, "proxy_refused": 0, "proxy_bad": 0, "proxy_timed_out": 0,
                  "limit_reached": 0, "idle_closed": 0, "conn_timed_out": 0, "kicked": 1, "fork_failures": 0,
                  "accept_failures": 0, "exited": [], "killed": [("SIGTERM", 1)],
                  "channel": {"frames_in": 0, "frames_out": 0, "dropped": 0, "kicked_full": 0,
                              "kicked_bad": 0, "spawner_restarts": 0},
                  "spawner_pid": st["spawner_pid"],
                  "children": {"running": 1, "terminating": 0},
                  "messages_in": dict.fromkeys(STATS_OPS, 0),
                  "messages_out": dict.fromkeys(STATS_KINDS, 0),
                  "messages_dropped": dict.fromkeys(STATS_KINDS, 0),
                  "bus": {"channels": 1, "queued_bytes": 0, "topics": 0, "subscriptions": 0,
                          "names": 0, "history_bytes": 0},
                  "top_topics": [], "process": proc}, line
    # ctl prints the same keys in the same order, one a line.
    rc, out, err = ctl(path, "stats")
    assert rc == 0, err
    assert [l.split(":")[0] for l in out.splitlines()] == STATS_KEYS[1:], out
    c.close()


# ------------------------------------------- usage errors, word for word
# Pinned before cmd_ctl became a table of subcommands (issue 12): each
# command's words and what is said when they are not right.

COMMANDS = "(list, send PID TEXT, broadcast TEXT, kick PID, stats, reload, upgrade)"


@pytest.mark.parametrize("args, want", [
    ([], "which command? " + COMMANDS),
    (["--json"], "which command? " + COMMANDS),
    (["dance"], "unknown command 'dance' " + COMMANDS),
    (["dance\x1b[31m"], "unknown command 'dance\\x1b[31m' " + COMMANDS),
    (["list", "x"], "list takes no arguments, not 'x'"),
    (["stats", "a", "b"], "stats takes no arguments, not 'a'"),
    (["kick"], "kick wants one PID"),
    (["kick", "0"], "kick wants one PID"),
    (["kick", "12", "13"], "kick wants one PID"),
    (["send", "12"], "send wants a PID and one TEXT argument"),
    (["send", "x", "text"], "send wants a PID and one TEXT argument"),
    (["send", "12", "a", "b"], "send wants a PID and one TEXT argument"),
    (["send", "12", "\udcff"], "TEXT must be UTF-8"),
    (["send", "x", "\udcff"], "send wants a PID and one TEXT argument"),
    (["broadcast"], "broadcast wants one TEXT argument"),
    (["broadcast", "a", "b"], "broadcast wants one TEXT argument"),
    (["broadcast", "\udcfe"], "TEXT must be UTF-8"),
    (["--", "send", "12", "-1", "x"], "send wants a PID and one TEXT argument"),
], ids=lambda a: " ".join(a) if isinstance(a, list) else "")
def test_ctl_usage_errors_word_for_word(tmp_path, args, want):
    """Said before any server is looked for: status 2, one line."""
    rc, out, err = run_cli("ctl", *args)
    assert (rc, out, err) == (2, "", "sockfork: ctl: " + want + "\n")


def test_ctl_answers_before_the_request_is_checked(tmp_path):
    """--help and --version come first; a bad option before a bad command."""
    assert run_cli("ctl", "dance", "--help")[0:2] == (0, run_cli("ctl", "--help")[1])
    assert run_cli("ctl", "kick", "-V") == (0, "sockfork 0.6.0\n", "")
    rc, _, err = run_cli("ctl", "dance", "--bogus")
    assert (rc, err) == (2, "sockfork: ctl: unknown option '--bogus' (try 'sockfork ctl --help'; "
                            "a TEXT that begins with '-' goes after '--')\n")
