"""`sockfork run`: GNU parallel's job on the task pool, tested end to end
with real processes.

Every sockfork is started in its own session. Its tasks run in process
groups of their own but stay in that session, so after each run the
helpers check that no live process of the session is left (a zombie that
init has yet to reap is dead and is allowed). Every run has a deadline;
every wait for a condition (a file, a line of output, a process gone) is a
bounded poll or a bounded blocking read. Where a task has to wait for
something it polls a condition in a bounded sh loop, or blocks on a FIFO
that the test opens, with --timeout as a backstop.

Task scripts are files in tmp_path run as `sh SCRIPT ARGS`: the path is a
marker unique to the test, and the joblog's quoting of the words stays
simple (no newlines).
"""
import fcntl
import json
import os
import random
import re
import resource
import shlex
import shutil
import signal
import stat
import subprocess
import termios
import threading
import time

import pytest

from conftest import (BIN, LONG_WAIT, SANITIZER_MARKS, WAIT, kill_session, proc_stat, server_env,
                      session_members)

# How long a run that should take milliseconds may take before it counts as
# stalled (the lines of an open pipe must start at once, not at EOF).
HANG_DEADLINE = 3.0

SUMMARY_RE = re.compile(r"^sockfork: run: (\d+) tasks? in \d+\.\d\d s: (.*)$", re.M)
JOBLOG_HEADER = "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand"
PROGRESS_CLEAR = "\r\033[K"


# ------------------------------------------------------------------ helpers

def write_script(tmp_path, name, text):
    """A task script in tmp_path; returns its path (run it as `sh PATH`)."""
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def wait_until(pred, timeout=WAIT, what="condition", interval=0.01):
    """Polls pred() until it is true; fails after timeout. Returns its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.1f s waiting for %s" % (timeout, what))
        time.sleep(interval)  # a bounded poll, not a synchronisation sleep


def pid_dead(pid):
    """Gone, or a zombie (dead, waiting to be reaped by init)."""
    st = proc_stat(pid)
    return st is None or st[0] == "Z"


def wait_pids_dead(pids, timeout=WAIT):
    pids = list(pids)
    wait_until(lambda: all(pid_dead(p) for p in pids), timeout,
               "processes %r to die (alive: %r)" % (pids, [p for p in pids if not pid_dead(p)]))


def read_pid(path):
    return int(wait_until(lambda: path.exists() and path.read_text().strip(),
                          what="pid file %s" % path))


def live_processes_with(marker):
    """Live processes (not ours) whose command line holds marker."""
    out = []
    me = os.getpid()
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == me:
            continue
        try:
            with open("/proc/%s/cmdline" % d, "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if marker in cmd and not pid_dead(int(d)):
            out.append((int(d), cmd))
    return out


def release(fifo):
    """Lets a task blocked in `read x < fifo` go on. O_RDWR never blocks on
    a FIFO, and the data waits in it until the task opens it. Returns the
    descriptor, to be closed once the task is done."""
    fd = os.open(str(fifo), os.O_RDWR | os.O_NONBLOCK)
    os.write(fd, b"go\n")
    return fd


def read_results(path):
    with open(str(path)) as f:
        return [json.loads(line) for line in f if line.strip()]


def results_by_seq(path):
    rows = read_results(path)
    by = {}
    for r in rows:
        assert r["seq"] not in by, "seq %d twice in %s" % (r["seq"], path)
        by[r["seq"]] = r
    return by


JOBLOG_LINE_RE = re.compile(r"^(\d+)\t:\t(\d+\.\d{3})\t( *\d+\.\d{3})\t0\t(\d+)\t(-?\d+)\t(\d+)\t(.*)$")


def read_joblog(path):
    """The joblog's entries as dicts, in file order; checks the header and
    the format of every line."""
    lines = path.read_text().split("\n")
    assert lines[-1] == "", "joblog does not end with a newline"
    lines = lines[:-1]
    assert lines[0] == JOBLOG_HEADER, lines[0]
    assert JOBLOG_HEADER not in lines[1:], "header written twice"
    out = []
    for line in lines[1:]:
        m = JOBLOG_LINE_RE.match(line)
        assert m, "not a joblog line: %r" % line
        assert len(m.group(3)) >= 10, "runtime not %%10.3f: %r" % m.group(3)
        out.append({"seq": int(m.group(1)), "start": float(m.group(2)),
                    "runtime": float(m.group(3)), "receive": int(m.group(4)),
                    "exitval": int(m.group(5)), "signal": int(m.group(6)),
                    "command": shlex.split(m.group(7))})
    return out


def joblog_by_seq(path):
    by = {}
    for e in read_joblog(path):
        assert e["seq"] not in by, "seq %d twice in the joblog" % e["seq"]
        by[e["seq"]] = e
    return by


def parse_summary(err):
    """The summary line's counts: {"tasks": N, "succeeded": A, "retries": R,
    "failed (exit code)": B, ...}. Fails unless there is exactly one."""
    found = SUMMARY_RE.findall(err)
    assert len(found) == 1, "expected one summary line, got %r in:\n%s" % (found, err)
    tasks, rest = found[0]
    counts = {"tasks": int(tasks)}
    for part in re.split(r", |; ", rest):
        m = re.match(r"^(\d+) (.+)$", part)
        assert m, "summary part %r" % part
        name = m.group(2)
        counts["retries" if name in ("retry", "retries") else name] = int(m.group(1))
    return counts


def no_core_dumps():
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def no_core_dumps_sigpipe_ignored():
    no_core_dumps()
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # after subprocess restored it


class Reader:
    """Everything read from a descriptor (pipe or pty master), by a thread."""

    def __init__(self, fd):
        self.fd = fd
        self.buf = bytearray()
        self.eof = False
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self):
        while True:
            try:
                data = os.read(self.fd, 65536)
            except OSError:  # EIO: a pty whose other side is closed
                data = b""
            with self.cond:
                if not data:
                    self.eof = True
                    self.cond.notify_all()
                    return
                self.buf += data
                self.cond.notify_all()

    def data(self):
        with self.cond:
            return bytes(self.buf)

    def text(self):
        return self.data().decode("utf-8", "replace")

    def wait_for(self, pattern, timeout=WAIT, start=0):
        """Waits until the data from offset start matches the regex (bytes
        or str); returns the match."""
        if isinstance(pattern, str):
            pattern = pattern.encode()
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                m = rx.search(bytes(self.buf), start)
                if m:
                    return m
                left = deadline - time.monotonic()
                if left <= 0 or self.eof:
                    raise AssertionError("%r not seen (%s); got:\n%r" % (
                        pattern, "EOF" if self.eof else "timed out", bytes(self.buf[-3000:])))
                self.cond.wait(min(left, 0.5))

    def join(self, timeout=WAIT):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "output still open %.0f s after exit" % timeout


class Run:
    """One `sockfork run ARGS`, in its own session, cwd tmp_path, spill
    files in tmp_path/spill. stdin: bytes to write (then closed), "pipe" to
    keep a pipe open (self.stdin), an open file, or /dev/null. stdout:
    a pipe read by a thread, or a descriptor given. stderr: a pipe, or
    "pty" for a terminal."""

    def __init__(self, tmp_path, args, stdin=None, stdout=None, stderr=None, env=None,
                 ignore_sigpipe=False, fsize=None, nofile=None):
        self.tmp_path = tmp_path
        self.args = [str(a) for a in args]
        self.spill = tmp_path / "spill"
        self.spill.mkdir(exist_ok=True)
        e = {"TMPDIR": str(self.spill)}
        e.update(env or {})
        self.master = None
        slave = None
        if stderr == "pty":
            self.master, slave = os.openpty()
            err_arg = slave
        else:
            err_arg = subprocess.PIPE
        if isinstance(stdin, bytes):
            in_arg = subprocess.PIPE
        elif stdin == "pipe":
            in_arg = subprocess.PIPE
        elif stdin is None:
            in_arg = subprocess.DEVNULL
        else:
            in_arg = stdin
        preexec = no_core_dumps_sigpipe_ignored if ignore_sigpipe else no_core_dumps
        if fsize is not None:  # RLIMIT_FSIZE: a "disk" that is full past fsize bytes a file
            def preexec(first=preexec):
                first()
                resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        if nofile is not None:  # RLIMIT_NOFILE, hard limit too: run cannot raise it
            def preexec(first=preexec):
                first()
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
        self.proc = subprocess.Popen([BIN, "run"] + self.args, cwd=str(tmp_path), stdin=in_arg,
                                     stdout=subprocess.PIPE if stdout is None else stdout,
                                     stderr=err_arg, env=server_env(e), start_new_session=True,
                                     preexec_fn=preexec)
        self.pid = self.proc.pid
        if slave is not None:
            os.close(slave)
        self.out = Reader(self.proc.stdout.fileno()) if stdout is None else None
        self.err = Reader(self.master if self.master is not None else self.proc.stderr.fileno())
        self.stdin = self.proc.stdin
        self.feeder = None
        if isinstance(stdin, bytes):
            def feed():
                try:
                    self.proc.stdin.write(stdin)
                    self.proc.stdin.close()
                except OSError:
                    pass
            self.feeder = threading.Thread(target=feed, daemon=True)
            self.feeder.start()
        self.rc = None

    def signal(self, sig):
        self.proc.send_signal(sig)

    def wait(self, timeout=WAIT, check=True):
        """Waits for the exit (bounded), then checks: output closed, no
        sanitizer report, no live process of its session, no spill file
        left. Returns the exit status."""
        try:
            self.rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("sockfork run %s did not exit within %.1f s; stderr:\n%s"
                                 % (" ".join(self.args), timeout, self.err.text()[-3000:]))
        if self.feeder:
            self.feeder.join(WAIT)
        if self.out:
            self.out.join()
        self.err.join()
        if check:
            self.check_clean()
        return self.rc

    def check_clean(self):
        text = self.err.text()
        for mark in SANITIZER_MARKS:
            assert mark not in text, "sanitizer report in stderr:\n" + text
        wait_until(lambda: not [m for m in session_members(self.pid) if m[1] != "Z"], WAIT,
                   "the run's processes to be gone: %r" % (session_members(self.pid),))
        assert os.listdir(str(self.spill)) == [], "spill files left: %r" % os.listdir(str(self.spill))

    def kill(self):
        """Last resort: SIGTERM (sockfork stops its tasks), then SIGKILL to
        everything of the session."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=WAIT)
            except subprocess.TimeoutExpired:
                pass
        kill_session(self.pid)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=WAIT)

    def close(self):
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if f:
                try:
                    f.close()
                except OSError:
                    pass
        if self.master is not None:
            os.close(self.master)
            self.master = None

    @property
    def stdout(self):
        return self.out.data()

    @property
    def stderr(self):
        return self.err.text()


@pytest.fixture
def sf(tmp_path):
    """Factory: sf(*args, stdin=, stdout=, stderr=, env=) starts a Run. At
    teardown nothing any of them started is left running."""
    runs = []

    def start(*args, **kw):
        r = Run(tmp_path, args, **kw)
        runs.append(r)
        return r

    yield start
    for r in runs:
        r.kill()
        r.close()


@pytest.fixture
def run(sf):
    """run(*args, stdin=..., timeout=...) runs to the end: the Run, with .rc,
    .stdout (bytes) and .stderr (text)."""
    def go(*args, timeout=WAIT, **kw):
        r = sf(*args, **kw)
        r.wait(timeout)
        return r
    return go


# ---------------------------------------------------- 1. many mixed tasks

MIXED_SH = r"""
seq=$1
case $2 in
ok) echo "out $seq" ;;
okerr) echo "out $seq"; echo "err $seq" >&2 ;;
code) exit $((seq % 7 + 1)) ;;
segv) kill -SEGV $$ ;;
kill) kill -KILL $$ ;;
term) kill -TERM $$ ;;
sleep) exec sleep 30 ;;
flaky)
  n=0
  [ -e "counters/$seq" ] && read n < "counters/$seq"
  n=$((n + 1))
  echo "$n" > "counters/$seq"
  echo "attempt $n of $seq"
  [ "$n" -ge 3 ] ;;
*) exit 99 ;;
esac
"""

MIXED_KINDS = ["ok", "code", "segv", "kill", "flaky", "ok", "term", "okerr"]
MIXED_TIMEOUTS = {61, 187, 313, 439}
SIGNUM = {"SIGSEGV": 11, "SIGKILL": 9, "SIGTERM": 15}


def mixed_kind(seq):
    return "sleep" if seq in MIXED_TIMEOUTS else MIXED_KINDS[seq % len(MIXED_KINDS)]


