"""`sockfork run --queue` and `sockfork worker` (issue 17) against one local
redis-server on a Unix socket: submitter and workers are local processes.
The multi-host tests (network namespaces, partitions) are test_netns's.

Every wait is bounded and on a condition (a file's lines, a process's exit,
a Redis count), never a pause.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

import conftest
from conftest import BIN, LONG_WAIT, SANITIZER_MARKS, WAIT, server_env

pytestmark = pytest.mark.skipif(not shutil.which("redis-server") or not shutil.which("redis-cli"),
                                reason="redis-server (and redis-cli) not installed (./dev installs them)")

TASK = """#!/bin/sh
# What a task does is its argument.
case "$1" in
  ok) echo "ok $SOCKFORK_TASK"; exit 0;;
  code) echo "to stderr" >&2; exit 3;;
  sig) kill -9 $$;;
  slow) sleep 30;;
  res) echo '{"result": {"v": 42}}' >&3; echo '{"progress": 0.5}' >&3; exit 0;;
  flaky) f="$QDIR/flaky.$SOCKFORK_TASK"; [ -e "$f" ] && exit 0; : > "$f"; exit 1;;
  nap) sleep 0.2; echo "nap $SOCKFORK_TASK";;
  long) sleep 2; echo "long $SOCKFORK_TASK";;
  poison) kill -9 $PPID; sleep 5;;
  big) head -c 200000 /dev/zero | tr -c x x; echo;;
  gate) : > "$QDIR/started.$SOCKFORK_TASK"; while [ ! -e "$QDIR/gate" ]; do sleep 0.05; done
        echo "gate $SOCKFORK_TASK";;
