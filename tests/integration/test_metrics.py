"""`--metrics ADDR`: the Prometheus endpoint of `sockfork serve` and `chat`,
scraped over TCP and Unix sockets by a plain HTTP client written here (the
bytes on the wire are the point).

What is checked: the body passes `promtool check metrics` (Debian's
prometheus package); every number equals what `ctl stats --json` says of
the same moment, through an independent reading of the mapping below, after
a known workload, in fork and prefork mode and for chat; the HTTP answers
to what is not a scrape; and the limits: a scraper that sends half a request
or never reads its answer is cut at the deadline (5 s) and holds up nobody
meanwhile, and at most 8 are served at once (the next is answered 503).
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time

import pytest

from conftest import WAIT, helper, peer_text, recv_until_eof, run_cli
from test_chat import Chat, chat_server, join, lobby
from test_exec import check_only_stdio, parse_fds

DEADLINE_S = 5.0          # METRICS_DEADLINE_S
SCRAPERS_MAX = 8          # METRICS_SCRAPERS_MAX
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


# ------------------------------------------------------------ helpers

def metrics_addr(srv):
    """("tcp", (host, port)) or ("unix", path), from the "metrics on" line."""
    _, m = srv.log.wait_one(r"^sockfork: metrics on (.+)$")
    text = m.group(1)
    if text.startswith("unix:"):
        return ("unix", text[5:])
    host, port = text.rsplit(":", 1)
    return ("tcp", (host.strip("[]"), int(port)))


def connect(addr, timeout=WAIT, rcvbuf=None):
    kind, a = addr
    s = socket.socket(socket.AF_UNIX if kind == "unix" else socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(timeout)
    s.connect(a)
    return s


def parse_answer(data):
    """(status, headers, body) of one HTTP/1.1 answer read to EOF."""
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, "no end of the head in %r" % data[:300]
    lines = head.decode("latin-1").split("\r\n")
    m = re.match(r"^HTTP/1\.1 (\d{3}) [A-Za-z ]+$", lines[0])
    assert m, lines[0]
    headers = {}
    for line in lines[1:]:
        k, v = line.split(":", 1)
        headers[k.strip().lower()] = v.strip()
    return int(m.group(1)), headers, body


def request(addr, raw, head=False):
    """Sends raw bytes, reads the answer to EOF: (status, headers, body)."""
    s = connect(addr)
    try:
        s.sendall(raw)
        data = recv_until_eof(s)
    finally:
        s.close()
    status, headers, body = parse_answer(data)
    assert headers.get("connection") == "close", headers
    if not head:
        assert int(headers["content-length"]) == len(body), (headers, len(body))
    return status, headers, body


def scrape(addr):
    status, headers, body = request(addr, b"GET /metrics HTTP/1.1\r\nHost: sockfork\r\n"
                                          b"Accept: text/plain\r\n\r\n")
    assert status == 200, (status, body[:300])
    assert headers["content-type"] == CONTENT_TYPE, headers
    return body.decode("utf-8")


def promtool_check(body):
    """The body through `promtool check metrics`: no error, no lint warning."""
    promtool = shutil.which("promtool")
    if not promtool:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing and CI is set: install Debian's prometheus package")
        pytest.skip("promtool not installed (Debian package prometheus; ./dev test installs it)")
    p = subprocess.run([promtool, "check", "metrics"], input=body.encode(), capture_output=True,
                       timeout=WAIT)
    assert p.returncode == 0 and not p.stdout.strip() and not p.stderr.strip(), \
        (p.returncode, p.stdout, p.stderr, body)


SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def unescape_label(v):
    return re.sub(r'\\(.)', lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), v)


def samples(body):
    """{(name, (label, value) or None): float}; HELP and TYPE once a family,
    before its samples, and a family's samples together."""
    out, typed, seen_families, current = {}, {}, [], None
    for line in body.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            name = line.split()[2]
            if line.startswith("# TYPE "):
                assert name not in typed, "TYPE twice for %s" % name
                typed[name] = line.split()[3]
            current = name
            continue
        m = SAMPLE_RE.match(line)
        assert m, "not a sample line: %r" % line
        name, labels, value = m.groups()
        assert name == current and name in typed, "%s outside its family" % name
        if name not in seen_families:
            seen_families.append(name)
        assert seen_families[-1] == name, "family %s split" % name
        label = None
        if labels:
            found = LABEL_RE.findall(labels)
            assert len(found) == 1, labels
            label = (found[0][0], unescape_label(found[0][1]))
        key = (name, label)
        assert key not in out, "sample twice: %r" % (key,)
        out[key] = float(value)
    for name, t in typed.items():
        assert t == ("counter" if name.endswith("_total") else "gauge"), (name, t)
    return out


