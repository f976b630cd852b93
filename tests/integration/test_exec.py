"""`sockfork serve -- PROGRAM ARGS`: the program runs per connection with
the socket on fd 0 and 1, the tcpserver environment, and no descriptor of
the supervisor."""
import os
import re
import shutil

import pytest

from conftest import (helper, ipv6_loopback_available, recv_exact, recv_until_eof)

ENV = shutil.which("env") or "/usr/bin/env"
SH = shutil.which("sh") or "/bin/sh"

# Set in the server's environment; the exec'd program must not see them.
STALE = {"TCPLOCALHOST": "stale.example", "TCPREMOTEHOST": "stale.example",
         "TCPREMOTEINFO": "stale-user", "KEEP_ME": "kept"}


@pytest.fixture(params=["program_argv", "sf_conn_exec"])
def exec_server(request, sockfork):
    """Starts `serve -- PROGRAM ARGS` two ways, which the program must not
    tell apart: the sockfork command (the library runs the program,
    sf_server_opts.program_argv: exec'd by the spawner with vfork) and
    tests/helpers/execserver (a C handler calling sf_conn_exec in a forked
    child)."""
    def start(*args, **kw):
        if request.param == "sf_conn_exec":
            kw["bin"] = helper("execserver")
        return sockfork(*args, **kw)
    return start


def read_env(sock):
    data = recv_until_eof(sock)
    env = {}
    for line in data.decode("utf-8", "replace").splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            env[k] = v
    return env


def check_removed_and_kept(env):
    for k in ("TCPLOCALHOST", "TCPREMOTEHOST", "TCPREMOTEINFO"):
        assert k not in env, "%s=%s reached the program" % (k, env[k])
    assert env.get("KEEP_ME") == "kept", "the rest of the environment is passed on"


def test_env_ipv4(exec_server):
    srv = exec_server("--", ENV, env=STALE)
    c = srv.connect()
    env = read_env(c)
    local_ip, local_port = c.getpeername()
    remote_ip, remote_port = c.getsockname()
    assert env.get("PROTO") == "TCP", env
    assert env.get("TCPREMOTEIP") == remote_ip == "127.0.0.1"
    assert env.get("TCPREMOTEPORT") == str(remote_port)
    assert env.get("TCPLOCALIP") == local_ip
    assert env.get("TCPLOCALPORT") == str(local_port) == str(srv.port)
    assert not any(k.startswith("TCP6") for k in env), env
    assert not any(k.startswith("IPC") for k in env), env
    check_removed_and_kept(env)
    _, d = srv.wait_disconnected(c)
    assert d.group("status") == "exited 0"


@pytest.mark.skipif(not ipv6_loopback_available(), reason="no IPv6 loopback on this host")
def test_env_ipv6(exec_server):
    srv = exec_server("--", ENV, listen=("[::1]:0",), env=STALE)
    assert srv.addresses[0][0] == "tcp6"
    c = srv.connect("tcp6")
    env = read_env(c)
    local_port = c.getpeername()[1]
    remote_port = c.getsockname()[1]
    assert env.get("PROTO") == "TCP6", env
    for prefix in ("TCP6", "TCP"):
        assert env.get(prefix + "REMOTEIP") == "::1", (prefix, env)
        assert env.get(prefix + "REMOTEPORT") == str(remote_port), (prefix, env)
        assert env.get(prefix + "LOCALIP") == "::1", (prefix, env)
        assert env.get(prefix + "LOCALPORT") == str(local_port), (prefix, env)
    for k in ("TCP6LOCALHOST", "TCP6REMOTEHOST", "TCP6REMOTEINFO"):
        assert k not in env
    check_removed_and_kept(env)
    _, d = srv.wait_disconnected(c)
    assert d.group("peer") == "[::1]:%d" % remote_port
    assert d.group("status") == "exited 0"


def test_env_unix(exec_server, tmp_path):
    path = str(tmp_path / "exec.sock")
    srv = exec_server("--", ENV, listen=("unix:" + path,), env={"KEEP_ME": "kept"})
    assert srv.addresses == [("unix", path)]
    c = srv.connect("unix")
    env = read_env(c)
    assert env.get("PROTO") == "IPC", env
    assert env.get("IPCLOCALPATH") == path
    assert env.get("IPCREMOTEEUID") == str(os.geteuid())
    assert env.get("IPCREMOTEEGID") == str(os.getegid())
    assert env.get("IPCREMOTEPID") == str(os.getpid())
    assert not any(k.startswith("TCP") for k in env), env
    assert env.get("KEEP_ME") == "kept"
    i, m = srv.log.wait_one(r"^sockfork: \[unix:[^\]]*\] disconnected pid=\d+ duration=[\d.]+s status=exited 0$")
    assert " in=" not in m.string and " out=" not in m.string
    srv.log.wait_one(r"^sockfork: \[unix:[^\]]*\] connected pid=\d+ active=1$")
    srv.stop()
    assert not os.path.exists(path), "the unix socket is removed at exit"


