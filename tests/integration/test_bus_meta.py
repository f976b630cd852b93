"""The bus's wills, its member and topic listings, and what children see
of a shutdown, spoken as JSON lines over fd 3 through a relay handler."""
import json
import os
import signal
import time

from conftest import LONG_WAIT, WAIT, expect_eof, recv_line
from test_channel import RELAY, SH, json_line, relay_client, vm_kib


def tell(sock, **msg):
    sock.sendall(json.dumps(msg).encode() + b"\n")


def sync(sock, pid):
    """A message to oneself comes back only after everything sent before it
    has been routed (the supervisor takes a child's requests in order)."""
    tell(sock, op="send", to=pid, data="sync")
    got = []
    deadline = time.monotonic() + WAIT
    while True:
        assert time.monotonic() < deadline, "no sync back within %.0f s; got %r" % (WAIT, got)
        m = json_line(sock, timeout=max(0.1, deadline - time.monotonic()))
        if m.get("data") == "sync" and m.get("kind") == "direct":
            return got
        got.append(m)


def relays_b_in_room(sockfork):
    """A relay server and two relay clients, b subscribed to "room". The
    subscription is in place before this returns (two children's requests
    have no order between them): a's publish or will comes after it."""
    srv = sockfork("--", SH, "-c", RELAY)
    a = relay_client(srv)
    b = relay_client(srv)
    tell(b[0], op="subscribe", topic="room")
    assert sync(*b) == []
    return srv, a, b


def test_a_will_is_published_when_its_child_dies(sockfork):
    srv, (a, apid), (b, bpid) = relays_b_in_room(sockfork)
    tell(a, op="will", topic="room", data="a is gone")
    assert sync(a, apid) == []
    os.kill(apid, signal.SIGKILL)
    m = json_line(b)
    assert (m["kind"], m["from"], m["topic"], m["data"]) == ("topic", apid, "room", "a is gone"), m
    # It went into the topic's history, as any publish does.
    c, cpid = relay_client(srv)
    tell(c, op="subscribe", topic="room", history=5)
    assert [(m["kind"], m["data"]) for m in sync(c, cpid)] == [("history", "a is gone")]


def test_a_cleared_or_replaced_will_is_not_published(sockfork):
    srv, (a, apid), (b, bpid) = relays_b_in_room(sockfork)
    tell(a, op="will", topic="room", data="first")
    tell(a, op="will", topic="room", data="second")
    assert sync(a, apid) == []
    a.close()  # the relay ends: its channel closes with the will set
    m = json_line(b)
    assert m["data"] == "second", m
    d, dpid = relay_client(srv)
    tell(d, op="will", topic="room", data="never")
    tell(d, op="will")
    assert sync(d, dpid) == []
    srv.wait_disconnected(srv.close_client(d))
    assert sync(b, bpid) == [], "a cleared will was published"


def test_members_and_topics(sockfork):
    srv = sockfork("--", SH, "-c", RELAY)
    a, apid = relay_client(srv)
    b, bpid = relay_client(srv)
    tell(a, op="claim", name="alice")
    assert json_line(a) == {"op": "claimed", "name": "alice", "ok": True}
    for s, pid, topic in ((a, apid, "room:lobby"), (b, bpid, "room:lobby"), (b, bpid, "room:dev"),
                          (b, bpid, "other")):
        tell(s, op="subscribe", topic=topic)
        assert sync(s, pid) == []
    tell(b, op="members", topic="room:lobby")
    m = json_line(b)
    assert (m["kind"], m["topic"]) == ("members", "room:lobby"), m
    assert sorted(m["data"].splitlines()) == sorted(["%d alice" % apid, "%d" % bpid]), m
    tell(b, op="topics", prefix="room:")
    m = json_line(b)
    assert m["kind"] == "topics", m
    assert sorted(m["data"].splitlines()) == ["room:dev 1", "room:lobby 2"], m
    tell(b, op="topics")
    assert sorted(json_line(b)["data"].splitlines()) == ["other 1", "room:dev 1", "room:lobby 2"]
    tell(b, op="members", topic="nobody-here")
    m = json_line(b)
    assert (m["kind"], m["data"]) == ("members", ""), m


