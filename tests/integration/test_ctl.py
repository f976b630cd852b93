"""The control socket and `sockfork ctl`: list, kick, stats, and bad input
on the control socket, against the real binary."""
import json
import os
import re
import socket
import stat
import subprocess

from conftest import BIN, WAIT, control_path, expect_eof, peer_text, recv_exact, run_cli, server_env


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
    proc = subprocess.run([BIN, "ctl", "--json", "stats"], capture_output=True, timeout=WAIT,
                          env=server_env(env), stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["active"] == 0
