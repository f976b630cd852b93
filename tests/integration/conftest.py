"""Fixtures for the integration tests: the real `sockfork serve` binary, on
ephemeral loopback ports or Unix paths in tmp_path, talked to over real
sockets.

Every wait here is bounded. The server's stderr is read by a thread into a
list of lines; tests wait for a line matching a pattern, and when they need
to know that something did NOT happen they rely on the order of log lines
rather than on a pause.

At teardown a server is stopped with SIGTERM and must exit 0, must leave no
process of its session behind, must have logged a `disconnected` line for
every `connected` one, and must not have printed a sanitizer report.

Environment:
  SOCKFORK_BIN       the sockfork binary (default: build/sockfork)
  SOCKFORK_HELPERS   the directory of tests/helpers' programs
                     (default: build/tests/helpers)
"""
import os
import re
import signal
import socket
import subprocess
import threading
import time

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ.get("SOCKFORK_BIN") or os.path.join(ROOT, "build", "sockfork")
HELPERS = os.environ.get("SOCKFORK_HELPERS") or os.path.join(ROOT, "build", "tests", "helpers")

# Bounds for every wait. A sanitizer build is slower, never this much.
WAIT = 10.0
LONG_WAIT = 30.0


def wait_for(cond, what, timeout=WAIT):
    """Polls cond (bounded) until it returns something true, and returns it."""
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        assert time.monotonic() < deadline, "not within %.0f s: %s" % (timeout, what)
        time.sleep(0.02)  # a bounded poll

CONNECTED_RE = re.compile(r"^sockfork: \[(?P<peer>.+?)\] connected pid=(?P<pid>\d+) active=(?P<active>\d+)$")
DISCONNECTED_RE = re.compile(
    r"^sockfork: \[(?P<peer>.+?)\] disconnected pid=(?P<pid>\d+) duration=(?P<duration>\d+(\.\d+)?)s"
    r"(?: in=(?P<bytes_in>\d+) out=(?P<bytes_out>\d+))? status=(?P<status>.+)$")
PID_RE = re.compile(r"\bpid=(\d+)\b")
SANITIZER_MARKS = ("Sanitizer", "runtime error:")


def helper(name):
    """Path of a program built from tests/helpers; skips if it is missing."""
    path = os.path.join(HELPERS, name)
    if not os.path.exists(path):
        pytest.fail("test helper %s not built (SOCKFORK_HELPERS=%s)" % (name, HELPERS))
    return path


def server_env(extra=None, preload=None):
    """The environment for a sockfork process: ours, sanitizer options that
    report leaks, and optionally a preloaded shim."""
    env = dict(os.environ)
    asan = env.get("ASAN_OPTIONS", "")
    if "detect_leaks" not in asan:
        asan = (asan + ":" if asan else "") + "detect_leaks=1"
    if preload:
        # ASan insists on being first in the link order unless told not to.
        asan += ":verify_asan_link_order=0"
        env["LD_PRELOAD"] = preload
    env["ASAN_OPTIONS"] = asan
    env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
    if extra:
        env.update(extra)
    return env


def peer_text(sock):
    """How the server names this client socket in its log: 1.2.3.4:5 or
    [::1]:5. A string is taken as already being that name."""
    if isinstance(sock, str):
        return sock
    host, port = sock.getsockname()[:2]
    if sock.family == socket.AF_INET6:
        return "[%s]:%d" % (host, port)
    return "%s:%d" % (host, port)


def recv_exact(sock, n, timeout=WAIT):
    """Reads exactly n bytes; fails on EOF or when the deadline passes."""
    deadline = time.monotonic() + timeout
    chunks = []
    got = 0
    while got < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("timed out after %d of %d bytes" % (got, n))
        sock.settimeout(left)
        chunk = sock.recv(min(n - got, 1 << 20))
        if not chunk:
            raise AssertionError("EOF after %d of %d bytes: %r" % (got, n, b"".join(chunks)[-200:]))
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def recv_line(sock, timeout=WAIT, limit=1 << 16):
    """Reads up to and including the next b"\\n", one byte at a time so
    nothing after it is consumed."""
    deadline = time.monotonic() + timeout
    buf = bytearray()
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("timed out reading a line, got %r" % bytes(buf))
        sock.settimeout(left)
        c = sock.recv(1)
        if not c:
            raise AssertionError("EOF in the middle of a line: %r" % bytes(buf))
        buf += c
        assert len(buf) <= limit, "line too long"
    return bytes(buf)