def test_500_mixed_tasks_end_as_they_should_in_results_joblog_and_summary(tmp_path, run):
    n = 500
    script = write_script(tmp_path, "mixed.sh", MIXED_SH)
    (tmp_path / "counters").mkdir()
    kinds = [mixed_kind(s) for s in range(1, n + 1)]
    # The timeout is what only `sleep 30` reaches: long enough that a task
    # meant to exit is never cut short on a loaded machine (1 s was, once).
    r = run("-j", "8", "--retries", "2", "--timeout", "5s", "--kill-grace", "1s",
            "--results", tmp_path / "results.jsonl", "--joblog", tmp_path / "joblog",
            "sh", script, "{#}", "{}", ":::", *kinds, timeout=3 * LONG_WAIT)

    results = results_by_seq(tmp_path / "results.jsonl")
    joblog = joblog_by_seq(tmp_path / "joblog")
    assert sorted(results) == list(range(1, n + 1))
    assert sorted(joblog) == list(range(1, n + 1))

    expect_out = []
    failed = {"code": 0, "signal": 0, "timeout": 0}
    ok = retries = 0
    for seq in range(1, n + 1):
        kind = kinds[seq - 1]
        res, jl = results[seq], joblog[seq]
        where = "seq %d (%s): %r / %r" % (seq, kind, res, jl)
        assert res["command"] == ["sh", script, str(seq), kind], where
        assert jl["command"] == res["command"], where
        assert jl["receive"] == res["stdout_bytes"], where
        assert 1 <= res["slot"] <= 8, where
        assert res["result"] is None, where
        assert "error" not in res and "stopped" not in res, where
        if kind in ("ok", "okerr"):
            assert (res["exit_code"], res["signal"], res["timed_out"], res["attempts"], res["ok"]) \
                == (0, None, False, 1, True), where
            assert res["stdout_bytes"] == len("out %d\n" % seq), where
            assert res["stderr_bytes"] == (len("err %d\n" % seq) if kind == "okerr" else 0), where
            expect_out.append("out %d" % seq)
            ok += 1
        elif kind == "flaky":
            assert (res["exit_code"], res["signal"], res["timed_out"], res["attempts"], res["ok"]) \
                == (0, None, False, 3, True), where
            assert (tmp_path / "counters" / str(seq)).read_text() == "3\n", where
            # Only the last attempt's output is kept.
            assert res["stdout_bytes"] == len("attempt 3 of %d\n" % seq), where
            expect_out.append("attempt 3 of %d" % seq)
            ok += 1
            retries += 2
        elif kind == "code":
            code = seq % 7 + 1
            assert (res["exit_code"], res["signal"], res["timed_out"], res["attempts"], res["ok"]) \
                == (code, None, False, 3, False), where
            assert (jl["exitval"], jl["signal"]) == (code, 0), where
            failed["code"] += 1
            retries += 2
        elif kind in ("segv", "kill", "term"):
            name = {"segv": "SIGSEGV", "kill": "SIGKILL", "term": "SIGTERM"}[kind]
            assert (res["exit_code"], res["signal"], res["timed_out"], res["attempts"], res["ok"]) \
                == (None, name, False, 3, False), where
            assert (jl["exitval"], jl["signal"]) == (0, SIGNUM[name]), where
            failed["signal"] += 1
            retries += 2
        else:  # sleep: each of the 3 attempts timed out and got SIGTERM
            assert (res["exit_code"], res["signal"], res["timed_out"], res["attempts"], res["ok"]) \
                == (None, "SIGTERM", True, 3, False), where
            assert (jl["exitval"], jl["signal"]) == (-1, 15), where
            failed["timeout"] += 1
            retries += 2
        if kind in ("ok", "okerr", "flaky"):
            assert (jl["exitval"], jl["signal"]) == (0, 0), where

    out_lines = r.stdout.decode().splitlines()
    assert sorted(out_lines) == sorted(expect_out)
    err = r.stderr
    for seq in range(1, n + 1):
        if kinds[seq - 1] == "okerr":
            assert "err %d\n" % seq in err
    nfailed = sum(failed.values())
    assert nfailed > 101  # so that the cap shows
    assert r.rc == 101
    assert parse_summary(err) == {
        "tasks": n, "succeeded": ok, "failed (exit code)": failed["code"],
        "killed by a signal": failed["signal"], "timed out": failed["timeout"],
        "retries": retries}


@pytest.mark.parametrize("codes,status", [
    (["0", "0", "0"], 0),
    (["0", "3", "0", "4", "0", "1"], 3),
])
def test_exit_status_is_the_number_of_failed_tasks(run, codes, status):
    r = run("-j", "3", "sh", "-c", "exit $1", "sh", ":::", *codes)
    assert r.rc == status
    s = parse_summary(r.stderr)
    assert s["succeeded"] == codes.count("0")
    assert s.get("failed (exit code)", 0) == status


def test_summary_names_only_nonzero_counts_and_quiet_prints_none(run):
    r = run("-j", "2", "true", ":::", "a", "b", "c")
    assert r.rc == 0
    assert re.fullmatch(r"sockfork: run: 3 tasks in \d+\.\d\d s: 3 succeeded; 0 retries\n",
                        r.stderr), r.stderr
    r = run("-q", "-j", "2", "sh", "-c", "exit $1", "sh", ":::", "0", "5")
    assert r.rc == 1
    assert r.stderr == ""


# ---------------------------------------------------- 2. timeouts and the process group

GRANDCHILD_CASES = {
    # The whole group dies of SIGTERM.
    "plain": "sleep 30 & echo $! > gc.pid; wait",
    # The grandchild ignores SIGTERM: it must get SIGKILL once the leader is gone.
    "grandchild-ignores-term": "(trap '' TERM; exec sleep 30) & echo $! > gc.pid; wait",
    # Nobody dies of SIGTERM: SIGKILL after the grace.
    "all-ignore-term": "trap '' TERM; sleep 30 & echo $! > gc.pid; wait",
}


@pytest.mark.parametrize("case", sorted(GRANDCHILD_CASES))
def test_timeout_kills_the_whole_process_group(tmp_path, run, case):
    script = write_script(tmp_path, "gc.sh", "echo $$ > leader.pid\n" + GRANDCHILD_CASES[case] + "\n")
    r = run("--timeout", "1s", "--kill-grace", "500ms", "--results", tmp_path / "r.jsonl",
            "--joblog", tmp_path / "joblog", "sh", script, ":::", "x")
    assert r.rc == 1
    leader = read_pid(tmp_path / "leader.pid")
    grandchild = read_pid(tmp_path / "gc.pid")
    wait_pids_dead([leader, grandchild])
    (res,) = read_results(tmp_path / "r.jsonl")
    killer = "SIGKILL" if case == "all-ignore-term" else "SIGTERM"
    assert (res["timed_out"], res["exit_code"], res["signal"], res["ok"], res["attempts"]) == \
        (True, None, killer, False, 1), res
    (jl,) = read_joblog(tmp_path / "joblog")
    assert (jl["exitval"], jl["signal"]) == (-1, SIGNUM[killer])
    assert "task 1: timed out" in r.stderr
    assert parse_summary(r.stderr)["timed out"] == 1


def test_timeout_and_kill_grace_accept_unit_suffixes(run):
    r = run("--timeout", "150ms", "--kill-grace", "0.1s", "sleep", ":::", "30")
    assert r.rc == 1
    assert parse_summary(r.stderr)["timed out"] == 1
    for value in ("2m", "1h", "1.5", "3s"):
        r = run("--timeout", value, "true", ":::", "x")
        assert r.rc == 0, (value, r.stderr)


# ---------------------------------------------------- 3. signals to sockfork

SLOW_SH = r"""
echo $$ > "pid.$1"
case $1 in f*) exit 0 ;; esac
sleep 30 &
echo $! > ".gc.$1" && mv ".gc.$1" "gc.$1"
wait
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP],
                         ids=lambda s: s.name)
def test_signal_mid_run_stops_tasks_and_records_only_what_ran(tmp_path, sf, sig):
    script = write_script(tmp_path, "slow.sh", SLOW_SH)
    args = ["f1", "f2"] + ["s%d" % i for i in range(1, 9)]
    r = sf("-j", "2", "--results", tmp_path / "r.jsonl", "--joblog", tmp_path / "joblog",
           "sh", script, ":::", *args)
    # Both slots busy with slow tasks: f1 and f2 have finished.
    for name in ("s1", "s2"):
        wait_until(lambda: (tmp_path / ("gc." + name)).exists(), what="task %s running" % name)
    r.signal(sig)
    assert r.wait() == 128 + sig
    pids = [int(p.read_text()) for p in tmp_path.glob("pid.*")] + \
           [int(p.read_text()) for p in tmp_path.glob("gc.*")]
    assert len(pids) == 6
    wait_pids_dead(pids)
    assert live_processes_with(script) == []
    # Nothing started after the signal.
    assert sorted(p.name for p in tmp_path.glob("pid.*")) == ["pid.f1", "pid.f2", "pid.s1", "pid.s2"]

    res = results_by_seq(tmp_path / "r.jsonl")
    assert sorted(res) == [1, 2, 3, 4]
    for seq in (1, 2):
        assert res[seq]["ok"] and res[seq]["exit_code"] == 0 and "stopped" not in res[seq]
    for seq in (3, 4):
        assert (res[seq]["ok"], res[seq]["exit_code"], res[seq]["signal"], res[seq]["timed_out"],
                res[seq].get("stopped")) == (False, None, "SIGTERM", False, True), res[seq]
    jl = joblog_by_seq(tmp_path / "joblog")
    assert sorted(jl) == [1, 2, 3, 4]
    assert [(jl[s]["exitval"], jl[s]["signal"]) for s in (1, 2, 3, 4)] == \
        [(0, 0), (0, 0), (0, 15), (0, 15)]
    s = parse_summary(r.stderr)
    assert (s["tasks"], s["succeeded"], s["killed by a signal"]) == (4, 2, 2)


def test_closed_stdout_stops_the_run_with_141(tmp_path, sf):
    rfd, wfd = os.pipe()
    os.close(rfd)
    try:
        r = sf("-j", "1", "sh", "-c", 'echo "$1"; touch "ran.$1"', "sh", ":::", "a", "b", "c", "d",
               stdout=wfd)
    finally:
        os.close(wfd)
    assert r.wait() == 141
    assert "writing to stdout" in r.stderr
    assert sorted(p.name for p in tmp_path.glob("ran.*")) == ["ran.a"]


STUCK_SH = r"""
case $1 in
big) head -c 300000 /dev/zero ;;
slow) echo $$ > slow.pid; exec sleep 60 ;;
esac
"""


def pipe_bytes(fd):
    buf = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
    return int.from_bytes(buf, "little")


def test_a_stop_signal_ends_a_run_whose_stdout_is_not_read(tmp_path, sf):
    """stdout is a pipe nobody reads: the first task's output fills it and
    the run blocks writing (a slow reader loses nothing). SIGTERM then still
    ends the run: writes wait at most a second for room, the rest of the
    output is dropped with a message, the running task is stopped."""
    script = write_script(tmp_path, "stuck.sh", STUCK_SH)
    rfd, wfd = os.pipe()
    try:
        size = fcntl.fcntl(rfd, 1032)  # F_GETPIPE_SZ
        try:
            r = sf("-j", "2", "sh", script, ":::", "big", "slow", stdout=wfd)
        finally:
            os.close(wfd)
        wait_until(lambda: (tmp_path / "slow.pid").exists(), what="the slow task")
        wait_until(lambda: pipe_bytes(rfd) >= size, what="stdout's pipe full")
        slow = read_pid(tmp_path / "slow.pid")
        r.signal(signal.SIGTERM)
        assert r.wait() == 128 + signal.SIGTERM
        assert "stdout is not being read" in r.stderr, r.stderr
        assert pid_dead(slow)
        assert pipe_bytes(rfd) == size  # nothing lost before the stop
    finally:
        os.close(rfd)


# ---------------------------------------------------- 4. fd 3: results, logs, progress

FD3_SH = r"""
case $1 in
1) echo '{"result": 1}' >&3
   echo '{"result": {"a": [1, 2]}}' >&3
   echo '{"log": "hello from one"}' >&3 ;;
2) echo '{"result": "text"}' >&$SOCKFORK_FD
   echo 'not json at all' >&3
   echo '{"result": 42.5, "log": "two at once"}' >&3 ;;
3) echo plain stdout ;;
4) echo '{"progress": 0.5}' >&3
   echo '{"progress": {"done": 1, "total": 2}, "result": [true, null, "x"]}' >&3 ;;