SAY_WHEN_CLOSED = 'cat <&3 >/dev/null; echo "channel closed"'


def test_at_shutdown_children_see_their_channel_end_at_once(sockfork):
    """With a 30 s grace, the children still learn at once that the server
    is going away, and the server exits as soon as they do."""
    srv = sockfork("--grace", "30", "--", SH, "-c", SAY_WHEN_CLOSED)
    clients = [srv.connect() for _ in range(3)]
    for c in clients:
        srv.wait_connected(c)
    start = time.monotonic()
    srv.signal(signal.SIGTERM)
    for c in clients:
        assert recv_line(c) == b"channel closed\n"
        expect_eof(c)
    rc = srv.wait_exit()
    assert time.monotonic() - start < WAIT
    srv.check_clean_exit(rc)


# ------------------------------------------------------------ topic eviction

def test_topics_nobody_subscribes_to_are_evicted_with_their_history(sockfork):
    """BUG (issue 11): a topic with history was freed only once it had no
    history either, which never happens: one child publishing 60 KB to
    1,100 topics left the supervisor holding all of it after the child had
    gone, and no topic could be made any more. Topics nobody subscribes to
    are evicted, least recently used first, when the table is full or the
    history of all topics passes its budget (16 MiB)."""
    env = {"ASAN_OPTIONS": (os.environ.get("ASAN_OPTIONS", "") +
                            ":detect_leaks=1:quarantine_size_mb=8").lstrip(":")}
    srv = sockfork("--", SH, "-c", RELAY, env=env)
    rss0 = vm_kib(srv.pid, "VmRSS")
    a, apid = relay_client(srv)
    data = "x" * 60000
    topics = 1100
    flood = b"".join(json.dumps({"op": "publish", "topic": "t%d" % i, "data": data}).encode()
                     + b"\n" for i in range(topics))
    a.settimeout(LONG_WAIT)
    a.sendall(flood)
    got = sync(a, apid)
    assert got == [], "publishing on new topics was refused: %r" % got[:3]
    srv.wait_disconnected(srv.close_client(a))
    growth = vm_kib(srv.pid, "VmRSS") - rss0
    print("supervisor RSS after 1,100 topics of 60 KB: +%d KiB" % growth)
    assert growth < 40 * 1024, "the supervisor keeps %d KiB after the child left" % growth

    # New topics work: subscribe, publish, and the last topic flooded is
    # still there (its history is among the newest).
    b, bpid = relay_client(srv)
    c, cpid = relay_client(srv)
    tell(b, op="subscribe", topic="brandnew")
    assert sync(b, bpid) == []
    tell(c, op="publish", topic="brandnew", data="hello")
    assert sync(c, cpid) == []
    m = json_line(b)
    assert (m["kind"], m["topic"], m["data"]) == ("topic", "brandnew", "hello"), m
    tell(c, op="subscribe", topic="t%d" % (topics - 1), history=5)
    got = sync(c, cpid)
    assert [(m["kind"], len(m["data"])) for m in got] == [("history", 60000)], \
        [(m.get("kind"), m.get("error")) for m in got]
    # The oldest went to make room.
    tell(c, op="subscribe", topic="t0", history=5)
    assert sync(c, cpid) == []


def test_a_topic_with_subscribers_keeps_its_history_through_a_flood(sockfork):
    """Eviction takes idle topics first: a room somebody is in keeps its
    history while garbage topics come and go."""
    srv, (a, apid), (b, bpid) = relays_b_in_room(sockfork)  # the room is never idle
    tell(a, op="publish", topic="room", data="kept")
    assert sync(a, apid) == []
    flood = b"".join(json.dumps({"op": "publish", "topic": "g%d" % i, "data": "y" * 100}).encode()
                     + b"\n" for i in range(3000))
    a.settimeout(LONG_WAIT)
    a.sendall(flood)
    assert sync(a, apid) == []
    c, cpid = relay_client(srv)
    tell(c, op="subscribe", topic="room", history=5)
    assert [(m["kind"], m["data"]) for m in sync(c, cpid)] == [("history", "kept")]
