"""Issue 16 across hosts: two `sockfork chat --bus redis://...` instances in
two network namespaces, Redis in a third, HAProxy (send-proxy-v2, round
robin) in a fourth, the clients in a fifth (netns.py builds them).

Written against the contract of docs/design.md "The bus across instances":
`--bus URL`, `--bus-lease S`, `--bus-stream-len N`, and `ctl --json stats`
showing `bus_redis.connected`. Skipped until `--bus` is in the build.

Each instance also listens without PROXY on PLAIN_PORT, so a test can put a
client on the instance it wants; HAProxy's port spreads them.

Every wait is bounded and waits on a condition. What must NOT arrive is
checked by reading up to a marker that is sure to come after it: a
`ctl broadcast` notice of the client's own instance, sent once everything
expected has arrived.
"""
import json
import re
import selectors
import subprocess
import time

import pytest

from conftest import BIN, LONG_WAIT, WAIT, run_cli
from netns import Front, hosts, sockfork_in, start_haproxy, start_redis  # noqa: F401 (fixture)
from test_chat import HELLO, TAKEN, Chat

PORT = 7000          # the PROXY listener, behind HAProxy
PLAIN_PORT = 7001    # the same instance, straight
NO_FLOOD = ("--flood", "100000/100000")
LEASE = 3            # --bus-lease, seconds: short, for the kill -9 test


def _has_bus():
    for cmd in ("chat", "serve"):
        try:
            out = subprocess.run([BIN, cmd, "--help"], stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, timeout=WAIT).stdout
        except (OSError, subprocess.TimeoutExpired):
            return False
        if b"--bus" in out:
            return True
    return False


pytestmark = pytest.mark.skipif(not _has_bus(), reason="needs --bus (issue 16)")


# ------------------------------------------------------------ the cluster

class Cluster:
    """redis, lb, s1, s2, clients; chat with --bus in s1 and s2."""

    def __init__(self, hosts, sockfork, tmp_path, *args):
        self.hosts = hosts
        for name in ("redis", "lb", "s1", "s2", "clients"):
            hosts.add(name)
        self.redis = start_redis(hosts, "redis")
        lb = hosts.addr("lb")
        self.servers = []
        for name in ("s1", "s2"):
            addr = hosts.addr(name)
            srv = sockfork_in(hosts, sockfork, name, "--bus", self.redis.url,
                              "--proxy-from", lb + "/32", *args,
                              listen=("%s:%d,proxy" % (addr, PORT), "%s:%d" % (addr, PLAIN_PORT)),
                              ctl_path=str(tmp_path / ("%s.sock" % name)))
            self.servers.append(srv)
        self.haproxy = start_haproxy(hosts, "lb", PORT,
                                     [(hosts.addr(n), PORT) for n in ("s1", "s2")])
        self.front = Front(hosts, "clients", (lb, PORT))
        self.direct = [Front(hosts, "clients", (hosts.addr(n), PLAIN_PORT), srv)
                       for n, srv in zip(("s1", "s2"), self.servers)]
        for srv in self.servers:
            wait_bus_connected(srv, True)

    def on(self, i, nick=None):
        """A client of instance i (0 or 1), logged in as nick if given."""
        return Chat(self.direct[i], nick)

    def close_clients(self):
        for f in [self.front] + self.direct:
            f.close_clients()


def ctl(srv, *args):
    rc, out, err = run_cli("ctl", "--control", srv.ctl_path, *args)
    assert rc == 0, ("ctl", args, rc, out, err)
    return out


def bus_stats(srv):
    reply = json.loads(ctl(srv, "--json", "stats"))
    assert "bus_redis" in reply, reply
    return reply["bus_redis"]


def wait_bus_connected(srv, want, timeout=LONG_WAIT):
    deadline = time.monotonic() + timeout
    while True:
        stats = bus_stats(srv)
        if bool(stats.get("connected")) == want:
            return stats
        assert time.monotonic() < deadline, "bus_redis.connected never %r: %r" % (want, stats)
        time.sleep(0.05)  # bounded poll of the control socket


_marks = iter(range(1, 1 << 30))