esac
"""


def test_fd3_results_are_kept_and_logs_go_to_stderr(tmp_path, run):
    script = write_script(tmp_path, "fd3.sh", FD3_SH)
    r = run("-j", "2", "--results", tmp_path / "r.jsonl", "sh", script, ":::", "1", "2", "3", "4")
    assert r.rc == 0, r.stderr
    res = results_by_seq(tmp_path / "r.jsonl")
    assert {s: res[s]["result"] for s in res} == {1: {"a": [1, 2]}, 2: 42.5, 3: None,
                                                  4: [True, None, "x"]}
    assert all(res[s]["ok"] for s in res)
    err = r.stderr.splitlines()
    assert "sockfork: task 1: hello from one" in err
    assert "sockfork: task 2: two at once" in err
    # fd 3 is not stdout.
    assert r.stdout == b"plain stdout\n"
    assert PROGRESS_CLEAR not in r.stderr


def test_a_result_holding_u0000_reaches_the_results_file_intact(tmp_path, run):
    """\\u0000 is valid JSON and fd 3 takes it: the results line has the
    string with its NUL, not null."""
    script = write_script(tmp_path, "nul.sh",
                          'printf \'{"result": {"s": "a\\\\u0000b", "n": 1}}\\n\' >&3\n')
    r = run("--results", tmp_path / "r.jsonl", "sh", script, ":::", "1")
    assert r.rc == 0, r.stderr
    assert results_by_seq(tmp_path / "r.jsonl")[1]["result"] == {"s": "a\0b", "n": 1}


PROGRESS_SH = r"""
echo "{\"progress\": $2}" >&3
read x < "fifo.$1"
"""


FD3_WRITERS_SH = r"""
readlink /proc/$$/fd/3
pad=$(printf '%0900d' 0)
for w in 1 2 3 4; do
  ( i=0; while [ $i -lt 150 ]; do
      printf '{"log": "w%d line %d %s"}\n' $w $i "$pad" >&3; i=$((i + 1))
    done ) &
done
wait
"""


def test_fd3_is_a_pipe_and_concurrent_writers_lines_stay_whole(tmp_path, run):
    """fd 3 is the write end of a pipe: lines under PIPE_BUF written at
    once by four children of one task all arrive whole."""
    script = write_script(tmp_path, "writers.sh", FD3_WRITERS_SH)
    r = run("sh", script, ":::", "1", timeout=LONG_WAIT)
    assert r.rc == 0, r.stderr
    assert r.stdout.decode().startswith("pipe:"), r.stdout
    logs = re.findall(r"^sockfork: task 1: w(\d) line (\d+) 0{900}$", r.stderr, re.M)
    assert sorted(logs) == sorted((str(w), str(i)) for w in range(1, 5) for i in range(150))
    assert "not a JSON object" not in r.stderr and "a line over" not in r.stderr


def test_progress_on_a_terminal_shows_counts_and_each_tasks_progress(tmp_path, sf):
    script = write_script(tmp_path, "progress.sh", PROGRESS_SH)
    for i in (1, 2):
        os.mkfifo(str(tmp_path / ("fifo.%d" % i)))
    r = sf("-j", "2", "--timeout", "30s", "sh", script, "{#}", "{}", ":::",
           "0.4", '{"done": 3, "total": 10}', stderr="pty")
    fds = []
    try:
        r.err.wait_for(r"\r\x1b\[Kdone 0/2  failed 0  running 2  \d+\.\d/s"
                       r"(  #1 40%  #2 3/10|  #2 3/10  #1 40%)(\r|$)")
        fds.append(release(tmp_path / "fifo.1"))
        r.err.wait_for(r"\r\x1b\[Kdone 1/2  failed 0  running 1  \d+\.\d/s  ETA \d+:\d\d"
                       r"  #2 3/10(\r|$)")
        fds.append(release(tmp_path / "fifo.2"))
        assert r.wait() == 0
    finally:
        for fd in fds:
            os.close(fd)
    err = r.stderr
    # The progress line is cleared before the summary, and nothing follows.
    last = err.rindex(PROGRESS_CLEAR)
    tail = err[last + len(PROGRESS_CLEAR):]
    assert re.fullmatch(r"sockfork: run: 2 tasks in \d+\.\d\d s: 2 succeeded; 0 retries\r?\n", tail), \
        repr(tail)


def test_progress_option_forces_it_on_a_pipe(tmp_path, sf):
    script = write_script(tmp_path, "progress.sh", PROGRESS_SH)
    os.mkfifo(str(tmp_path / "fifo.1"))
    r = sf("--progress", "--timeout", "30s", "sh", script, "{#}", "{}", ":::", "0.25")
    fd = None
    try:
        r.err.wait_for(r"\r\x1b\[Kdone 0/1  failed 0  running 1  \d+\.\d/s  #1 25%")
        fd = release(tmp_path / "fifo.1")
        assert r.wait() == 0
    finally:
        if fd is not None:
            os.close(fd)


def test_no_progress_text_unless_stderr_is_a_terminal_or_asked(tmp_path, sf):
    """A task long enough for a few progress ticks (0.2 s each), run twice
    at once: stderr a pipe, and a terminal with --no-progress."""
    cmd = ["sh", "-c", 'echo "{\\"progress\\": 0.5}" >&3; sleep 0.7', "sh", ":::", "x"]
    piped = sf(*cmd)
    tty = sf("--no-progress", *cmd, stderr="pty")
    assert piped.wait() == 0
    assert tty.wait() == 0
    for r in (piped, tty):
        assert "\033[K" not in r.stderr and "running" not in r.stderr, repr(r.stderr)
        parse_summary(r.stderr)


# ---------------------------------------------------- 5. output order and grouping

CHAIN_SH = r"""
i=$1 n=$2
echo "$i:a"
echo "$i:b" >&2
if [ "$i" -lt "$n" ]; then
  next=$((i + 1)) k=0
  until grep -q "^{\"seq\":$next," results.jsonl 2>/dev/null; do
    k=$((k + 1))
    [ "$k" -le 3000 ] || exit 9
    sleep 0.01
  done
fi
echo "$i:c"
"""


@pytest.mark.parametrize("keep_order", [True, False], ids=["keep-order", "completion-order"])
def test_keep_order_prints_in_input_order_though_later_tasks_finish_first(tmp_path, run,
                                                                          keep_order):
    """Each task ends only once the next one is in the results: they finish
    6, 5, ... 1."""
    n = 6
    script = write_script(tmp_path, "chain.sh", CHAIN_SH)
    r = run(*(["-k"] if keep_order else []), "-j", str(n), "--timeout", "30s",
            "--results", tmp_path / "results.jsonl", "sh", script, "{}", str(n),
            ":::", *[str(i) for i in range(1, n + 1)], timeout=LONG_WAIT)
    assert r.rc == 0, r.stderr
    done_order = [x["seq"] for x in read_results(tmp_path / "results.jsonl")]
    assert done_order == list(range(n, 0, -1))
    order = list(range(1, n + 1)) if keep_order else done_order
    assert r.stdout.decode() == "".join("%d:a\n%d:c\n" % (i, i) for i in order)
    err_lines = [line for line in r.stderr.splitlines() if re.fullmatch(r"\d:b", line)]
    assert err_lines == ["%d:b" % i for i in order]


LINES_SH = r"""
i=$1 k=0
while [ $k -lt 1000 ]; do
  echo "task $i line $k"
  if [ $((k % 5)) -eq 0 ]; then echo "task $i err $k" >&2; fi
  if [ $((k % 100)) -eq 99 ]; then sleep 0.01; fi
  k=$((k + 1))
done
"""


def assert_contiguous(lines, kind, tasks, count, step=1):
    """lines: "task I KIND K" for each task, all of a task's together, K in order."""
    rx = re.compile(r"^task (\d+) %s (\d+)$" % kind)
    blocks = []
    for line in lines:
        m = rx.match(line)
        assert m, "unexpected or broken line %r" % line
        t, k = int(m.group(1)), int(m.group(2))
        if not blocks or blocks[-1][0] != t:
            assert t not in [b[0] for b in blocks], "task %d's %s lines are split" % (t, kind)
            blocks.append((t, []))
        blocks[-1][1].append(k)
    assert sorted(b[0] for b in blocks) == sorted(tasks)
    for t, ks in blocks:
        assert ks == list(range(0, count, step)), "task %d's %s lines" % (t, kind)


def test_grouped_output_of_concurrent_tasks_is_never_interleaved(tmp_path, run):
    script = write_script(tmp_path, "lines.sh", LINES_SH)
    r = run("-j", "4", "sh", script, ":::", "1", "2", "3", "4", timeout=LONG_WAIT)
    assert r.rc == 0, r.stderr
    assert_contiguous(r.stdout.decode().splitlines(), "line", [1, 2, 3, 4], 1000)
    err = [line for line in r.stderr.splitlines() if not line.startswith("sockfork: ")]
    assert_contiguous(err, "err", [1, 2, 3, 4], 1000, 5)


def test_line_buffer_lines_stay_whole_and_in_order_per_task(tmp_path, run):
    script = write_script(tmp_path, "lines.sh", LINES_SH)
    r = run("--line-buffer", "-j", "4", "sh", script, ":::", "1", "2", "3", "4",
            timeout=LONG_WAIT)
    assert r.rc == 0, r.stderr
    lines = r.stdout.decode().splitlines()
    assert len(lines) == 4000
    for t in (1, 2, 3, 4):
        mine = [line for line in lines if line.startswith("task %d " % t)]
        assert mine == ["task %d line %d" % (t, k) for k in range(1000)]


ENDLESS_SH = r"""
case $1 in
endless) echo $$ > endless.pid; exec yes "line of an endless task" ;;
small) head -c 5000 /dev/zero | tr '\0' s ;;
esac
"""


@pytest.mark.parametrize("order", [False, True], ids=["grouped", "keep-order"])
def test_max_output_stops_a_task_that_writes_without_end(tmp_path, run, order):
    """Grouped output is held until its task ends, so what one task may
    write is bounded: past --max-output it is stopped as on a timeout,
    its first SIZE bytes are written, it fails and is not retried. A task
    under the limit is untouched; the run ends by itself (no --timeout)."""
    script = write_script(tmp_path, "endless.sh", ENDLESS_SH)
    r = run(*(["-k"] if order else []), "-j", "2", "--max-output", "64K", "--retries", "2",
            "--results", tmp_path / "r.jsonl", "--joblog", tmp_path / "log",
            "sh", script, ":::", "endless", "small", timeout=LONG_WAIT)
    assert r.rc == 1, r.stderr
    out = r.stdout
    small = b"s" * 5000
    assert out.count(small) == 1
    endless = out.replace(small, b"", 1)
    assert len(endless) == 64 * 1024
    line = b"line of an endless task\n"
    assert endless[:len(line) * 100] == line * 100
    if order:
        assert out.endswith(small)
    res = results_by_seq(tmp_path / "r.jsonl")
    assert res[1]["output_limited"] is True and res[1]["ok"] is False
    assert res[1]["attempts"] == 1
    assert res[1]["stdout_bytes"] == 64 * 1024
    assert res[1]["exit_code"] is None and res[1]["signal"] in ("SIGTERM", "SIGPIPE")
    assert res[2]["ok"] is True and "output_limited" not in res[2]
    assert res[2]["stdout_bytes"] == 5000
    assert "task 1: output over 65536 bytes: stopped" in r.stderr
    m = SUMMARY_RE.search(r.stderr)
    assert m and "1 succeeded, 1 stopped for their output" in m.group(2), r.stderr
    assert pid_dead(read_pid(tmp_path / "endless.pid"))


@pytest.mark.parametrize("value", ["0", "12X", "-1", "2000T", ""])
def test_max_output_refuses_bad_sizes(run, value):
    r = run("--max-output", value, "true", ":::", "1")
    assert r.rc == 255
    assert "--max-output" in r.stderr


STREAM_SH = r"""
case $1 in
A) echo early; read x < fifo.A; echo late ;;
B) printf part1-; read x < fifo.B; echo part2 ;;
esac
"""


@pytest.mark.parametrize("tag", [False, True], ids=["plain", "tag"])
def test_line_buffer_passes_lines_on_as_they_come_and_never_splits_one(tmp_path, sf, tag):
    script = write_script(tmp_path, "stream.sh", STREAM_SH)
    os.mkfifo(str(tmp_path / "fifo.A"))
    os.mkfifo(str(tmp_path / "fifo.B"))
    r = sf("--line-buffer", *(["--tag"] if tag else []), "-j", "2", "--timeout", "30s",
           "sh", script, ":::", "A", "B")
    a, b = ("A\t", "B\t") if tag else ("", "")
    fds = []
    try:
        r.out.wait_for(re.escape(a + "early\n"))
        # B's unfinished line is held back, not passed on in pieces.
        assert b"part1" not in r.stdout
        fds.append(release(tmp_path / "fifo.B"))
        r.out.wait_for(re.escape(b + "part1-part2\n"))
        fds.append(release(tmp_path / "fifo.A"))
        assert r.wait() == 0, r.stderr
    finally:
        for fd in fds:
            os.close(fd)
    assert r.stdout.decode() == a + "early\n" + b + "part1-part2\n" + a + "late\n"


def test_tag_prefixes_every_line_with_the_arguments(tmp_path, run):
    r = run("--tag", "-k", "-j", "2", "sh", "-c", 'echo one; echo two; echo "err $1" >&2', "sh",
            ":::", "a", "b c", ":::", "x")
    assert r.rc == 0, r.stderr
    assert r.stdout.decode() == "a x\tone\na x\ttwo\nb c x\tone\nb c x\ttwo\n"
    err = r.stderr.splitlines()
    assert "a x\terr a" in err and "b c x\terr b c" in err


# ---------------------------------------------------- 6. resume

