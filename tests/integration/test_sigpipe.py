"""SIGPIPE: ignored in C handlers (a client gone costs an EPIPE, never the
child), at its default in exec'd programs (as tcpserver gives it), and a
second server probing a Unix path does not make the first serve a
connection nobody made."""
import os
import socket

from conftest import WAIT, recv_line, run_cli

PIPE_BIT = 1 << (13 - 1)  # SIGPIPE in /proc's signal masks


def sig_ignored(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("SigIgn:"):
                return int(line.split()[1], 16)
    raise AssertionError("no SigIgn for %d" % pid)


def test_c_handler_has_sigpipe_ignored(sockfork):
    srv = sockfork()
    c = srv.connect()
    assert recv_line(c).startswith(b"Welcome")
    pid = int(srv.wait_connected(c)[1].group(1))
    assert sig_ignored(pid) & PIPE_BIT, "SIGPIPE is not ignored in the C handler"


def test_exec_program_has_sigpipe_at_its_default(sockfork):
    srv = sockfork("--", "/bin/sh", "-c", 'grep "^SigIgn:" /proc/self/status')
    c = srv.connect()
    line = recv_line(c).decode()
    assert line.startswith("SigIgn:"), line
    assert not int(line.split()[1], 16) & PIPE_BIT, line


def test_echo_to_a_unix_client_gone_is_an_epipe_not_a_death(sockfork, tmp_path):
    """The client writes and closes before its child starts: the echo of its
    bytes goes to a closed Unix socket, EPIPE at once."""
    path = str(tmp_path / "echo.sock")
    srv = sockfork("--echo", listen=("unix:" + path,))
    n = 5
    for i in range(n):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(WAIT)
        s.connect(path)
        s.sendall(b"ping %d\n" % i)
        s.close()
    found = srv.log.wait(r"^sockfork: \[unix:[^\]]*\] disconnected pid=\d+ .*status=(.+)$", count=n)
    statuses = [m.group(1) for _, m in found]
    assert statuses == ["exited 0"] * n, statuses


def test_interactive_greeting_to_a_unix_client_gone(sockfork, tmp_path):
    path = str(tmp_path / "hi.sock")
    srv = sockfork(listen=("unix:" + path,))
    n = 5
    for _ in range(n):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(WAIT)
        s.connect(path)
        s.close()
    found = srv.log.wait(r"^sockfork: \[unix:[^\]]*\] disconnected pid=\d+ .*status=(.+)$", count=n)
    statuses = [m.group(1) for _, m in found]
    assert "killed by SIGPIPE" not in statuses, statuses


def test_a_second_server_on_the_same_unix_path_does_not_connect(sockfork, tmp_path):
    path = str(tmp_path / "one.sock")
    srv = sockfork(listen=("unix:" + path,))
    rc, out, err = run_cli("serve", "-l", "unix:" + path, "--no-control")
    assert rc == 2, (rc, err)
    assert "cannot listen on unix:%s" % path in err, err
    assert os.path.exists(path), "the live server's socket was removed"
    # A real client after it: its connection is the first and only one.
    mark = srv.log.mark()
    c = srv.connect("unix")
    assert recv_line(c).startswith(b"Welcome")
    srv.log.wait_one(r"\] connected pid=", start=mark)
    assert len(srv.log.find(r"\] connected pid=")) == 1, srv.log.text()
    assert not srv.log.find(r"SIGPIPE"), srv.log.text()