def sync(cluster, *clients, timeout=WAIT):
    """A broadcast notice from each instance's own control socket; each
    client reads up to the one of its own instance (the other instance's
    may come before or after it: a broadcast reaches every instance, but
    not in order with the other's lines). Returns, per client, the lines
    before its own instance's notice, minus the other instance's notice."""
    mark = next(_marks)
    names = []
    for i, srv in enumerate(cluster.servers):
        names.append("sync-%d-%d" % (mark, i))
        assert ctl(srv, "broadcast", names[i]).startswith("delivered to ")
    out = []
    for c in clients:
        own = names[cluster.direct.index(c.srv)] if c.srv in cluster.direct else None
        assert own, "sync wants clients made with cluster.on()"
        got = c.until("*** NOTICE: " + own, timeout)[:-1]
        out.append([g for g in got if not g.startswith("*** NOTICE: sync-")])
    return out


def expect_set(c, lines, timeout=WAIT):
    """The next len(lines) lines are these, in any order."""
    got = [c.line(timeout) for _ in lines]
    assert sorted(got) == sorted(lines), (c, got, lines)


def ask_until(c, command, prefix, want, timeout=WAIT):
    """Sends command until its one-line answer is prefix + the items of
    want (in any order): for what the other instance replicates a moment
    later. Every answer on the way must be a listing too."""
    deadline = time.monotonic() + timeout
    while True:
        c.send(command)
        got = c.line()
        assert got.startswith(("*** in ", "*** rooms: ", "*** nobody is in ")), (c, command, got)
        if got.startswith(prefix) and sorted(got[len(prefix):].split(", ")) == sorted(want):
            return
        assert time.monotonic() < deadline, "%r: %r still answers %r" % (c, command, got)
        time.sleep(0.05)  # bounded: the replica is catching up


def wait_name(cluster, nick, held, timeout=WAIT):
    """Until Redis has (held) or no longer has a lease on nick (chat's bus
    name nick:NAME, folded, under sf:n:)."""
    key = "sf:n:nick:" + nick.lower()
    deadline = time.monotonic() + timeout
    while cluster.redis.command("EXISTS", key) != int(held):
        assert time.monotonic() < deadline, "%s %s" % (key, "never leased" if held else "still leased")
        time.sleep(0.05)  # bounded poll of Redis


def take_nick(c, nick, timeout=WAIT):
    """Offers nick until it is granted (a name another instance held is
    free once its release or lease expiry reached Redis): bounded."""
    deadline = time.monotonic() + timeout
    while True:
        c.send(nick)
        got = c.line(max(0.1, deadline - time.monotonic()))
        if got == HELLO % nick:
            c.nick = nick
            return
        assert got == TAKEN % nick, (c, got)
        assert time.monotonic() < deadline, "%s never free again" % nick


LOBBY = "sf:t:room:lobby"  # chat's topic room:lobby, as a stream