RESUME_SH = r"""
echo "$1 $2" >> ran.txt
[ -e "kill.$2" ] && kill -KILL $$
[ ! -e "fail.$2" ]
"""


def test_resume_skips_logged_tasks_and_resume_failed_reruns_the_failed(tmp_path, run):
    """Input from a pipe, so each run reads its lines the same way."""
    script = write_script(tmp_path, "resume.sh", RESUME_SH)
    joblog, results, ran = tmp_path / "joblog", tmp_path / "r.jsonl", tmp_path / "ran.txt"
    for name in ("fail.b", "fail.d", "kill.c"):
        (tmp_path / name).touch()

    def go(lines, *opts):
        if ran.exists():
            ran.unlink()
        r = run("-j", "2", "--joblog", joblog, "--results", results, *opts,
                "sh", script, "{#}", "{}", stdin="".join(x + "\n" for x in lines).encode())
        got = sorted(ran.read_text().splitlines()) if ran.exists() else []
        return r, got

    r, got = go("abcde")
    assert r.rc == 3
    assert got == ["1 a", "2 b", "3 c", "4 d", "5 e"]
    jl = joblog_by_seq(joblog)
    assert {s: (e["exitval"], e["signal"]) for s, e in jl.items()} == \
        {1: (0, 0), 2: (1, 0), 3: (0, 9), 4: (1, 0), 5: (0, 0)}

    # --resume: every seq in the joblog is skipped, failed or not.
    r, got = go("abcdef", "--resume")
    assert r.rc == 0, r.stderr
    assert got == ["6 f"]
    s = parse_summary(r.stderr)
    assert (s["tasks"], s["succeeded"], s["skipped (resumed)"]) == (1, 1, 5)

    # --resume-failed: the failed ones (exit code or signal) run again, as
    # their own seq; b and c now succeed, d still fails.
    (tmp_path / "fail.b").unlink()
    (tmp_path / "kill.c").unlink()
    r, got = go("abcdef", "--resume-failed")
    assert r.rc == 1
    assert got == ["2 b", "3 c", "4 d"]
    assert parse_summary(r.stderr)["skipped (resumed)"] == 3

    # Once b succeeded, its failed entry no longer counts; d is rerun.
    (tmp_path / "fail.d").unlink()
    r, got = go("abcdef", "--resume-failed")
    assert r.rc == 0, r.stderr
    assert got == ["4 d"]

    entries = read_joblog(joblog)  # checks there is one header, at the top
    assert sorted(e["seq"] for e in entries[:5]) == [1, 2, 3, 4, 5]
    assert [e["seq"] for e in entries[5:6]] == [6]
    assert sorted(e["seq"] for e in entries[6:9]) == [2, 3, 4]
    assert [(e["seq"], e["exitval"]) for e in entries[9:]] == [(4, 0)]
    # --results is appended to when resuming, one line per task run.
    assert sorted(x["seq"] for x in read_results(results)) == \
        sorted([1, 2, 3, 4, 5, 6, 2, 3, 4, 4])


def test_resume_keeps_keep_order_output_in_order(tmp_path, run):
    joblog = tmp_path / "joblog"
    r = run("-k", "-j", "2", "--joblog", joblog, "sh", "-c", 'echo "$1"; [ "$1" != b ]', "sh",
            stdin=b"a\nb\nc\n")
    assert (r.rc, r.stdout) == (1, b"a\nb\nc\n")
    r = run("-k", "-j", "2", "--resume-failed", "--joblog", joblog, "echo", "{#}", "{}",
            stdin=b"a\nb\nc\nd\ne\n")
    assert (r.rc, r.stdout) == (0, b"2 b\n4 d\n5 e\n")


@pytest.mark.parametrize("logged", [(1,), (1, 2), (2, 3), (1, 2, 3, 4)],
                         ids=lambda t: "logged-" + "".join(map(str, t)))
@pytest.mark.parametrize("kind", ["groups", "arg-file", "stdin-file", "stdin-pipe"])
def test_resume_runs_exactly_the_tasks_not_in_the_joblog(tmp_path, run, kind, logged):
    """The joblog of an interrupted run (some of its entries), resumed with
    one and with two jobs; the skipped tasks may come first, last, or be
    all of them."""
    lines = ["a", "b", "c", "d"]
    first = tmp_path / "joblog.full"
    r = run("--joblog", first, "echo", ":::", *lines)
    assert r.rc == 0
    keep = [line for line in first.read_text().splitlines(True)
            if line.startswith("Seq\t") or int(line.split("\t")[0]) in logged]
    want = "".join("%d %s\n" % (i, x) for i, x in enumerate(lines, 1) if i not in logged)
    for jobs in ("1", "2"):
        joblog = tmp_path / ("joblog.j" + jobs)
        joblog.write_text("".join(keep))
        opts = []
        if kind == "groups":
            tail, stdin = [":::"] + lines, None
        else:
            path = tmp_path / "input"
            path.write_text("".join(x + "\n" for x in lines))
            if kind == "arg-file":
                tail, stdin, opts = [], None, ["-a", str(path)]
            elif kind == "stdin-file":
                tail, stdin = [], open(str(path), "rb")
            else:
                tail, stdin = [], path.read_bytes()
        try:
            r = run("-k", "-j", jobs, "--resume", "--joblog", joblog, *opts, "echo", "{#}", "{}",
                    *tail, stdin=stdin)
        finally:
            if hasattr(stdin, "close"):
                stdin.close()
        assert (r.rc, r.stdout.decode()) == (0, want), (jobs, r.stderr)
        s = parse_summary(r.stderr)
        assert (s["tasks"], s["skipped (resumed)"]) == (4 - len(logged), len(logged)), r.stderr
        assert sorted(e["seq"] for e in read_joblog(joblog)) == [1, 2, 3, 4]


# ---------------------------------------------------- 7. arguments and placeholders

def test_path_placeholders(run):
    r = run("-k", "sh", "-c", 'printf "%s|" "$@"; echo', "sh", "{}", "{.}", "{/}", "{//}", "{/.}",
            ":::", "dir/sub/file.tar.gz", "x", ".profile", "/top", "a.b/c")
    assert r.rc == 0, r.stderr
    assert r.stdout.decode().splitlines() == [
        "dir/sub/file.tar.gz|dir/sub/file.tar|file.tar.gz|dir/sub|file.tar|",
        "x|x|x|.|x|",
        ".profile|.profile|.profile|.|.profile|",
        "/top|/top|top|/|top|",
        "a.b/c|a.b/c|c|a.b|c|",
    ]


def test_two_groups_are_a_cross_product_with_numbered_placeholders(tmp_path, run):
    r = run("-k", "-j", "3", "--results", tmp_path / "r.jsonl", "sh", "-c", 'printf "%s|" "$@"; echo',
            "sh", "{#}", "{1}", "{2}", "{1.}", "{2/}", "{}", "x{1}y",
            ":::", "a.x", "b.y", ":::", "d/e", "f")
    assert r.rc == 0, r.stderr
    assert r.stdout.decode().splitlines() == [
        "1|a.x|d/e|a|e|a.x d/e|xa.xy|",
        "2|a.x|f|a|f|a.x f|xa.xy|",
        "3|b.y|d/e|b|e|b.y d/e|xb.yy|",
        "4|b.y|f|b|f|b.y f|xb.yy|",
    ]
    res = results_by_seq(tmp_path / "r.jsonl")
    assert res[3]["command"] == ["sh", "-c", 'printf "%s|" "$@"; echo', "sh", "3", "b.y", "d/e",
                                 "b", "e", "b.y d/e", "xb.yy"]


def test_arguments_are_appended_as_separate_words_without_placeholders(run):
    r = run("-k", "printf", "[%s]", ":::", "a", "b c", ":::", "1")
    assert r.rc == 0, r.stderr
    assert r.stdout.decode() == "[a][1][b c][1]"


@pytest.mark.parametrize("kind", ["arg-file", "stdin-file", "stdin-pipe"])
def test_one_argument_per_input_line(tmp_path, run, kind):
    """From --arg-file, a regular file on stdin, or a pipe; a last line
    without its newline is an argument too."""
    text = b"x y\n  z\n$HOME\nit's\nlast"
    path = tmp_path / "input"
    path.write_bytes(text)
    opts, stdin = [], None
    if kind == "arg-file":
        opts = ["--arg-file", str(path)]
    elif kind == "stdin-file":
        stdin = open(str(path), "rb")
    else:
        stdin = text
    try:
        r = run("-k", "-j", "2", *opts, "printf", "[%s]\\n", stdin=stdin)
    finally:
        if hasattr(stdin, "close"):
            stdin.close()
    assert r.rc == 0, r.stderr
    assert r.stdout.decode() == "[x y]\n[  z]\n[$HOME]\n[it's]\n[last]\n"
    assert parse_summary(r.stderr)["tasks"] == 5


ENV_SH = r"""
seq=$1 slot=$2
if [ "$seq" -le 3 ]; then
  touch "started.$seq"
  k=0
  while :; do
    n=0
    for f in started.*; do [ -e "$f" ] && n=$((n + 1)); done
    [ "$n" -ge 3 ] && break
    k=$((k + 1)); [ "$k" -le 3000 ] || exit 9
    sleep 0.01
  done
fi
echo "$seq $slot seq=$SOCKFORK_TASK slot=$SOCKFORK_SLOT pseq=$PARALLEL_SEQ pslot=$PARALLEL_JOBSLOT fd=$SOCKFORK_FD stdin=$(readlink /proc/$$/fd/0) n=$(env | grep -c ^SOCKFORK_TASK=)"
"""


def test_seq_and_slot_placeholders_and_environment(tmp_path, run):
    """The first three tasks wait for each other, so they run at once and
    hold the three slots; then three more. An inherited SOCKFORK_TASK is
    replaced, not doubled."""
    script = write_script(tmp_path, "env.sh", ENV_SH)
    r = run("-k", "-j", "3", "--timeout", "30s", "--results", tmp_path / "r.jsonl",
            "sh", script, "{#}", "{%}", ":::", "a", "b", "c", "d", "e", "f",
            env={"SOCKFORK_TASK": "999", "PARALLEL_SEQ": "998"}, timeout=LONG_WAIT)
    assert r.rc == 0, r.stderr
    res = results_by_seq(tmp_path / "r.jsonl")
    lines = r.stdout.decode().splitlines()
    assert len(lines) == 6, lines
    slots = []
    for i, line in enumerate(lines, 1):
        m = re.fullmatch(r"(\d+) (\d+) seq=(\d+) slot=(\d+) pseq=(\d+) pslot=(\d+) fd=3 "
                         r"stdin=/dev/null n=1", line)
        assert m, line
        seq, slot = int(m.group(1)), int(m.group(2))
        assert seq == i and 1 <= slot <= 3, line
        assert [int(g) for g in m.group(3, 4, 5, 6)] == [seq, slot, seq, slot], line
        assert res[seq]["slot"] == slot
        slots.append(slot)
    # The first three ran at once: three different slots.
    assert sorted(slots[:3]) == [1, 2, 3]


def test_tasks_start_with_default_slice_mask_and_handlers(tmp_path, run):
    """The loop runs with a short scheduler slice (os/slice.c) that its
    tasks must not keep; a task starts with the slice a plain child of
    the test gets and an empty signal mask (the vfork child blocks every
    signal until just before its exec), and SIGPIPE ignored by the caller
    is put back to its default."""
    # The task's own process reads its status: sh execs cat, no fork. (A
    # shell's own mask is no witness: dash blocks every signal while it
    # waits for a child.)
    sched = os.path.exists("/proc/self/sched")  # CONFIG_SCHED_DEBUG
    files = "/proc/self/status" + (" /proc/self/sched" if sched else "")
    r = run("-k", "-j", "2", "sh", "-c", "exec cat " + files, "_", ":::", "1", "2",
            ignore_sigpipe=True)
    assert r.rc == 0, r.stderr
    out = "\n".join(l for l in r.stdout.decode().splitlines()
                    if l.startswith(("SigBlk", "SigIgn", "SigCgt", "se.slice")))
    assert out.count("SigBlk:\t0000000000000000") == 2, out
    for line in out.splitlines():
        if line.startswith("SigIgn:"):
            ign = int(line.split()[1], 16)
            assert not ign & (1 << (signal.SIGPIPE - 1)), out
    plain = subprocess.run(["cat", "/proc/self/sched"] if sched else ["true"],
                           capture_output=True, text=True, check=True).stdout
    default = [l for l in plain.splitlines() if l.startswith("se.slice")]
    if not default:
        return  # this kernel shows no slice: nothing more to compare
    want = int(default[0].split(":")[1])
    slices = [int(l.split(":")[1]) for l in out.splitlines() if l.startswith("se.slice")]
    assert slices == [want, want], (out, want)


def kernel_at_least(major, minor):
    m = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return bool(m) and (int(m.group(1)), int(m.group(2))) >= (major, minor)