def recv_until_eof(sock, timeout=WAIT, limit=64 << 20):
    """Reads until the peer closes; a reset counts as the end too."""
    deadline = time.monotonic() + timeout
    chunks = []
    total = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("no EOF after %d bytes" % total)
        sock.settimeout(left)
        try:
            chunk = sock.recv(1 << 20)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        assert total <= limit, "more data than expected"
    return b"".join(chunks)


def expect_eof(sock, timeout=WAIT):
    """The server closed (or reset) the connection without sending anything."""
    data = recv_until_eof(sock, timeout=timeout, limit=1 << 16)
    assert data == b"", "expected EOF, got %r" % data[:200]


def exchange(sock, data, expect_len, timeout=LONG_WAIT, shut_wr=False):
    """Sends `data` from a thread while reading `expect_len` bytes here, so
    large transfers through an echoing peer cannot deadlock. With shut_wr,
    half-closes after sending."""
    err = []

    def send():
        try:
            sock.sendall(data)
            if shut_wr:
                sock.shutdown(socket.SHUT_WR)
        except OSError as e:  # reported below, after the read fails or not
            err.append(e)

    sock.settimeout(timeout)
    t = threading.Thread(target=send, daemon=True)
    t.start()
    try:
        got = recv_exact(sock, expect_len, timeout=timeout)
    finally:
        t.join(timeout)
    assert not t.is_alive(), "sender still blocked"
    assert not err, "send failed: %r" % err
    return got


class Log:
    """The server's stderr, line by line, filled by a thread."""

    def __init__(self, stream):
        self.lines = []
        self.pids = set()
        self.cond = threading.Condition()
        self.eof = False
        self.thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self.thread.start()

    def _pump(self, stream):
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self.cond:
                self.lines.append(line)
                m = CONNECTED_RE.match(line)
                if m:
                    self.pids.add(int(m.group("pid")))
                self.cond.notify_all()
        with self.cond:
            self.eof = True
            self.cond.notify_all()

    def mark(self):
        """A position in the log, to wait for lines that come after it."""
        with self.cond:
            return len(self.lines)

    def snapshot(self, start=0):
        with self.cond:
            return list(self.lines[start:])

    def text(self):
        return "\n".join(self.snapshot())

    def find(self, pattern, start=0, end=None):
        """Matches of pattern among lines [start, end) as (index, match)."""
        rx = re.compile(pattern)
        with self.cond:
            lines = self.lines[start:end]
        out = []
        for i, line in enumerate(lines, start):
            m = rx.search(line)
            if m:
                out.append((i, m))
        return out

    def wait(self, pattern, count=1, start=0, timeout=WAIT):
        """Waits until `count` lines at or after `start` match; returns the
        list of (index, match). Fails with the log when the time is up."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        found = []
        pos = start
        with self.cond:
            while True:
                while pos < len(self.lines):
                    m = rx.search(self.lines[pos])
                    if m:
                        found.append((pos, m))
                    pos += 1
                if len(found) >= count:
                    return found[:count] if count > 0 else found
                left = deadline - time.monotonic()
                if left <= 0 or self.eof:
                    raise AssertionError(
                        "%d line(s) matching %r not seen (%d seen%s); log:\n%s"
                        % (count, pattern, len(found), ", stderr closed" if self.eof else "",
                           "\n".join(self.lines[-80:])))
                self.cond.wait(min(left, 1.0))

    def wait_one(self, pattern, start=0, timeout=WAIT):
        """The first line at or after `start` matching pattern: (index, match)."""
        return self.wait(pattern, 1, start, timeout)[0]

    def join(self, timeout):
        self.thread.join(timeout)
        return not self.thread.is_alive()


def proc_stat(pid):
    """(state, ppid, session) of a process, or None if it is gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm may contain spaces and parentheses: split after the last ')'.
    fields = data[data.rindex(")") + 2:].split()
    return fields[0], int(fields[1]), int(fields[3])


def proc_cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        return "?"


def all_pids():
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def children_of(ppid):
    """Processes whose parent is ppid, as [(pid, state)] (zombies included)."""
    out = []
    for pid in all_pids():
        st = proc_stat(pid)
        if st and st[1] == ppid:
            out.append((pid, st[0]))
    return out


def session_members(sid, exclude=()):
    out = []
    for pid in all_pids():
        if pid in exclude:
            continue
        st = proc_stat(pid)
        if st and st[2] == sid:
            out.append((pid, st[0], proc_cmdline(pid)))
    return out


