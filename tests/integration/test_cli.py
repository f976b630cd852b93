"""Command-line surface: --help, --version, and usage errors (one line on
stderr starting 'sockfork: ', exit status 2)."""
import re
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
    assert out.strip() == "sockfork 0.6.0", (out, err)


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


# ------------------------------------------- --version and --help everywhere

@pytest.mark.parametrize("args", [
    ["-V"], ["serve", "-V"], ["chat", "--version"], ["chat", "-V"], ["ctl", "--version"],
    ["ctl", "-V"], ["ctl", "list", "--version"], ["run", "--version"], ["run", "-V"],
    ["run", "-j", "2", "--version"], ["run", "--joblog=jl", "--shell", "-V"],
    ["run", "--results", "r.jsonl", "--retry-on", "1", "--version", "echo"],
], ids=lambda a: " ".join(a))
def test_version_everywhere(args):
    rc, out, err = run_cli(*args)
    assert (rc, err) == (0, ""), (rc, err)
    assert out.strip() == "sockfork 0.6.0", out


def test_run_version_is_an_argument_after_the_command():
    """run's options end at COMMAND: `run echo --version ::: a` runs echo."""
    rc, out, err = run_cli("run", "echo", "--version", ":::", "a")
    assert rc == 0, err
    assert out == "--version a\n"


def test_run_help_lists_version():
    """run handles -V/--version among its own options, and says so."""
    rc, out, err = run_cli("run", "--help")
    assert rc == 0, err
    assert re.search(r"^  -V, --version +print the version$", out, re.M), out


@pytest.mark.parametrize("cmd", ["serve", "chat", "ctl", "run"])
def test_help_everywhere(cmd):
    for flag in ("-h", "--help"):
        rc, out, err = run_cli(cmd, flag)
        assert rc == 0 and out.startswith("usage: sockfork %s" % cmd), (cmd, flag, rc, err)


@pytest.mark.parametrize("cmd", ["serve", "chat", "ctl"])
def test_help_lists_version(cmd):
    assert "-V, --version" in run_cli(cmd, "--help")[1]


# ------------------------------------------- usage errors that say what is wrong

@pytest.mark.parametrize("args, want", [
    (["serve", "--"], "sockfork: serve: '--' must be followed by PROGRAM [ARGS...] "
                      "(try 'sockfork serve --help')"),
    (["serve", "-l", "unix:/no/such/dir/x.sock"],
     "sockfork: cannot listen on unix:/no/such/dir/x.sock: No such file or directory"),
    (["chat", "-l", "unix:/no/such/dir/x.sock"],
     "sockfork: cannot listen on unix:/no/such/dir/x.sock: No such file or directory"),
    (["serve", "-l", "127.0.0.1:99999"], "sockfork: cannot listen on 127.0.0.1:99999: port 99999 out "
                                         "of range (0-65535)"),
    (["chat", "-l", "[::1]:65536"], "sockfork: cannot listen on [::1]:65536: port 65536 out of range "
                                    "(0-65535)"),
    (["serve", "-l", "127.0.0.1:"], "sockfork: cannot listen on 127.0.0.1:: no port after ':'"),
    (["serve", "-l", "127.0.0.1:http"], "sockfork: cannot listen on 127.0.0.1:http: port 'http' is "
                                        "not a number"),
    (["serve", "-l", "::1:80"], "sockfork: cannot listen on ::1:80: an IPv6 address goes in "
                                "brackets: [V6]:PORT"),
    (["serve", "-l", "[::1"], "sockfork: cannot listen on [::1: no ']' after the IPv6 address"),
    (["serve", "-l", "[127.0.0.1]:80"], "sockfork: cannot listen on [127.0.0.1]:80: '127.0.0.1' is "
                                        "not an IPv6 address (brackets are for IPv6 only)"),
    (["serve", "-l", "nonsense"], "sockfork: cannot listen on nonsense: no port (expected HOST:PORT, "
                                  "[V6]:PORT or unix:PATH)"),
    (["serve", "-l", "unix:"], "sockfork: cannot listen on unix:: empty path"),
    (["serve", "-l", "unix:/" + "x" * 120], "sockfork: cannot listen on unix:/" + "x" * 120 +
                                            ": path longer than 107 bytes"),
    (["serve", "-l", "127.0.0.1:0", "--", "/etc/passwd"],
     "sockfork: serve: program '/etc/passwd' is not executable: Permission denied"),
    (["serve", "-l", "127.0.0.1:0", "--", "/etc"], "sockfork: serve: program '/etc' is a directory"),
    (["serve", "-l", "127.0.0.1:0", "--", "no-such-program-x"],
     "sockfork: serve: cannot find program 'no-such-program-x' in PATH"),
    (["serve", "-l", "127.0.0.1:0", "--", "./no-such-program-x"],
     "sockfork: serve: cannot find program './no-such-program-x': No such file or directory"),
    (["serve", "-l", "127.0.0.1:0", "--control", "/no/such/dir/c.sock"],
     "sockfork: cannot open the control socket /no/such/dir/c.sock: No such file or directory"),
], ids=lambda a: " ".join(a) if isinstance(a, list) else "")
def test_usage_errors_say_what_is_wrong(args, want):
    assert one_line_usage_error(*args) == want