RENICE_SH = r"""
if [ "$1" = 1 ]; then
  renice -n 5 -p $PPID >/dev/null && grep "^se.slice" /proc/$PPID/sched
else
  exec cat /proc/self/stat /proc/self/sched
fi
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/sched"), reason="no /proc/PID/sched")
def test_the_loop_has_a_short_slice_and_a_renice_during_the_run_stands(tmp_path, run):
    """Task 1 sees sockfork's loop (its parent) at the 0.1 ms slice
    (Linux 6.12+) and renices it to 5; task 2 then starts at nice 5 (what
    a plain child of a reniced process gets) with the default slice: the
    child puts back the slice only, not the nice the run started with."""
    script = write_script(tmp_path, "renice.sh", RENICE_SH)
    r = run("-k", "-j", "1", "sh", script, ":::", "1", "2")
    assert r.rc == 0, r.stderr
    out = r.stdout.decode()
    slices = [int(l.split(":")[1]) for l in out.splitlines() if l.startswith("se.slice")]
    stat_line = next(l for l in out.splitlines() if re.match(r"^\d+ \(cat\) ", l))
    nice = int(stat_line.rsplit(")", 1)[1].split()[16])
    assert nice == 5, stat_line
    if not slices:
        return  # this kernel shows no slice
    plain = subprocess.run(["cat", "/proc/self/sched"], capture_output=True, text=True,
                           check=True).stdout
    default = int(next(l for l in plain.splitlines() if l.startswith("se.slice")).split(":")[1])
    if kernel_at_least(6, 12) and default > 100000:
        assert slices[0] == 100000, out
    assert slices[-1] == default, out


def test_without_shell_arguments_are_literal(tmp_path, run):
    r = run("-k", "printf", "[%s]", "$HOME", "*", ";", "{}", ":::", "$(touch pwned)", "a b", "`id`")
    assert r.rc == 0, r.stderr
    assert r.stdout.decode() == "[$HOME][*][;][$(touch pwned)]" \
                                "[$HOME][*][;][a b]" \
                                "[$HOME][*][;][`id`]"
    assert not (tmp_path / "pwned").exists()


def test_shell_quotes_substituted_arguments(tmp_path, run):
    args = ["it's; touch pwned", "$HOME", "`touch pwned2`", "a  b", "*", '"q"']
    r = run("-k", "--shell", "--results", tmp_path / "r.jsonl", "printf", "'[%s]\\n'", "{}",
            ":::", *args)
    assert r.rc == 0, r.stderr
    assert r.stdout.decode() == "".join("[%s]\n" % a for a in args)
    assert not list(tmp_path.glob("pwned*"))
    res = results_by_seq(tmp_path / "r.jsonl")
    assert res[1]["command"] == ["/bin/sh", "-c", "printf '[%s]\\n' 'it'\"'\"'s; touch pwned'"]
    # The command's own words are shell text; appended arguments are quoted too.
    r = run("-k", "--shell", "echo", "{}", "|", "tr", "a-z", "A-Z", ":::", "it's ok")
    assert r.stdout == b"IT'S OK\n", r.stderr
    r = run("-k", "--shell", "printf '<%s>'", ":::", "it's", "$HOME")
    assert r.stdout == b"<it's><$HOME>", r.stderr


SHELL_ARGS = ["3", "a-b_c.d+e/f", "", "a b", "it's", "'", "''", "'a'b'", "$HOME", "*", "~",
              "a=b", "x,y", "a:b", "@%", "a\\b", "\u00e9", "a\nb", "-n", "`id`", '"q"']


def test_shell_leaves_safe_arguments_bare_as_gnu_parallel_does(tmp_path, run):
    """A number stays a number, so shell arithmetic on it works; every
    argument still reaches the command as it was."""
    r = run("--shell", "echo $(( {} * 2 ))", ":::", "3")
    assert (r.rc, r.stdout) == (0, b"6\n"), r.stderr
    r = run("-k", "--shell", "printf '[%s]\\n' {}", ":::", *SHELL_ARGS)
    assert r.rc == 0, r.stderr
    assert r.stdout.decode() == "".join("[%s]\n" % a for a in SHELL_ARGS)


@pytest.mark.skipif(not shutil.which("parallel"), reason="GNU parallel is not installed")
def test_shell_command_lines_are_the_ones_gnu_parallel_runs(tmp_path, run):
    """Side by side: the sh -c line of each task is what parallel
    --dry-run prints for the same command and arguments (but one with a
    newline: parallel reads that as two arguments)."""
    cmd = "echo {} X{}Y"
    args = [a for a in SHELL_ARGS if "\n" not in a]
    theirs = subprocess.run(["parallel", "--will-cite", "--dry-run", "-k", cmd, ":::"] + args,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=LONG_WAIT,
                            env=dict(os.environ, HOME=str(tmp_path)))
    assert theirs.returncode == 0, theirs.stderr
    r = run("-k", "--shell", "--results", tmp_path / "r.jsonl", cmd, ":::", *args)
    assert r.rc == 0, r.stderr
    res = results_by_seq(tmp_path / "r.jsonl")
    ours = "".join(res[i]["command"][2] + "\n" for i in range(1, len(args) + 1))
    assert ours == theirs.stdout.decode()


# ---------------------------------------------------- 8. halting, retrying, errors, output size

HALT_SH = r"""
case $1 in
slow) echo $$ > slow.pid; exec sleep 30 ;;
failslow)
  k=0
  until [ -s slow.pid ]; do k=$((k + 1)); [ "$k" -le 3000 ] || exit 9; sleep 0.01; done
  exit 3 ;;
waitfail)
  k=0
  until grep -q '^{"seq":2,' r.jsonl 2>/dev/null; do
    k=$((k + 1)); [ "$k" -le 3000 ] || exit 9; sleep 0.01
  done
  echo finished ;;
fail) exit 3 ;;
*) touch "ran.$1" ;;
esac
"""


@pytest.mark.parametrize("spec", ["now,fail=1", "now", "2"])
def test_halt_now_kills_the_running_and_starts_nothing(tmp_path, run, spec):
    script = write_script(tmp_path, "halt.sh", HALT_SH)
    r = run("-j", "2", "--halt", spec, "--results", tmp_path / "r.jsonl", "--joblog",
            tmp_path / "joblog", "sh", script, ":::", "slow", "failslow", "t3", "t4", "t5")
    assert r.rc == 2, r.stderr
    wait_pids_dead([read_pid(tmp_path / "slow.pid")])
    assert not list(tmp_path.glob("ran.*"))
    res = results_by_seq(tmp_path / "r.jsonl")
    assert sorted(res) == [1, 2]
    assert (res[2]["exit_code"], res[2]["ok"]) == (3, False)
    assert (res[1]["exit_code"], res[1]["signal"], res[1]["timed_out"], res[1].get("stopped")) == \
        (None, "SIGTERM", False, True)
    assert sorted(joblog_by_seq(tmp_path / "joblog")) == [1, 2]
    s = parse_summary(r.stderr)
    assert (s["tasks"], s["succeeded"], s["failed (exit code)"], s["killed by a signal"]) == \
        (2, 0, 1, 1)


@pytest.mark.parametrize("spec", ["soon,fail=1", "soon", "1"])
def test_halt_soon_lets_the_running_finish_and_starts_nothing(tmp_path, run, spec):
    script = write_script(tmp_path, "halt.sh", HALT_SH)
    r = run("-j", "2", "--halt", spec, "--results", tmp_path / "r.jsonl", "--timeout", "30s",
            "sh", script, ":::", "waitfail", "fail", "t3", "t4", "t5")
    assert r.rc == 1, r.stderr
    assert r.stdout == b"finished\n"
    assert not list(tmp_path.glob("ran.*"))
    res = results_by_seq(tmp_path / "r.jsonl")
    assert sorted(res) == [1, 2]
    assert res[1]["ok"] and "stopped" not in res[1]
    assert res[2]["exit_code"] == 3


@pytest.mark.parametrize("spec,codes,ran", [
    ("soon,fail=2", [1, 0, 1, 0, 0], 3),
    ("now,fail=2", [1, 0, 0, 1, 0, 1], 4),
    ("soon,fail=50%", [0, 0, 1, 0, 1, 1, 0, 0], 6),
])
def test_halt_conditions_count_failures(tmp_path, run, spec, codes, ran):
    r = run("-j", "1", "--halt", spec, "--results", tmp_path / "r.jsonl",
            "sh", "-c", 'touch "ran.$1"; exit $2', "sh", "{#}", "{}", ":::", *map(str, codes))
    assert r.rc == codes[:ran].count(1), r.stderr
    assert sorted(int(p.name[4:]) for p in tmp_path.glob("ran.*")) == list(range(1, ran + 1))
    assert sorted(results_by_seq(tmp_path / "r.jsonl")) == list(range(1, ran + 1))


def test_halt_never_runs_everything(tmp_path, run):
    r = run("-j", "1", "--halt", "never", "sh", "-c", "exit $1", "sh", ":::", "1", "1", "0")
    assert r.rc == 2
    assert parse_summary(r.stderr)["tasks"] == 3


RETRY_SH = r"""
f=counters/$1
n=0
[ -e "$f" ] && read n < "$f"
n=$((n + 1))
echo "$n" > "$f"
case $1 in
code3) exit 3 ;;
code4) exit 4 ;;
kill) kill -KILL $$ ;;
segv) kill -SEGV $$ ;;
term) kill -TERM $$ ;;
sleep) exec sleep 30 ;;
flaky3) [ "$n" -ge 3 ] || exit 3 ;;
flaky4) [ "$n" -ge 3 ] || exit 4 ;;
esac
"""


def test_retry_on_retries_only_the_listed_endings(tmp_path, run):
    script = write_script(tmp_path, "retry.sh", RETRY_SH)
    (tmp_path / "counters").mkdir()
    names = ["code3", "code4", "kill", "segv", "term", "sleep", "flaky3", "flaky4"]
    r = run("-j", "4", "--retries", "2", "--retry-on", "3,KILL,SIGTERM,timeout",
            "--timeout", "500ms", "--kill-grace", "200ms", "--results", tmp_path / "r.jsonl",
            "sh", script, ":::", *names, timeout=LONG_WAIT)
    expect = {  # name: (attempts, ok, exit_code, signal, timed_out)
        "code3": (3, False, 3, None, False),
        "code4": (1, False, 4, None, False),
        "kill": (3, False, None, "SIGKILL", False),
        "segv": (1, False, None, "SIGSEGV", False),
        "term": (3, False, None, "SIGTERM", False),
        "sleep": (3, False, None, "SIGTERM", True),
        "flaky3": (3, True, 0, None, False),
        "flaky4": (1, False, 4, None, False),
    }
    res = results_by_seq(tmp_path / "r.jsonl")
    got = {names[s - 1]: (x["attempts"], x["ok"], x["exit_code"], x["signal"], x["timed_out"])
           for s, x in res.items()}
    assert got == expect
    for name, e in expect.items():
        assert (tmp_path / "counters" / name).read_text() == "%d\n" % e[0], name
    assert r.rc == 7
    assert parse_summary(r.stderr)["retries"] == sum(e[0] - 1 for e in expect.values())


def test_a_name_is_looked_up_in_path_as_execvp_does(tmp_path, run):
    """The pool searches PATH itself, once per name: the first executable
    file wins, one found but not executable is 126 (EACCES) unless an
    executable one comes later, a name found nowhere is 127."""
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    (first / "sf-tool").write_text("#!/bin/sh\necho first\n")
    (first / "sf-tool").chmod(stat.S_IRUSR | stat.S_IWUSR)      # found, not executable
    (second / "sf-tool").write_text("#!/bin/sh\necho second $1\n")
    (second / "sf-tool").chmod(stat.S_IRWXU)
    (first / "sf-noexec").write_text("#!/bin/sh\necho no\n")
    (first / "sf-noexec").chmod(stat.S_IRUSR | stat.S_IWUSR)
    path = "%s:%s:/usr/bin:/bin" % (first, second)
    r = run("-k", "sf-tool", ":::", "a", "b", env={"PATH": path})
    assert (r.rc, r.stdout) == (0, b"second a\nsecond b\n"), r.stderr
    r = run("-k", "--results", tmp_path / "r.jsonl", "{}", ":::", "sf-noexec", "sf-nowhere",
            env={"PATH": path})
    assert r.rc == 2, r.stderr
    res = results_by_seq(tmp_path / "r.jsonl")
    assert res[1]["exit_code"] == 126 and "denied" in res[1]["error"], res[1]
    assert res[2]["exit_code"] == 127 and res[2]["error"], res[2]



def test_path_edge_cases_are_those_of_execvp(tmp_path, run):
    """The shared lookup follows glibc's execvp: an empty PATH entry (here a
    trailing ':') is the current directory; a directory of the command's
    name is not the command: 126 (EACCES) if nothing later is, not 127;
    PATH set but empty searches the current directory only."""
    bindir, later = tmp_path / "bin", tmp_path / "later"
    bindir.mkdir()
    later.mkdir()
    (tmp_path / "sf-here").write_text("#!/bin/sh\necho here $1\n")  # cwd only
    (tmp_path / "sf-here").chmod(stat.S_IRWXU)
    (bindir / "sf-dir").mkdir()
    (bindir / "sf-dir2").mkdir()
    (later / "sf-dir2").write_text("#!/bin/sh\necho later $1\n")
    (later / "sf-dir2").chmod(stat.S_IRWXU)

    r = run("-k", "--results", tmp_path / "r1.jsonl", "{}", "x", ":::",
            "sf-here", "sf-dir", "sf-nowhere", env={"PATH": "%s:" % bindir})
    assert (r.rc, r.stdout) == (2, b"here x\n"), r.stderr
    res = results_by_seq(tmp_path / "r1.jsonl")
    assert res[1]["ok"] and "error" not in res[1], res[1]
    assert res[2]["exit_code"] == 126 and "denied" in res[2]["error"], res[2]
    assert res[3]["exit_code"] == 127 and res[3]["error"], res[3]

    r = run("-k", "{}", "x", ":::", "sf-dir2", env={"PATH": "%s:%s" % (bindir, later)})
    assert (r.rc, r.stdout) == (0, b"later x\n"), r.stderr

    r = run("-k", "--results", tmp_path / "r2.jsonl", "{}", "x", ":::", "sf-here", "sh",
            env={"PATH": ""})
    assert (r.rc, r.stdout) == (1, b"here x\n"), r.stderr
    res = results_by_seq(tmp_path / "r2.jsonl")
    assert res[1]["ok"], res[1]
    assert res[2]["exit_code"] == 127 and res[2]["error"], res[2]  # /bin is not searched

def test_a_script_without_a_shebang_line_runs_with_bin_sh(tmp_path, run):
    """execve says ENOEXEC for it; execvp and GNU parallel run it with
    /bin/sh FILE ARGS..., by path or found in PATH, and so does run."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in ("plain.sh", "bin/sf-plain"):
        (tmp_path / name).write_text('echo "$0:$#:$1"\n')
        (tmp_path / name).chmod(stat.S_IRWXU)
    r = run("-k", "--results", tmp_path / "r.jsonl", "{1}", "{2}", ":::",
            str(tmp_path / "plain.sh"), "sf-plain", ":::", "a b",
            env={"PATH": "%s:/usr/bin:/bin" % bindir})
    assert r.rc == 0, r.stderr
    assert r.stdout.decode() == "%s:1:a b\n%s:1:a b\n" % (tmp_path / "plain.sh",
                                                           bindir / "sf-plain")
    assert all(x["ok"] and "error" not in x for x in read_results(tmp_path / "r.jsonl"))