def kill_session(sid):
    """SIGKILL to every process of session sid (a last resort at teardown)."""
    for pid, _, _ in session_members(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Server:
    """One `sockfork serve` process, started in its own session."""

    def __init__(self, tmp_path, args, listen=("127.0.0.1:0",), env=None, preload=None, bin=None,
                 command="serve"):
        self.tmp_path = tmp_path
        self.args = list(args)
        self.listen_args = list(listen)
        # bin: another program with `sockfork serve`'s command line and log
        # (tests/helpers/chanserver); the default is the sockfork binary.
        # command: the subcommand, "chat" for `sockfork chat`.
        cmd = [bin or BIN, command]
        for a in self.listen_args:
            cmd += ["-l", a]
        cmd += self.args
        self.cmd = cmd
        self.clients = []
        self.stdout_file = open(os.path.join(str(tmp_path), "sockfork.stdout"), "wb")
        self.proc = subprocess.Popen(cmd, cwd=str(tmp_path), stdin=subprocess.DEVNULL,
                                     stdout=self.stdout_file, stderr=subprocess.PIPE,
                                     env=server_env(env, preload), start_new_session=True)
        self.pid = self.proc.pid
        self.log = Log(self.proc.stderr)
        self.checked = False
        found = self.log.wait(r"^sockfork: listening on (.+)$", count=len(self.listen_args))
        self.addresses = []
        for _, m in found:
            self.addresses.append(self._parse_addr(m.group(1)))

    @staticmethod
    def _parse_addr(text):
        if text.startswith("unix:"):
            return ("unix", text[len("unix:"):])
        m = re.match(r"^\[(.+)\]:(\d+)$", text)
        if m:
            return ("tcp6", (m.group(1), int(m.group(2))))
        host, port = text.rsplit(":", 1)
        return ("tcp", (host, int(port)))

    # ------------------------------------------------------------ clients

    @property
    def port(self):
        """The port of the first TCP listener."""
        for kind, a in self.addresses:
            if kind in ("tcp", "tcp6"):
                return a[1]
        raise AssertionError("no TCP listener")

    def address(self, kind):
        for k, a in self.addresses:
            if k == kind:
                return a
        raise AssertionError("no %s listener in %r" % (kind, self.addresses))

    def connect(self, kind=None, source=None, timeout=WAIT):
        """A client socket connected to the listener of the given kind (the
        first listener by default). Closed at teardown if still open."""
        if kind is None:
            kind = self.addresses[0][0]
        addr = self.address(kind)
        if kind == "unix":
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        else:
            s = socket.socket(socket.AF_INET6 if kind == "tcp6" else socket.AF_INET,
                              socket.SOCK_STREAM)
        self.clients.append(s)
        s.settimeout(timeout)
        if source is not None:
            s.bind((source, 0))
        s.connect(addr)
        return s

    def wait_connected(self, sock, start=0, timeout=WAIT):
        """Waits for the `connected` line of this TCP client (a socket or its
        peer_text): (index, match)."""
        return self.log.wait_one(r"^sockfork: \[%s\] connected pid=(\d+) active=(\d+)$"
                                 % re.escape(peer_text(sock)), start, timeout)

    def wait_disconnected(self, sock, start=0, timeout=WAIT):
        """Waits for the `disconnected` line of this TCP client: (index, match)."""
        i, _ = self.log.wait_one(r"^sockfork: \[%s\] disconnected " % re.escape(peer_text(sock)),
                                 start, timeout)
        with self.log.cond:
            line = self.log.lines[i]
        return i, DISCONNECTED_RE.match(line)

    def close_client(self, sock):
        """Closes one client; returns its name in the log (see peer_text)."""
        peer = peer_text(sock) if sock.family != socket.AF_UNIX else None
        sock.close()
        if sock in self.clients:
            self.clients.remove(sock)
        return peer

    def close_clients(self):
        for s in self.clients:
            try:
                s.close()
            except OSError:
                pass
        self.clients = []

    # ------------------------------------------------------------ lifetime

    def signal(self, sig):
        self.proc.send_signal(sig)

    def wait_exit(self, timeout=WAIT):
        """Waits (bounded) for the server to exit; returns its status."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError("sockfork did not exit within %.0f s; log:\n%s"
                                 % (timeout, "\n".join(self.log.snapshot()[-60:])))

    def stop(self, timeout=LONG_WAIT):
        """SIGTERM, then the checks every test ends with. Returns the log."""
        self.close_clients()
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
        rc = self.wait_exit(timeout)
        self.check_clean_exit(rc)
        return self.log

    def check_clean_exit(self, rc):
        self.checked = True
        problems = []
        if rc != 0:
            problems.append("exit status %r, expected 0" % rc)
        # Children hold stderr too: stderr closes once every one is gone.
        if not self.log.join(WAIT):
            problems.append("stderr still open %.0f s after exit: a process kept it" % WAIT)
        text = self.log.text()
        for mark in SANITIZER_MARKS:
            if mark in text:
                problems.append("sanitizer report (%r) in stderr" % mark)
        # Every connected child was reaped and logged.
        connected = {int(m.group("pid")) for _, m in self.log.find(CONNECTED_RE.pattern)}
        disconnected = {int(m.group("pid")) for _, m in self.log.find(DISCONNECTED_RE.pattern)}
        if "-q" not in self.args and connected - disconnected:
            problems.append("no disconnected line for pids %s" % sorted(connected - disconnected))
        # Nothing of the server's session left. Its own children must be
        # gone entirely (a zombie would be one it never reaped); deeper
        # descendants (a handler's own children) must be dead, and may only
        # linger as zombies handed to init when their parent died with them.
        deadline = time.monotonic() + WAIT
        while True:
            left = [m for m in session_members(self.pid) if not self._orphan_zombie(m)]
            if not left or time.monotonic() >= deadline:
                break
            time.sleep(0.05)  # a bounded poll of /proc for exiting processes
        if left:
            problems.append("processes of the server's session left: %r" % left)
        if self.log.lines and self.log.lines[-1] != "sockfork: exiting":
            problems.append("last line is %r, not 'sockfork: exiting'" % self.log.lines[-1])
        if problems:
            raise AssertionError("; ".join(problems) + "\nlog:\n" + "\n".join(self.log.snapshot()[-60:]))

    def _orphan_zombie(self, member):
        """A dead grandchild that init has yet to reap: not the server's doing."""
        pid, state, _ = member
        st = proc_stat(pid)
        return st is None or (state == "Z" and pid not in self.log.pids and st[1] == 1)

    def kill_hard(self):
        """Last resort at teardown: nothing of the session may outlive the test."""
        kill_session(self.pid)
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            pass

    def close(self):
        self.stdout_file.close()
        if self.proc.stderr:
            self.proc.stderr.close()


@pytest.fixture
def sockfork(tmp_path):
    """Factory: sockfork(args, listen=[...], env={}, preload=path, bin=path,
    command="serve") starts a server and returns a Server once it listens. At teardown each server is
    stopped with SIGTERM and checked (exit 0, no leftover process, every
    child logged, no sanitizer report) unless the test already did."""
    servers = []

    def start(*args, listen=("127.0.0.1:0",), env=None, preload=None, bin=None, command="serve"):
        srv = Server(tmp_path, args, listen=listen, env=env, preload=preload, bin=bin,
                     command=command)
        servers.append(srv)
        return srv

    yield start

    errors = []
    for srv in servers:
        try:
            if not srv.checked:
                srv.stop()
        except AssertionError as e:
            errors.append(str(e))
        finally:
            srv.kill_hard()
            srv.close()
    if errors:
        pytest.fail("server teardown: " + "\n\n".join(errors), pytrace=False)


def ipv6_loopback_available():
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    except OSError:
        return False
    try:
        s.bind(("::1", 0))
        return True
    except OSError:
        return False
    finally:
        s.close()


def unused_port():
    """A loopback TCP port the kernel picked (an ephemeral one) and that is
    free this moment, for a program that cannot take port 0 (HAProxy,
    systemd-socket-activate, two listeners sharing one port). Another
    process may take it before the caller binds: callers retry."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def run_cli(*args, timeout=WAIT):
    """Runs `sockfork ARGS` to completion (bounded): (status, stdout, stderr)."""
    proc = subprocess.Popen([BIN] + list(args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=server_env(), start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError("sockfork %s did not exit within %.0f s" % (" ".join(args), timeout))
    return proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


# ------------------------------------------------- the channel (chanserver)

def control_path(srv):
    """The control socket a server announced ("control socket unix:PATH")."""
    _, m = srv.log.wait_one(r"^sockfork: control socket unix:(.+)$")
    return m.group(1)


class Control:
    """A connection to a server's control socket: one JSON request per line,
    one answer per line, read with a deadline."""

    def __init__(self, path, timeout=WAIT):
        import json
        self._json = json
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = bytearray()
        self.timeout = timeout

    def __call__(self, **req):
        self.sock.sendall(self._json.dumps(req).encode() + b"\n")
        deadline = time.monotonic() + self.timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no answer to %r" % req)
            self.sock.settimeout(left)
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise AssertionError("control socket closed; no answer to %r" % req)
            self.buf += chunk
        i = self.buf.index(b"\n")
        line = bytes(self.buf[:i])
        del self.buf[:i + 1]
        return self._json.loads(line)

    def close(self):
        self.sock.close()


def _unescape(text):
    """chanserver's %XX fields back to bytes ("-" is empty)."""
    if text == "-":
        return b""
    out = bytearray()
    i = 0
    raw = text.encode("utf-8", "surrogateescape")
    while i < len(raw):
        if raw[i] == 0x25 and i + 3 <= len(raw):
            out.append(int(raw[i + 1:i + 3], 16))
            i += 3
        else:
            out.append(raw[i])
            i += 1
    return bytes(out)


def escape_arg(data):
    """A text argument for a chanserver command: every byte %XX-encoded
    unless it is printable ASCII other than '%' and space."""
    if isinstance(data, str):
        data = data.encode()
    return "".join(chr(b) if 0x20 < b < 0x7f and b != 0x25 else "%%%02X" % b for b in data)


class Msg:
    """One "MSG kind from ok topic len data" line of chanserver."""

    def __init__(self, line):
        parts = line.split(" ", 6)
        assert parts[0] == "MSG" and len(parts) == 7, "not a MSG line: %r" % line
        self.kind = parts[1]
        self.frm = int(parts[2])
        self.ok = int(parts[3])
        self.topic = _unescape(parts[4]).decode("utf-8", "replace")
        self.len = int(parts[5])
        self.data = _unescape(parts[6])

    def __repr__(self):
        return "Msg(%s from=%d ok=%d topic=%r len=%d data=%r)" % (
            self.kind, self.frm, self.ok, self.topic, self.len, self.data[:60])


class BusClient:
    """A client of tests/helpers/chanserver: its child speaks the line
    protocol at the top of chanserver.c. Waits for the child's `connected`
    line, so the supervisor knows its pid when the test goes on."""

    FINAL = ("OK ", "ERR ", "PID ", "COUNT ", "BYE", "DONE ")

    def __init__(self, srv, timeout=WAIT):
        self.srv = srv
        self.sock = srv.connect(timeout=timeout)
        self.buf = bytearray()
        hello = self.line(timeout)
        assert hello.startswith("HELLO "), hello
        self.pid = int(hello.split()[1])
        srv.log.wait_one(r"\] connected pid=%d active=" % self.pid, timeout=timeout)

    def line(self, timeout=WAIT):
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("pid %s: timed out reading a line, got %r"
                                     % (getattr(self, "pid", "?"), bytes(self.buf[-200:])))
            self.sock.settimeout(left)
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise AssertionError("pid %s: EOF, got %r" % (getattr(self, "pid", "?"),
                                                              bytes(self.buf[-200:])))
            self.buf += chunk
        i = self.buf.index(b"\n")
        line = bytes(self.buf[:i]).decode("utf-8", "surrogateescape")
        del self.buf[:i + 1]
        return line

    def send(self, text):
        self.sock.sendall((text if isinstance(text, bytes) else text.encode()) + b"\n")

    def cmd(self, text, timeout=WAIT):
        """Sends a command; returns (MSG lines before the answer, the answer)."""
        self.send(text)
        msgs = []
        deadline = time.monotonic() + timeout
        while True:
            line = self.line(max(0.0, deadline - time.monotonic()))
            if line.startswith("MSG "):
                msgs.append(Msg(line))
            elif line.startswith(self.FINAL):
                return msgs, line
            else:
                msgs.append(line)  # CLOSED, ERR RECV: a test fails on them

    def ok(self, text, timeout=WAIT):
        """A command that must answer OK; returns the messages before it."""
        msgs, last = self.cmd(text, timeout)
        verb = text.split(" ", 1)[0]
        assert last.startswith("OK " + verb), "pid %d: %r answered %r after %r" % (
            self.pid, text[:80], last, msgs)
        return msgs

    def sync(self):
        """Every message the supervisor routed to this child so far."""
        return self.ok("SYNC")

    def close(self):
        self.srv.close_client(self.sock)
