"""Command-line surface: --help, --version, and usage errors (one line on
stderr starting 'sockfork: ', exit status 2)."""
import socket

import pytest

from conftest import run_cli


def test_help_exits_0():
    for args in (["--help"], ["serve", "--help"]):
        rc, out, err = run_cli(*args)
        assert rc == 0, (args, rc, err)
        assert "usage" in (out + err).lower(), (args, out, err)


def test_serve_help_lists_the_options():
    rc, out, err = run_cli("serve", "--help")
    text = out + err
    for opt in ("-l", "-c", "--max-per-ip", "--idle-timeout", "--grace", "-q", "--echo"):
        assert opt in text, opt


@pytest.mark.parametrize("args", [["--version"], ["serve", "--version"]])
def test_version(args):
    rc, out, err = run_cli(*args)
    assert rc == 0, (rc, err)
    assert out.strip() == "sockfork 0.1.0", (out, err)


def one_line_usage_error(*args):
    rc, out, err = run_cli(*args)
    assert rc == 2, "status %r for %r; stderr %r" % (rc, args, err)
    lines = err.splitlines()
    assert len(lines) == 1, "expected one line on stderr for %r, got %r" % (args, err)
    assert lines[0].startswith("sockfork: "), lines[0]
    return lines[0]


@pytest.mark.parametrize("args", [
    ["serve", "--no-such-flag"],
    ["serve", "-l"],
    ["serve", "-l", "nonsense"],
    ["serve", "-l", "1.2.3.4:99999"],
    ["serve", "-l", "127.0.0.1:"],
    ["serve", "-l", "[::1"],
    ["serve", "-l", "127.0.0.1:0", "-c", "many"],
    ["serve", "-l", "127.0.0.1:0", "--max-per-ip", "-3"],
    ["serve", "-l", "127.0.0.1:0", "--idle-timeout", "soon"],
    ["serve", "-l", "127.0.0.1:0", "--grace", "x"],
    ["serve", "-l", "127.0.0.1:0", "--channel-max", "12"],
    ["serve", "-l", "127.0.0.1:0", "--channel-max", "17M"],
    ["serve", "-l", "127.0.0.1:0", "--channel-queue", "lots"],
    ["serve", "-l", "127.0.0.1:0", "--channel-queue", "1K"],
    ["serve", "-l", "127.0.0.1:0", "--channel-full", "block"],
    ["serve", "-l", "127.0.0.1:0", "--topic-history", "-1"],
    ["ctl", "send", "12"],
    ["ctl", "send", "x", "text"],
    ["ctl", "broadcast"],
    ["ctl", "broadcast", "a", "b"],
    ["no-such-command"],
], ids=lambda a: " ".join(a))
def test_bad_usage_is_one_line_and_status_2(args):
    one_line_usage_error(*args)


def test_address_in_use_is_one_line_and_status_2():
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        line = one_line_usage_error("serve", "-l", "127.0.0.1:%d" % port, "--echo")
        assert str(port) in line or "in use" in line.lower(), line
    finally:
        holder.close()


def test_second_listener_in_use_fails_whole_start(tmp_path):
    """One good listener and one in use: no half-started server."""
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        one_line_usage_error("serve", "-l", "unix:%s" % (tmp_path / "s"),
                             "-l", "127.0.0.1:%d" % port, "--echo")
    finally:
        holder.close()


def test_unix_path_of_a_live_server_is_in_use(sockfork, tmp_path):
    """A second server on the path of a live one fails with status 2 and
    leaves the first one's socket alone."""
    from conftest import recv_exact
    path = str(tmp_path / "live.sock")
    srv = sockfork("--echo", listen=("unix:" + path,))
    one_line_usage_error("serve", "-l", "unix:" + path, "--echo")
    c = srv.connect("unix")
    c.sendall(b"still mine\n")
    assert recv_exact(c, 11) == b"still mine\n"


def test_stale_unix_socket_is_replaced(sockfork, tmp_path):
    from conftest import recv_exact
    path = str(tmp_path / "stale.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.close()  # the file stays, nobody listens
    srv = sockfork("--echo", listen=("unix:" + path,))
    c = srv.connect("unix")
    c.sendall(b"fresh\n")
    assert recv_exact(c, 6) == b"fresh\n"