def test_a_command_that_cannot_start_is_127_or_126_with_an_error(tmp_path, run):
    notexec = tmp_path / "notexec"
    notexec.write_text("#!/bin/sh\necho hi\n")
    notexec.chmod(stat.S_IRUSR | stat.S_IWUSR)
    adir = tmp_path / "adir"
    adir.mkdir()
    r = run("-k", "-j", "2", "--results", tmp_path / "r.jsonl", "--joblog", tmp_path / "joblog",
            "{}", ":::", "no-such-command-for-sockfork-run", str(notexec), str(adir), "true")
    assert r.rc == 3
    res = results_by_seq(tmp_path / "r.jsonl")
    assert res[1]["exit_code"] == 127 and res[1]["error"], res[1]
    assert res[1]["command"] == ["no-such-command-for-sockfork-run"]
    for seq in (2, 3):
        assert res[seq]["exit_code"] == 126 and res[seq]["error"], res[seq]
    for seq in (1, 2, 3):
        assert (res[seq]["ok"], res[seq]["signal"], res[seq]["attempts"]) == (False, None, 1)
    assert res[4]["ok"] and "error" not in res[4]
    jl = joblog_by_seq(tmp_path / "joblog")
    assert [(jl[s]["exitval"], jl[s]["signal"]) for s in (1, 2, 3, 4)] == \
        [(127, 0), (126, 0), (126, 0), (0, 0)]
    assert "cannot run no-such-command-for-sockfork-run" in r.stderr
    s = parse_summary(r.stderr)
    assert (s["succeeded"], s["could not start"]) == (1, 3)


def highest_fd_with_one_task(run, tmp_path):
    """The highest descriptor run has while one task runs (the task looks
    at its parent's), with the options the tests use. RLIMIT_NOFILE is a
    limit on numbers: that one + 2 leaves room for one task's start (its
    pipes go in the holes the last start left, its pidfd above), and no
    room for a second one's."""
    r = run("-j", "8", "--results", tmp_path / "probe.jsonl", "sh", "-c",
            "ls /proc/$PPID/fd | sort -n | tail -n 1", ":::", "1")
    assert r.rc == 0, r.stderr
    return int(r.stdout.decode().strip())


def test_starts_that_fail_for_lack_of_descriptors_wait_and_say_it_once(tmp_path, run):
    """A hard RLIMIT_NOFILE with room for one task and -j 8: the other
    starts fail with EMFILE again and again, as each task ends; they wait
    (each one's task runs later) and the log says so once, with a count at
    the end, not a line per task per backoff."""
    limit = highest_fd_with_one_task(run, tmp_path) + 2
    r = run("-j", "8", "--results", tmp_path / "r.jsonl", "sh", "-c", "echo $1", "sh", ":::",
            *range(1, 41), nofile=limit, timeout=LONG_WAIT)
    assert r.rc == 0, r.stderr
    assert sorted(int(x) for x in r.stdout.split()) == list(range(1, 41))
    assert len(error_lines(r.stderr, "cannot start task")) == 1, r.stderr
    assert "Too many open files" in error_lines(r.stderr, "cannot start task")[0]
    ends = error_lines(r.stderr, "task starts failed (Too many open files)")
    assert len(ends) == 1, r.stderr
    assert int(re.search(r"(\d+) task starts failed", ends[0]).group(1)) >= 7
    assert len(r.stderr.splitlines()) == 3, r.stderr  # and the summary
    res = results_by_seq(tmp_path / "r.jsonl")
    assert all(res[i]["ok"] and res[i]["attempts"] == 1 for i in range(1, 41))


def test_a_start_that_can_never_get_its_descriptors_fails_in_bounded_time(tmp_path, run):
    """A limit below what one task needs and nothing of ours running to
    free any: after its backoffs (a few seconds) the pool gives up, says
    so once, and the tasks fail as commands that cannot start (126), not
    retried, instead of waiting forever."""
    limit = highest_fd_with_one_task(run, tmp_path) - 2
    t0 = time.monotonic()
    r = run("-j", "4", "--retries", "3", "--results", tmp_path / "r.jsonl", "true", ":::",
            *range(1, 21), nofile=limit, timeout=LONG_WAIT)
    assert r.rc == 20, r.stderr
    assert time.monotonic() - t0 < LONG_WAIT
    assert len(error_lines(r.stderr, "cannot start task 1: Too many open files")) == 1, r.stderr
    assert len(error_lines(r.stderr, "cannot start tasks: Too many open files")) == 1, r.stderr
    assert len(error_lines(r.stderr, "cannot run true: Too many open files")) == 1, r.stderr
    assert len(r.stderr.splitlines()) <= 5, r.stderr
    s = parse_summary(r.stderr)
    assert (s["could not start"], s["retries"]) == (20, 0), r.stderr
    res = results_by_seq(tmp_path / "r.jsonl")
    assert all((x["exit_code"], x["attempts"], x["error"]) == (126, 1, "Too many open files")
               for x in res.values()) and len(res) == 20