esac
"""


class Redis:
    def __init__(self, tmp_path, port=0):
        self.sock = str(tmp_path / "redis.sock")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
             "--unixsocket", self.sock, "--save", "",
             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            if os.path.exists(self.sock) and self.cli("PING") == "PONG":
                return
            time.sleep(0.02)
        raise AssertionError("redis-server did not come up")

    def url(self, name):
        return "unix:%s?name=%s" % (self.sock, name)

    def cli(self, *args):
        r = subprocess.run(["redis-cli", "-s", self.sock] + list(args), capture_output=True,
                           text=True, timeout=WAIT)
        return r.stdout.strip()

    def stop(self):
        self.proc.kill()
        self.proc.wait(timeout=WAIT)


class Proxy:
    """A TCP relay in front of Redis that can swallow Redis's answers (the
    commands still go in) and cut every connection through it."""

    def __init__(self, port):
        self.target = port
        self.swallow = threading.Event()
        self.conns = []
        self.lock = threading.Lock()
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.port = self.lsock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            try:
                r = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                c.close()  # Redis is gone (the test's end): the client tries again
                continue
            with self.lock:
                self.conns += [c, r]
            threading.Thread(target=self._pump, args=(c, r, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(r, c, True), daemon=True).start()

    def _pump(self, src, dst, answers):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if not (answers and self.swallow.is_set()):
                    dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self):
        with self.lock:
            conns, self.conns = self.conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self):
        self.lsock.close()
        self.cut()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture
def redis(tmp_path):
    r = Redis(tmp_path)
    yield r
    r.stop()


@pytest.fixture
def task(tmp_path):
    path = tmp_path / "task.sh"
    path.write_text(TASK)
    path.chmod(0o755)
    return str(path)


def env(tmp_path):
    return server_env({"QDIR": str(tmp_path)})


def start(tmp_path, *args, name="p"):
    """A sockfork process, its stderr in a file."""
    err = open(tmp_path / ("%s.err" % name), "w")
    out = open(tmp_path / ("%s.out" % name), "w")
    return subprocess.Popen([BIN] + list(args), stdout=out, stderr=err, env=env(tmp_path),
                            cwd=str(tmp_path), start_new_session=True)


def text(tmp_path, name, what="err"):
    return (tmp_path / ("%s.%s" % (name, what))).read_text()


def no_sanitizer_report(*texts):
    for t in texts:
        assert not any(m in t for m in SANITIZER_MARKS), t


def wait_for(cond, timeout=LONG_WAIT, what="condition"):
    return conftest.wait_for(cond, what, timeout)


def results(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(l) for l in f if l.endswith("\n")]


def joblog(path):
    with open(path) as f:
        lines = f.read().splitlines()
    assert lines[0].startswith("Seq\tHost")
    return [l.split("\t") for l in lines[1:]]


def finish(proc, timeout=LONG_WAIT):
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise


def test_mixed_tasks_one_result_each(tmp_path, redis, task):
    url = redis.url("mixed")
    kinds = ["ok", "code", "sig", "slow", "res", "flaky", "ok"]
    sub = start(tmp_path, "run", "--queue", url, "--timeout", "1", "--kill-grace", "0.2",
                "--retries", "1", "--retry-on", "1", "--results", "r.jsonl", "--joblog", "j.log",
                task, ":::", *kinds, name="sub")
    wa = start(tmp_path, "worker", "-j", "3", "--host", "hosta", url, name="wa")
    wb = start(tmp_path, "worker", "-j", "2", "--host", "hostb", url, name="wb")
    rc = finish(sub)
    assert finish(wa) == 0 and finish(wb) == 0
    no_sanitizer_report(text(tmp_path, "sub"), text(tmp_path, "wa"), text(tmp_path, "wb"))
    # Failed: code, sig, slow (timed out); flaky succeeded on its retry.
    assert rc == 3, text(tmp_path, "sub")
    res = {r["seq"]: r for r in results(tmp_path / "r.jsonl")}
    assert len(results(tmp_path / "r.jsonl")) == len(kinds) == len(res)
    assert res[1]["ok"] and res[1]["exit_code"] == 0 and res[7]["ok"]
    assert res[2]["exit_code"] == 3 and res[2]["stderr_bytes"] == len("to stderr\n")
    assert res[3]["signal"] == "SIGKILL" and res[3]["exit_code"] is None
    assert res[4]["timed_out"] and not res[4]["ok"]
    assert res[5]["result"] == {"v": 42} and res[5]["ok"]
    assert res[6]["ok"] and res[6]["attempts"] == 2
    assert {r["host"] for r in res.values()} <= {"hosta", "hostb"}
    jl = joblog(tmp_path / "j.log")
    assert sorted(int(l[0]) for l in jl) == list(range(1, len(kinds) + 1))
    assert {l[1] for l in jl} <= {"hosta", "hostb"}
    assert [l[6] for l in sorted(jl, key=lambda l: int(l[0]))][3] == "-1"  # timed out
    # Output, grouped per task: the submitter wrote what the workers kept.
    out = text(tmp_path, "sub", "out").splitlines()
    assert sorted(out) == ["ok 1", "ok 7"]
    assert "to stderr" in text(tmp_path, "sub")
    assert "1 retries" in text(tmp_path, "sub") or "1 retry" in text(tmp_path, "sub")


def test_worker_killed_its_tasks_finish_on_another(tmp_path, redis, task):
    url = redis.url("kill")
    n = 24
    sub = start(tmp_path, "run", "--queue", url, "--lease", "1", "--results", "r.jsonl",
                task, ":::", *(["nap"] * n), name="sub")
    wa = start(tmp_path, "worker", "-j", "4", "--host", "hosta", url, name="wa")
    # Killed once it has finished some and holds others.
    wait_for(lambda: len(results(tmp_path / "r.jsonl")) >= 4, what="first results")
    os.killpg(wa.pid, signal.SIGKILL)
    wa.wait()
    held = int(redis.cli("XPENDING", "sfq:kill:tasks", "workers").splitlines()[0] or 0)
    wb = start(tmp_path, "worker", "-j", "4", "--host", "hostb", url, name="wb")
    assert finish(sub) == 0, text(tmp_path, "sub")
    assert finish(wb) == 0
    res = results(tmp_path / "r.jsonl")
    assert sorted(r["seq"] for r in res) == list(range(1, n + 1))
    assert any(r["host"] == "hostb" for r in res)
    out = text(tmp_path, "sub", "out").splitlines()
    assert sorted(out) == sorted("nap %d" % i for i in range(1, n + 1))  # nothing twice
    assert held >= 0
    no_sanitizer_report(text(tmp_path, "sub"), text(tmp_path, "wb"))


def test_sigterm_gives_tasks_back_at_once(tmp_path, redis, task):
    url = redis.url("back")
    # The default lease (30 s) is longer than the whole wait: only a give
    # back gets these tasks to the second worker in time.
    sub = start(tmp_path, "run", "--queue", url, "--results", "r.jsonl", task, ":::",
                "long", "long", name="sub")
    wa = start(tmp_path, "worker", "-j", "2", "--host", "hosta", url, name="wa")
    wait_for(lambda: redis.cli("XPENDING", "sfq:back:tasks", "workers").splitlines()[:1] == ["2"],
             what="both tasks taken")
    os.kill(wa.pid, signal.SIGTERM)
    assert finish(wa) == 128 + signal.SIGTERM
    wb = start(tmp_path, "worker", "-j", "2", "--host", "hostb", url, name="wb")
    assert finish(sub, timeout=20) == 0, text(tmp_path, "sub")
    assert finish(wb) == 0
    res = results(tmp_path / "r.jsonl")
    assert sorted(r["seq"] for r in res) == [1, 2]
    assert {r["host"] for r in res} == {"hostb"}
    no_sanitizer_report(text(tmp_path, "wa"), text(tmp_path, "wb"), text(tmp_path, "sub"))


def test_poison_task_dead_lettered(tmp_path, redis, task):
    url = redis.url("poison")
    sub = start(tmp_path, "run", "--queue", url, "--lease", "0.5", "--results", "r.jsonl",
                "--joblog", "j.log", "--log-format", "json", task, ":::", "ok", "poison", "ok",
                name="sub")
    # Each delivery of the poison kills its worker: start another until the
    # run is over (at most max_deliveries + 1 of them, and a spare).
    workers = []
    for i in range(6):
        if sub.poll() is not None:
            break
        w = start(tmp_path, "worker", "-j", "1", "--log-format", "json", url, name="w%d" % i)
        workers.append(w)
        try:
            w.wait(timeout=LONG_WAIT)
        except subprocess.TimeoutExpired:
            pass
    assert finish(sub) == 1, text(tmp_path, "sub")
    res = {r["seq"]: r for r in results(tmp_path / "r.jsonl")}
    assert sorted(res) == [1, 2, 3]
    assert res[1]["ok"] and res[3]["ok"] and not res[2]["ok"]
    assert res[2]["exit_code"] == -1
    assert redis.cli("XLEN", "sfq:poison:dead") == "1"
    logs = "".join(text(tmp_path, "w%d" % i) for i in range(len(workers)))
    events = [json.loads(l)["event"] for l in logs.splitlines() if l.startswith("{")]
    assert "queue_dead" in events
    for w in workers:
        if w.poll() is None:
            os.killpg(w.pid, signal.SIGKILL)
            w.wait()


def test_submitter_restarted_resumes(tmp_path, redis, task):
    url = redis.url("resume")
    n = 30
    args = ["run", "--queue", url, "--results", "r.jsonl", task, ":::"] + ["nap"] * n
    sub = start(tmp_path, *args, name="sub1")
    wa = start(tmp_path, "worker", "-j", "2", url, name="wa")
    wait_for(lambda: int(redis.cli("XLEN", "sfq:resume:results") or 0) >= 5, what="some results")
    os.killpg(sub.pid, signal.SIGKILL)
    sub.wait()
    sub2 = start(tmp_path, *args, name="sub2")
    assert finish(sub2) == 0, text(tmp_path, "sub2")
    assert finish(wa) == 0
    res = results(tmp_path / "r.jsonl")
    assert sorted(r["seq"] for r in res) == list(range(1, n + 1))
    # Nothing added twice: one task entry per task.
    assert int(redis.cli("XLEN", "sfq:resume:tasks")) == n
    no_sanitizer_report(text(tmp_path, "sub2"), text(tmp_path, "wa"))


def test_unreachable_redis_one_line(tmp_path):
    gone = "unix:%s?name=x" % (tmp_path / "none.sock")
    r = subprocess.run([BIN, "run", "--queue", gone, "echo", ":::", "a"], capture_output=True,
                       text=True, timeout=WAIT, env=server_env())
    assert r.returncode == 255
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and "cannot reach it" in lines[0], r.stderr
    r = subprocess.run([BIN, "worker", gone], capture_output=True, text=True, timeout=WAIT,
                       env=server_env())
    assert r.returncode == 1
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and "cannot reach it" in lines[0], r.stderr


@pytest.mark.parametrize("args,status,says", [
    (["run", "--queue", "redis://127.0.0.1:6379", "echo", ":::", "a"], 255, "not a queue URL"),
    (["run", "--queue", "redis://h/x", "echo", "{%}", ":::", "a"], 255, "job slot"),
    (["run", "--lease", "5", "echo", ":::", "a"], 255, "--lease is for --queue"),
    (["run", "--queue", "redis://h/x", "--lease", "0", "echo", ":::", "a"], 255, "--lease"),
    (["run", "--queue", "redis://h/x", "--max-output", "65M", "echo", ":::", "a"], 255,
     "--max-output is at most 64M"),
    (["worker"], 2, "URL is missing"),
    (["worker", "redis://h:99999/x"], 2, "not a queue URL"),
    (["worker", "-j", "0", "redis://h/x"], 2, "-j"),
    (["worker", "redis://h/x", "-j", "0"], 2, "-j"),   # options after the URL are read
    (["worker", "redis://h/x", "redis://h/y"], 2, "one URL only"),
])
def test_bad_usage(args, status, says):
    r = subprocess.run([BIN] + args, capture_output=True, text=True, timeout=WAIT,
                       env=server_env())
    assert r.returncode == status, r.stderr
    assert len(r.stderr.splitlines()) == 1 and says in r.stderr, r.stderr


def test_another_run_in_the_queue_refused(tmp_path, redis):
    url = redis.url("other")
    redis.cli("HSET", "sfq:other:meta", "v", "1", "tries", "5", "timeout_ms", "0", "grace_ms",
              "2000", "out_max", "1048576", "lease_ms", "30000", "max_deliveries", "7",
              "retry_on", "", "submitted", "0", "state", "running")
    r = subprocess.run([BIN, "run", "--queue", url, "echo", ":::", "a"], capture_output=True,
                       text=True, timeout=WAIT, env=server_env())
    assert r.returncode == 255
    assert len(r.stderr.splitlines()) == 1 and "another run" in r.stderr, r.stderr


@pytest.mark.parametrize("key", ["results", "tasks"])
def test_a_queue_key_of_another_application_refused(tmp_path, redis, key):
    """A key of the queue holds a string (someone else's): one line, exit
    255, instead of reading it again without end or waiting forever."""
    redis.cli("SET", "sfq:taken:" + key, "not a stream")
    r = subprocess.run([BIN, "run", "--queue", redis.url("taken"), "echo", ":::", "a"],
                       capture_output=True, text=True, timeout=WAIT, env=server_env())
    assert r.returncode == 255, r.stderr
    assert len(r.stderr.splitlines()) == 1, r.stderr
    assert "sfq:taken:%s" % key in r.stderr and "WRONGTYPE" in r.stderr, r.stderr


def test_worker_waits_for_its_run(tmp_path, redis, task):
    url = redis.url("early")
    w = start(tmp_path, "worker", "-j", "2", url, name="w")
    wait_for(lambda: "no run there yet" in text(tmp_path, "w"), what="the worker's wait")
    sub = start(tmp_path, "run", "--queue", url, "--results", "r.jsonl", task, ":::", "ok", "ok",
                name="sub")
    assert finish(sub) == 0, text(tmp_path, "sub")
    assert finish(w) == 0
    assert sorted(r["seq"] for r in results(tmp_path / "r.jsonl")) == [1, 2]


def test_an_entry_that_does_not_parse_is_dead_lettered(tmp_path, redis, task):
    url = redis.url("junk")
    w = start(tmp_path, "worker", "-j", "2", url, name="w")
    sub = start(tmp_path, "run", "--queue", url, "--results", "r.jsonl", task, ":::", "nap", "nap",
                "nap", name="sub")
    wait_for(lambda: redis.cli("EXISTS", "sfq:junk:tasks") == "1", what="the task stream")
    redis.cli("XADD", "sfq:junk:tasks", "*", "v", "1", "seq", "x")
    assert finish(sub) == 0, text(tmp_path, "sub")
    assert finish(w) == 0
    wait_for(lambda: "does not parse" in text(tmp_path, "w"), what="the bad entry's line")
    assert redis.cli("XLEN", "sfq:junk:dead") == "1"
    assert redis.cli("XPENDING", "sfq:junk:tasks", "workers").splitlines()[0] == "0"
    assert sorted(r["seq"] for r in results(tmp_path / "r.jsonl")) == [1, 2, 3]


def test_a_second_result_is_dropped(tmp_path, redis, task):
    """A restarted submitter finds task 1 submitted and two results for it
    (it ran twice): one line in the results, task 2 added and run."""
    url = redis.url("dup")
    redis.cli("HSET", "sfq:dup:meta", "v", "1", "tries", "1", "timeout_ms", "0", "grace_ms",
              "2000", "out_max", "1048576", "lease_ms", "30000", "max_deliveries", "3",
              "retry_on", "", "submitted", "1", "state", "running")
    for host in ("hosta", "hostb"):
        redis.cli("XADD", "sfq:dup:results", "*", "v", "1", "seq", "1", "state", "ok", "attempts",
                  "1", "code", "0", "host", host, "worker", host + ":1", "out", "ok 1\n")
    sub = start(tmp_path, "run", "--queue", url, "--results", "r.jsonl", "--joblog", "j.log",
                task, ":::", "ok", "ok", name="sub")
    w = start(tmp_path, "worker", "-j", "1", "--host", "hostc", url, name="w")
    assert finish(sub) == 0, text(tmp_path, "sub")
    assert finish(w) == 0
    res = results(tmp_path / "r.jsonl")
    assert sorted(r["seq"] for r in res) == [1, 2]
    assert {r["seq"]: r["host"] for r in res} == {1: "hosta", 2: "hostc"}
    assert "a second result" in text(tmp_path, "sub")
    assert int(redis.cli("XLEN", "sfq:dup:tasks")) == 1  # task 1 not added again
    assert sorted(text(tmp_path, "sub", "out").splitlines()) == ["ok 1", "ok 2"]


def test_a_worker_cut_off_past_its_lease_stops_its_copy(tmp_path, redis, task):
    """SIGSTOP stands for a partition: the stopped worker renews nothing,
    another takes its task; back, the first finds it lost and stops its
    copy. One result, from the second."""
    url = redis.url("cut")
    sub = start(tmp_path, "run", "--queue", url, "--lease", "0.5", "--results", "r.jsonl",
                "--joblog", "j.log", task, ":::", "long", name="sub")
    wa = start(tmp_path, "worker", "-j", "1", "--host", "hosta", url, name="wa")
    wait_for(lambda: "hosta:" in redis.cli("XPENDING", "sfq:cut:tasks", "workers", "-", "+", "9"),
             what="hosta's claim")
    os.killpg(wa.pid, signal.SIGSTOP)
    wb = start(tmp_path, "worker", "-j", "1", "--host", "hostb", url, name="wb")
    try:
        wait_for(lambda: "hostb:" in redis.cli("XPENDING", "sfq:cut:tasks", "workers", "-", "+",
                                               "9"), what="hostb's claim")
    finally:
        os.killpg(wa.pid, signal.SIGCONT)
    wait_for(lambda: "lease was lost" in text(tmp_path, "wa"), what="hosta's lost lease")
    assert finish(sub) == 0, text(tmp_path, "sub")
    assert finish(wa) == 0 and finish(wb) == 0
    res = results(tmp_path / "r.jsonl")
    assert [(r["seq"], r["host"]) for r in res] == [(1, "hostb")]
    assert text(tmp_path, "sub", "out").splitlines() == ["long 1"]


def test_a_stale_worker_writes_no_outcome(tmp_path, redis, task):
    """The task's entry is claimed by another consumer while the first
    worker still runs it, and the first finishes before a renewal could
    notice (lease 60 s: renewed every 20). Its outcome is fenced: no result
    written, the entry not acknowledged (still the other's)."""
    url = redis.url("fence")
    sub = start(tmp_path, "run", "--queue", url, "--lease", "60", "--results", "r.jsonl",
                task, ":::", "gate", name="sub")
    w = start(tmp_path, "worker", "-j", "1", "--host", "hosta", url, name="w")
    try:
        wait_for(lambda: os.path.exists(tmp_path / "started.1"), what="the task's start")
        pending = redis.cli("XPENDING", "sfq:fence:tasks", "workers", "-", "+", "9").split()
        assert len(pending) == 4 and pending[1].startswith("hosta:"), pending
        redis.cli("XCLAIM", "sfq:fence:tasks", "workers", "other", "0", pending[0], "JUSTID")
        (tmp_path / "gate").write_text("")
        wait_for(lambda: "lease was lost" in text(tmp_path, "w")
                 or int(redis.cli("XLEN", "sfq:fence:results")) > 0, what="the outcome")
        assert int(redis.cli("XLEN", "sfq:fence:results")) == 0
        after = redis.cli("XPENDING", "sfq:fence:tasks", "workers", "-", "+", "9").split()
        assert after[:2] == [pending[0], "other"], after
        assert "task 1: its lease was lost to another worker" in text(tmp_path, "w")
    finally:
        for proc in (sub, w):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    no_sanitizer_report(text(tmp_path, "w"))


def test_adds_cut_off_unanswered_are_not_sent_twice(tmp_path, task):
    """The submitter's adds go in but their answers are lost with the
    connection: back, it reads meta.submitted before sending anything again,
    so each task is in the stream once (not run twice)."""
    redis = Redis(tmp_path, port=free_port())
    proxy = Proxy(int(redis.cli("CONFIG", "GET", "port").split()[1]))
    sub = w = None
    try:
        err = open(tmp_path / "sub.err", "w")
        sub = subprocess.Popen([BIN, "run", "--queue", "redis://127.0.0.1:%d/lost" % proxy.port,
                                "--results", "r.jsonl", task], stdin=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, stderr=err, env=env(tmp_path),
                               cwd=str(tmp_path), start_new_session=True)
        wait_for(lambda: redis.cli("HGET", "sfq:lost:meta", "state") == "running",
                 what="the run's meta")
        proxy.swallow.set()
        sub.stdin.write(b"ok\nok\nok\n")
        sub.stdin.flush()
        wait_for(lambda: redis.cli("HGET", "sfq:lost:meta", "submitted") == "3",
                 what="the three adds")
        proxy.cut()
        proxy.swallow.clear()
        wait_for(lambda: "connected again" in text(tmp_path, "sub"), what="the submitter back")
        sub.stdin.close()
        w = start(tmp_path, "worker", "-j", "2", redis.url("lost"), name="w")
        assert finish(sub) == 0, text(tmp_path, "sub")
        assert finish(w) == 0, text(tmp_path, "w")
        assert sorted(r["seq"] for r in results(tmp_path / "r.jsonl")) == [1, 2, 3]
        assert int(redis.cli("XLEN", "sfq:lost:tasks")) == 3
        no_sanitizer_report(text(tmp_path, "sub"), text(tmp_path, "w"))
    finally:
        for proc in (sub, w):
            if proc and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        proxy.close()
        redis.stop()


def test_a_stale_worker_gives_back_nothing(tmp_path, redis, task):
    """SIGTERM gives a worker's tasks back, but not one another worker has
    claimed meanwhile (it runs there): that entry stays the other's."""
    url = redis.url("fenceback")
    sub = start(tmp_path, "run", "--queue", url, "--lease", "60", task, ":::", "gate",
                name="sub")
    w = start(tmp_path, "worker", "-j", "1", "--host", "hosta", url, name="w")
    try:
        wait_for(lambda: os.path.exists(tmp_path / "started.1"), what="the task's start")
        pending = redis.cli("XPENDING", "sfq:fenceback:tasks", "workers", "-", "+", "9").split()
        assert len(pending) == 4 and pending[1].startswith("hosta:"), pending
        redis.cli("XCLAIM", "sfq:fenceback:tasks", "workers", "other", "0", pending[0], "JUSTID")
        os.killpg(w.pid, signal.SIGTERM)
        assert finish(w) == 128 + signal.SIGTERM, text(tmp_path, "w")
        after = redis.cli("XPENDING", "sfq:fenceback:tasks", "workers", "-", "+", "9").split()
        assert after[:2] == [pending[0], "other"], after
        no_sanitizer_report(text(tmp_path, "w"))
    finally:
        for proc in (sub, w):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def test_an_outcome_sent_again_is_written_once(tmp_path, task):
    """The worker's outcome goes in but its answer is lost with the
    connection: back, it sends it again, which finds the entry acknowledged
    and writes nothing (one result; no lease said lost)."""
    redis = Redis(tmp_path, port=free_port())
    proxy = Proxy(int(redis.cli("CONFIG", "GET", "port").split()[1]))
    sub = w = None
    try:
        sub = start(tmp_path, "run", "--queue", redis.url("again"), "--results", "r.jsonl",
                    task, ":::", "gate", name="sub")
        w = start(tmp_path, "worker", "-j", "1", "redis://127.0.0.1:%d/again" % proxy.port,
                  name="w")
        wait_for(lambda: os.path.exists(tmp_path / "started.1"), what="the task's start")
        proxy.swallow.set()
        (tmp_path / "gate").write_text("")
        wait_for(lambda: int(redis.cli("XLEN", "sfq:again:results")) > 0, what="the outcome")
        proxy.cut()
        proxy.swallow.clear()
        wait_for(lambda: "connected again" in text(tmp_path, "w"), what="the worker back")
        assert finish(sub) == 0, text(tmp_path, "sub")
        assert finish(w) == 0, text(tmp_path, "w")
        assert int(redis.cli("XLEN", "sfq:again:results")) == 1
        assert [r["seq"] for r in results(tmp_path / "r.jsonl")] == [1]
        assert "lease was lost" not in text(tmp_path, "w")
        no_sanitizer_report(text(tmp_path, "sub"), text(tmp_path, "w"))
    finally:
        for proc in (sub, w):
            if proc and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        proxy.close()
        redis.stop()


def test_redis_back_without_its_data_stops_the_submitter(tmp_path, redis, task):
    """Redis restarted without persistence mid-run: the tasks sent will
    never have results; the submitter says so in one line, exit 255,
    instead of waiting for ever."""
    url = redis.url("gone")
    sub = start(tmp_path, "run", "--queue", url, "--results", "r.jsonl", task, ":::", "gate",
                name="sub")
    w = start(tmp_path, "worker", "-j", "1", url, name="w")
    try:
        wait_for(lambda: os.path.exists(tmp_path / "started.1"), what="the task's start")
        redis.stop()
        redis.__init__(tmp_path)
        assert finish(sub) == 255, text(tmp_path, "sub")
        lines = [l for l in text(tmp_path, "sub").splitlines() if "keys are gone" in l]
        assert len(lines) == 1, text(tmp_path, "sub")
        assert results(tmp_path / "r.jsonl") == []
        no_sanitizer_report(text(tmp_path, "sub"))
    finally:
        for proc in (sub, w):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def test_halt_now_stops_what_workers_run(tmp_path, redis, task):
    url = redis.url("halt")
    sub = start(tmp_path, "run", "--queue", url, "--halt", "now,fail=1", "--kill-grace", "0.5",
                "--results", "r.jsonl", task, ":::", "code", "slow", "slow", "slow", "slow",
                name="sub")
    w = start(tmp_path, "worker", "-j", "3", url, name="w")
    rc = finish(sub, timeout=20)  # the slow tasks sleep 30 s: they were stopped
    assert finish(w) == 0
    res = {r["seq"]: r for r in results(tmp_path / "r.jsonl")}
    assert res[1]["exit_code"] == 3
    stopped = [r for s, r in res.items() if s != 1]
    assert stopped and all(r.get("stopped") and r["signal"] == "SIGTERM" for r in stopped), res
    assert rc == len(res), text(tmp_path, "sub")
    assert "halt" in text(tmp_path, "sub")
    # Nothing left held by a worker: run, or given back.
    lines = redis.cli("XPENDING", "sfq:halt:tasks", "workers", "-", "+", "99").splitlines()
    assert all(consumer == "returned" for consumer in lines[1::4]), lines


def test_sigint_on_the_submitter(tmp_path, redis, task):
    url = redis.url("int")
    sub = start(tmp_path, "run", "--queue", url, "--results", "r.jsonl", task, ":::", "slow",
                "slow", "slow", name="sub")
    w = start(tmp_path, "worker", "-j", "2", url, name="w")
    wait_for(lambda: redis.cli("XPENDING", "sfq:int:tasks", "workers").splitlines()[:1] == ["2"],
             what="two tasks running")
    os.kill(sub.pid, signal.SIGINT)
    assert finish(sub, timeout=20) == 128 + signal.SIGINT
    assert finish(w, timeout=20) == 0
    res = results(tmp_path / "r.jsonl")
    assert len(res) == 2 and all(r.get("stopped") for r in res), res
    assert redis.cli("HGET", "sfq:int:meta", "state") == "halt-now"
    no_sanitizer_report(text(tmp_path, "sub"), text(tmp_path, "w"))


def test_a_run_stopped_by_sigint_resumes(tmp_path, redis, task):
    """Restarted after a SIGINT, the run goes on: the cancel its first
    submitter left in control does not stop the workers that start now."""
    url = redis.url("again")
    args = ["run", "--queue", url, "--results", "r.jsonl", task, ":::", "slow", "slow", "long"]
    sub = start(tmp_path, *args, name="sub")
    w = start(tmp_path, "worker", "-j", "2", url, name="w")
    wait_for(lambda: redis.cli("XPENDING", "sfq:again:tasks", "workers").splitlines()[:1] == ["2"],
             what="two tasks running")
    os.kill(sub.pid, signal.SIGINT)
    assert finish(sub, timeout=20) == 128 + signal.SIGINT
    assert finish(w, timeout=20) == 0
    # The new worker first: it finds the run halted and waits for it to be
    # resumed instead of ending on the old halt (CI once started it a moment
    # before the resumed submitter's transaction, and the run waited for ever).
    w2 = start(tmp_path, "worker", "-j", "2", url, name="w2")
    wait_for(lambda: "waiting for it to be resumed" in text(tmp_path, "w2"), what="w2 waits")
    assert w2.poll() is None, text(tmp_path, "w2")
    sub2 = start(tmp_path, *args, name="sub2")
    assert finish(sub2) == 2, text(tmp_path, "sub2")  # the two stopped ones failed
    assert finish(w2) == 0, text(tmp_path, "w2")
    res = {r["seq"]: r for r in results(tmp_path / "r.jsonl")}
    assert sorted(res) == [1, 2, 3] and res[3]["ok"], res
    no_sanitizer_report(text(tmp_path, "sub2"), text(tmp_path, "w2"))


def test_a_task_under_a_worker_holds_only_its_own_descriptors(tmp_path, redis):
    """Not the worker's Redis connections nor its eventfd: stdio and fd 3."""
    from conftest import helper
    url = redis.url("fds")
    sub = start(tmp_path, "run", "--queue", url, helper("fdcount"), ":::", "x", name="sub")
    w = start(tmp_path, "worker", "-j", "1", url, name="w")
    assert finish(sub) == 0, text(tmp_path, "sub")
    assert finish(w) == 0
    lines = text(tmp_path, "sub", "out").splitlines()
    assert lines[-1] == "end", lines
    assert sorted(int(l.split()[0]) for l in lines[:-1]) == [0, 1, 2, 3], lines


def test_output_limit_as_a_local_run(tmp_path, redis, task):
    url = redis.url("big")
    sub = start(tmp_path, "run", "--queue", url, "--max-output", "10K", "--results", "r.jsonl",
                task, ":::", "big", "ok", name="sub")
    w = start(tmp_path, "worker", "-j", "2", url, name="w")
    assert finish(sub) == 1, text(tmp_path, "sub")
    assert finish(w) == 0
    res = {r["seq"]: r for r in results(tmp_path / "r.jsonl")}
    assert res[1].get("output_limited") and not res[1]["ok"]
    assert res[2]["ok"]
    out = text(tmp_path, "sub", "out")
    assert out.count("x") == 10 * 1024 and "ok 2" in out


@pytest.mark.parametrize("limit,page", [("10K", 128), ("1M", 30), ("64M", 1)])
def test_results_read_in_pages_bounded_in_bytes(tmp_path, redis, task, limit, page):
    """A page of results holds at most 32 MiB even when every result holds
    all the output it may: the XREAD's COUNT follows --max-output."""
    mon = subprocess.Popen(["redis-cli", "-s", redis.sock, "MONITOR"], stdout=subprocess.PIPE,
                           text=True)
    try:
        assert mon.stdout.readline().strip() == "OK"
        url = redis.url("page")
        sub = start(tmp_path, "run", "--queue", url, "--max-output", limit, task, ":::", "ok",
                    name="sub")
        w = start(tmp_path, "worker", "-j", "1", url, name="w")
        assert finish(sub) == 0, text(tmp_path, "sub")
        assert finish(w) == 0
    finally:
        mon.kill()
    reads = [l for l in mon.stdout.read().splitlines() if '"XREAD"' in l and "page:results" in l]
    assert reads and all('"COUNT" "%d"' % page in l for l in reads), reads[:3]


def own_workers(pid):
    """The `sockfork worker` processes whose parent is pid."""
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open("/proc/%s/cmdline" % d, "rb") as f:
                argv = f.read().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid and argv[1:2] == [b"worker"]:
            found.append(int(d))
    return found


def test_submitter_with_j_runs_the_tasks_itself(tmp_path, redis, task):
    """run --queue -j N: no other worker, the submitter's own runs them all
    (as a worker: host column, results), and it is gone when the run ends."""
    url = redis.url("own")
    kinds = ["ok", "code", "ok", "res", "flaky", "nap", "nap", "ok"]
    sub = start(tmp_path, "run", "--queue", url, "-j", "3", "--retries", "1", "--retry-on", "1",
                "--results", "r.jsonl", "--joblog", "j.log", task, ":::", *kinds, name="sub")
    rc = finish(sub)
    no_sanitizer_report(text(tmp_path, "sub"))
    assert rc == 1, text(tmp_path, "sub")  # only "code" failed
    res = {r["seq"]: r for r in results(tmp_path / "r.jsonl")}
    assert sorted(res) == list(range(1, len(kinds) + 1))
    assert res[2]["exit_code"] == 3 and res[4]["result"] == {"v": 42}
    assert res[5]["ok"] and res[5]["attempts"] == 2
    host = os.uname().nodename
    assert {r["host"] for r in res.values()} == {host}
    assert {l[1] for l in joblog(tmp_path / "j.log")} == {host}
    assert sorted(text(tmp_path, "sub", "out").splitlines()) == \
        ["nap 6", "nap 7", "ok 1", "ok 3", "ok 8"]
    assert own_workers(sub.pid) == []


def test_submitter_stops_when_its_own_worker_dies(tmp_path, redis, task):
    """Its only worker killed: the run stops (it would wait for ever), says
    why in one line, exits 255, and leaves no process behind."""
    url = redis.url("owndies")
    sub = start(tmp_path, "run", "--queue", url, "-j", "2", "--results", "r.jsonl", task,
                ":::", "slow", "slow", "slow", name="sub")
    workers = wait_for(lambda: own_workers(sub.pid), what="the submitter's worker")
    wait_for(lambda: redis.cli("XLEN", "sfq:owndies:tasks") == "3", what="the tasks queued")
    os.kill(workers[0], signal.SIGKILL)
    rc = finish(sub)
    err = text(tmp_path, "sub")
    no_sanitizer_report(err)
    assert rc == 255, err
    assert "its worker was killed by signal 9: the run was stopped" in err, err
    assert own_workers(sub.pid) == []


def test_halt_soon_lets_the_running_finish_and_starts_no_more(tmp_path, redis, task):
    """--halt soon,fail=1: the failure stops the handing out; what a worker
    runs then finishes and is recorded as it ended, not stopped. Halting
    crosses Redis, so a slot freed by the failing task may have taken one
    more task before the word came (task 3 here): none after it."""
    url = redis.url("soon")
    kinds = ["long", "code"] + ["long"] * 8
    sub = start(tmp_path, "run", "--queue", url, "--halt", "soon,fail=1", "--results", "r.jsonl",
                task, ":::", *kinds, name="sub")
    w = start(tmp_path, "worker", "-j", "2", url, name="w")
    rc = finish(sub)
    assert finish(w) == 0
    no_sanitizer_report(text(tmp_path, "sub"), text(tmp_path, "w"))
    res = {r["seq"]: r for r in results(tmp_path / "r.jsonl")}
    assert {1, 2} <= set(res) <= {1, 2, 3}, sorted(res)
    assert res[2]["exit_code"] == 3
    assert res[1]["ok"] and "stopped" not in res[1], res[1]
    assert all(res[s]["ok"] and "stopped" not in res[s] for s in res if s != 2), res
    assert rc == 1, text(tmp_path, "sub")
    out = sorted(text(tmp_path, "sub", "out").splitlines())
    assert out == sorted("long %d" % s for s in res if s != 2), out
