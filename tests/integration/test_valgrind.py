"""The supervisor under valgrind: no leak, no invalid access, after serving
connections and shutting down. Self-contained (no fixture), so it reads as
one story."""
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

BIN = os.environ.get("SOCKFORK_BIN", os.path.join(os.path.dirname(__file__), "..", "..", "build", "sockfork"))

pytestmark = [
    pytest.mark.skipif(os.environ.get("SOCKFORK_SANITIZED") == "1",
                       reason="valgrind cannot run a sanitizer build"),
    pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed"),
]


class StderrLines:
    """Collects the server's stderr in a thread; waits are bounded."""

    def __init__(self, proc):
        self.lines = []
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._pump, args=(proc.stderr,), daemon=True)
        self.thread.start()

    def _pump(self, f):
        for line in f:
            with self.cond:
                self.lines.append(line)
                self.cond.notify_all()

    def wait_count(self, pattern, count, timeout=60):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                found = [m for m in (re.search(pattern, l) for l in self.lines) if m]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("%d lines matching %r not seen; got:\n%s"
                                         % (count, pattern, "".join(self.lines)))
                self.cond.wait(left)

    def text(self):
        self.thread.join(timeout=30)
        with self.cond:
            return "".join(self.lines)


@contextlib.contextmanager
def under_valgrind(*args):
    """The supervisor (`sockfork ARGS`) under valgrind: yields the process
    and its collected stderr; it is killed if the test did not stop it."""
    proc = subprocess.Popen(
        ["valgrind", "--leak-check=full", "--show-leak-kinds=definite,indirect",
         "--errors-for-leak-kinds=definite,indirect", "--error-exitcode=99",
         "--child-silent-after-fork=yes", "--track-fds=no"] + list(args),
        stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        yield proc, StderrLines(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def check_valgrind(proc, err):
    assert "ERROR SUMMARY: 0 errors" in err, err[-3000:]
    assert "definitely lost: 0 bytes" in err or "no leaks are possible" in err, err[-3000:]
    assert proc.returncode == 0, err[-3000:]


def test_supervisor_has_no_leaks_under_valgrind(tmp_path):
    sock_path = str(tmp_path / "v.sock")
    with under_valgrind(BIN, "serve", "-l", "127.0.0.1:0", "-l", "unix:" + sock_path,
                        "--control", str(tmp_path / "ctl.sock"),
                        "--max-per-ip", "3", "--idle-timeout", "5", "--echo") as (proc, log):
        port = int(log.wait_count(r"listening on 127\.0\.0\.1:(\d+)", 1)[0].group(1))
        log.wait_count(r"listening on unix:", 1)
        # Connections over both listeners, some refused by the per-IP limit,
        # so every path through accept, fork, reap and refuse runs.
        for round_ in range(5):
            held = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(4)]
            for i, s in enumerate(held[:3]):
                payload = b"round %d conn %d\n" % (round_, i)
                s.sendall(payload)
                got = b""
                while len(got) < len(payload):
                    chunk = s.recv(4096)
                    assert chunk, "connection closed early"
                    got += chunk
                assert got == payload
            # The control socket, while children are alive: list and stats.
            for cmd in ("list", "stats"):
                ctl = subprocess.run([BIN, "ctl", "--control", str(tmp_path / "ctl.sock"), "--json", cmd],
                                     capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
                assert ctl.returncode == 0, ctl.stderr
            # The fourth is over the per-IP limit: closed by the server.
            assert held[3].recv(16) == b""
            u = socket.socket(socket.AF_UNIX)
            u.settimeout(30)
            u.connect(sock_path)
            u.sendall(b"unix\n")
            assert u.recv(16) == b"unix\n"
            u.close()
            for s in held:
                s.close()
            # Next round only once this one's children are reaped, or the
            # per-IP limit would still count them.
            log.wait_count(r"disconnected pid=", 4 * (round_ + 1))
        log.wait_count(r"refused: 3 connections from 127\.0\.0\.1", 5)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    check_valgrind(proc, log.text())
    assert not os.path.exists(sock_path)


# An exec'd handler that joins its client to its channel: what the client
# sends goes to fd 3 as it is, what comes on fd 3 goes to the client. The
# test then speaks the channel's JSON lines itself, over TCP.
RELAY = 'cat <&3 & cat >&3; kill $! 2>/dev/null'


def read_json_lines(sock, count, timeout=60):
    import json
    deadline = time.monotonic() + timeout
    buf, out = b"", []
    while len(out) < count:
        left = deadline - time.monotonic()
        assert left > 0, "%d JSON lines not seen within %.0f s; got %r" % (count, timeout, out)
        sock.settimeout(left)
        chunk = sock.recv(65536)
        assert chunk, "closed after %r" % out
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            out.append(json.loads(line))
    return out


def test_bus_has_no_leaks_under_valgrind(tmp_path):
    """Every bus path (subscribe with history, publish, claim, send to a name
    and a pid, broadcast, errors, a child kicked for garbage, ctl send and
    broadcast) in a supervisor under valgrind."""
    import json
    ctl_path = str(tmp_path / "ctl.sock")
    with under_valgrind(BIN, "serve", "-l", "127.0.0.1:0", "--control", ctl_path,
                        "--", "/bin/sh", "-c", RELAY) as (proc, log):
        port = int(log.wait_count(r"listening on 127\.0\.0\.1:(\d+)", 1)[0].group(1))
        a = socket.create_connection(("127.0.0.1", port), timeout=30)
        b = socket.create_connection(("127.0.0.1", port), timeout=30)
        pids = [int(m.group(1)) for m in log.wait_count(r"connected pid=(\d+)", 2)]

        def tell(s, **msg):
            s.sendall(json.dumps(msg).encode() + b"\n")

        tell(a, op="claim", name="alice")
        assert read_json_lines(a, 1) == [{"op": "claimed", "name": "alice", "ok": True}]
        tell(a, op="publish", topic="t", data="one")
        tell(a, op="publish", topic="t", data="two")
        # The supervisor takes each child's requests in order, but not the
        # two children's in any order: a's own message back says its
        # publishes are done before b subscribes.
        tell(a, op="send", to=pids[0], data="sync")
        assert read_json_lines(a, 1)[0]["data"] == "sync"
        tell(b, op="subscribe", topic="t", history=5)
        got = read_json_lines(b, 2)
        assert [m["data"] for m in got] == ["one", "two"] and got[0]["kind"] == "history"
        tell(b, op="send", name="alice", data="to a name")
        tell(b, op="send", to=99999999, data="to nobody")
        tell(b, op="frobnicate")
        assert read_json_lines(a, 1)[0]["data"] == "to a name"
        errors = read_json_lines(b, 2)
        assert [m["op"] for m in errors] == ["error", "error"], errors
        tell(a, op="status", text="valgrind")
        tell(a, op="log", text="hello")
        log.wait_count(r"says: hello", 1)
        for cmd in (["send", str(pids[0]), "pushed"], ["broadcast", "everyone"], ["--json", "list"],
                    ["--json", "stats"]):
            r = subprocess.run([BIN, "ctl", "--control", ctl_path] + cmd, capture_output=True,
                               timeout=60, stdin=subprocess.DEVNULL)
            assert r.returncode == 0, r.stderr
        assert [m["data"] for m in read_json_lines(a, 2)] == ["pushed", "everyone"]
        # Garbage from b: it is cut off, a carries on.
        b.sendall(b"this is not json\n")
        log.wait_count(r"not a JSON object: closing its channel and ending it", 1)
        tell(a, op="publish", topic="t", data="three")
        a.close()
        b.close()
        log.wait_count(r"disconnected pid=", 2)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    check_valgrind(proc, log.text())


def read_until(sock, marker, timeout=60):
    deadline = time.monotonic() + timeout
    buf = b""
    while marker not in buf:
        left = deadline - time.monotonic()
        assert left > 0, "no %r within %.0f s; got %r" % (marker, timeout, buf[-500:])
        sock.settimeout(left)
        chunk = sock.recv(65536)
        assert chunk, "closed before %r; got %r" % (marker, buf)
        buf += chunk
    return buf


def test_chat_supervisor_has_no_leaks_under_valgrind(tmp_path):
    """sockfork chat's supervisor under valgrind: names, topics with
    history, member and topic listings, a will fired by a killed child,
    ctl notices, and the shutdown that closes every channel."""
    ctl_path = str(tmp_path / "ctl.sock")
    with under_valgrind(BIN, "chat", "-l", "127.0.0.1:0", "--control", ctl_path, "--history", "5") as (proc, log):
        port = int(log.wait_count(r"listening on 127\.0\.0\.1:(\d+)", 1)[0].group(1))
        a = socket.create_connection(("127.0.0.1", port), timeout=60)
        read_until(a, b"Your nickname?")
        a.sendall(b"alice\n")
        read_until(a, b"Hello alice")
        b = socket.create_connection(("127.0.0.1", port), timeout=60)
        read_until(b, b"Your nickname?")
        b.sendall(b"alice\nbob\n")
        read_until(b, b"Hello bob")
        read_until(a, b"bob has joined lobby")
        a.sendall(b"hi bob\n/who\n/rooms\n/msg bob psst\n/join dev\n")
        got = read_until(b, b"alice has left lobby")
        assert b"<alice> hi bob" in got and b"*alice* psst" in got, got
        read_until(a, b"you are now in dev")
        pids = [int(m.group(1)) for m in log.wait_count(r"connected pid=(\d+)", 2)]
        r = subprocess.run([BIN, "ctl", "--control", ctl_path, "broadcast", "notice"],
                           capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, r.stderr
        read_until(b, b"NOTICE: notice")
        b.sendall(b"/join dev\n")
        read_until(a, b"bob has joined dev")
        os.kill(pids[0], signal.SIGKILL)  # alice's process: its will speaks for it
        read_until(b, b"alice has left dev (connection lost)")
        proc.send_signal(signal.SIGTERM)
        read_until(b, b"shutting down")
        proc.wait(timeout=60)
        a.close()
        b.close()
    check_valgrind(proc, log.text())


def test_run_under_valgrind(tmp_path):
    """`sockfork run` (the pool's parent) over successes, failures, a retry,
    a timeout, fd-3 results and grouped, ordered output: no leak, and the
    output and results as without valgrind. Valgrind has no pidfd_open, so
    this also covers the polled exits."""
    results = tmp_path / "results.jsonl"
    script = ('case $1 in 3) exit 4;; 5) sleep 30;; *) echo "out $1"; '
              'echo "{\\"result\\": $1}" >&3;; esac')
    with under_valgrind(BIN, "run", "-k", "-j", "3", "--timeout", "2", "--kill-grace", "0.2",
                        "--retries", "1", "--results", str(results),
                        "sh", "-c", script, "_", ":::", *[str(i) for i in range(1, 9)]) as (proc, log):
        proc.wait(timeout=300)
    err = log.text()
    check_valgrind_run(proc, err, 2)
    recs = {r["seq"]: r for r in map(json.loads, results.read_text().splitlines())}
    assert sorted(recs) == list(range(1, 9))
    assert recs[3]["exit_code"] == 4 and recs[3]["attempts"] == 2
    assert recs[5]["timed_out"] and recs[5]["signal"] == "SIGTERM"
    assert recs[7]["result"] == 7 and recs[7]["exit_code"] == 0


def check_valgrind_run(proc, err, failed):
    assert "ERROR SUMMARY: 0 errors" in err, err[-3000:]
    assert "definitely lost: 0 bytes" in err or "no leaks are possible" in err, err[-3000:]
    assert proc.returncode == failed, err[-3000:]
