"""Several hosts on one machine, for the tests that span instances (issues
16 and 17): each host is a network namespace with one veth into a bridge
that lives in a namespace of its own, and an address of a private test
range on that veth only.

    with Hosts() as hosts:            # or the pytest fixture `hosts`
        a = hosts.add("redis")        # -> "10.213.X.2"
        b = hosts.add("app")
        redis = start_redis(hosts, "redis")
        proc = hosts.run("app", ["sockfork", "chat", "-l", b + ":7000"])
        s = hosts.connect("app", (redis.addr, redis.port))   # a socket in "app"
        hosts.link_down("app"); hosts.link_up("app")         # a partition
        hosts.kill_all("app")                                # kill -9 of a host

Needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN): where `ip netns add` is refused
the fixture skips with the reason. Nothing is done in the caller's own
network namespace: every device is created with `ip -n NS`, inside the
bridge's namespace, its peer moved straight into the host's; the addresses
and routes are on those devices only. Sockets the test process needs in a
host are made by a short-lived thread that enters the host's namespace
(setns is per thread for network namespaces), so the test process itself
never leaves its own, and a socket stays in the namespace it was made in.

Teardown runs even when the body raises: SIGKILL to every process in every
host (`ip netns pids`), the processes this module started reaped, every
namespace deleted (which takes their devices with them).

Every wait here is bounded and waits on a condition.
"""
import ctypes
import itertools
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

import pytest

from conftest import BIN, WAIT, Log

IP = shutil.which("ip") or "/usr/sbin/ip"
CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"
BRIDGE = "br0"
REDIS_PORT = 6379

_seq = itertools.count(1)


class Unavailable(Exception):
    """Network namespaces cannot be made here (the reason is the text)."""


def _ip(*args, check=True, timeout=WAIT):
    """Runs `ip ARGS` (bounded); returns (status, stdout, stderr). With
    check, a failure raises with the command and what ip said."""
    proc = subprocess.run([IP] + list(args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=timeout)
    out = proc.stdout.decode("utf-8", "replace")
    err = proc.stderr.decode("utf-8", "replace").strip()
    if check and proc.returncode != 0:
        raise AssertionError("ip %s: status %d: %s" % (" ".join(args), proc.returncode, err))
    return proc.returncode, out, err


_libc = None


def _setns(fd):
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, "setns: %s" % os.strerror(e))