def stats_json(ctl_path):
    rc, out, err = run_cli("ctl", "--control", ctl_path, "stats", "--json")
    assert rc == 0, (rc, out, err)
    st = json.loads(out)
    assert st["ok"] is True, st
    return st


# The mapping from `ctl stats` to the metrics, written out again here (not
# read from the C table) so that the test checks it.
ONE = {
    "accepted": "sockfork_connections_accepted_total",
    "active": "sockfork_connections_active",
    "max_conns": "sockfork_connections_max",
    "limit_reached": "sockfork_connections_limit_reached_total",
    "fork_failures": "sockfork_fork_failures_total",
    "accept_failures": "sockfork_accept_failures_total",
    "channel.frames_in": "sockfork_bus_frames_read_total",
    "channel.spawner_restarts": "sockfork_spawner_restarts_total",
    "workers.min": "sockfork_workers_min",
    "workers.max": "sockfork_workers_max",
    "workers.started": "sockfork_workers_started_total",
    "bus.channels": "sockfork_bus_channels",
    "bus.queued_bytes": "sockfork_bus_queued_bytes",
    "bus.topics": "sockfork_bus_topics",
    "bus.subscriptions": "sockfork_bus_subscriptions",
    "bus.names": "sockfork_bus_names",
    "bus.history_bytes": "sockfork_bus_history_bytes",
    "process.start_time_seconds": "process_start_time_seconds",
}
LABELLED = {
    "refused_per_ip": ("sockfork_connections_refused_total", "reason", "per_ip"),
    "denied": ("sockfork_connections_refused_total", "reason", "denied"),
    "proxy_refused": ("sockfork_connections_refused_total", "reason", "proxy_source"),
    "proxy_bad": ("sockfork_connections_refused_total", "reason", "proxy_bad"),
    "proxy_timed_out": ("sockfork_connections_refused_total", "reason", "proxy_timeout"),
    "idle_closed": ("sockfork_connections_ended_total", "reason", "idle"),
    "conn_timed_out": ("sockfork_connections_ended_total", "reason", "timeout"),
    "kicked": ("sockfork_connections_ended_total", "reason", "kicked"),
    "workers.idle": ("sockfork_workers", "state", "idle"),
    "workers.busy": ("sockfork_workers", "state", "busy"),
    "workers.starting": ("sockfork_workers", "state", "starting"),
    "workers.retiring": ("sockfork_workers", "state", "retiring"),
    "channel.kicked_full": ("sockfork_bus_disconnects_total", "reason", "queue_full"),
    "channel.kicked_bad": ("sockfork_bus_disconnects_total", "reason", "bad_input"),
}
BY_KEY = {
    "children": ("sockfork_children", "state"),
    "exited": ("sockfork_children_exited_total", "code"),
    "killed": ("sockfork_children_killed_total", "signal"),
    "workers.ended": ("sockfork_workers_ended_total", "reason"),
    "messages_in": ("sockfork_bus_messages_in_total", "kind"),
    "messages_out": ("sockfork_bus_messages_out_total", "kind"),
    "messages_dropped": ("sockfork_bus_messages_dropped_total", "kind"),
    "top_topics": ("sockfork_bus_topic_subscribers", "topic"),
}
# The supervisor's CPU time and memory change between two snapshots.
MOVING = {("process_cpu_seconds_total", None), ("process_resident_memory_bytes", None)}


def get(st, path):
    for part in path.split("."):
        if not isinstance(st, dict) or part not in st:
            return None
        st = st[part]
    return st