def test_a_program_not_executable_in_path(tmp_path):
    """A file in PATH without an execute bit: not "cannot find"."""
    import os
    import subprocess
    from conftest import BIN, WAIT, server_env
    prog = tmp_path / "handler"
    prog.write_text("#!/bin/sh\n")
    prog.chmod(0o644)
    proc = subprocess.run([BIN, "serve", "-l", "127.0.0.1:0", "--", "handler"], capture_output=True,
                          stdin=subprocess.DEVNULL, timeout=WAIT,
                          env=server_env({"PATH": "%s:%s" % (tmp_path, os.environ.get("PATH", ""))}))
    assert proc.returncode == 2
    assert proc.stderr.decode() == "sockfork: serve: program 'handler' is not executable: Permission denied\n"


def test_serve_dashdash_as_a_value_is_not_the_end_of_options(tmp_path):
    """`--control --` names a socket '--'; no PROGRAM is implied."""
    line = one_line_usage_error("serve", "-l", "unix:/no/such/dir/x.sock", "--control", "--")
    assert "cannot listen on unix:/no/such/dir/x.sock" in line


@pytest.mark.parametrize("args, want", [
    (["serve", "--history=3"], "serve: unknown option '--history=3' (try 'sockfork serve --help')"),
    (["serve", "--history", "3"], "serve: unknown option '--history' (try 'sockfork serve --help')"),
    (["chat", "--topic-history", "2"], "chat: unknown option '--topic-history' (try 'sockfork chat --help')"),
    (["serve", "--flood=1/2"], "serve: unknown option '--flood=1/2' (try 'sockfork serve --help')"),
    (["serve", "--line-max=1K"], "serve: unknown option '--line-max=1K' (try 'sockfork serve --help')"),
    (["serve", "--client-backlog=1K"],
     "serve: unknown option '--client-backlog=1K' (try 'sockfork serve --help')"),
    (["chat", "--echo"], "chat: unknown option '--echo' (try 'sockfork chat --help')"),
    (["chat", "--topic-history=2"], "chat: unknown option '--topic-history=2' (try 'sockfork chat --help')"),
    (["chat", "-l"], "chat: option '-l' needs a value"),
    (["serve", "--history"], "serve: option '--history' needs a value"),
    (["chat", "-l", "127.0.0.1:0", "prog"], "chat: unexpected argument 'prog' (try 'sockfork chat --help')"),
    (["serve", "--echo", "-l", "127.0.0.1:0", "--", "sh"], "serve: --echo and a PROGRAM exclude each other"),
    (["serve", "-l", "127.0.0.1:0", "--channel-max=64K", "--channel-queue=64K"],
     "serve: --channel-queue (65536) must hold one message of --channel-max (65536) and its 271 "
     "bytes of headers"),
    (["chat", "-l", "127.0.0.1:0", "--control=/x", "--no-control"],
     "chat: --control and --no-control exclude each other"),
], ids=lambda a: " ".join(a) if isinstance(a, list) else "")
def test_serve_and_chat_take_their_own_options(args, want):
    """The options only one of the two takes, and the checks after them
    (pinned before run_server became small functions, issue 12)."""
    assert one_line_usage_error(*args) == "sockfork: " + want