def test_big_outputs_arrive_complete_intact_and_grouped(tmp_path, run):
    rnd = random.Random(1234)
    mib = 1 << 20
    for name in ("big1", "big2"):
        (tmp_path / name).write_bytes(rnd.randbytes(mib))
        (tmp_path / (name + ".err")).write_text(
            "".join("%s err line %06d %s\n" % (name, i, "x" * 40) for i in range(mib // 64)))
    r = run("-j", "2", "--results", tmp_path / "r.jsonl", "--joblog", tmp_path / "joblog",
            "sh", "-c", 'cat "$1"; cat "$1.err" >&2', "sh", ":::", "big1", "big2",
            timeout=LONG_WAIT)
    assert r.rc == 0, r.stderr[-2000:]
    b1, b2 = (tmp_path / "big1").read_bytes(), (tmp_path / "big2").read_bytes()
    assert r.stdout in (b1 + b2, b2 + b1), "stdout: %d bytes, not both files whole" % len(r.stdout)
    e1, e2 = (tmp_path / "big1.err").read_text(), (tmp_path / "big2.err").read_text()
    err = r.stderr
    assert e1 + e2 in err or e2 + e1 in err
    for x in read_results(tmp_path / "r.jsonl"):
        assert (x["stdout_bytes"], x["stderr_bytes"]) == (mib, len(e1)), x
    assert [e["receive"] for e in read_joblog(tmp_path / "joblog")] == [mib, mib]


def test_big_output_is_tagged_line_by_line(tmp_path, run):
    lines = ["line %06d %s" % (i, "y" * (i % 97)) for i in range(20000)]  # ~1.3 MB
    (tmp_path / "text").write_text("\n".join(lines) + "\n")
    r = run("--tag", "cat", ":::", str(tmp_path / "text"), timeout=LONG_WAIT)
    assert r.rc == 0, r.stderr
    tag = str(tmp_path / "text") + "\t"
    assert r.stdout.decode() == "".join(tag + line + "\n" for line in lines)


# ---------------------------------------------------- usage errors

USAGE_ERRORS = [
    ["--no-such-option", "@CMD@", ":::", "a"],
    [],
    ["-j", "2"],
    ["-j", "0", "@CMD@", ":::", "a"],
    ["-j", "many", "@CMD@", ":::", "a"],
    ["--jobs=65537", "@CMD@", ":::", "a"],
    ["-j"],
    ["--timeout", "0", "@CMD@", ":::", "a"],
    ["--timeout", "soon", "@CMD@", ":::", "a"],
    ["--timeout", "-1", "@CMD@", ":::", "a"],
    ["--kill-grace", "x", "@CMD@", ":::", "a"],
    ["--retries", "-1", "@CMD@", ":::", "a"],
    ["--halt", "sometimes", "@CMD@", ":::", "a"],
    ["--halt", "now,fail=0", "@CMD@", ":::", "a"],
    ["--halt", "soon,fail=101%", "@CMD@", ":::", "a"],
    ["--halt", "now,when=1", "@CMD@", ":::", "a"],
    ["--retry-on", "0", "@CMD@", ":::", "a"],
    ["--retry-on", "256", "@CMD@", ":::", "a"],
    ["--retry-on", "SIGNOPE", "@CMD@", ":::", "a"],
    ["--retry-on", "", "@CMD@", ":::", "a"],
    ["--resume", "@CMD@", ":::", "a"],
    ["--resume-failed", "@CMD@", ":::", "a"],
    ["--arg-file", "@ARGS@", "@CMD@", ":::", "a"],
    ["@CMD@", "{3}", ":::", "a", ":::", "b"],
    ["@CMD@", "{2}"],
    ["@CMD@", "::::", "@ARGS@"],
    ["@CMD@", ":::"],
    ["@CMD@", ":::", "a", ":::"],
    ["--line-buffer", "-k", "@CMD@", ":::", "a"],
]


@pytest.mark.parametrize("args", USAGE_ERRORS, ids=lambda a: " ".join(a) or "(nothing)")
def test_usage_errors_exit_255_and_run_nothing(tmp_path, run, args):
    marker = tmp_path / "ran"
    (tmp_path / "args").write_text("a\n")
    argv = []
    for a in args:
        if a == "@CMD@":
            argv += ["touch", str(marker)]
        elif a == "@ARGS@":
            argv.append(str(tmp_path / "args"))
        else:
            argv.append(a)
    r = run(*argv, stdin=b"x\n")
    assert r.rc == 255, (r.rc, r.stderr)
    assert r.stdout == b""
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sockfork: run: "), r.stderr
    assert not marker.exists()


def test_help_exits_0(run):
    r = run("--help")
    assert r.rc == 0
    text = r.stdout.decode()
    assert text.startswith("usage: sockfork run")
    for opt in ("--jobs", "--timeout", "--retry-on", "--halt", "--keep-order", "--results",
                "--joblog", "--resume-failed", "--progress"):
        assert opt in text, opt


# ---------------------------------------------------- how the options are read
# Pinned before run's parser moved to getopt_long (issue 12): each option is
# one word spelled out in full (no bundles like -kq, no abbreviations like
# --kee, a value attached only to -j), and an error names the word as given.

TRY = " (try 'sockfork run --help')"
PARSE_ERRORS = [
    (["--no-such-option", "echo"], "unknown option '--no-such-option'"),
    (["--foo=bar", "echo"], "unknown option '--foo=bar'"),
    (["--kee", "echo", ":::", "a"], "unknown option '--kee'"),
    (["--res", "r", "echo", ":::", "a"], "unknown option '--res'"),
    (["-kq", "echo", ":::", "a"], "unknown option '-kq'"),
    (["-qk", "echo", ":::", "a"], "unknown option '-qk'"),
    (["-aargs", "echo"], "unknown option '-aargs'"),
    (["-x", "echo"], "unknown option '-x'"),
    (["--=x", "echo"], "unknown option '--=x'"),
    (["---jobs", "2", "echo"], "unknown option '---jobs'"),
    (["--bogus", "-h"], "unknown option '--bogus'"),
    (["-j"], "-j needs a value"),
    (["--jobs"], "--jobs needs a value"),
    (["-a"], "-a needs a value"),
    (["--halt-on-error"], "--halt-on-error needs a value"),
    (["-k", "--timeout"], "--timeout needs a value"),
    (["--jobs="], "-j: '' is not a number of tasks from 1 to 65536"),
    (["-j=4", "echo"], "-j: '=4' is not a number of tasks from 1 to 65536"),
    (["-j", "-1", "echo"], "-j: '-1' is not a number of tasks from 1 to 65536"),
    (["--timeout=", "echo"], "--timeout: '' is not a duration over 0 (e.g. 1.5, 300ms, 2m)"),
    (["--halt-on-error", "x", "echo"], "--halt: 'x' is not never, now[,fail=N|P%] or soon[,...]"),
    # A flag given a value is refused: "--shell=no" must not mean --shell.
    (["--shell=no", "echo ok;echo", ":::", "a"], "--shell takes no value: '--shell=no'"),
    (["--quiet=", "echo", ":::", "a"], "--quiet takes no value: '--quiet='"),
    (["-j", "2"], "no COMMAND given"),
    (["-j", "2", "--"], "no COMMAND given"),
    (["--", ":::", "a"], "no COMMAND given"),
]


@pytest.mark.parametrize("args, want", PARSE_ERRORS, ids=lambda a: " ".join(a) if isinstance(a, list) else "")
def test_option_errors_name_the_word_as_given(run, args, want):
    r = run(*args)
    assert (r.rc, r.stdout) == (255, b""), (r.rc, r.stderr)
    assert r.stderr == "sockfork: run: " + want + TRY + "\n"


PARSE_OK = [
    (["-j2", "-k", "echo", ":::", "a", "b"], "a\nb\n"),
    (["--jobs=2", "--keep-order", "echo", ":::", "a", "b"], "a\nb\n"),
    (["-j", "1", "-j", "2", "-k", "echo", ":::", "a", "b"], "a\nb\n"),
    (["--lb", "--halt-on-error=never", "echo", ":::", "a"], "a\n"),
    (["--halt-on-error", "now,fail=1", "echo", ":::", "a"], "a\n"),
    (["--progress", "--no-progress", "-q", "echo", ":::", "a"], "a\n"),
    # "--" ends the options; what follows is the command, dashes and all.
    (["-j", "1", "--", "echo", "-j", "x", ":::", "a"], "-j x a\n"),
    (["--", "--", ":::", "a"], None),
    # The options end at COMMAND: what follows is its own.
    (["echo", "-k", "--jobs", ":::", "a"], "-k --jobs a\n"),
    # A value is the next word whatever it looks like.
    (["--results", "--", "echo", ":::", "a"], "a\n"),
    (["--joblog", ":::", "echo", ":::", "a"], "a\n"),
]


@pytest.mark.parametrize("args, want", PARSE_OK, ids=lambda a: " ".join(a) if isinstance(a, list) else "")
def test_options_read_as_gnu_parallel_reads_them(tmp_path, run, args, want):
    r = run(*args)
    if want is None:  # "--" then "--": a command named "--", not found
        assert r.rc == 1 and r.stdout == b"", (r.rc, r.stderr)
        assert "could not start" in r.stderr, r.stderr
        return
    assert (r.rc, r.stdout.decode()) == (0, want), r.stderr
    if "--results" in args:
        assert (tmp_path / "--").exists()
    if "--joblog" in args:
        assert (tmp_path / ":::").read_text().startswith(JOBLOG_HEADER)


def test_help_and_version_come_first_when_they_come_first(run):
    r = run("-h", "--bogus")
    assert (r.rc, r.stderr) == (0, "") and r.stdout.decode().startswith("usage: sockfork run")
    r = run("-V", "--jobs")
    assert (r.rc, r.stderr, r.stdout) == (0, "", b"sockfork 0.6.0\n")


# ---------------------------------------------------- bugs found (fixed since)

def test_lines_from_an_open_pipe_start_without_waiting_for_more_input(tmp_path, sf):
    r = sf("-j", "1", "sh", "-c", 'touch "ran.$1"', "sh", stdin="pipe")
    try:
        r.stdin.write(b"a\nb\n")
        r.stdin.flush()
        wait_until(lambda: (tmp_path / "ran.a").exists(), HANG_DEADLINE,
                   "the first line's task to run while stdin is still open")
    finally:
        r.stdin.close()
    assert r.wait() == 0
    assert (tmp_path / "ran.b").exists()


def test_resumed_tasks_see_their_own_seq(tmp_path, run):
    joblog = tmp_path / "joblog"
    cmd = ["sh", "-c", 'echo "{#} $SOCKFORK_TASK $PARALLEL_SEQ"; echo "{\\"log\\": \\"seq {#}\\"}" >&3']
    r = run("-k", "--joblog", joblog, *cmd, stdin=b"a\n")
    assert r.stdout == b"1 1 1\n"
    r = run("-k", "--resume", "--joblog", joblog, *cmd, stdin=b"a\nb\nc\n")
    assert r.rc == 0, r.stderr
    assert r.stdout == b"2 2 2\n3 3 3\n"
    assert "sockfork: task 2: seq 2" in r.stderr.splitlines()


def test_summary_counts_every_task_not_run_after_a_halt(tmp_path, run):
    r = run("-j", "1", "--halt", "now,fail=1", "sh", "-c", "exit $1", "sh", ":::",
            "0", "1", "0", "0")
    assert r.rc == 1
    s = parse_summary(r.stderr)
    assert (s["tasks"], s["succeeded"], s["failed (exit code)"]) == (2, 1, 1)
    assert s.get("not run") == 2, r.stderr


# ---------------------------------------------------- 9. the records: joblog and --results

def error_lines(err, text):
    return [line for line in err.splitlines() if text in line]


@pytest.mark.parametrize("which", ["--results", "--joblog"])
def test_a_record_file_that_cannot_be_written_fails_the_run_with_one_message(tmp_path, run,
                                                                            which):
    """/dev/full takes nothing: one message naming it, nothing more starts,
    and the status is 255, not 0. The joblog's header is its first write,
    so that run stops before any task."""
    r = run("-j", "1", which, "/dev/full", "sh", "-c", 'touch "ran.$1"', "sh",
            ":::", "a", "b", "c", "d")
    assert r.rc == 255, r.stderr
    assert len(error_lines(r.stderr, "/dev/full")) == 1, r.stderr
    assert "cannot write to /dev/full: No space left on device" in r.stderr
    ran = sorted(p.name for p in tmp_path.glob("ran.*"))
    assert ran == (["ran.a"] if which == "--results" else []), r.stderr


def check_whole_lines(joblog, results=None):
    """Both files end on a whole line, every line of them well formed."""
    entries = read_joblog(joblog)
    if results is not None and results.exists():
        text = results.read_text()
        assert text == "" or text.endswith("\n"), text[-200:]
        read_results(results)  # every line is JSON
    return entries


def resume_completes(run, tmp_path, joblog, n):
    """After a failed run: --resume (with room now) runs what was not
    recorded, and the joblog ends up with every task once."""
    r = run("-j", "4", "--resume", "--joblog", joblog, "true", ":::", *range(1, n + 1),
            timeout=LONG_WAIT)
    assert r.rc == 0, r.stderr
    entries = read_joblog(joblog)
    assert sorted(e["seq"] for e in entries) == list(range(1, n + 1))
    assert all(e["exitval"] == 0 for e in entries)
    return parse_summary(r.stderr)


def test_a_joblog_past_the_file_size_limit_fails_the_run_and_keeps_whole_lines(tmp_path, sf,
                                                                              run):
    """A full disk as RLIMIT_FSIZE makes it (EFBIG, no mount needed): the
    run stops with one message and 255, the joblog holds whole entries
    only, and --resume then runs exactly the tasks it does not have."""
    joblog = tmp_path / "joblog"
    r = sf("-j", "4", "--joblog", joblog, "true", ":::", *range(1, 501), fsize=4096)
    assert r.wait(LONG_WAIT) == 255, r.stderr
    assert len(error_lines(r.stderr, "cannot write")) == 1, r.stderr
    assert "cannot write to %s: File too large; stopping" % joblog in r.stderr
    logged = check_whole_lines(joblog)
    assert 0 < len(logged) < 500 and os.path.getsize(str(joblog)) <= 4096
    s = parse_summary(r.stderr)
    assert s["tasks"] < 500 and s.get("not run", 0) > 0, r.stderr
    s = resume_completes(run, tmp_path, joblog, 500)
    assert s["skipped (resumed)"] == len(logged)


@pytest.fixture
def small_disk(tmp_path):
    """A 32 KiB tmpfs in tmp_path (root only)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    m = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32k", "tmpfs", str(disk)],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if m.returncode != 0:
        pytest.skip("cannot mount a tmpfs: %s" % m.stdout.decode().strip())
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


def test_a_full_disk_fails_the_run_and_both_records_keep_whole_lines(tmp_path, small_disk, run):
    joblog, results = small_disk / "joblog", small_disk / "r.jsonl"
    r = run("-j", "4", "--joblog", joblog, "--results", results, "true", ":::",
            *range(1, 501), timeout=LONG_WAIT)
    assert r.rc == 255, r.stderr
    errors = error_lines(r.stderr, "cannot write")
    assert 1 <= len(errors) <= 2 and all("No space left on device" in e for e in errors), errors
    assert len(error_lines(r.stderr, str(joblog))) <= 1
    assert len(error_lines(r.stderr, str(results))) <= 1
    logged = check_whole_lines(joblog, results)
    assert 0 < len(logged) < 500
    saved = tmp_path / "joblog"
    saved.write_bytes(joblog.read_bytes())
    resume_completes(run, tmp_path, saved, 500)


def records_complete(run, joblog, results, n, *cmd):
    """--resume with room now: every task of 1..n ends with exactly one
    joblog entry and one results line across the two runs (a task the
    failed run did not finish is in neither, and runs again)."""
    first_log = set(joblog_by_seq(joblog)) if joblog.exists() else set()
    first_res = set(results_by_seq(results)) if results.exists() else set()
    assert first_log == first_res, (sorted(first_log), sorted(first_res))
    r = run("-j", "4", "--resume", "--joblog", joblog, "--results", results,
            *(cmd or ("true",)), ":::", *range(1, n + 1), timeout=LONG_WAIT)
    assert r.rc == 0, r.stderr
    assert sorted(joblog_by_seq(joblog)) == list(range(1, n + 1))
    assert sorted(results_by_seq(results)) == list(range(1, n + 1))
    return first_log


STOPPED_SH = r"""
[ -e go ] && exit 0
if [ "$1" = 1 ]; then  # ends once task 2 runs: its record fails then
  i=0
  while [ ! -e started.2 ] && [ $i -lt 3000 ]; do sleep 0.01; i=$((i+1)); done
else
  touch "started.$1"
  exec sleep 60
fi
"""


def test_tasks_a_record_failure_stopped_run_again_on_resume(tmp_path, run):
    """--results /dev/full: task 1's line fails, so it gets no joblog entry
    either; task 2, running then, is stopped by the run, not finished: it
    is not in the joblog as killed by SIGTERM. --resume runs all four, and
    the results file ends up complete."""
    script = write_script(tmp_path, "stopped.sh", STOPPED_SH)
    joblog, results = tmp_path / "joblog", tmp_path / "r.jsonl"
    r = run("-j", "2", "--joblog", joblog, "--results", "/dev/full", "sh", script, ":::",
            *range(1, 5))
    assert r.rc == 255, r.stderr
    assert (tmp_path / "started.2").exists()
    assert read_joblog(joblog) == [], joblog.read_text()
    (tmp_path / "go").touch()
    assert records_complete(run, joblog, results, 4, "sh", script) == set()


@pytest.mark.parametrize("jobs", ["1", "4"])
def test_results_past_the_file_size_limit_lose_nothing_after_resume(tmp_path, sf, run, jobs):
    """Results lines are longer than joblog entries, so the results file
    fills first (RLIMIT_FSIZE): the joblog has exactly the tasks the
    results file has, and --resume completes both."""
    joblog, results = tmp_path / "joblog", tmp_path / "r.jsonl"
    r = sf("-j", jobs, "--joblog", joblog, "--results", results, "true", ":::",
           *range(1, 201), fsize=4096)
    assert r.wait(LONG_WAIT) == 255, r.stderr
    assert "cannot write to %s: File too large; stopping" % results in r.stderr
    assert len(error_lines(r.stderr, "cannot write")) == 1, r.stderr
    assert 0 < len(records_complete(run, joblog, results, 200)) < 200


def test_a_joblog_on_a_full_disk_takes_its_tasks_results_line_back(tmp_path, small_disk, run):
    """The joblog fills first (results elsewhere): the task whose entry
    failed loses its results line too, so after --resume every task has
    one of each."""
    joblog, results = small_disk / "joblog", tmp_path / "r.jsonl"
    r = run("-j", "4", "--joblog", joblog, "--results", results, "true", ":::",
            *range(1, 1001), timeout=LONG_WAIT)
    assert r.rc == 255, r.stderr
    assert len(error_lines(r.stderr, "cannot write")) == 1, r.stderr
    saved = tmp_path / "joblog"
    saved.write_bytes(joblog.read_bytes())
    assert 0 < len(records_complete(run, saved, results, 1000)) < 1000


def joblog_of(tmp_path, seqs, name="joblog.full"):
    """A joblog of `echo ::: a b c d e` with only the entries of seqs, as
    lines with their newlines."""
    full = tmp_path / name
    if not full.exists():
        assert run_plain(tmp_path, "--joblog", full, "echo", ":::", *"abcde") == 0
    lines = full.read_text().splitlines(True)
    by = {int(l.split("\t")[0]): l for l in lines[1:]}
    return lines[0], [by[s] for s in seqs]


def run_plain(tmp_path, *args):
    r = Run(tmp_path, args)
    try:
        return r.wait()
    finally:
        r.kill()
        r.close()


def resumed_seqs(run, joblog):
    """Resumes `echo {#} ::: a b c d e`: the seqs it ran."""
    r = run("-k", "--resume", "--joblog", joblog, "echo", "{#}", ":::", *"abcde")
    assert r.rc == 0, r.stderr
    return [int(line.split()[0]) for line in r.stdout.decode().splitlines()], r.stderr


def test_resume_on_a_joblog_without_a_final_newline_starts_a_new_line(tmp_path, run):
    """The last entry is whole but has no newline (an editor): it counts,
    and the next entry goes on a line of its own, so a second resume runs
    nothing."""
    header, entries = joblog_of(tmp_path, [1, 2])
    joblog = tmp_path / "joblog"
    joblog.write_text(header + entries[0] + entries[1].rstrip("\n"))
    ran, _ = resumed_seqs(run, joblog)
    assert ran == [3, 4, 5]
    assert sorted(e["seq"] for e in read_joblog(joblog)) == [1, 2, 3, 4, 5]
    ran, _ = resumed_seqs(run, joblog)
    assert ran == []


@pytest.mark.parametrize("cut", ["3", "3\t:\t17966", "3\t:\t1796639500.816\t     0.006\t0\t0\t0",
                                 "3\t:\t1796639500.816\t     0.006\t0\t0\t0\t1"],
                         ids=["seq", "starttime", "exitval", "signal"])
def test_resume_ignores_a_last_line_cut_inside_a_field(tmp_path, run, cut):
    """A crash mid-write leaves an entry cut short: it is dropped with a
    message, its task runs again, and the joblog is whole afterwards. A
    Signal of "1" may have been "15": cut too."""
    header, entries = joblog_of(tmp_path, [1, 2])
    joblog = tmp_path / "joblog"
    joblog.write_text(header + "".join(entries) + cut)
    ran, err = resumed_seqs(run, joblog)
    assert ran == [3, 4, 5], err
    assert "its last line is cut short" in err
    assert sorted(e["seq"] for e in read_joblog(joblog)) == [1, 2, 3, 4, 5]
    ran, _ = resumed_seqs(run, joblog)
    assert ran == []


def test_resume_counts_a_last_line_cut_in_its_command(tmp_path, run):
    """Cut inside Command, the outcome (Seq to Signal) is all there."""
    header, entries = joblog_of(tmp_path, [1, 2])
    joblog = tmp_path / "joblog"
    joblog.write_text(header + entries[0] + entries[1][:-3])
    ran, err = resumed_seqs(run, joblog)
    assert ran == [3, 4, 5] and "cut short" not in err, err
    assert sorted(e["seq"] for e in read_joblog(joblog)) == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("keep", [4, 10, len(JOBLOG_HEADER)])
def test_resume_writes_a_header_cut_short_anew(tmp_path, run, keep):
    """A crash while the header was written leaves part of it (or all of
    it without its newline): the header is written whole again, not kept
    cut with the entries after it, and no task is said to run again."""
    joblog = tmp_path / "joblog"
    joblog.write_text(JOBLOG_HEADER[:keep])
    ran, err = resumed_seqs(run, joblog)
    assert ran == [1, 2, 3, 4, 5] and "cut short" not in err, err
    assert sorted(e["seq"] for e in read_joblog(joblog)) == [1, 2, 3, 4, 5]


def test_a_bad_line_before_the_last_still_stops_resume(tmp_path, run):
    header, entries = joblog_of(tmp_path, [1, 2])
    joblog = tmp_path / "joblog"
    joblog.write_text(header + "3\t:\t17\n" + "".join(entries))
    r = run("--resume", "--joblog", joblog, "echo", ":::", "a")
    assert r.rc == 255 and "joblog:2: not a joblog line" in r.stderr, r.stderr


def test_resumed_results_start_on_a_line_of_their_own(tmp_path, run):
    results, joblog = tmp_path / "r.jsonl", tmp_path / "joblog"
    r = run("--joblog", joblog, "--results", results, "echo", ":::", "a")
    assert r.rc == 0
    results.write_text(results.read_text().rstrip("\n"))
    r = run("--resume", "--joblog", joblog, "--results", results, "echo", ":::", "a", "b")
    assert r.rc == 0, r.stderr
    assert [x["seq"] for x in read_results(results)] == [1, 2]


@pytest.mark.parametrize("case", ["arg-file-results", "arg-file-joblog", "stdin-results",
                                  "symlink-results", "joblog-results"])
def test_an_output_that_is_the_input_or_the_other_output_is_refused(tmp_path, run, case):
    """Compared as files (device and inode), not names; before anything
    is emptied, so the input is left whole and nothing runs."""
    data = tmp_path / "input"
    data.write_text("a\nb\n")
    link = tmp_path / "link"
    link.symlink_to(data)
    stdin, opts = None, []
    if case == "arg-file-results":
        opts = ["-a", data, "--results", data]
    elif case == "arg-file-joblog":
        opts = ["-a", data, "--joblog", "./input"]
    elif case == "stdin-results":
        stdin, opts = open(str(data), "rb"), ["--results", data]
    elif case == "symlink-results":
        opts = ["-a", data, "--results", link]
    else:
        opts = ["--joblog", data, "--results", link, ":::", "x"]
    try:
        tail = opts[-2:] if case == "joblog-results" else []
        head = opts[:-2] if case == "joblog-results" else opts
        r = run(*head, "sh", "-c", 'touch "ran.$1"', "sh", *tail, stdin=stdin)
    finally:
        if stdin:
            stdin.close()
    assert r.rc == 255, r.stderr
    assert "same file" in r.stderr or "emptied before it is read" in r.stderr, r.stderr
    assert data.read_text() == "a\nb\n"
    assert not list(tmp_path.glob("ran.*"))


def test_dev_null_may_take_both_records_and_distinct_files_are_fine(tmp_path, run):
    data = tmp_path / "input"
    data.write_text("a\nb\n")
    r = run("-k", "-a", data, "--joblog", "/dev/null", "--results", "/dev/null", "echo")
    assert (r.rc, r.stdout) == (0, b"a\nb\n"), r.stderr
    with open(str(data), "rb") as stdin:
        r = run("--results", tmp_path / "r.jsonl", "echo", stdin=stdin)
    assert (r.rc, len(read_results(tmp_path / "r.jsonl"))) == (0, 2), r.stderr


# ---------------------------------------------------- 10. commands that cannot start

def test_a_command_that_cannot_start_is_not_retried_and_said_once(tmp_path, run):
    """Not found (ENOENT) and not executable (EACCES) fail at once, however
    many --retries: one attempt each, one message per command."""
    notexec = tmp_path / "notexec"
    notexec.write_text("#!/bin/sh\necho hi\n")
    notexec.chmod(stat.S_IRUSR | stat.S_IWUSR)
    for cmd, code in (("no-such-command-for-sockfork-run", 127), (str(notexec), 126)):
        results = tmp_path / "r.jsonl"
        r = run("-j", "2", "--retries", "3", "--results", results, cmd, ":::", "a", "b", "c")
        assert r.rc == 3, r.stderr
        assert len(error_lines(r.stderr, "cannot run")) == 1, r.stderr
        assert "cannot run %s" % cmd in r.stderr
        res = results_by_seq(results)
        assert [(res[s]["attempts"], res[s]["exit_code"]) for s in (1, 2, 3)] == [(1, code)] * 3
        s = parse_summary(r.stderr)
        assert (s["could not start"], s["retries"]) == (3, 0), r.stderr
        assert "--shell" not in r.stderr


def test_a_command_line_given_as_one_word_suggests_shell(tmp_path, run):
    r = run("--retries", "2", "echo hi", ":::", "a", "b")
    assert r.rc == 2
    hints = error_lines(r.stderr, "--shell")
    assert len(hints) == 1 and "'echo hi'" in hints[0], r.stderr
    r = run("-k", "--shell", "echo hi", ":::", "a", "b")
    assert (r.rc, r.stdout) == (0, b"hi a\nhi b\n"), r.stderr


def test_a_name_that_cannot_run_is_logged_without_its_control_characters(tmp_path, run):
    """The name comes from input data here: its escape sequences and
    invisible or bidi characters never reach the terminal, in the "cannot
    run" line and in the --shell hint."""
    name = "evil \x1b[2J\x07name\u202e\u200b"
    r = run("{}", ":::", name)
    assert r.rc == 1, r.stderr
    err = r.stderr
    assert "\x1b" not in err and "\x07" not in err, repr(err)
    assert "\u202e" not in err and "\u200b" not in err, repr(err)
    assert len(error_lines(err, "cannot run evil ?[2J?name")) == 1, repr(err)
    assert len(error_lines(err, "no program is named 'evil ?[2J?name")) == 1, repr(err)


# ---------------------------------------------------- 11. log lines and the progress line

LOGGER_SH = r"""
read x < "$1"
echo '{"log": "hello from the task"}' >&3
"""


def test_log_lines_on_a_terminal_start_on_a_cleared_line_and_the_progress_comes_back(tmp_path,
                                                                                      sf):
    """A task's fd-3 log, "cannot run" and "timed out after", one task at a
    time once the progress line is up: each is written after \\r and erase
    (never glued to the progress line) and the progress line is drawn
    again right after it."""
    script = tmp_path / "logger"
    script.write_text("#!/bin/sh\n" + LOGGER_SH)
    script.chmod(stat.S_IRWXU)
    sleeper = tmp_path / "sleeper"
    sleeper.write_text("#!/bin/sh\nexec sleep 30\n")
    sleeper.chmod(stat.S_IRWXU)
    fifo = tmp_path / "fifo"
    os.mkfifo(str(fifo))
    r = sf("-j", "1", "--timeout", "1s", "{}", str(fifo), ":::", str(script),
           "no-such-command-for-sockfork-run", str(sleeper), stderr="pty")
    fd = None
    try:
        r.err.wait_for(r"\r\x1b\[Kdone 0/3  failed 0  running 1")
        fd = release(fifo)
        assert r.wait() == 2
    finally:
        if fd is not None:
            os.close(fd)
    err = r.err.data().decode()
    logs = ["sockfork: task 1: hello from the task",
            "sockfork: task 2: cannot run no-such-command-for-sockfork-run",
            "sockfork: task 3: timed out after"]
    for line in logs:
        at = err.index(line)
        assert err[:at].endswith(PROGRESS_CLEAR), "%r glued to %r" % (line, err[at - 60:at])
        end = err.index("\n", at) + 1
        assert re.match(r"\r\x1b\[Kdone \d/3  failed \d  running \d", err[end:]), \
            "no progress after %r: %r" % (line, err[end:end + 60])
    # Every line of ours starts at column 0.
    for m in re.finditer("sockfork: ", err):
        before = err[:m.start()]
        assert before == "" or before.endswith(PROGRESS_CLEAR) or before.endswith("\n"), \
            repr(err[m.start() - 60:m.start() + 40])


def test_output_that_cannot_be_held_fails_the_run_with_one_message(tmp_path, sf):
    """Past 64 KiB a task's grouped output goes to a file in $TMPDIR; when
    that file cannot grow (RLIMIT_FSIZE here, a full disk in life) output
    is lost: one message, the run stops, 255."""
    r = sf("-j", "1", "sh", "-c", 'touch "ran.$1"; head -c 300000 /dev/zero', "sh",
           ":::", "a", "b", "c", fsize=4096)
    assert r.wait() == 255, r.stderr
    assert len(error_lines(r.stderr, "cannot hold its output")) == 1, r.stderr
    assert "task 1: cannot hold its output: File too large" in r.stderr
    assert sorted(p.name for p in tmp_path.glob("ran.*")) == ["ran.a"]
