"""The bus's wills, its member and topic listings, and what children see
of a shutdown, spoken as JSON lines over fd 3 through a relay handler."""
import json
import os
import signal
import time

from conftest import WAIT, expect_eof, recv_line
from test_channel import RELAY, SH, json_line, relay_client


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


def test_a_will_is_published_when_its_child_dies(sockfork):
    srv = sockfork("--", SH, "-c", RELAY)
    a, apid = relay_client(srv)
    b, bpid = relay_client(srv)
    tell(b, op="subscribe", topic="room")
    assert sync(b, bpid) == []
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
    srv = sockfork("--", SH, "-c", RELAY)
    a, apid = relay_client(srv)
    b, bpid = relay_client(srv)
    tell(b, op="subscribe", topic="room")
    assert sync(b, bpid) == []
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