def test_args_are_passed_and_stderr_is_inherited(exec_server):
    srv = exec_server("--", SH, "-c", 'echo "arg=$1 arg2=$2"; echo "to-stderr pid=$$" >&2', "sh",
                   "one", "two words")
    c = srv.connect()
    assert recv_until_eof(c) == b"arg=one arg2=two words\n"
    _, m = srv.log.wait_one(r"^to-stderr pid=(\d+)$")
    _, d = srv.wait_disconnected(c)
    assert d.group("pid") == m.group(1), "the exec'd program is the forked child itself"


def test_exit_code_is_logged(exec_server):
    srv = exec_server("--", SH, "-c", "exit 7")
    c = srv.connect()
    assert recv_until_eof(c) == b""
    _, d = srv.wait_disconnected(c)
    assert d.group("status") == "exited 7"


def test_program_gone_after_start_costs_only_the_connection(sockfork, tmp_path):
    prog = tmp_path / "prog"
    prog.write_text("#!/bin/sh\necho hi\n")
    prog.chmod(0o755)
    srv = sockfork("--", str(prog))
    c0 = srv.connect()
    assert recv_until_eof(c0) == b"hi\n"
    prog.unlink()
    c = srv.connect()
    assert recv_until_eof(c) == b""
    _, d = srv.wait_disconnected(c)
    assert d.group("status") != "exited 0", d.group(0)
    c2 = srv.connect()
    assert recv_until_eof(c2) == b""
    srv.wait_disconnected(c2)



def test_script_without_shebang_runs_under_sh(exec_server, tmp_path):
    """As execvp: a file the kernel cannot run (no "#!") is run by /bin/sh."""
    prog = tmp_path / "plain"
    prog.write_text('echo "plain $1"\n')
    prog.chmod(0o755)
    srv = exec_server("--", str(prog), "arg")
    c = srv.connect()
    assert recv_until_eof(c) == b"plain arg\n"
    _, d = srv.wait_disconnected(c)
    assert d.group("status") == "exited 0"


def test_program_found_in_path_and_failures_as_exec_shells_say(sockfork, tmp_path):
    """A name without '/' is looked up in PATH; once the file has lost its
    execute bit the connection's child exits 126, once it is gone 127."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    prog = bindir / "sf-hello"
    prog.write_text("#!/bin/sh\necho hello\n")
    prog.chmod(0o755)
    env = {"PATH": "%s:%s" % (bindir, os.environ.get("PATH", "/usr/bin:/bin"))}
    srv = sockfork("--", "sf-hello", env=env)
    c = srv.connect()
    assert recv_until_eof(c) == b"hello\n"
    srv.wait_disconnected(c)
    prog.chmod(0o644)
    c = srv.connect()
    assert recv_until_eof(c) == b""
    _, d = srv.wait_disconnected(c)
    assert d.group("status") == "exited 126", d.group(0)
    # Why is logged: the program is found in PATH once, at start, and
    # exec'd from the spawner (vfork), which tells the server.
    srv.log.wait_one(r"^sockfork: pid %s: cannot run the program: Permission denied$"
                     % d.group("pid"))
    prog.unlink()
    c = srv.connect()
    assert recv_until_eof(c) == b""
    _, d = srv.wait_disconnected(c)
    assert d.group("status") == "exited 127", d.group(0)
    srv.log.wait_one(r"^sockfork: pid %s: cannot run the program: No such file or directory$"
                     % d.group("pid"))

# ------------------------------------------------- what the program starts with

PIPE_BIT = 1 << (13 - 1)  # SIGPIPE in /proc's signal masks
INT_BIT = 1 << (2 - 1)    # SIGINT

# Only shell builtins, so that /proc/$$ is the exec'd program itself.
SELF_REPORT = r'''
read -r _ _ _ ppid pgrp sid _ < /proc/$$/stat
echo "pid=$$ ppid=$ppid pgrp=$pgrp sid=$sid nofile=$(ulimit -n)"
while read -r k v _; do
    case $k in SigBlk:|SigIgn:|Uid:|Gid:) echo "$k$v" ;; esac
done < /proc/$$/status
'''


def status_field(pid, name):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(name + ":"):
                return line.split()[1]
    raise AssertionError("no %s for %d" % (name, pid))


def status_limit(pid):
    """The soft limit on open files of pid."""
    with open("/proc/%d/limits" % pid) as f:
        for line in f:
            if line.startswith("Max open files"):
                return line.split()[3]
    raise AssertionError("no limits for %d" % pid)


def test_what_the_program_starts_with(exec_server):
    """The program (started by the spawner with vfork+execve) is the
    connection's child itself, leads a process group of its own, runs with
    an empty signal mask, SIGPIPE and SIGINT at their defaults (the server
    and its spawner ignore them) and every other disposition as the server
    had it, our uid and gid, and the descriptor limit the server started
    with (it raises its own). Its descriptors: test_fdcount_*."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(soft, 1000) if hard == resource.RLIM_INFINITY else min(soft, hard - 1, 1000)
    # Started with a soft limit below the hard one, which it raises for itself.
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    try:
        srv = exec_server("--", SH, "-c", SELF_REPORT)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert int(status_limit(srv.pid)) == hard or hard == resource.RLIM_INFINITY
    c = srv.connect()
    lines = recv_until_eof(c).decode().splitlines()
    _, d = srv.wait_disconnected(c)
    assert d.group("status") == "exited 0", d.group(0)
    ids = dict(kv.split("=") for kv in lines[0].split())
    fields = dict(line.split(":", 1) for line in lines[1:])
    assert ids["pid"] == d.group("pid"), "the program is the child the server logs"
    assert ids["pgrp"] == ids["pid"], "a process group of its own: %r" % ids
    assert int(ids["ppid"]) != srv.pid, "its parent is the spawner, not the supervisor"
    assert int(ids["sid"]) == os.getsid(srv.pid), "the server's session"
    assert int(fields["SigBlk"], 16) == 0, fields
    server_ign = int(status_field(srv.pid, "SigIgn"), 16)
    assert server_ign & PIPE_BIT, "the server ignores SIGPIPE"
    assert int(fields["SigIgn"], 16) == server_ign & ~PIPE_BIT & ~INT_BIT, fields
    assert fields["Uid"] == str(os.getuid()) and fields["Gid"] == str(os.getgid()), fields
    assert int(ids["nofile"]) == low, ids