def expected_from_stats(st):
    want = {}
    for path, name in ONE.items():
        if get(st, path) is not None:
            want[(name, None)] = float(get(st, path))
    for path, (name, label, value) in LABELLED.items():
        if get(st, path) is not None:
            want[(name, (label, value))] = float(get(st, path))
    for path, (name, label) in BY_KEY.items():
        for k, v in (get(st, path) or {}).items():
            want[(name, (label, k))] = float(v)
    want[("sockfork_build_info", ("version", st["process"]["version"]))] = 1.0
    return want


def check_same_numbers(srv, ctl_path, addr):
    """One scrape and one `ctl stats --json` of a server at rest: the same
    numbers. Returns (samples, stats)."""
    st = stats_json(ctl_path)
    body = scrape(addr)
    promtool_check(body)
    got = samples(body)
    want = expected_from_stats(st)
    moving = {k: v for k, v in got.items() if k in MOVING}
    assert set(moving) == MOVING, sorted(got)
    assert all(v > 0 for v in moving.values()), moving
    got = {k: v for k, v in got.items() if k not in MOVING}
    assert got == want, "\nonly in metrics: %r\nonly in stats: %r\ndiffer: %r" % (
        {k: got[k] for k in set(got) - set(want)}, {k: want[k] for k in set(want) - set(got)},
        {k: (got[k], want[k]) for k in set(got) & set(want) if got[k] != want[k]})
    return got, st


def echo_once(srv, data=b"ping\n"):
    """One echo connection, ended and logged before this returns (the next
    one must not meet the per-IP limit)."""
    c = srv.connect()
    start = srv.log.mark()
    c.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = c.recv(4096)
        assert chunk, "EOF before the echo"
        got += chunk
    assert got == data
    peer = srv.close_client(c)
    srv.log.wait_one(r"^sockfork: \[%s\] disconnected " % re.escape(peer), start)


def wait_active(ctl_path, n):
    """Polls `ctl stats` (bounded) until `active` is n: a worker's end is
    counted when its slot says so."""
    deadline = time.monotonic() + WAIT
    while True:
        st = stats_json(ctl_path)
        if st["active"] == n:
            return st
        assert time.monotonic() < deadline, st
        time.sleep(0.05)


# ------------------------------------------------------------ numbers

@pytest.mark.parametrize("mode", ["fork", "prefork"])
def test_numbers_equal_ctl_stats(sockfork, tmp_path, mode):
    """N echo connections, one refused (per-IP limit), one child killed with
    SIGKILL: promtool passes the body, and every number is the one `ctl
    stats --json` gives."""
    ctl_path = str(tmp_path / "c.sock")
    extra = ("--workers", "2") if mode == "prefork" else ()
    srv = sockfork("--echo", "--max-per-ip", "1", "--control", ctl_path,
                   "--metrics", "127.0.0.1:0", *extra)
    addr = metrics_addr(srv)
    n = 5
    for _ in range(n):
        echo_once(srv)
    held = srv.connect()
    held.sendall(b"x")
    assert held.recv(1) == b"x"
    refused = srv.connect()
    assert recv_until_eof(refused) == b"", "the per-IP limit closes it at once"
    srv.log.wait_one(r"per-IP limit")
    # The held connection's child (fork mode) or worker (prefork), killed.
    if mode == "fork":
        _, m = srv.wait_connected(held)
        pid = int(m.group(1))
    else:
        # The held connection's worker, by its peer: the worker that refused
        # the other one may still show busy for a moment after its close.
        me = "%s:%d" % held.getsockname()
        busy = [c for c in json.loads(run_cli("ctl", "--control", ctl_path, "--json", "list")[1])
                ["children"] if c["state"] == "busy" and c.get("peer") == me]
        assert len(busy) == 1, busy
        pid = busy[0]["pid"]
    os.kill(pid, signal.SIGKILL)
    assert recv_until_eof(held) == b""
    srv.log.wait_one(r"pid=%d .*killed by SIGKILL" % pid)
    srv.close_client(held)
    st = wait_active(ctl_path, 0)
    got, st = check_same_numbers(srv, ctl_path, addr)

    assert got[("sockfork_connections_refused_total", ("reason", "per_ip"))] == 1
    assert got[("sockfork_children_killed_total", ("signal", "SIGKILL"))] == 1
    assert got[("sockfork_connections_active", None)] == 0
    if mode == "fork":
        assert got[("sockfork_connections_accepted_total", None)] == n + 1
        assert got[("sockfork_children_exited_total", ("code", "0"))] == n
        assert got[("sockfork_children", ("state", "running"))] == 0
        assert not any(k[0] == "sockfork_workers" for k in got)
    else:
        assert got[("sockfork_connections_accepted_total", None)] >= n + 1
        assert got[("sockfork_workers_ended_total", ("reason", "crashed"))] == 1
        assert got[("sockfork_workers_min", None)] == 2
        assert not any(k[0] == "sockfork_children" for k in got)
    assert got[("process_start_time_seconds", None)] == pytest.approx(
        float(open("/proc/%d/stat" % srv.pid).read().rsplit(")", 1)[1].split()[19])
        / os.sysconf("SC_CLK_TCK") + boot_time(), abs=0.02)