def in_namespace(ns, fn):
    """Calls fn() in a new thread that has entered network namespace ns and
    returns what it returned (or raises what it raised). The calling thread
    stays where it is."""
    result = {}

    def body():
        try:
            fd = os.open(os.path.join(NETNS_DIR, ns), os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(fd)
            finally:
                os.close(fd)
            result["value"] = fn()
        except BaseException as e:  # handed to the caller
            result["error"] = e

    t = threading.Thread(target=body, daemon=True)
    t.start()
    t.join(WAIT)
    assert not t.is_alive(), "a thread in namespace %s did not finish" % ns
    if "error" in result:
        raise result["error"]
    return result["value"]


def root_network_state():
    """The caller's own namespace as `ip` shows it: devices, addresses,
    routes (v4 and v6), rules. Counters and timers are left out, so two
    snapshots differ only if something was added, removed or changed."""
    state = []
    for args in (["-o", "link", "show"], ["-o", "addr", "show"], ["route", "show", "table", "all"],
                 ["-6", "route", "show", "table", "all"], ["rule", "show"]):
        _, out, _ = _ip(*args)
        for line in out.splitlines():
            # Drop what changes by itself: the link's state words stay.
            words = [w for w in line.split() if not w.startswith(("valid_lft", "preferred_lft"))]
            state.append(" ".join(words))
    # addr's lifetimes come as "valid_lft forever preferred_lft forever":
    # drop the values too.
    return sorted(s.replace(" forever", "") for s in state)


class Host:
    """One host: its namespace, its address, the bridge port it hangs on."""

    def __init__(self, name, ns, addr, port):
        self.name = name
        self.ns = ns
        self.addr = addr
        self.port = port      # the veth's end in the bridge namespace ("pK")
        self.procs = []       # Popen objects started here, reaped at kill_all


class Hosts:
    """N named hosts on one private bridge. A context manager; see the
    module's comment."""

    def __init__(self):
        self.tag = "sf%d-%06x" % (next(_seq), random.getrandbits(24))
        self.subnet = random.randrange(0, 256)    # 10.213.SUBNET.0/24
        self.bridge_ns = "%s-bridge" % self.tag
        self.hosts = {}
        self.namespaces = []                      # made so far, to delete
        self.dir = None
        self.closers = []                         # run at teardown, once all is killed

    # ------------------------------------------------------------ lifetime

    def __enter__(self):
        if self.dir is not None:  # entered already (see hosts_or_skip)
            return self
        try:
            self._make_namespace(self.bridge_ns, probe=True)
            self.dir = tempfile.mkdtemp(prefix=self.tag + "-")
            _ip("-n", self.bridge_ns, "link", "set", "lo", "up")
            _ip("-n", self.bridge_ns, "link", "add", BRIDGE, "type", "bridge")
            _ip("-n", self.bridge_ns, "link", "set", BRIDGE, "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def _make_namespace(self, ns, probe=False):
        rc, _, err = _ip("netns", "add", ns, check=False)
        if rc != 0:
            if probe:
                raise Unavailable("`ip netns add` refused (%s): needs root with CAP_SYS_ADMIN"
                                  % (err or "status %d" % rc))
            raise AssertionError("ip netns add %s: %s" % (ns, err))
        self.namespaces.append(ns)

    def close(self):
        """Everything down, whatever state it is in: every process in every
        namespace killed, ours reaped, the closers run (files and pipes), the
        namespaces deleted. Raises the first error after doing all of it."""
        errors = []
        for host in list(self.hosts.values()):
            try:
                self.kill_all(host.name)
            except BaseException as e:
                errors.append(e)
        # After the kill: a pipe's reader thread sees EOF, and only then may
        # the pipe be closed (closing it under a blocked read would wait on
        # the reader's lock for ever).
        for fn in reversed(self.closers):
            try:
                fn()
            except BaseException as e:
                errors.append(e)
        self.closers = []
        for ns in reversed(self.namespaces):
            try:
                self._kill_namespace(ns)
                _ip("netns", "delete", ns)
            except BaseException as e:
                errors.append(e)
        self.namespaces = []
        self.hosts = {}
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
        if errors:
            raise errors[0]

    # ------------------------------------------------------------ hosts

    def add(self, name):
        """A new host NAME: its namespace, a veth into the bridge, its
        address; returns the address."""
        assert name not in self.hosts, "host %s exists" % name
        index = len(self.hosts) + 1
        assert index <= 250, "too many hosts"
        ns = "%s-%s" % (self.tag, name)
        port = "p%d" % index
        addr = "10.213.%d.%d" % (self.subnet, index + 1)
        self._make_namespace(ns)
        host = Host(name, ns, addr, port)
        self.hosts[name] = host
        # Made in the bridge's namespace, its peer moved at creation into
        # the host's: no device ever exists in the caller's namespace.
        _ip("-n", self.bridge_ns, "link", "add", port, "type", "veth", "peer", "name", "eth0",
            "netns", ns)
        _ip("-n", self.bridge_ns, "link", "set", port, "master", BRIDGE)
        _ip("-n", self.bridge_ns, "link", "set", port, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "addr", "add", addr + "/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        return addr

    def host(self, name):
        assert name in self.hosts, "no host %s (have %s)" % (name, sorted(self.hosts))
        return self.hosts[name]

    def addr(self, name):
        return self.host(name).addr

    def ns(self, name):
        return self.host(name).ns

    # ------------------------------------------------------------ processes

    def argv(self, name, argv, hostname=None):
        """argv run in host NAME (`ip netns exec` execs it: same pid). With
        hostname, in a UTS namespace of its own with that host name (what
        gethostname() says: the network namespaces share the machine's)."""
        if hostname is not None:
            argv = ["unshare", "--uts", "--", "sh", "-c", 'hostname "$0" && exec "$@"',
                    hostname] + list(argv)
        return [IP, "netns", "exec", self.ns(name)] + list(argv)

    def run(self, name, argv, hostname=None, **popen_kwargs):
        """Popen of argv in host NAME (and with hostname, see argv()), in a
        session of its own unless told otherwise; killed and reaped at
        kill_all(NAME) and at teardown."""
        popen_kwargs.setdefault("start_new_session", True)
        popen_kwargs.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(self.argv(name, argv, hostname), **popen_kwargs)
        self.host(name).procs.append(proc)
        return proc

    def wrapper(self, name, program=BIN):
        """A script that runs `program ARGS` in host NAME: for code that
        takes a program's path (conftest's sockfork(bin=...))."""
        path = os.path.join(self.dir, "in-%s-%s" % (name, os.path.basename(program)))
        with open(path, "w") as f:
            f.write('#!/bin/sh\nexec %s netns exec %s %s "$@"\n' % (IP, self.ns(name), program))
        os.chmod(path, 0o755)
        return path

    def pids(self, name):
        return self._pids(self.ns(name))

    @staticmethod
    def _pids(ns):
        rc, out, err = _ip("netns", "pids", ns, check=False)
        if rc != 0:
            return []
        return [int(p) for p in out.split()]

    def kill_all(self, name, timeout=WAIT):
        """Every process in host NAME stopped, then killed (SIGKILL): the
        host's `kill -9`, all at once; until none is left (bounded). The
        ones started here are reaped."""
        host = self.host(name)
        self._kill_namespace(host.ns, timeout)
        for proc in host.procs:
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                raise AssertionError("pid %d in %s not reaped" % (proc.pid, name))
        host.procs = []

    def _kill_namespace(self, ns, timeout=WAIT):
        deadline = time.monotonic() + timeout
        while True:
            # A process forked meanwhile shows on the next round.
            pids = self._pids(ns)
            if not pids:
                return
            # All stopped first, then all killed: a host dies at once, and
            # no process sees another's death and acts on it (a child telling
            # its client something as its supervisor goes).
            for sig in (signal.SIGSTOP, signal.SIGKILL):
                for pid in pids:
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass
            # Our own children stay zombies (and leave `ip netns pids`,
            # which reads their namespace) until reaped: reap them.
            for host in self.hosts.values():
                for proc in host.procs:
                    proc.poll()
            if time.monotonic() >= deadline:
                raise AssertionError("processes left in %s: %s" % (ns, pids))
            time.sleep(0.02)  # bounded: waiting for the kernel to finish them

    # ------------------------------------------------------------ the network

    def link_down(self, name):
        """Cuts host NAME off the bridge (its port down, from the bridge's
        side): packets to and from it are lost until link_up; its
        connections stay open."""
        _ip("-n", self.bridge_ns, "link", "set", self.host(name).port, "down")

    def link_up(self, name):
        _ip("-n", self.bridge_ns, "link", "set", self.host(name).port, "up")

    def socket(self, name, family=socket.AF_INET, type=socket.SOCK_STREAM):
        """A socket in host NAME's namespace (it stays there)."""
        return in_namespace(self.ns(name), lambda: socket.socket(family, type))

    def connect(self, name, addr, timeout=WAIT):
        """A TCP socket from host NAME connected to addr (host, port)."""
        s = self.socket(name)
        try:
            s.settimeout(timeout)
            s.connect(addr)
        except BaseException:
            s.close()
            raise
        return s

    def listening(self, name, port, pid=None):
        """Whether something in host NAME listens on TCP port: read from
        /proc/PID/net/tcp, which shows the namespace of PID (any process in
        the host, a pid of its own by default)."""
        if pid is None:
            pids = self.pids(name)
            if not pids:
                return False
            pid = pids[0]
        want = ":%04X" % port
        try:
            with open("/proc/%d/net/tcp" % pid) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            return False
        for line in lines:
            fields = line.split()
            if fields[1].endswith(want) and fields[3] == "0A":  # TCP_LISTEN
                return True
        return False

    def wait_listening(self, name, port, proc, timeout=WAIT):
        deadline = time.monotonic() + timeout
        while not self.listening(name, port, proc.pid):
            assert proc.poll() is None, "exited with %r before listening on %d" % (
                proc.returncode, port)
            assert time.monotonic() < deadline, "nothing listening on %s:%d after %.0f s" % (
                name, port, timeout)
            time.sleep(0.02)  # bounded poll of /proc


def hosts_or_skip():
    """A Hosts already entered (entering it again is a no-op, so it can be
    used in a with statement), or the test skipped with the reason."""
    try:
        return Hosts().__enter__()
    except Unavailable as e:
        pytest.skip(str(e))


@pytest.fixture
def hosts():
    """A Hosts context for one test: `hosts.add(name)` and so on; skipped
    where network namespaces cannot be made."""
    h = hosts_or_skip()
    try:
        yield h
    finally:
        h.close()


# ------------------------------------------------------------ Redis

def resp_encode(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class RespReader:
    """Reads RESP replies from a socket, with a deadline per reply."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()

    def _line(self, deadline):
        while b"\r\n" not in self.buf:
            self._fill(deadline)
        i = self.buf.index(b"\r\n")
        line = bytes(self.buf[:i])
        del self.buf[:i + 2]
        return line

    def _fill(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("no reply from redis in time")
        self.sock.settimeout(left)
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise AssertionError("redis closed the connection")
        self.buf += chunk

    def reply(self, timeout=WAIT):
        return self._reply(time.monotonic() + timeout)

    def _reply(self, deadline):
        line = self._line(deadline)
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            return RedisError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) < n + 2:
                self._fill(deadline)
            data = bytes(self.buf[:n])
            del self.buf[:n + 2]
            return data
        if kind == b"*":
            n = int(rest)
            if n < 0:
                return None
            return [self._reply(deadline) for _ in range(n)]
        raise AssertionError("not a RESP reply: %r" % line)


class RedisError(str):
    pass


class Redis:
    """A redis-server in a host, bound to the host's address only."""

    def __init__(self, hosts, name, port=REDIS_PORT):
        self.hosts = hosts
        self.name = name
        self.addr = hosts.addr(name)
        self.port = port
        self.url = "redis://%s:%d" % (self.addr, port)
        server = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not os.path.exists(server):
            pytest.skip("redis-server not installed (./dev installs it)")
        workdir = os.path.join(hosts.dir, "redis-" + name)
        os.mkdir(workdir)
        self.log_path = os.path.join(workdir, "redis.log")
        self.log_file = open(self.log_path, "wb")
        self.proc = hosts.run(name, [server, "--bind", self.addr, "--port", str(port),
                                     "--save", "", "--appendonly", "no",
                                     "--protected-mode", "no", "--dir", workdir,
                                     "--daemonize", "no"],
                              stdout=self.log_file, stderr=subprocess.STDOUT)
        hosts.closers.append(self.log_file.close)
        self.wait_ping()

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def wait_ping(self, timeout=WAIT):
        """Until it answers PING from its own host (bounded)."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, "redis-server exited %r:\n%s" % (
                self.proc.returncode, self.log())
            try:
                if self.command("PING", timeout=1.0) == "PONG":
                    return
            except (OSError, AssertionError):
                pass
            assert time.monotonic() < deadline, "redis-server not answering:\n" + self.log()
            time.sleep(0.02)  # bounded: redis is starting

    def command(self, *args, frm=None, timeout=WAIT):
        """One command on a fresh connection from host frm (redis's own by
        default); returns the reply (a RedisError for an error reply)."""
        s = self.hosts.connect(frm or self.name, (self.addr, self.port), timeout=timeout)
        try:
            s.sendall(resp_encode(*args))
            return RespReader(s).reply(timeout)
        finally:
            s.close()


def start_redis(hosts, name, port=REDIS_PORT):
    return Redis(hosts, name, port)


# ------------------------------------------------------------ HAProxy

def haproxy_config(bind, backends, proxy="send-proxy-v2"):
    """mode tcp, round robin over backends [(addr, port)], each sent a
    PROXY header (`proxy`: send-proxy-v2, send-proxy or "" for none)."""
    lines = ["global", "    maxconn 4000", "    nbthread 1",
             "defaults", "    mode tcp", "    timeout connect 5s", "    timeout client 10m",
             "    timeout server 10m",
             "frontend front", "    bind %s:%d" % bind, "    default_backend back",
             "backend back", "    balance roundrobin"]
    for i, (addr, port) in enumerate(backends, 1):
        lines.append(("    server s%d %s:%d %s" % (i, addr, port, proxy)).rstrip())
    return "\n".join(lines) + "\n"


class HAProxy:
    """HAProxy in a host, listening on the host's address; no health
    checks, so every connection it makes to a backend is a client's."""

    def __init__(self, hosts, name, port, backends, proxy="send-proxy-v2"):
        binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
        if not os.path.exists(binary):
            pytest.fail("haproxy not installed (./dev installs it)")
        self.hosts = hosts
        self.name = name
        self.addr = hosts.addr(name)
        self.port = port
        self.cfg = os.path.join(hosts.dir, "haproxy-%s.cfg" % name)
        with open(self.cfg, "w") as f:
            f.write(haproxy_config((self.addr, port), backends, proxy))
        self.proc = hosts.run(name, [binary, "-db", "-f", self.cfg],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.log = Log(self.proc.stderr)
        hosts.closers.append(self._close_log)
        try:
            hosts.wait_listening(name, port, self.proc)
        except AssertionError as e:
            raise AssertionError("%s; haproxy said:\n%s" % (e, self.log.text()))


    def _close_log(self):
        self.log.join(WAIT)
        if not self.log.thread.is_alive():
            self.proc.stderr.close()


def start_haproxy(hosts, name, port, backends, proxy="send-proxy-v2"):
    return HAProxy(hosts, name, port, backends, proxy)


# ------------------------------------------------------------ sockfork

class Front:
    """What test_chat's Chat(srv) needs of a server (connect(), clients,
    close_client()), for clients in host `name` connecting to addr (a
    balancer, or an instance directly). `srv` is the instance whose log and
    control socket the test reads, if any."""

    def __init__(self, hosts, name, addr, srv=None):
        self.hosts = hosts
        self.name = name
        self.addr = addr
        self.srv = srv
        self.clients = []
        self.ctl_path = getattr(srv, "ctl_path", None)
        self.log = getattr(srv, "log", None)

    def connect(self, timeout=WAIT):
        s = self.hosts.connect(self.name, self.addr, timeout=timeout)
        self.clients.append(s)
        return s

    def close_client(self, sock):
        sock.close()
        if sock in self.clients:
            self.clients.remove(sock)

    def close_clients(self):
        for s in self.clients:
            s.close()
        self.clients = []


def sockfork_in(hosts, sockfork, name, *args, listen, command="chat", ctl_path=None):
    """conftest's sockfork(...) run in host NAME: a Server (its log, its
    stop-and-check at teardown), with a control socket at ctl_path (a Unix
    path, reachable from any namespace) if given."""
    if ctl_path is not None:
        args = ("--control", ctl_path) + tuple(args)
    srv = sockfork(*args, listen=listen, bin=hosts.wrapper(name), command=command)
    srv.ctl_path = ctl_path
    srv.host = name
    return srv