def wait_stream_len(cluster, key, n, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while True:
        got = cluster.redis.command("XLEN", key)
        if isinstance(got, int) and got >= n:
            return got
        assert time.monotonic() < deadline, "%s has %r entries, not %d" % (key, got, n)
        time.sleep(0.05)  # bounded poll of Redis


# ------------------------------------------------------------ one room, many lines

CHAT_RE = re.compile(r"^<(\w+)> (\w+)\.(\d+)$")
JOIN_RE = re.compile(r"^\*\*\* (\w+) has joined lobby$")


class Room:
    """n clients through HAProxy, all in the lobby; reads every client
    with one selector and checks each line as it comes."""

    def __init__(self, cluster, n):
        self.cluster = cluster
        self.clients = [Chat(cluster.front) for _ in range(n)]
        for c in self.clients:
            c.welcome(LONG_WAIT)
        for i, c in enumerate(self.clients):
            c.send("n%03d" % i)
        for i, c in enumerate(self.clients):
            c.until(HELLO % ("n%03d" % i), LONG_WAIT)
            c.nick = "n%03d" % i
        self.nicks = {c.nick for c in self.clients}
        self.got = {c.nick: {} for c in self.clients}      # receiver -> sender -> [j]
        self.joins = {c.nick: set() for c in self.clients}
        self.errors = []
        self.sel = selectors.DefaultSelector()
        for c in self.clients:
            self.sel.register(c.sock, selectors.EVENT_READ, c)

    def handle(self, c, text):
        m = CHAT_RE.match(text)
        if m and m.group(1) == m.group(2) and m.group(1) in self.nicks:
            if m.group(1) == c.nick:
                self.errors.append("%s got its own line %r" % (c.nick, text))
            self.got[c.nick].setdefault(m.group(1), []).append(int(m.group(3)))
            return
        m = JOIN_RE.match(text)
        if m and m.group(1) in self.nicks and m.group(1) != c.nick:
            if m.group(1) in self.joins[c.nick]:
                self.errors.append("%s got %r twice" % (c.nick, text))
            self.joins[c.nick].add(m.group(1))
            return
        if text.startswith("*** NOTICE: "):
            return
        self.errors.append("%s got an unexpected line %r" % (c.nick, text))

    def pump(self, done, what, timeout=LONG_WAIT):
        deadline = time.monotonic() + timeout
        for c in self.clients:
            for text in iter(c.take, None):
                self.handle(c, text)
        while not done() and not self.errors:
            left = deadline - time.monotonic()
            assert left > 0, "timed out waiting for %s; %s" % (what, self.progress())
            for key, _ in self.sel.select(min(left, 1.0)):
                c = key.data
                c.fill(WAIT)
                for text in iter(c.take, None):
                    self.handle(c, text)
        assert not self.errors, "%d errors, the first: %s" % (len(self.errors), self.errors[:5])

    def progress(self):
        short = {c.nick: sum(map(len, self.got[c.nick].values())) for c in self.clients}
        low = sorted(short.items(), key=lambda kv: kv[1])[:5]
        return "fewest lines: %r" % low

    def ready(self, probes):
        """Every client has the probe line of every probing sender other
        than itself: each instance reads the lobby's stream, and every
        member is subscribed."""
        for p in probes:
            p.send("%s.0" % p.nick)

        def done():
            return all(len(self.got[c.nick].get(p.nick, [])) >= 1
                       for c in self.clients for p in probes if p is not c)
        self.pump(done, "the probes")
        for c in self.clients:
            for p in probes:
                self.got[c.nick].pop(p.nick, None)

    def send_lines(self, senders, first, last):
        """Lines first..last-1 from each sender."""
        for s in senders:
            s.send("".join("%s.%d\n" % (s.nick, j) for j in range(first, last)).encode())

    def delivered(self, senders, count):
        """Every member but the sender has count lines of every sender."""
        return all(len(self.got[c.nick].get(s.nick, [])) >= count
                   for c in self.clients for s in senders if s is not c)

    def check_exactly_once_in_order(self, senders, first, count):
        for c in self.clients:
            want = {s.nick: list(range(first, first + count)) for s in senders if s is not c}
            have = {s: v for s, v in self.got[c.nick].items()}
            assert have == want, "%s: %r" % (c.nick, {s: (v[:5], len(v)) for s, v in have.items()
                                                      if want.get(s) != v})

    def settle(self):
        """Nothing more on its way: a broadcast from both instances reaches
        every client and nothing but the notices comes."""
        names = []
        for i, srv in enumerate(self.cluster.servers):
            names.append("*** NOTICE: settle-%d" % i)
            ctl(srv, "broadcast", "settle-%d" % i)
        seen = {c.nick: set() for c in self.clients}
        errors_before = len(self.errors)
        orig = self.handle

        def handle(c, text):
            if text in names:
                seen[c.nick].add(text)
            else:
                self.errors.append("%s got %r after everything was delivered" % (c.nick, text))
        self.handle = handle
        try:
            self.pump(lambda: all(len(v) == 2 for v in seen.values()), "the settle notices")
        finally:
            self.handle = orig
        assert len(self.errors) == errors_before

    def close(self):
        self.sel.close()
        for c in self.clients:
            c.close()


def spread(cluster, room):
    """How many of room's clients each instance holds (from the logs:
    each connection is logged under the client's own address)."""
    counts = [0, 0]
    for c in room.clients:
        rx = r"^sockfork: \[%s:%d\] connected pid=%d " % (
            re.escape(c.sock.getsockname()[0]), c.sock.getsockname()[1], c.pid)
        found = [i for i, srv in enumerate(cluster.servers) if srv.log.find(rx)]
        assert len(found) == 1, (c, found)
        counts[found[0]] += 1
    return counts


def senders_on_both(cluster, room, k):
    """k senders, half on each instance."""
    by_instance = [[], []]
    for c in room.clients:
        for i, srv in enumerate(cluster.servers):
            if srv.log.find(r"\] connected pid=%d " % c.pid):
                by_instance[i].append(c)
    return by_instance[0][:k // 2] + by_instance[1][:k - k // 2]


def many_lines(cluster, n, k, total, disturb=None, restore=None):
    """n clients in the lobby over both instances; k senders (half on
    each) send `total` numbered lines together, in ten rounds; disturb(),
    if given, runs after the third round, restore() after the sixth (so
    rounds 4 to 6 are sent while disturbed). Every member gets every line
    exactly once, in each sender's order."""
    room = Room(cluster, n)
    try:
        assert spread(cluster, room) == [n // 2, n - n // 2]
        senders = senders_on_both(cluster, room, k)
        room.ready(senders)
        each = total // k
        per_round = each // 10
        t0 = time.monotonic()
        for r in range(10):
            room.send_lines(senders, 1 + r * per_round, 1 + (r + 1) * per_round)
            if r == 2 and disturb is not None:
                disturb()
            if r == 5 and restore is not None:
                restore()
        room.pump(lambda: room.delivered(senders, each), "every line to every member",
                  timeout=LONG_WAIT * 4)
        took = time.monotonic() - t0
        room.check_exactly_once_in_order(senders, 1, each)
        room.settle()
        print("%d clients, %d lines from %d senders: %d deliveries in %.2f s"
              % (n, total, k, total * (n - 1), took))
    finally:
        room.close()


def test_hundred_clients_over_two_instances_one_room(hosts, sockfork, tmp_path):
    cluster = Cluster(hosts, sockfork, tmp_path, "--history", "0", *NO_FLOOD)
    many_lines(cluster, 100, 10, 1000)


def test_redis_connections_killed_mid_stream(hosts, sockfork, tmp_path):
    """CLIENT KILL of every connection of both instances in the middle of
    the 1,000 lines: they reconnect, and nothing is lost or repeated."""
    cluster = Cluster(hosts, sockfork, tmp_path, "--history", "0", *NO_FLOOD)
    before = [bus_stats(srv).get("reconnects", 0) for srv in cluster.servers]

    def kill():
        killed = cluster.redis.command("CLIENT", "KILL", "TYPE", "normal")
        assert isinstance(killed, int) and killed >= 4, killed  # two per instance

    many_lines(cluster, 20, 4, 1000, disturb=kill)
    after = [bus_stats(srv).get("reconnects", 0) for srv in cluster.servers]
    assert all(a > b for a, b in zip(after, before)), (before, after)


def test_redis_partitioned_mid_stream(hosts, sockfork, tmp_path):
    """Redis's host cut off the bridge in the middle of the 1,000 lines;
    once both instances have noticed, three rounds are sent; then back.
    Local delivery goes on meanwhile, the outboxes are written on
    reconnect, what the other wrote is read: exactly once, in order,
    nothing lost."""
    cluster = Cluster(hosts, sockfork, tmp_path, "--history", "0", *NO_FLOOD)

    def partition():
        hosts.link_down("redis")
        for srv in cluster.servers:
            wait_bus_connected(srv, False)

    try:
        many_lines(cluster, 20, 4, 1000, disturb=partition,
                   restore=lambda: hosts.link_up("redis"))
    finally:
        hosts.link_up("redis")  # again, if it failed in between: harmless
    for srv in cluster.servers:
        wait_bus_connected(srv, True)


# ------------------------------------------------------------ names, /msg, /who, history

def test_nick_collision_across_instances(hosts, sockfork, tmp_path):
    cluster = Cluster(hosts, sockfork, tmp_path, "--history", "0", *NO_FLOOD)
    alice = cluster.on(0, "alice")
    wait_name(cluster, "alice", True)  # leased after the login, not before
    wait_stream_len(cluster, LOBBY, 1)  # and announced: nobody below gets it live
    c = cluster.on(1)
    c.welcome()
    for taken in ("alice", "ALICE", "Alice"):
        c.send(taken)
        c.expect(TAKEN % taken)
    take_nick(c, "bob")
    alice.expect("*** bob has joined lobby")
    wait_name(cluster, "bob", True)
    # A rename to a name held on the other instance is refused too.
    alice.send("/nick bob")
    got = alice.line()
    assert "bob" in got and "taken" in got, got
    # Freed on one instance, free on the other.
    alice.send("/quit")
    assert alice.lines_to_eof() == ["*** Bye."]
    c.expect("*** alice has quit")
    wait_name(cluster, "alice", False)
    d = cluster.on(1)
    d.welcome()
    take_nick(d, "alice")
    c.expect("*** alice has joined lobby")
    assert sync(cluster, c, d) == [[], []]


def test_msg_and_who_across_instances(hosts, sockfork, tmp_path):
    """Membership (/who, /rooms, who holds a name) reaches the other
    instance through sf:x, apart from a room's announcements (its own
    stream), so it may come a moment after them: the test waits for it
    (bounded), then holds it to be exact."""
    cluster = Cluster(hosts, sockfork, tmp_path, "--history", "0", *NO_FLOOD)
    alice = cluster.on(0, "alice")
    wait_stream_len(cluster, LOBBY, 1)  # alice's join is written: bob cannot get it live
    bob = cluster.on(1, "bob")
    alice.expect("*** bob has joined lobby")
    wait_stream_len(cluster, LOBBY, 2)
    carol = cluster.on(0, "carol")
    alice.expect("*** carol has joined lobby")
    bob.expect("*** carol has joined lobby")
    for c in (alice, bob):
        ask_until(c, "/who", "*** in lobby (3): ", ["alice", "bob", "carol"])

    alice.send("/msg bob psst, over there")
    alice.expect("-> *bob* psst, over there")
    bob.expect("*alice* psst, over there")
    bob.send("/msg alice back at you")
    bob.expect("-> *alice* back at you")
    alice.expect("*bob* back at you")
    bob.send("/msg ghost anyone?")
    bob.expect("*** no such nick: ghost")

    bob.send("/join den\n/who den")
    bob.until("*** you are now in den")
    bob.expect("*** in den (1): bob")
    alice.expect("*** bob has left lobby")
    carol.expect("*** bob has left lobby")
    ask_until(alice, "/who den", "*** in den (1): ", ["bob"])
    ask_until(alice, "/rooms", "*** rooms: ", ["den (1)", "lobby (2)"])
    ask_until(carol, "/who", "*** in lobby (2): ", ["alice", "carol"])
    bob.send("/msg carol from den")
    bob.expect("-> *carol* from den")
    carol.expect("*bob* from den")
    assert sync(cluster, alice, bob, carol) == [[], [], []]


def test_history_on_join_from_the_other_instance(hosts, sockfork, tmp_path):
    cluster = Cluster(hosts, sockfork, tmp_path, "--history", "3", *NO_FLOOD)
    alice = cluster.on(0, "alice")
    # Written to Redis after alice's login, not before: wait for it.
    wait_stream_len(cluster, LOBBY, 1)
    carol = cluster.on(1, "carol")
    carol.expect("[history] *** alice has joined lobby")  # s1's entry, from the stream
    alice.expect("*** carol has joined lobby")
    for i in range(1, 6):
        alice.send("h%d" % i)
    carol.expect("<alice> h1", "<alice> h2", "<alice> h3", "<alice> h4", "<alice> h5")
    bob = cluster.on(1, "bob")
    bob.expect("[history] <alice> h3", "[history] <alice> h4", "[history] <alice> h5")
    alice.expect("*** bob has joined lobby")
    carol.expect("*** bob has joined lobby")
    assert sync(cluster, alice, bob, carol) == [[], [], []]


# ------------------------------------------------------------ an instance killed

def test_kill_9_of_one_instance(hosts, sockfork, tmp_path):
    """Every process of s1 killed: its clients are cut; the members on s2
    see each departure once (within the lease), and the names are free
    again."""
    cluster = Cluster(hosts, sockfork, tmp_path, "--history", "0", "--bus-lease", str(LEASE),
                      *NO_FLOOD)
    alice = cluster.on(0, "alice")
    bob = cluster.on(0, "bob")
    alice.expect("*** bob has joined lobby")
    wait_stream_len(cluster, LOBBY, 2)  # both joins written: s2's clients do not get them live
    carol = cluster.on(1, "carol")
    alice.expect("*** carol has joined lobby")
    bob.expect("*** carol has joined lobby")
    dave = cluster.on(1, "dave")
    for c in (alice, bob, carol):
        c.expect("*** dave has joined lobby")

    s1 = cluster.servers[0]
    hosts.kill_all("s1")
    s1.wait_exit()
    s1.checked = True  # killed on purpose: no clean exit to check
    for c in (alice, bob):
        assert c.lines_to_eof() == [], c
    for c in (carol, dave):
        expect_set(c, ["*** alice has left lobby (connection lost)",
                       "*** bob has left lobby (connection lost)"], timeout=LEASE * 4 + WAIT)
    # Once, not more: a later notice of s2's own comes with nothing before it.
    assert sync_one(cluster, 1, carol, dave) == [[], []]
    wait_name(cluster, "alice", False, timeout=LEASE * 2 + WAIT)
    e = cluster.on(1)
    e.welcome()
    take_nick(e, "alice")
    for c in (carol, dave):
        c.expect("*** alice has joined lobby")
    assert sync_one(cluster, 1, carol, dave, e) == [[], [], []]


def sync_one(cluster, i, *clients):
    """sync() with instance i only (the other is gone)."""
    name = "sync-one-%d" % next(_marks)
    assert ctl(cluster.servers[i], "broadcast", name).startswith("delivered to ")
    return [[g for g in c.until("*** NOTICE: " + name)[:-1] if not g.startswith("*** NOTICE: sync-")]
            for c in clients]


# ------------------------------------------------------------ trimmed past a reader

def test_trimmed_past_a_readers_id_is_said_not_a_silent_gap(hosts, sockfork, tmp_path):
    """s2 cut off while alice (on s1) sends 500 lines into a stream kept
    at about 10 entries: when s2 is back, the entries it had not read are
    gone. Its member gets the lines it can, without a jump, and then chat's
    missed-messages treatment (--channel-full kick: cut off, told why), never
    a silent gap."""
    cluster = Cluster(hosts, sockfork, tmp_path, "--history", "0", "--bus-stream-len", "10",
                      *NO_FLOOD)
    alice = cluster.on(0, "alice")
    bob = cluster.on(1, "bob")
    alice.expect("*** bob has joined lobby")
    s2 = cluster.servers[1]
    hosts.link_down("s2")
    try:
        wait_bus_connected(s2, False)
        alice.send("".join("a.%d\n" % j for j in range(1, 501)).encode())
        deadline = time.monotonic() + LONG_WAIT
        while True:
            info = cluster.redis.command("XINFO", "STREAM", LOBBY)
            fields = dict(zip(info[::2], info[1::2])) if isinstance(info, list) else {}
            if fields.get(b"entries-added", 0) >= 501:  # bob's join, then a.1..a.500
                break
            assert time.monotonic() < deadline, info
            time.sleep(0.05)  # bounded poll of Redis
        assert fields[b"length"] < 500, fields  # trimmed
    finally:
        hosts.link_up("s2")
    wait_bus_connected(s2, True)
    lines = bob.lines_to_eof(LONG_WAIT)
    nums = [int(t[len("<alice> a."):]) for t in lines if t.startswith("<alice> a.")]
    assert nums == list(range(1, len(nums) + 1)), nums[:20]   # no jump
    assert len(nums) < 500, "nothing was trimmed before s2 read it"
    rest = [t for t in lines if not t.startswith("<alice> a.")]
    assert rest and (rest[-1].startswith("*** You were disconnected") or "missed" in rest[-1]), rest
    alice.expect("*** bob has left lobby (connection lost)")