def boot_time():
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("btime "):
                return float(line.split()[1])
    raise AssertionError("no btime in /proc/stat")


def test_chat_rooms_over_unix(sockfork, tmp_path):
    """chat with --metrics unix:PATH: rooms are topics ("room:NAME"), members
    their subscribers; bus messages by kind; the same numbers as ctl."""
    path = str(tmp_path / "m.sock")
    srv = chat_server(sockfork, tmp_path, "--history", "0", "--metrics", "unix:" + path)
    addr = metrics_addr(srv)
    assert addr == ("unix", path)
    alice, bob, carol = lobby(srv, "alice", "bob", "carol")
    join(carol, "kitchen")
    bob.expect("*** carol has left lobby")
    alice.expect("*** carol has left lobby")
    alice.send("hello")
    bob.expect("<alice> hello")
    got, st = check_same_numbers(srv, srv.ctl_path, addr)
    assert got[("sockfork_bus_topic_subscribers", ("topic", "room:lobby"))] == 2
    assert got[("sockfork_bus_topic_subscribers", ("topic", "room:kitchen"))] == 1
    assert got[("sockfork_bus_subscriptions", None)] == 3
    assert got[("sockfork_bus_topics", None)] >= 2
    assert got[("sockfork_bus_messages_in_total", ("kind", "publish"))] >= 1
    assert got[("sockfork_bus_messages_in_total", ("kind", "subscribe"))] >= 4
    assert got[("sockfork_bus_messages_out_total", ("kind", "topic"))] >= 1
    assert got[("sockfork_bus_names", None)] >= 3  # the nicknames (and what chat claims besides)
    assert got[("sockfork_connections_active", None)] == 3
    for c in (alice, bob, carol):
        c.close()


def test_human_stats_unchanged_in_form(sockfork, tmp_path):
    """`ctl stats` without --json: one `key: value` or `key: k=v ...` line
    per member, the new ones too."""
    ctl_path = str(tmp_path / "c.sock")
    sockfork("--echo", "--control", ctl_path, "--metrics", "127.0.0.1:0")
    rc, out, err = run_cli("ctl", "--control", ctl_path, "stats")
    assert rc == 0, (rc, out, err)
    lines = out.splitlines()
    for key in ("accepted", "children", "messages_in", "messages_out", "messages_dropped", "bus",
                "top_topics", "process"):
        assert any(line.startswith(key + ": ") for line in lines), (key, out)
    assert "top_topics: none" in lines
    assert any(re.match(r"^children: running=0 terminating=0$", line) for line in lines), out


# ------------------------------------------------------------ HTTP