# ------------------------------------------------------------ descriptors

def parse_fds(data):
    text = data.decode("utf-8", "replace")
    assert text.endswith("end\n"), "fdcount output incomplete: %r" % text
    fds = {}
    for line in text.splitlines()[:-1]:
        fd, target = line.split(" ", 1)
        fds[int(fd)] = target
    return fds


def check_only_stdio(fds, server):
    """stdin and stdout the connection, stderr the server's, fd 3 the
    channel (a socket of its own), and nothing else."""
    assert sorted(fds) == [0, 1, 2, 3], "descriptors in the exec'd program: %r" % fds
    assert re.match(r"^socket:\[\d+\]$", fds[0]), fds
    assert fds[0] == fds[1], "fd 0 and 1 are the same connection: %r" % fds
    assert fds[2] == os.readlink("/proc/%d/fd/2" % server.pid), "stderr is inherited: %r" % fds
    assert re.match(r"^socket:\[\d+\]$", fds[3]) and fds[3] != fds[0], "fd 3 is the channel: %r" % fds


def test_fdcount_alone(exec_server):
    srv = exec_server("--", helper("fdcount"))
    c = srv.connect()
    check_only_stdio(parse_fds(recv_until_eof(c)), srv)


def test_fdcount_with_two_listeners_and_siblings_open(exec_server, tmp_path):
    """Each program starts while other connections (TCP and Unix) are open
    and the server has two listeners: none of those may leak into it."""
    path = str(tmp_path / "fd.sock")
    srv = exec_server("--", helper("fdcount"), "--wait", listen=("127.0.0.1:0", "unix:" + path))
    clients = []
    for kind in ("tcp", "unix", "tcp", "unix", "tcp"):
        clients.append(srv.connect(kind))
    srv.log.wait(r"connected pid=\d+ active=", count=len(clients))
    srv.log.wait_one(r"connected pid=\d+ active=%d$" % len(clients))
    for c in clients:
        c.sendall(b"go\n")
        check_only_stdio(parse_fds(recv_until_eof(c)), srv)


# ------------------------------------------- U+0000 on an exec'd program's channel

def test_nul_on_the_channel_is_carried_not_a_disconnect(sockfork):
    """"\\u0000" is valid JSON: in data it is carried, in a topic or an op
    it is refused with an error message; the program keeps its channel."""
    import json
    from conftest import recv_line
    relay = 'cat <&3 & cat >&3; kill $! 2>/dev/null'
    srv = sockfork("--", SH, "-c", relay)
    c = srv.connect()
    pid = int(srv.wait_connected(c)[1].group(1))

    def ask(line):
        c.sendall(line + b"\n")
        return json.loads(recv_line(c))

    assert ask(b'{"op":"send","to":%d,"data":"a\\u0000b"}' % pid) == {
        "op": "message", "kind": "direct", "from": pid, "data": "a\0b"}
    assert ask(b'{"op":"subscribe","topic":"a\\u0000b"}') == {
        "op": "error", "error": 'this op needs "topic": 1 to 255 bytes, no spaces', "code": "bad_request"}
    assert ask(b'{"op":"send\\u0000x","to":%d,"data":"x"}' % pid) == {
        "op": "error", "error": "unknown op", "code": "bad_request"}
    assert ask(b'{"op":"claim","name":"still-here"}') == {"op": "claimed", "name": "still-here", "ok": True}
    assert not srv.log.find(r"closing its channel")
