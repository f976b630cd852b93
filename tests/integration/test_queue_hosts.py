"""Issue 17 across hosts: `sockfork run --queue redis://...` submitting from
one network namespace, `sockfork worker` in two more (each with a host name
of its own), Redis in a fourth (netns.py builds them).

Written against the contract of docs/design.md "Tasks over a Redis queue":
`run --queue redis://HOST:PORT/NAME` (no -j: it runs nothing itself),
`--lease S` on the submitter, `sockfork worker URL -j N`, keys under
`sfq:NAME:` (`tasks` with the group `workers`, `meta`), the joblog's Host
column naming the worker's host. Skipped until `sockfork worker` is in the
build.

Every wait is bounded and waits on a condition. The tasks record each run
of themselves in a file every namespace sees (tmp_path: only the network
is private), so "ran once" and "ran again elsewhere" are facts, not guesses.
"""
import json
import os
import signal
import subprocess
import time

import pytest

from conftest import BIN, LONG_WAIT, SANITIZER_MARKS, WAIT, Log, server_env
from netns import hosts, start_redis  # noqa: F401 (fixture)

JOBS = 4


def _has_worker():
    try:
        proc = subprocess.run([BIN, "worker", "--help"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=WAIT)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0 and b"worker" in proc.stdout


pytestmark = pytest.mark.skipif(not _has_worker(), reason="needs `sockfork worker` (issue 17)")

TASK = r"""#!/bin/sh
# task.sh N DIR: what task N does depends on N % 10; every run is recorded.
n=$1; dir=$2
echo "$n $(hostname)" >> "$dir/ran"
echo "$n.a"
case $((n % 10)) in
  4) echo "$n.err" >&2 ;;
  5) echo "$n.b"; exit 3 ;;
  6) echo "$n.b"; kill -TERM $$ ;;
  7) if [ $((n % 100)) -eq 7 ]; then echo "$n.b"; exec sleep 60; fi ;;
  8) echo "$n.b"; if mkdir "$dir/m$n" 2>/dev/null; then exit 1; fi; exit 0 ;;
  9) echo "{\"result\": {\"n\": $n}}" >&3 ;;
esac
echo "$n.b"
exit 0
"""


def expected(n):
    """(ok, exit_code, signal, timed_out, attempts, result) of task n."""
    k = n % 10
    if k == 5:
        return False, 3, None, False, 1, None
    if k == 6:
        return False, None, "SIGTERM", False, 1, None
    if k == 7 and n % 100 == 7:
        return False, None, None, True, 1, None
    if k == 8:
        return True, 0, None, False, 2, None
    if k == 9:
        return True, 0, None, False, 1, {"n": n}
    return True, 0, None, False, 1, None


# ------------------------------------------------------------ the cluster

class Proc:
    """A sockfork process in a host, its stderr read by a thread."""

    def __init__(self, hosts, name, argv, cwd, stdout=subprocess.DEVNULL, hostname=None):
        self.name = name
        self.proc = hosts.run(name, argv, hostname=hostname, cwd=cwd, stdout=stdout,
                              stderr=subprocess.PIPE, env=server_env())
        self.pid = self.proc.pid
        self.log = Log(self.proc.stderr)
        hosts.closers.append(self._close)

    def _close(self):
        self.log.join(WAIT)
        if not self.log.thread.is_alive():
            self.proc.stderr.close()

    def wait(self, timeout):
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError("%s (pid %d) still running after %.0f s; log:\n%s"
                                 % (self.name, self.pid, timeout, "\n".join(self.log.snapshot()[-40:])))
        assert self.log.join(WAIT), "%s: stderr still open" % self.name
        text = self.log.text()
        for mark in SANITIZER_MARKS:
            assert mark not in text, "sanitizer report in %s's log:\n%s" % (self.name, text)
        return rc


class Queue:
    """redis, w1, w2, sub; a queue NAME on the Redis."""

    def __init__(self, hosts, tmp_path, name="q"):
        self.hosts = hosts
        self.tmp = tmp_path
        for h in ("redis", "w1", "w2", "sub"):
            hosts.add(h)
        self.redis = start_redis(hosts, "redis")
        self.name = name
        self.url = "%s/%s" % (self.redis.url, name)
        self.task = str(tmp_path / "task.sh")
        with open(self.task, "w") as f:
            f.write(TASK)
        os.chmod(self.task, 0o755)
        self.workers = {}

    def worker(self, host, jobs=JOBS):
        w = Proc(self.hosts, host, [BIN, "worker", "-j", str(jobs), self.url], str(self.tmp),
                 hostname=host)
        self.workers[host] = w
        return w

    def submit(self, count, *args, command=None, tag="run"):
        """`sockfork run --queue` for tasks 1..count, in host sub."""
        args_file = self.tmp / "args.txt"
        args_file.write_text("".join("%d\n" % n for n in range(1, count + 1)))
        self.stdout_path = str(self.tmp / ("%s.stdout" % tag))
        out = open(self.stdout_path, "wb")
        self.hosts.closers.append(out.close)
        argv = [BIN, "run", "--queue", self.url, "--no-progress", "-a", str(args_file),
                "--results", str(self.tmp / "results.json"), "--joblog", str(self.tmp / "joblog"),
                *args, *(command or [self.task, "{}", str(self.tmp)])]
        return Proc(self.hosts, "sub", argv, str(self.tmp), stdout=out)

    # what came out

    def results(self):
        path = self.tmp / "results.json"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def joblog(self):
        lines = (self.tmp / "joblog").read_text().splitlines()
        assert lines[0].split("\t")[:2] == ["Seq", "Host"], lines[0]
        return [line.split("\t") for line in lines[1:] if line]

    def ran(self):
        """task number -> [host of each run]."""
        out = {}
        path = self.tmp / "ran"
        if path.exists():
            for line in path.read_text().splitlines():
                n, host = line.split()
                out.setdefault(int(n), []).append(host)
        return out

    def wait_results(self, count, timeout=LONG_WAIT):
        deadline = time.monotonic() + timeout
        while len(self.results()) < count:
            assert time.monotonic() < deadline, "fewer than %d results after %.0f s" % (count, timeout)
            time.sleep(0.05)  # bounded poll of the results file

    def pending_by_consumer(self):
        """XPENDING's summary: consumer -> entries it holds."""
        reply = self.redis.command("XPENDING", "sfq:%s:tasks" % self.name, "workers")
        if isinstance(reply, str) and reply.startswith("NOGROUP"):
            return {}  # not made yet
        assert isinstance(reply, list), reply
        return {c.decode(): int(k) for c, k in (reply[3] or [])}

    def check_once_each(self, count):
        """One results line and one joblog line per task, no other."""
        seqs = sorted(r["seq"] for r in self.results())
        assert seqs == list(range(1, count + 1)), self._diff(seqs, count)
        logged = sorted(int(f[0]) for f in self.joblog())
        assert logged == list(range(1, count + 1)), self._diff(logged, count)

    @staticmethod
    def _diff(seqs, count):
        seen = {}
        for s in seqs:
            seen[s] = seen.get(s, 0) + 1
        return {"missing": sorted(set(range(1, count + 1)) - set(seen))[:20],
                "twice": sorted(s for s, k in seen.items() if k > 1)[:20]}


# ------------------------------------------------------------ the tests

def test_two_thousand_mixed_tasks_over_two_workers(hosts, tmp_path):
    q = Queue(hosts, tmp_path)
    workers = [q.worker("w1"), q.worker("w2")]
    count = 2000
    # 10 s: the tasks meant to time out sleep 60; a trivial one took 2.4 s
    # once under ASan on a loaded machine, and a 2 s timeout killed it.
    sub = q.submit(count, "--timeout", "10s", "--retries", "1", "--retry-on", "1")
    rc = sub.wait(LONG_WAIT * 10)
    failed = sum(1 for n in range(1, count + 1) if not expected(n)[0])
    assert rc == min(failed, 101), (rc, sub.log.text()[-2000:])
    q.check_once_each(count)

    for r in q.results():
        n = r["seq"]
        ok, code, sig, timed_out, attempts, result = expected(n)
        got = (r["ok"], r["exit_code"], r["signal"], r["timed_out"], r["attempts"], r["result"])
        if timed_out:  # stopped by SIGTERM after the timeout: how it ended is the kill's
            got = (r["ok"], None, None, r["timed_out"], r["attempts"], r["result"])
        assert got == (ok, code, sig, timed_out, attempts, result), (n, r)

    # The joblog names both hosts; each line's host ran that task.
    ran = q.ran()
    hosts_seen = set()
    for f in q.joblog():
        n, host = int(f[0]), f[1]
        hosts_seen.add(host)
        assert host in ran[n], (n, host, ran[n])
    assert hosts_seen == {"w1", "w2"}, hosts_seen
    # Each task ran once (the retried ones twice): no failure here re-ran anything.
    assert {n: len(h) for n, h in ran.items()} == \
        {n: expected(n)[4] for n in range(1, count + 1)}

    # Output grouped per task: a task's lines are together.
    with open(q.stdout_path) as f:
        out = f.read().splitlines()
    for i, line in enumerate(out):
        if line.endswith(".a"):
            assert i + 1 < len(out) and out[i + 1] == line[:-2] + ".b", out[max(0, i - 2):i + 3]
    assert {line[:-2] for line in out if line.endswith(".a")} == {str(n) for n in range(1, count + 1)}
    # The workers end once the run is done.
    for w in workers:
        assert w.wait(WAIT) == 0, w.log.text()[-2000:]


def test_kill_9_of_one_worker_mid_run(hosts, tmp_path):
    """Every process of w1 killed mid-run: what it held is run by w2 after
    the lease; every task recorded once, all succeeded."""
    q = Queue(hosts, tmp_path)
    q.worker("w1")
    w2 = q.worker("w2")
    count = 200
    sub = q.submit(count, "--lease", "2", command=[
        "sh", "-c", 'echo "$1 start $(hostname)" >> "$2/events"; sleep 0.1; '
        'echo "$1 end $(hostname)" >> "$2/events"; echo "$1"', "sh", "{}", str(tmp_path)])
    q.wait_results(40)
    held = q.pending_by_consumer()
    assert any(c.startswith("w1:") and k > 0 for c, k in held.items()), held
    hosts.kill_all("w1")
    rc = sub.wait(LONG_WAIT * 2)
    assert rc == 0, sub.log.text()[-2000:]
    q.check_once_each(count)
    assert all(r["ok"] for r in q.results())
    events = {}
    for line in (tmp_path / "events").read_text().splitlines():
        n, what, host = line.split()
        events.setdefault(int(n), set()).add((what, host))
    assert sorted(events) == list(range(1, count + 1))
    assert all(("end", "w1") in e or ("end", "w2") in e for e in events.values())
    # What w1 was running when it died ran again, to the end, on w2.
    cut = [n for n, e in events.items() if ("start", "w1") in e and ("end", "w1") not in e]
    assert cut, "w1 was running nothing when killed"
    assert all(("end", "w2") in events[n] for n in cut), {n: events[n] for n in cut}
    assert w2.wait(WAIT) == 0


def test_partition_of_one_worker_longer_than_the_lease(hosts, tmp_path):
    """w1 cut off while it holds tasks, until w2 has claimed them (past
    the lease), then back: the tasks ran again on w2 and each is recorded
    once, even if w1 reports its own run when it is back."""
    q = Queue(hosts, tmp_path)
    q.worker("w1", jobs=2)
    q.worker("w2", jobs=2)
    count = 40
    sub = q.submit(count, "--lease", "2", command=["sh", "-c", 'echo "$1 $(hostname)" >> "$2/ran"; '
                                                   'sleep 1; echo "$1"', "sh", "{}", str(tmp_path)])
    deadline = time.monotonic() + LONG_WAIT
    while True:
        held = {c: k for c, k in q.pending_by_consumer().items() if c.startswith("w1:") and k}
        if held:
            break
        assert time.monotonic() < deadline, q.pending_by_consumer()
        time.sleep(0.05)  # bounded: w1 takes its first tasks
    hosts.link_down("w1")
    try:
        # Past the lease, w2 claims what w1 held.
        deadline = time.monotonic() + LONG_WAIT
        while any(c.startswith("w1:") and k for c, k in q.pending_by_consumer().items()):
            assert time.monotonic() < deadline, q.pending_by_consumer()
            time.sleep(0.05)  # bounded poll of Redis
    finally:
        hosts.link_up("w1")
    rc = sub.wait(LONG_WAIT * 2)
    assert rc == 0, sub.log.text()[-2000:]
    q.check_once_each(count)
    ran = q.ran()
    assert sorted(ran) == list(range(1, count + 1))
    assert any(h[:1] == ["w1"] and "w2" in h for h in ran.values()), ran  # ran again elsewhere


POISON = r"""import os, signal, sys
# Kills the outermost `sockfork worker` among its ancestors: its worker.
pid, victim = os.getppid(), None
while pid > 1:
    with open("/proc/%d/cmdline" % pid, "rb") as f:
        argv = f.read().split(b"\0")
    if len(argv) > 1 and argv[1] == b"worker":
        victim = pid
    with open("/proc/%d/stat" % pid) as f:
        pid = int(f.read().rsplit(")", 1)[1].split()[1])
with open(os.path.join(sys.argv[2], "ran"), "a") as f:
    f.write("%s %s\n" % (sys.argv[1], os.uname().nodename))
if sys.argv[1] == "7" and victim:
    os.kill(victim, signal.SIGKILL)
print(sys.argv[1])
"""


def test_a_poison_task_is_dead_lettered_and_the_run_ends(hosts, tmp_path):
    """Task 7 kills its worker every time it runs. The workers are started
    again as they die (as their supervisor would); after its deliveries
    the task is dead-lettered, reported failed, and the run finishes."""
    q = Queue(hosts, tmp_path)
    poison = tmp_path / "poison.py"
    poison.write_text(POISON)
    # One task at a time per worker: a worker killed by the poison takes
    # down whatever runs beside it too, and a neighbour that shared its
    # worker with the poison on every delivery would reach the same cap
    # (the queue cannot tell which task killed a worker that died whole).
    for h in ("w1", "w2"):
        q.worker(h, jobs=1)
    count = 20
    sub = q.submit(count, "--lease", "2",
                   command=["/usr/bin/python3", str(poison), "{}", str(tmp_path)])
    deadline = time.monotonic() + LONG_WAIT * 3
    restarts = 0
    while sub.proc.poll() is None:
        for h, w in list(q.workers.items()):
            if w.proc.poll() is not None:
                assert w.proc.returncode == -signal.SIGKILL, (h, w.proc.returncode, w.log.text())
                restarts += 1
                assert restarts <= 10, "the poison task was never dead-lettered"
                q.worker(h, jobs=1)
        assert time.monotonic() < deadline, "the run did not end"
        time.sleep(0.05)  # bounded: watching the workers like a supervisor
    rc = sub.wait(WAIT)
    assert rc == 1, (rc, sub.log.text()[-2000:])  # one task failed: the poison
    q.check_once_each(count)
    by_seq = {r["seq"]: r for r in q.results()}
    assert not by_seq[7]["ok"], by_seq[7]
    assert all(by_seq[n]["ok"] for n in by_seq if n != 7)
    ran = q.ran()
    assert 2 <= len(ran[7]) <= 10, ran[7]  # delivered again after each death, then no more
    dead = q.redis.command("XLEN", "sfq:%s:dead" % q.name)
    assert dead == 1, dead


def test_the_submitter_restarted_mid_run_resubmits_nothing(hosts, tmp_path):
    """The submitter killed (-9) mid-run and started again with the same
    queue and --resume: it picks up what is recorded, adds only what was
    never added; every task ran once and is in the joblog once."""
    q = Queue(hosts, tmp_path)
    q.worker("w1")
    q.worker("w2")
    count = 200
    command = ["sh", "-c", 'sleep 0.05; echo "$1 $(hostname)" >> "$2/ran"; echo "$1"', "sh", "{}",
               str(tmp_path)]
    first = q.submit(count, command=command, tag="first")
    q.wait_results(50)
    hosts.kill_all("sub")
    assert first.proc.returncode == -signal.SIGKILL
    second = q.submit(count, "--resume", command=command, tag="second")
    rc = second.wait(LONG_WAIT * 2)
    assert rc == 0, second.log.text()[-2000:]
    logged = sorted(int(f[0]) for f in q.joblog())
    assert logged == list(range(1, count + 1)), q._diff(logged, count)
    ran = q.ran()
    assert {n: len(h) for n, h in ran.items()} == {n: 1 for n in range(1, count + 1)}
    info = q.redis.command("XINFO", "STREAM", "sfq:%s:tasks" % q.name)
    fields = dict(zip(info[::2], info[1::2]))
    assert fields[b"entries-added"] == count, fields  # none added twice