def test_http_answers(sockfork, tmp_path):
    srv = sockfork("--echo", "--no-control", "--metrics", "127.0.0.1:0")
    addr = metrics_addr(srv)
    status, _, body = request(addr, b"GET /other HTTP/1.1\r\n\r\n")
    assert status == 404, body
    status, headers, _ = request(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")
    assert status == 405 and headers["allow"] == "GET, HEAD", headers
    status, _, _ = request(addr, b"DELETE /metrics HTTP/1.0\r\n\r\n")
    assert status == 405
    status, _, _ = request(addr, b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03garbage\r\n\r\n")
    assert status == 400
    status, _, _ = request(addr, b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n")
    assert status == 400
    status, _, _ = request(addr, b"GET /metrics HTTP/2.0\r\n\r\n")
    assert status == 505
    # A head over 8 KiB: 431, and the rest of what was sent does not turn
    # the answer into a reset.
    status, _, _ = request(addr, b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n")
    assert status == 431
    status, headers, body = request(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n", head=True)
    assert status == 200 and body == b"" and int(headers["content-length"]) > 1000, headers
    # A query string is not part of the path; bare LFs end lines.
    status, _, body = request(addr, b"GET /metrics?x=1 HTTP/1.0\n\n")
    assert status == 200 and b"sockfork_build_info" in body


def test_bad_metrics_address_is_a_usage_error(tmp_path):
    rc, out, err = run_cli("serve", "--echo", "--no-control", "-l", "127.0.0.1:0",
                           "--metrics", "127.0.0.1")
    assert rc == 2 and "cannot serve metrics on 127.0.0.1: " in err, (rc, err)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        rc, out, err = run_cli("serve", "--echo", "--no-control", "-l", "127.0.0.1:0",
                               "--metrics", "127.0.0.1:%d" % port)
    finally:
        taken.close()
    assert rc == 2 and "cannot serve metrics on 127.0.0.1:%d: Address already in use" % port \
        in err, (rc, err)


def test_children_do_not_get_the_metrics_socket(sockfork, tmp_path):
    """An exec'd program has its stdio and channel only, while a scraper is
    connected and the metrics listener open."""
    srv = sockfork("--metrics", "127.0.0.1:0", "--no-control", "--", helper("fdcount"))
    addr = metrics_addr(srv)
    scraper = connect(addr)
    scraper.sendall(b"GET /met")
    c = srv.connect()
    check_only_stdio(parse_fds(recv_until_eof(c)), srv)
    scraper.close()


# ------------------------------------------------------------ limits

def test_half_a_request_is_cut_at_the_deadline(sockfork, tmp_path):
    """A scraper that stalls mid-request holds up neither scrapes nor
    connections, and is closed, unanswered, at the deadline."""
    srv = sockfork("--echo", "--no-control", "--metrics", "127.0.0.1:0")
    addr = metrics_addr(srv)
    stalled = connect(addr, timeout=DEADLINE_S + WAIT)
    stalled.sendall(b"GET /metrics HTTP/1.1\r\nHost: x")
    t0 = time.monotonic()
    scrape(addr)
    echo_once(srv)
    assert recv_until_eof(stalled, timeout=DEADLINE_S + WAIT) == b""
    assert time.monotonic() - t0 > DEADLINE_S / 2, "closed long before its deadline"
    stalled.close()


def test_a_scraper_that_never_reads_holds_up_nobody(sockfork, tmp_path):
    """Scrapes and connections are served while one scraper reads nothing
    (a small receive window); its answer is whole when it reads at last.
    An answer larger than the socket buffers, left unread, is the unit
    test's (test_metrics.c, test_stalled_reader_does_not_hold_others): a
    body that size needs more topics than a test server is worth."""
    srv = sockfork("--echo", "--no-control", "--metrics", "127.0.0.1:0")
    addr = metrics_addr(srv)
    lazy = connect(addr, rcvbuf=1024, timeout=DEADLINE_S + WAIT)
    lazy.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
    for _ in range(3):
        scrape(addr)
        echo_once(srv)
    status, headers, body = parse_answer(recv_until_eof(lazy, timeout=DEADLINE_S + WAIT))
    assert status == 200 and int(headers["content-length"]) == len(body), headers
    lazy.close()


def test_scrapers_at_once_are_bounded(sockfork, tmp_path):
    """Eight scrapers that say nothing take every place: the ninth is told
    503 at once; one of the eight is still served; once they are gone,
    scrapes are served again."""
    srv = sockfork("--echo", "--no-control", "--metrics", "127.0.0.1:0")
    addr = metrics_addr(srv)
    idle = [connect(addr, timeout=DEADLINE_S + WAIT) for _ in range(SCRAPERS_MAX)]
    # The ninth is accepted after the eight (the kernel's queue is in order).
    status, _, body = request(addr, b"GET /metrics HTTP/1.1\r\n\r\n")
    assert status == 503, body
    echo_once(srv)
    idle[0].sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
    status, _, body = parse_answer(recv_until_eof(idle[0]))
    assert status == 200 and b"sockfork_build_info" in body
    for s in idle:
        s.close()
    deadline = time.monotonic() + WAIT
    while True:
        status, _, _ = request(addr, b"GET /metrics HTTP/1.1\r\n\r\n")
        if status == 200:
            break
        assert status == 503 and time.monotonic() < deadline, status
        time.sleep(0.05)


# ------------------------------------------------------------ sockfork run

from test_run import (parse_summary, read_joblog, release, sf,  # noqa: E402,F401
                      wait_until, write_script)

# A task blocks until the test writes a line into its FIFO, then exits 3
# if it is B, 0 otherwise.
BLOCK_SH = r"""
read x < "fifo.$1"
[ "$1" != B ] || exit 3
"""

# sockfork run's families, written out again here (not read from the C
# table): sf_pool_stats's names.
RUN_ONE = {
    "submitted": "sockfork_tasks_submitted_total",
    "started": "sockfork_tasks_started_total",
    "retried": "sockfork_tasks_retried_total",
    "ok": "sockfork_tasks_succeeded_total",
    "cancelled": "sockfork_tasks_cancelled_total",
    "running": "sockfork_tasks_running",
    "pending": "sockfork_tasks_pending",
    "jobs": "sockfork_tasks_max",
    "workers_started": "sockfork_task_workers_started_total",
    "halted": "sockfork_tasks_halted",
    "cancelled_by_request": "sockfork_tasks_cancel_requested",
}
RUN_FAILED = {"exit_code", "signal", "timeout", "output_limit", "spawn_error"}


def run_metrics_addr(r):
    m = r.err.wait_for(r"(?m)^sockfork: metrics on 127\.0\.0\.1:(\d+)\r?$")
    return ("tcp", ("127.0.0.1", int(m.group(1))))


def run_scrape(addr):
    """One scrape of a run, checked by promtool and for its families: every
    one of sockfork run's, the process's, and nothing else."""
    body = scrape(addr)
    promtool_check(body)
    got = samples(body)
    names = {k[0] for k in got}
    want = set(RUN_ONE.values()) | {"sockfork_tasks_failed_total", "sockfork_build_info",
                                    "process_cpu_seconds_total", "process_resident_memory_bytes",
                                    "process_start_time_seconds"}
    assert names == want, (sorted(names - want), sorted(want - names))
    assert {k[1][1] for k in got if k[0] == "sockfork_tasks_failed_total"} == RUN_FAILED, got
    return got


def scrape_until(addr, pred, what):
    """Scrapes (bounded) until pred(samples) holds; returns those samples."""
    found = []

    def once():
        got = run_scrape(addr)
        found[:] = [got]
        return pred(got)
    wait_until(once, what=what)
    return found[0]


def failed(got):
    return sum(v for k, v in got.items() if k[0] == "sockfork_tasks_failed_total")


def test_run_metrics_while_tasks_run(tmp_path, sf):
    """`run --metrics -j 2` over four tasks that block on FIFOs: two run and
    are counted so; after three end (one failing), the counts are the
    joblog's; after the last, the summary's."""
    script = write_script(tmp_path, "block.sh", BLOCK_SH)
    for name in "ABCD":
        os.mkfifo(str(tmp_path / ("fifo." + name)))
    joblog = tmp_path / "jl"
    r = sf("--metrics", "127.0.0.1:0", "-j", "2", "--joblog", joblog, "--timeout", "60s",
           "sh", script, ":::", "A", "B", "C", "D")
    fds = []
    try:
        addr = run_metrics_addr(r)
        got = scrape_until(addr, lambda g: g[("sockfork_tasks_started_total", None)] == 2,
                           "two tasks started")
        assert got[("sockfork_tasks_running", None)] == 2, got
        assert got[("sockfork_tasks_max", None)] == 2
        assert got[("sockfork_tasks_succeeded_total", None)] == 0 and failed(got) == 0
        assert got[("sockfork_build_info", ("version", BUILD_VERSION()))] == 1
        for name in "ABC":
            fds.append(release(tmp_path / ("fifo." + name)))
        wait_until(lambda: joblog.exists() and len(read_joblog(joblog)) == 3,
                   what="three joblog entries")
        entries = read_joblog(joblog)
        got = run_scrape(addr)
        assert [e["command"][-1] for e in entries if e["exitval"] == 3] == ["B"], entries
        assert got[("sockfork_tasks_succeeded_total", None)] == \
            sum(1 for e in entries if e["exitval"] == 0) == 2
        assert got[("sockfork_tasks_failed_total", ("reason", "exit_code"))] == failed(got) == \
            sum(1 for e in entries if e["exitval"] != 0) == 1
        assert got[("sockfork_tasks_started_total", None)] == 4
        assert got[("sockfork_tasks_submitted_total", None)] == 4
        assert got[("sockfork_tasks_running", None)] == 1
        assert got[("sockfork_tasks_pending", None)] == 0
        assert got[("sockfork_tasks_retried_total", None)] == 0
        assert got[("process_start_time_seconds", None)] == pytest.approx(
            float(open("/proc/%d/stat" % r.pid).read().rsplit(")", 1)[1].split()[19])
            / os.sysconf("SC_CLK_TCK") + boot_time(), abs=0.02)
        fds.append(release(tmp_path / "fifo.D"))
        assert r.wait() == 1, r.stderr
    finally:
        for fd in fds:
            os.close(fd)
    summary = parse_summary(r.stderr)
    assert summary["tasks"] == 4 and summary["succeeded"] == 3, summary
    assert summary["failed (exit code)"] == 1, summary
    # The last scrape plus D, which ended after it.
    assert summary["succeeded"] == got[("sockfork_tasks_succeeded_total", None)] + 1
    assert summary["failed (exit code)"] == failed(got)
    assert len(read_joblog(joblog)) == 4


def BUILD_VERSION():
    rc, out, err = run_cli("--version")
    assert rc == 0, (rc, out, err)
    return out.split()[-1]


def test_run_bad_metrics_address_is_a_usage_error(tmp_path, sf):
    """A malformed address and a taken port: run's usage status (255), one
    line, no task run."""
    r = sf("--metrics", "127.0.0.1", "touch", "ran.{}", ":::", "x")
    assert r.wait() == 255
    assert re.fullmatch(r"sockfork: run: --metrics: '127\.0\.0\.1' is not HOST:PORT, "
                        r"\[V6\]:PORT or unix:PATH \(try 'sockfork run --help'\)\n",
                        r.stderr), r.stderr
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        r = sf("--metrics", "127.0.0.1:%d" % port, "touch", "ran.{}", ":::", "x")
        assert r.wait() == 255
    finally:
        taken.close()
    assert r.stderr == "sockfork: run: cannot serve metrics on 127.0.0.1:%d: Address already " \
        "in use\n" % port, r.stderr
    assert not (tmp_path / "ran.x").exists()


# The first task blocks on its FIFO; the second lists its descriptors.
LIST_SH = r"""
case $1 in
wait) read x < fifo ;;
list) exec "$2" ;;
esac
"""


def test_run_tasks_do_not_get_the_metrics_sockets(tmp_path, sf):
    """A task started while the listener is open and a scraper connected
    (mid-request) has /dev/null, its two pipes and fd 3, nothing else."""
    script = write_script(tmp_path, "list.sh", LIST_SH)
    os.mkfifo(str(tmp_path / "fifo"))
    r = sf("--metrics", "127.0.0.1:0", "-j", "1", "--timeout", "60s", "sh", script, "{}",
           helper("fdcount"), ":::", "wait", "list")
    fd = None
    stalled = None
    try:
        addr = run_metrics_addr(r)
        stalled = connect(addr)
        stalled.sendall(b"GET /met")
        # Accepted after the stalled one (the kernel's queue is in order):
        # so that one is the run's now.
        run_scrape(addr)
        fd = release(tmp_path / "fifo")
        assert r.wait() == 0, r.stderr
    finally:
        if fd is not None:
            os.close(fd)
        if stalled is not None:
            stalled.close()
    fds = parse_fds(r.stdout)
    assert sorted(fds) == [0, 1, 2, 3], "descriptors in the task: %r" % fds
    assert fds[0] == "/dev/null", fds
    assert all(re.match(r"^pipe:\[\d+\]$", fds[i]) for i in (1, 2, 3)), fds
