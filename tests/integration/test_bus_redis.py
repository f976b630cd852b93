"""The bus across instances (`--bus`, issue 16): two `sockfork chat` instances
on 127.0.0.1 ephemeral ports sharing one redis-server of the test's own (on a
Unix socket in tmp_path, no TCP, nothing saved).

Every wait is bounded and waits on a condition: a client's line, a log line,
a number in `ctl --json stats`. To show that a line did NOT come, a test reads
up to a marker sure to come after it (a `ctl broadcast` notice, which goes
through Redis like the lines before it from the same instance, or a later line
of the same sender).
"""
import json
import os
import re
import shutil
import signal
import subprocess
import time

import pytest

from conftest import LONG_WAIT, WAIT, run_cli
from test_chat import HELLO, NO_FLOOD, TAKEN, Chat

REDIS = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")
pytestmark = pytest.mark.skipif(not REDIS or not REDIS_CLI,
                                reason="redis-server or redis-cli missing (./dev installs redis)")

BRIDGE_UP_RE = r"^sockfork: bus bridge: on Redis at unix:.* as instance ([0-9a-f]{16}), (\d+) other"


class Redis:
    """One redis-server on a Unix socket, no TCP, no persistence."""

    def __init__(self, tmp_path):
        self.dir = tmp_path / "redis"
        self.dir.mkdir()
        self.path = str(self.dir / "r.sock")
        assert len(self.path) < 100, self.path
        # Small stream nodes: MAXLEN ~ trims at node boundaries.
        self.proc = subprocess.Popen(
            [REDIS, "--port", "0", "--unixsocket", self.path, "--save", "", "--appendonly", "no",
             "--dir", str(self.dir), "--stream-node-max-entries", "4"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
            start_new_session=True)
        deadline = time.monotonic() + WAIT
        while self.cli_maybe("PING") != "PONG":
            assert self.proc.poll() is None, "redis-server exited"
            assert time.monotonic() < deadline, "redis-server not up in %.0f s" % WAIT
            time.sleep(0.02)  # a bounded poll for the socket to appear

    @property
    def url(self):
        return "unix:" + self.path

    def cli_maybe(self, *args):
        out = subprocess.run([REDIS_CLI, "-s", self.path] + list(args), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, timeout=WAIT)
        return out.stdout.strip() if out.returncode == 0 else None

    def cli(self, *args):
        out = self.cli_maybe(*args)
        assert out is not None, args
        return out

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def redis(tmp_path):
    r = Redis(tmp_path)
    yield r
    r.stop()


def instance(sockfork, tmp_path, redis, name, *args):
    """A chat instance on the bus; returns it once its bridge is up, with
    .ctl_path and .instance (its id) set."""
    path = str(tmp_path / ("%s.sock" % name))
    srv = sockfork("--control", path, "--bus", redis.url, "--bus-lease", "1s", *args,
                   command="chat")
    srv.log.wait_one(r"^sockfork: control socket unix:%s$" % re.escape(path))
    _, m = srv.log.wait_one(BRIDGE_UP_RE, timeout=LONG_WAIT)
    srv.ctl_path = path
    srv.instance = m.group(1)
    return srv


def stats(srv):
    rc, out, err = run_cli("ctl", "--control", srv.ctl_path, "--json", "stats")
    assert rc == 0, (rc, out, err)
    return json.loads(out)


def wait_stat(srv, test, what, timeout=WAIT):
    """Polls `ctl stats` (bounded) until test(bus_redis) holds."""
    deadline = time.monotonic() + timeout
    while True:
        got = stats(srv)["bus_redis"]
        if test(got):
            return got
        assert time.monotonic() < deadline, "%s: never; bus_redis: %r" % (what, got)
        time.sleep(0.05)  # a bounded poll of a counter


def broadcast(srv, text):
    rc, out, err = run_cli("ctl", "--control", srv.ctl_path, "broadcast", text)
    assert rc == 0 and out.startswith("delivered to "), (rc, out, err)


def pair(sockfork, tmp_path, redis, *args):
    """Instances A and B, each knowing the other."""
    a = instance(sockfork, tmp_path, redis, "a", *args)
    b = instance(sockfork, tmp_path, redis, "b", *args)
    wait_stat(a, lambda s: s["instances"] == 1, "A knows B")
    wait_stat(b, lambda s: s["instances"] == 1, "B knows A")
    return a, b


def login_across(a, b):
    """alice on A, then bob on B: alice sees bob join (the room spans both).
    bob comes once B has read alice's join (her two claims, her join and
    will on sf:x, her line on the room's stream): else he may hear it too,
    as news (B starts reading the room when it learns of her)."""
    alice = Chat(a, "alice")
    wait_stat(b, lambda s: s["entries_in"] >= 5, "B read alice's join")
    bob = Chat(b)
    bob.welcome()
    bob.send("bob")
    bob.expect(HELLO % "bob")
    bob.nick = "bob"
    alice.expect("*** bob has joined lobby")
    return alice, bob


# ------------------------------------------------------------ usage

def test_bus_options_usage_errors_exit_2():
    for args, want in [
        (("--bus", "http://127.0.0.1:6379"), "--bus wants"),
        (("--bus", "redis://127.0.0.1:99999"), "--bus wants"),
        (("--bus", "unix:relative/path"), "--bus wants"),
        (("--bus-lease", "2s"), "--bus-lease needs --bus URL"),
        (("--bus", "redis://127.0.0.1", "--bus-lease", "0.1s"), "--bus-lease wants"),
        (("--bus", "redis://127.0.0.1", "--bus-outbox", "1K"), "--bus-outbox wants"),
        (("--bus", "redis://127.0.0.1", "--bus-stream-len", "5"), "--bus-stream-len wants"),
    ]:
        for command in ("chat", "serve"):
            rc, out, err = run_cli(command, "--no-control", *args)
            assert rc == 2, (command, args, rc, err)
            assert err.count("\n") == 1 and want in err, (command, args, err)


# ------------------------------------------------------------ behaviour

@pytest.mark.parametrize("mode", ["fork", "prefork"])
def test_room_spans_two_instances(sockfork, tmp_path, redis, mode):
    extra = ("--workers", "2") if mode == "prefork" else ()
    a, b = pair(sockfork, tmp_path, redis, "--history", "0", *extra, *NO_FLOOD)
    alice, bob = login_across(a, b)
    bob.send("hello from B")
    alice.expect("<bob> hello from B")
    alice.send("hello from A")
    bob.expect("<alice> hello from A")
    alice.send("/me waves")
    bob.expect("* alice waves")
    # /who and /rooms see both instances' members.
    for c in (alice, bob):
        c.send("/who")
        got = c.line()
        m = re.match(r"^\*\*\* in lobby \(2\): (.*)$", got)
        assert m and sorted(m.group(1).split(", ")) == ["alice", "bob"], got
        c.send("/rooms")
        c.expect("*** rooms: lobby (2)")
    # A broadcast (ctl) reaches every instance's clients.
    broadcast(a, "maintenance soon")
    alice.expect("*** NOTICE: maintenance soon")
    bob.expect("*** NOTICE: maintenance soon")
    st = stats(a)["bus_redis"]
    assert st["connected"] == 1 and st["instances"] == 1 and st["entries_out"] > 0, st
    assert st["duplicates"] == 0 and st["missed"] == 0 and st["bad"] == 0, st
    # bob leaves with /quit: alice hears it once, and the room is one again.
    bob.send("/quit")
    alice.expect("*** bob has quit")
    broadcast(a, "after")
    assert alice.until("*** NOTICE: after") == ["*** NOTICE: after"]
    alice.send("/who")
    alice.expect("*** in lobby (1): alice")


def test_msg_and_who_across(sockfork, tmp_path, redis):
    a, b = pair(sockfork, tmp_path, redis, "--history", "0", *NO_FLOOD)
    alice, bob = login_across(a, b)
    alice.send("/msg bob psst")
    bob.expect("*alice* psst")
    alice.expect("-> *bob* psst")
    bob.send("/msg Alice back")
    alice.expect("*bob* back")
    bob.expect("-> *Alice* back")
    alice.send("/msg nobody x")
    alice.expect("*** no such nick: nobody")
    # In another room on B, /who lobby from there still lists both.
    bob.send("/join side")
    bob.until("*** you are now in side")
    alice.expect("*** bob has left lobby")
    bob.send("/who lobby")
    bob.expect("*** in lobby (1): alice")
    alice.send("/rooms")
    got = alice.line()
    assert got.startswith("*** rooms: ") and sorted(got[11:].split(", ")) == \
        ["lobby (1)", "side (1)"], got


def test_nick_collision_across_is_refused(sockfork, tmp_path, redis):
    a, b = pair(sockfork, tmp_path, redis, "--history", "0", *NO_FLOOD)
    alice = Chat(a, "alice")
    wait_stat(b, lambda s: s["entries_in"] >= 2, "B heard alice's claim")
    imposter = Chat(b)
    imposter.welcome()
    imposter.send("ALICE")
    imposter.expect(TAKEN % "ALICE")
    imposter.send("alice")
    imposter.expect(TAKEN % "alice")
    imposter.send("carol")
    imposter.expect(HELLO % "carol")
    alice.expect("*** carol has joined lobby")
    # A rename on A to a nick held on B is refused as well.
    alice.send("/nick Carol")
    alice.expect("*** the nickname Carol is taken")


def test_history_on_join_from_the_other_instance(sockfork, tmp_path, redis):
    a, b = pair(sockfork, tmp_path, redis, "--history", "5", *NO_FLOOD)
    alice = Chat(a, "alice")
    for i in range(3):
        alice.send("line %d" % i)
    # B reads the room (alice is in it): alice's claims, join and will on
    # sf:x, her join and 3 lines on the room's stream.
    wait_stat(b, lambda s: s["entries_in"] >= 8, "B read alice's lines")
    bob = Chat(b, "bob")
    bob.expect("[history] *** alice has joined lobby",
               *["[history] <alice> line %d" % i for i in range(3)])
    alice.expect("*** bob has joined lobby")
    alice.send("live")
    bob.expect("<alice> live")


def test_kill_9_of_an_instance(sockfork, tmp_path, redis):
    """Its members' departures are seen once on the other instance, and
    their nicks are free again within the lease."""
    a, b = pair(sockfork, tmp_path, redis, "--history", "0", *NO_FLOOD)
    alice, bob = login_across(a, b)
    a.proc.kill()
    a.wait_exit()
    a.checked = True  # killed on purpose: the fixture's clean-exit checks do not apply
    bob.expect("*** alice has left lobby (connection lost)", timeout=LONG_WAIT)
    b.log.wait_one(r"bus bridge: instance %s is gone" % a.instance)
    broadcast(b, "after")
    assert bob.until("*** NOTICE: after") == ["*** NOTICE: after"]
    bob.send("/who")
    bob.expect("*** in lobby (1): bob")
    # alice's nick is free now (its lease ended with A's heartbeat).
    again = Chat(b, "alice")
    bob.expect("*** alice has joined lobby")
    assert again.nick == "alice"
    assert redis.cli("SISMEMBER", "sf:i", a.instance) == "0"


def test_redis_connections_killed_mid_stream(sockfork, tmp_path, redis):
    """CLIENT KILL of every connection in the middle of 400 lines: every line
    reaches the other instance once, in order."""
    a, b = pair(sockfork, tmp_path, redis, "--history", "0", *NO_FLOOD)
    alice, bob = login_across(a, b)
    for i in range(200):
        alice.send("n %d" % i)
    assert redis.cli("CLIENT", "KILL", "TYPE", "normal") != "0"
    for i in range(200, 400):
        alice.send("n %d" % i)
    alice.send("done")
    got = bob.until("<alice> done", timeout=LONG_WAIT)
    assert got == ["<alice> n %d" % i for i in range(400)] + ["<alice> done"], \
        [g for g in got if not g.startswith("<alice> n ")][:20]
    for srv in (a, b):
        srv.log.wait_one(r"^sockfork: bus bridge: lost Redis at unix:")
        wait_stat(srv, lambda s: s["connected"] == 1, "reconnected")
    assert stats(a)["bus_redis"]["reconnects"] >= 1
    # And the other way, after the reconnect.
    bob.send("still here")
    alice.expect("<bob> still here")


def test_bursts_both_ways_keep_each_senders_order_and_a_lone_line_follows(
        sockfork, tmp_path, redis):
    """Two bursts at once, one from each instance (each gathered with the
    other's lines as they come through Redis): each side gets the other's
    lines once and in order; then a lone line each way still arrives (no
    burst around it to end a gathering)."""
    a, b = pair(sockfork, tmp_path, redis, "--history", "0", *NO_FLOOD)
    alice, bob = login_across(a, b)
    n = 300
    alice.sock.sendall(b"".join(b"a %d\r\n" % i for i in range(n)) + b"a done\r\n")
    bob.sock.sendall(b"".join(b"b %d\r\n" % i for i in range(n)) + b"b done\r\n")
    got_b = alice.until("<bob> b done", timeout=LONG_WAIT)
    got_a = bob.until("<alice> a done", timeout=LONG_WAIT)
    assert got_b == ["<bob> b %d" % i for i in range(n)] + ["<bob> b done"], got_b[:20]
    assert got_a == ["<alice> a %d" % i for i in range(n)] + ["<alice> a done"], got_a[:20]
    bob.send("lone from B")
    assert alice.until("<bob> lone from B") == ["<bob> lone from B"]
    alice.send("lone from A")
    assert bob.until("<alice> lone from A") == ["<alice> lone from A"]
    st = stats(b)["bus_redis"]
    assert st["duplicates"] == 0 and st["missed"] == 0 and st["bad"] == 0, st


def test_local_lines_do_not_wait_for_redis(sockfork, tmp_path, redis):
    """Redis paused for writes (CLIENT PAUSE WRITE: the connections stay up,
    our lines are not read back): a line to the members on its own instance
    arrives all the same (its gathering waits for the bridge a bounded
    time, far less than the pause); the other instance gets it, once, when
    Redis takes writes again."""
    a, b = pair(sockfork, tmp_path, redis, "--history", "0", *NO_FLOOD)
    alice, bob = login_across(a, b)
    carol = Chat(a, "carol")
    alice.expect("*** carol has joined lobby")
    bob.expect("*** carol has joined lobby")
    wait_stat(a, lambda s: s["outbox_bytes"] == 0, "A wrote it all")
    assert redis.cli("CLIENT", "PAUSE", "%d" % int(LONG_WAIT * 4 * 1000), "WRITE") == "OK"
    try:
        alice.send("while paused")
        carol.expect("<alice> while paused")
    finally:
        assert redis.cli("CLIENT", "UNPAUSE") == "OK"
    alice.send("after")
    assert bob.until("<alice> after", timeout=LONG_WAIT) == ["<alice> while paused", "<alice> after"]
    carol.expect("<alice> after")


def test_a_cursor_ahead_of_its_stream_reads_again(sockfork, tmp_path, redis):
    """Redis loses the streams and gives ids below those read before (a
    restart without data and a clock behind, a failover): XREAD from the
    old cursors would return nothing for ever. The probe does not come back,
    the cursors past their stream's newest entry start again from its start,
    and the lines flow again, once each."""
    a, b = pair(sockfork, tmp_path, redis, "--history", "0", *NO_FLOOD)
    alice, bob = login_across(a, b)
    alice.send("before")
    bob.expect("<alice> before")
    # An entry with an id a day ahead moves every reader's cursor there (it
    # does not decode: counted bad), then the streams go.
    ms = int(time.time() * 1000) + 86400 * 1000
    ahead = "%d-0" % ms
    for key in ("sf:x", "sf:t:room:lobby"):
        assert redis.cli("XADD", key, ahead, "e", "x") == ahead
    for srv in (a, b):
        wait_stat(srv, lambda s: s["bad"] >= 2, "both entries read")
    assert redis.cli("DEL", "sf:x", "sf:t:room:lobby") == "2"
    alice.send("after")
    bob.send("back")
    for srv in (a, b):
        # Our probes on sf:x come after it, as ms-1, ms-2...: the cursor is one of them.
        srv.log.wait_one(r"^sockfork: bus bridge: our cursor %d-\d+ on sf:x is past its newest entry"
                         % ms, timeout=LONG_WAIT)
    bob.expect("<alice> after", timeout=LONG_WAIT)
    alice.expect("<bob> back", timeout=LONG_WAIT)
    for srv in (a, b):
        got = wait_stat(srv, lambda s: s["cursor_resets"] >= 2, "both cursors reset")
        assert got["stale"] >= 1, got
    # Once each: the next lines come right behind.
    alice.send("next")
    bob.expect("<alice> next")
    bob.send("next too")
    alice.expect("<bob> next too")


@pytest.mark.parametrize("policy", ["kick", "drop"])
def test_trimmed_past_the_cursor_gives_the_notice(sockfork, tmp_path, redis, policy):
    """Entries trimmed before B read them: B's member is not left with a
    silent gap: under --channel-full kick (chat's default) it is cut off and
    told; under drop it is told how many it missed, and goes on."""
    a, b = pair(sockfork, tmp_path, redis, "--history", "0", "--channel-full", policy, *NO_FLOOD)
    alice, bob = login_across(a, b)
    alice.send("before")
    bob.expect("<alice> before")
    os.kill(b.pid, signal.SIGSTOP)
    try:
        for i in range(10):
            alice.send("lost %d" % i)
        alice.send("marker")
        alice.send("/who")
        alice.until(re.compile(r"^\*\*\* in lobby"))
        # Wait until A wrote them all, then trim them away.
        wait_stat(a, lambda s: s["outbox_bytes"] == 0, "A wrote its lines")
        redis.cli("XTRIM", "sf:t:room:lobby", "MAXLEN", "0")
        alice.send("after the trim")
        wait_stat(a, lambda s: s["outbox_bytes"] == 0, "A wrote the last line")
    finally:
        os.kill(b.pid, signal.SIGCONT)
    # What Redis had already pushed to B's blocked XREAD before the stop is
    # B's (k lines); the rest were trimmed: B says how many, and cuts bob
    # off rather than leave him with the gap.
    _, m = b.log.wait_one(r"bus bridge: (\d+) messages of room:lobby never read here",
                          timeout=LONG_WAIT)
    n = int(m.group(1))
    k = 11 - n
    assert 1 <= n <= 11, n
    if policy == "kick":
        # Cut off: of the k lines before the gap it may have had some, in
        # order (those still gathered for it when it was cut are not sent).
        got = bob.lines_to_eof(timeout=LONG_WAIT)
        assert got[-1].startswith("*** You were disconnected"), got
        got = got[:-1]
        assert got == ["<alice> lost %d" % i for i in range(len(got))] and len(got) <= k, got
    else:
        got = bob.until("<alice> after the trim", timeout=LONG_WAIT)
        assert got == ["<alice> lost %d" % i for i in range(k)] + \
            ["*** %d messages of room:lobby missed" % n, "<alice> after the trim"], got
    assert stats(b)["bus_redis"]["missed"] == n


def test_full_outbox_drops_and_the_gap_is_told(sockfork, tmp_path, redis):
    """Redis stopped: A's lines wait in its outbox, up to --bus-outbox; past
    it they are dropped and counted. Redis back: what waited is written in
    order, and B's member gets it all, then is told how many it missed
    (--channel-full drop: it goes on; under kick it would be cut off)."""
    a, b = pair(sockfork, tmp_path, redis, "--history", "0", "--bus-outbox", "64K",
                "--channel-full", "drop", *NO_FLOOD)
    alice, bob = login_across(a, b)
    redis.proc.send_signal(signal.SIGSTOP)
    try:
        pad = "x" * 200
        for i in range(600):
            alice.send("w %d %s" % (i, pad))
        alice.send("/who")
        alice.until(re.compile(r"^\*\*\* in lobby"))
        st = wait_stat(a, lambda s: s["outbox_dropped"] > 0, "A's outbox full")
        assert st["outbox_bytes"] <= 64 * 1024, st
    finally:
        redis.proc.send_signal(signal.SIGCONT)
    wait_stat(a, lambda s: s["outbox_bytes"] == 0 and s["connected"] == 1, "A's outbox written",
              timeout=LONG_WAIT)
    dropped = stats(a)["bus_redis"]["outbox_dropped"]
    kept = 600 - dropped
    alice.send("after")
    got = bob.until("<alice> after", timeout=LONG_WAIT)
    assert got == ["<alice> w %d %s" % (i, pad) for i in range(kept)] + \
        ["*** %d messages of room:lobby missed" % dropped, "<alice> after"], \
        (dropped, [g[:24] for g in got[:3]], [g[:40] for g in got[-3:]], len(got),
         stats(a)["bus_redis"], stats(b)["bus_redis"])
    assert stats(b)["bus_redis"]["missed"] == dropped


def test_an_instance_taken_for_dead_tells_its_state_again(sockfork, tmp_path, redis):
    """A's heartbeat lost (as in a partition longer than the lease): B takes A
    for dead (alice's departure seen, her nick free there); A, finding its
    heartbeat gone, writes its whole state again: B sees alice again."""
    a, b = pair(sockfork, tmp_path, redis, "--history", "0", *NO_FLOOD)
    alice, bob = login_across(a, b)
    assert redis.cli("DEL", "sf:h:" + a.instance) == "1"
    bob.expect("*** alice has left lobby (connection lost)", timeout=LONG_WAIT)
    b.log.wait_one(r"bus bridge: instance %s is gone" % a.instance)
    deadline = time.monotonic() + LONG_WAIT
    while True:
        bob.send("/who")
        got = bob.line()
        if got == "*** in lobby (2): bob, alice" or got == "*** in lobby (2): alice, bob":
            break
        assert got == "*** in lobby (1): bob", got
        assert time.monotonic() < deadline, "B never saw alice again"
        time.sleep(0.1)  # a bounded poll of /who
    # And she is reachable again, her nick hers.
    bob.send("/msg alice back?")
    alice.expect("*bob* back?")
    imposter = Chat(b)
    imposter.welcome()
    imposter.send("alice")
    imposter.expect(TAKEN % "alice")


def test_a_gap_in_state_events_leaves_no_ghost(sockfork, tmp_path, redis):
    """A's state events trimmed from sf:x before B read them (B away longer
    than the stream covers): B re-reads A's state hash rather than keep, for
    ever, a member and a nick that A dropped meanwhile."""
    a, b = pair(sockfork, tmp_path, redis, "--history", "0", *NO_FLOOD)
    alice, bob = login_across(a, b)
    mine = re.compile(r"^[jnw] %d( |$)" % alice.pid)
    os.kill(b.pid, signal.SIGSTOP)
    try:
        alice.close()
        # A wrote her departure (her fields gone from its hash, nothing
        # waiting), then it is trimmed away, and A writes more (carol).
        deadline = time.monotonic() + LONG_WAIT
        while any(mine.match(f) for f in redis.cli("HKEYS", "sf:s:" + a.instance).splitlines()):
            assert time.monotonic() < deadline, "A never wrote alice's departure"
            time.sleep(0.05)  # a bounded poll of A's hash
        wait_stat(a, lambda s: s["outbox_bytes"] == 0, "A wrote alice's departure")
        redis.cli("XTRIM", "sf:x", "MAXLEN", "0")
        Chat(a, "carol")
        wait_stat(a, lambda s: s["outbox_bytes"] == 0, "A wrote carol's arrival")
    finally:
        os.kill(b.pid, signal.SIGCONT)
    wait_stat(b, lambda s: s["missed"] >= 1, "B saw the gap on sf:x", timeout=LONG_WAIT)
    deadline = time.monotonic() + LONG_WAIT
    while True:
        bob.send("/who")
        got = bob.until(re.compile(r"^\*\*\* in lobby"))[-1]
        if got in ("*** in lobby (2): bob, carol", "*** in lobby (2): carol, bob"):
            break
        assert time.monotonic() < deadline, "B keeps a ghost: %r" % got
        time.sleep(0.1)  # a bounded poll of /who
    # Her nick is free on B too.
    again = Chat(b, "alice")
    assert again.nick == "alice"


def test_bridge_in_metrics(sockfork, tmp_path, redis):
    """The bridge's numbers in /metrics are `ctl stats`'s bus_redis; promtool
    passes the body."""
    from test_metrics import metrics_addr, promtool_check, samples, scrape
    a, b = pair(sockfork, tmp_path, redis, "--history", "0", "--metrics", "127.0.0.1:0",
                *NO_FLOOD)
    alice, bob = login_across(a, b)
    bob.send("one line")
    alice.expect("<bob> one line")
    body = scrape(metrics_addr(a))
    got = samples(body)
    st = stats(a)["bus_redis"]
    assert got[("sockfork_bus_redis_connected", None)] == 1
    assert got[("sockfork_bus_redis_instances", None)] == 1
    assert got[("sockfork_bus_redis_outbox_dropped_total", None)] == 0
    assert got[("sockfork_bus_redis_missed_total", None)] == 0
    assert got[("sockfork_bus_redis_duplicates_total", None)] == 0
    # Probes keep both counts moving: the scrape came before this stats.
    assert 0 < got[("sockfork_bus_redis_entries_total", ("way", "in"))] <= st["entries_in"]
    assert 0 < got[("sockfork_bus_redis_entries_total", ("way", "out"))] <= st["entries_out"]
    assert got[("sockfork_bus_redis_lag_seconds", None)] >= 0
    promtool_check(body)


def test_children_do_not_get_the_redis_sockets(sockfork, tmp_path, redis):
    """The bridge's connections are opened after the spawner is forked; a
    spawner started again later (killed here) closes them too: a child has
    its stdio and its channel only."""
    from conftest import helper, recv_until_eof
    from test_exec import check_only_stdio, parse_fds
    path = str(tmp_path / "s.sock")
    srv = sockfork("--control", path, "--bus", redis.url, "--", helper("fdcount"))
    srv.log.wait_one(BRIDGE_UP_RE, timeout=LONG_WAIT)
    srv.ctl_path = path
    check_only_stdio(parse_fds(recv_until_eof(srv.connect())), srv)
    os.kill(stats(srv)["spawner_pid"], signal.SIGKILL)
    deadline = time.monotonic() + WAIT
    while stats(srv)["channel"]["spawner_restarts"] < 1:
        assert time.monotonic() < deadline, "the spawner was not started again"
        time.sleep(0.05)  # a bounded poll of a counter
    check_only_stdio(parse_fds(recv_until_eof(srv.connect())), srv)


def test_an_upgrade_on_the_bus_needs_no_link(sockfork, tmp_path, redis):
    """`ctl upgrade` of an instance on the bus: the new generation is one more
    instance on Redis, so the two generations' members see each other with
    no link between them (none is opened, nothing said of it), and the old
    generation's members who leave are seen leaving once."""
    from test_upgrade import stop_generation, upgrade
    a = instance(sockfork, tmp_path, redis, "a", "--history", "0", "--grace", "60", *NO_FLOOD)
    alice = Chat(a, "alice")
    old_instance = a.instance
    new = upgrade(a.ctl_path)
    _, m = a.log.wait_one(BRIDGE_UP_RE, start=a.log.find(BRIDGE_UP_RE)[0][0] + 1,
                          timeout=LONG_WAIT)
    assert m.group(1) != old_instance
    carol = Chat(a)
    carol.welcome()
    carol.send("alice")
    carol.expect(TAKEN % "alice")
    carol.login("carol")
    alice.expect("*** carol has joined lobby")
    carol.send("hi alice")
    alice.expect("<carol> hi alice")
    alice.send("hi carol")
    carol.expect("<alice> hi carol")
    alice.send("/quit")
    assert alice.lines_to_eof() == ["*** Bye."]
    carol.expect("*** alice has quit")
    assert a.wait_exit(LONG_WAIT) == 0
    broadcast(a, "after")  # the new generation's control socket, same path
    assert carol.until("*** NOTICE: after") == ["*** NOTICE: after"]
    assert not a.log.find(r"upgrade: cannot bridge"), a.log.find(r"upgrade: cannot bridge")
    a.clients = [carol.sock]
    stop_generation(a, new)


def test_a_late_instance_reads_the_others_state_and_history(sockfork, tmp_path, redis):
    """B started after alice joined and talked on A: it reads A's state from
    Redis (alice's nick and membership) and the room's history from its
    stream, older than anything of its own."""
    a = instance(sockfork, tmp_path, redis, "a", "--history", "5", *NO_FLOOD)
    alice = Chat(a, "alice")
    for i in range(2):
        alice.send("early %d" % i)
    alice.send("/who")
    alice.expect("*** in lobby (1): alice")
    wait_stat(a, lambda s: s["outbox_bytes"] == 0, "A wrote it all")
    b = instance(sockfork, tmp_path, redis, "b", "--history", "5", *NO_FLOOD)
    assert stats(b)["bus_redis"]["instances"] == 1
    imposter = Chat(b)
    imposter.welcome()
    imposter.send("alice")
    imposter.expect(TAKEN % "alice")
    imposter.send("bob")
    imposter.expect(HELLO % "bob", "[history] *** alice has joined lobby",
                    "[history] <alice> early 0", "[history] <alice> early 1")
    alice.expect("*** bob has joined lobby")
    imposter.send("/who")
    got = imposter.line()
    assert got in ("*** in lobby (2): alice, bob", "*** in lobby (2): bob, alice"), got
