"""The bus through the C channel API (sf_conn_send, sf_conn_subscribe, ...):
tests/helpers/chanserver runs an sf_server whose handler takes commands from
its client, calls the API and writes every message it receives back to the
client as a line (see the top of chanserver.c).

Each bus command is answered OK only after the child has seen a message it
sent to its own pid come back: the supervisor carries out one child's
requests in order, so by then the request has been routed. `x.sync()`
returns what child x has received so far; an empty list after the sender's
OK means the message did not go to x, with no pause involved."""

import pytest

from conftest import LONG_WAIT, BusClient, Control, control_path, escape_arg, expect_eof, helper


@pytest.fixture
def chan(sockfork, tmp_path):
    """chan(OPTIONS...) starts chanserver in bus mode with a control socket."""
    count = [0]

    def start(*args, mode="bus"):
        count[0] += 1
        sock = str(tmp_path / ("chan%d.sock" % count[0]))
        return sockfork("--control", sock, *args, mode, bin=helper("chanserver"))

    return start


def msgs_of(msgs):
    """(kind, from, topic, data) of each message, failing on other lines."""
    out = []
    for m in msgs:
        assert not isinstance(m, str), "unexpected line from the child: %r" % m
        out.append((m.kind, m.frm, m.topic, m.data))
    return out


def by_pid(ctl, pid):
    reply = ctl(cmd="list")
    assert reply["ok"] is True, reply
    for ch in reply["children"]:
        if ch["pid"] == pid:
            return ch
    return None


# ------------------------------------------------------------- to a pid

def test_send_to_a_pid(chan):
    srv = chan()
    a, b, c = BusClient(srv), BusClient(srv), BusClient(srv)
    assert a.ok("SEND %d hello world" % b.pid) == []
    assert msgs_of(b.sync()) == [("direct", a.pid, "", b"hello world")]
    assert c.sync() == [], "a message to one pid reaches that pid only"
    # Any bytes go through, and an empty message too.
    a.ok("SEND %d %%00%%FF%%0A end" % b.pid)
    a.ok("SEND %d" % b.pid)
    assert msgs_of(b.sync()) == [("direct", a.pid, "", b"\x00\xff\n end"),
                                 ("direct", a.pid, "", b"")]
    srv.stop()


def test_send_to_a_missing_pid_is_an_error_message(chan):
    srv = chan()
    a = BusClient(srv)
    ghost = srv.pid  # a live process, but not a child of the server
    msgs = a.ok("SEND %d anyone?" % ghost)
    assert msgs_of(msgs) == [("error", 0, "send: no child with pid %d" % ghost, b"%d" % ghost)]
    # The channel stays open: the child goes on.
    assert a.cmd("PID")[1] == "PID %d" % a.pid
    b = BusClient(srv)
    a.ok("SEND %d still works" % b.pid)
    assert msgs_of(b.sync()) == [("direct", a.pid, "", b"still works")]
    srv.stop()


# ------------------------------------------------------------------ names

def test_claim_a_name_and_send_to_it(chan):
    srv = chan()
    alice, bob, carol = BusClient(srv), BusClient(srv), BusClient(srv)
    msgs = alice.ok("CLAIM alice")
    assert [(m.kind, m.ok, m.topic) for m in msgs] == [("claimed", 1, "alice")]
    msgs = bob.ok("CLAIM alice")
    assert [(m.kind, m.ok, m.topic) for m in msgs] == [("claimed", 0, "alice")], \
        "a name held by another child is refused"
    msgs = alice.ok("CLAIM alice")
    assert [(m.kind, m.ok) for m in msgs] == [("claimed", 1)], "claiming one's own name again is ok"

    assert carol.ok("SENDNAME alice psst") == []
    assert msgs_of(alice.sync()) == [("name", carol.pid, "alice", b"psst")]
    assert bob.sync() == []

    msgs = carol.ok("SENDNAME nobody hello?")
    assert msgs_of(msgs) == [("error", 0, "send: nobody holds the name nobody", b"nobody")]
    srv.stop()


def test_a_name_is_released_when_its_holder_exits(chan):
    srv = chan()
    holder, waiter, sender = BusClient(srv), BusClient(srv), BusClient(srv)
    assert [m.ok for m in holder.ok("CLAIM svc")] == [1]
    assert [m.ok for m in waiter.ok("CLAIM svc")] == [0]
    mark = srv.log.mark()
    assert holder.cmd("QUIT")[1] == "BYE"
    srv.log.wait_one(r"\] disconnected pid=%d duration=\S+ status=exited 0$" % holder.pid, mark)
    assert [m.ok for m in waiter.ok("CLAIM svc")] == [1], "the name is free once its holder is gone"
    sender.ok("SENDNAME svc for the new holder")
    assert msgs_of(waiter.sync()) == [("name", sender.pid, "svc", b"for the new holder")]

    # An explicit release frees it too.
    waiter.ok("RELEASE svc")
    msgs = sender.ok("SENDNAME svc anyone")
    assert msgs_of(msgs) == [("error", 0, "send: nobody holds the name svc", b"svc")]
    assert [m.ok for m in sender.ok("CLAIM svc")] == [1]
    srv.stop()


def test_names_per_child_are_bounded(chan):
    srv = chan()
    a, b = BusClient(srv), BusClient(srv)
    for i in range(16):
        assert [m.ok for m in a.ok("CLAIM n%d" % i)] == [1], i
    assert [m.ok for m in a.ok("CLAIM n16")] == [0], "at most 16 names per child"
    # The refusal cost a's 17th name only: another child may take it.
    assert [m.ok for m in b.ok("CLAIM n16")] == [1]
    srv.stop()


# ------------------------------------------------------ publish/subscribe

def test_publish_subscribe_between_three_children(chan):
    srv = chan()
    a, b, c = BusClient(srv), BusClient(srv), BusClient(srv)
    outsider = BusClient(srv)
    for x in (a, b, c):
        assert x.ok("SUB room 0") == []

    a.ok("PUB room hi all")
    for x in (b, c):
        assert msgs_of(x.sync()) == [("topic", a.pid, "room", b"hi all")]
    assert outsider.sync() == [], "a publication reaches the topic's subscribers only"
    a.sync()  # whether the publisher hears itself is not asserted here

    b.ok("PUB room from b")
    c.ok("PUB room from c")
    assert msgs_of(a.sync()) == [("topic", b.pid, "room", b"from b"),
                                 ("topic", c.pid, "room", b"from c")]
    got_b = [m for m in msgs_of(b.sync()) if m[1] != b.pid]
    assert got_b == [("topic", c.pid, "room", b"from c")]

    c.ok("UNSUB room")
    c.sync()
    a.ok("PUB room after c left")
    assert c.sync() == [], "no message after unsubscribing"
    assert msgs_of(b.sync()) == [("topic", a.pid, "room", b"after c left")]
    srv.stop()


def test_history_is_replayed_to_a_late_subscriber_in_order(chan):
    srv = chan()
    pub = BusClient(srv)
    for i in range(1, 6):
        pub.ok("PUB news m%d" % i)
    late = BusClient(srv)
    assert msgs_of(late.ok("SUB news 3")) == [("history", pub.pid, "news", b"m%d" % i)
                                              for i in (3, 4, 5)]
    everything = BusClient(srv)
    assert [m.data for m in everything.ok("SUB news 50")] == [b"m%d" % i for i in range(1, 6)]
    none = BusClient(srv)
    assert none.ok("SUB news 0") == []
    # After the replay, live messages come as "topic".
    pub.ok("PUB news m6")
    for x in (late, everything, none):
        assert msgs_of(x.sync()) == [("topic", pub.pid, "news", b"m6")]
    srv.stop()


def test_history_keeps_the_last_topic_history_messages(chan):
    srv = chan("--history", "2")
    pub = BusClient(srv)
    for i in range(1, 5):
        pub.ok("PUB t m%d" % i)
    late = BusClient(srv)
    assert [(m.kind, m.data) for m in late.ok("SUB t 10")] == [("history", b"m3"), ("history", b"m4")]
    srv.stop()


def test_no_history_when_topic_history_is_zero(chan):
    srv = chan("--history", "0")
    pub = BusClient(srv)
    pub.ok("PUB t kept?")
    late = BusClient(srv)
    assert late.ok("SUB t 10") == []
    pub.ok("PUB t live")
    assert msgs_of(late.sync()) == [("topic", pub.pid, "t", b"live")]
    srv.stop()


def test_subscriptions_per_child_are_bounded(chan):
    srv = chan()
    a = BusClient(srv)
    for i in range(64):
        assert a.ok("SUB t%d 0" % i) == [], i
    msgs = a.ok("SUB t64 0")
    assert msgs_of(msgs) == [("error", 0, "subscribe: at most 64 topics per child", b"t64")]
    # Subscribing again to a topic it has is no new subscription.
    assert a.ok("SUB t5 0") == []
    b = BusClient(srv)
    b.ok("PUB t63 last")
    b.ok("PUB t64 refused")
    assert msgs_of(a.sync()) == [("topic", b.pid, "t63", b"last")]
    srv.stop()


def test_names_and_topics_are_checked_by_the_api(chan):
    srv = chan()
    a = BusClient(srv)
    assert a.cmd("SUB %s 0" % ("x" * 256))[1] == "ERR SUB -22"
    assert a.cmd("CLAIM")[1] == "ERR CLAIM -22"
    assert a.cmd("PUB %s data" % ("y" * 256))[1] == "ERR PUB -22"
    assert a.cmd("SEND 0 nobody")[1] == "ERR SEND -22"
    # 255 bytes is fine.
    assert a.ok("SUB %s 0" % ("x" * 255)) == []
    b = BusClient(srv)
    b.ok("PUB %s ok" % ("x" * 255))
    assert msgs_of(a.sync()) == [("topic", b.pid, "x" * 255, b"ok")]
    srv.stop()


# -------------------------------------------------------------- broadcast

def test_broadcast_reaches_every_child_but_the_sender(chan):
    srv = chan()
    a, b, c = BusClient(srv), BusClient(srv), BusClient(srv)
    assert a.ok("BCAST to all") == [], "the sender does not get its own broadcast"
    for x in (b, c):
        assert msgs_of(x.sync()) == [("broadcast", a.pid, "", b"to all")]
    ctl = Control(control_path(srv))
    reply = ctl(cmd="broadcast", text="from ctl")
    assert reply == {"ok": True, "delivered": 3, "dropped": 0}
    for x in (a, b, c):
        assert msgs_of(x.sync()) == [("broadcast", 0, "", b"from ctl")]
    ctl.close()
    srv.stop()


# ---------------------------------------------------------- log, status

def test_status_and_log_from_a_c_handler(chan):
    srv = chan()
    a, b = BusClient(srv), BusClient(srv)
    ctl = Control(control_path(srv))
    a.ok("STATUS working hard")
    assert by_pid(ctl, a.pid)["status"] == "working hard"
    assert by_pid(ctl, b.pid)["status"] == ""
    a.ok("STATUS %s" % ("s" * 300))
    assert by_pid(ctl, a.pid)["status"] == "s" * 127, "a status is cut at 127 bytes"
    a.ok("LOG hello from C")
    srv.log.wait_one(r"^sockfork: pid %d says: hello from C$" % a.pid)
    ctl.close()
    srv.stop()


@pytest.mark.parametrize("status", [b"\xff\xfe not UTF-8", "a" * 126 + "\u00e9"],
                         ids=["not-utf8", "cut-inside-a-character"])
def test_a_child_with_any_status_bytes_is_still_listed(chan, status):
    """The status is bytes from the child, kept up to 127 of them: a status
    that is not UTF-8 (or is cut inside a character) must not make the
    child disappear from `list`."""
    srv = chan()
    a, b = BusClient(srv), BusClient(srv)
    a.ok("STATUS " + escape_arg(status))
    ctl = Control(control_path(srv))
    reply = ctl(cmd="list")
    assert reply["ok"] is True
    pids = sorted(ch["pid"] for ch in reply["children"])
    assert pids == sorted([a.pid, b.pid]), "ctl list: %r" % reply
    ctl.close()
    srv.stop()


# ------------------------------------------------------------ the limits

def test_the_largest_message_a_child_may_send_reaches_its_recipient(chan):
    """A SEND frame of chan_max (64 KiB) bytes carries 65532 bytes of data
    (4 for the pid). The supervisor accepts it and routes it; the recipient
    must be able to read the MESSAGE frame it becomes (8 bytes of header in
    its payload more)."""
    srv = chan()
    a, b = BusClient(srv), BusClient(srv)
    a.ok("SENDBIG %d 65532" % b.pid)
    got = b.sync()
    assert [(m.kind, m.frm, m.len) if not isinstance(m, str) else m for m in got] == \
        [("direct", a.pid, 65532)]
    assert got[0].data == b"x" * 200  # the first 200 bytes are shown
    # The same for a publication: 2 + 5 bytes of topic, 65529 of data.
    b.ok("SUB big5 0")
    a.ok("PUBBIG big5 65529")
    got = b.sync()
    assert [(m.kind, m.len) if not isinstance(m, str) else m for m in got] == [("topic", 65529)]
    srv.stop()


def test_a_frame_over_the_maximum_ends_its_sender_only(chan):
    srv = chan()
    a, b = BusClient(srv), BusClient(srv)
    mark = srv.log.mark()
    a.send("SENDBIG %d 65533" % b.pid)  # 65537 bytes of payload
    srv.log.wait_one(r"^sockfork: pid %d: a frame over the channel's limit: "
                     r"closing its channel and ending it$" % a.pid, mark)
    srv.log.wait_one(r"\] disconnected pid=%d duration=\S+ status=killed by SIGTERM$" % a.pid, mark)
    assert b.sync() == []
    c = BusClient(srv)
    c.ok("SEND %d after" % b.pid)
    assert msgs_of(b.sync()) == [("direct", c.pid, "", b"after")]
    ctl = Control(control_path(srv))
    assert ctl(cmd="stats")["channel"]["kicked_bad"] == 1
    ctl.close()
    srv.stop()


def fill_queue(ctl, pid, limit, room, size=1000):
    """Pushes direct messages of `size` bytes to a child that does not read
    until its queue has less than `room` bytes free (each push fitting),
    and returns the bytes queued. The socket's buffer fills first."""
    frame = 16 + size  # header, kind/ok/n/from, data
    assert room > frame
    for _ in range(5000):
        ch = by_pid(ctl, pid)
        assert ch is not None and ch["dropped"] == 0, ch
        if limit - ch["queued"] < room:
            return ch["queued"]
        reply = ctl(cmd="send", pid=pid, text="q" * size)
        assert reply["ok"] is True, reply
    raise AssertionError("the queue of pid %d did not fill" % pid)


def test_kick_at_a_full_queue_during_a_publish_keeps_the_topic(chan):
    """chan_full_kick: the only subscriber of a new topic has a full queue,
    so the first publication on the topic disconnects it. That subscriber
    leaving must not take the topic (and the message's history) with it:
    the message is kept and replayed to the next subscriber."""
    limit = 72 * 1024  # at least chan_max (64 KiB) + 8
    srv = chan("--kick", "--queue", str(limit))
    deaf = BusClient(srv)
    deaf.ok("SUB t 0")
    deaf.ok("DEAF")
    ctl = Control(control_path(srv))
    fill_queue(ctl, deaf.pid, limit, room=3000 + 17)
    mark = srv.log.mark()
    pub = BusClient(srv)
    pub.ok("PUBBIG t 3000")  # does not fit in deaf's queue: deaf is kicked
    srv.log.wait_one(r"^sockfork: pid %d: its channel queue is full \(it does not read it\): "
                     r"closing its channel and ending it$" % deaf.pid, mark)
    expect_eof(deaf.sock)
    late = BusClient(srv)
    got = late.ok("SUB t 5")
    assert [(m.kind, m.frm, m.len) if not isinstance(m, str) else m for m in got] == \
        [("history", pub.pid, 3000)]
    st = ctl(cmd="stats")["channel"]
    assert st["kicked_full"] == 1 and st["dropped"] == 1, st
    ctl.close()
    srv.stop()


def test_queue_limit_drops_for_a_child_that_does_not_read(chan):
    """Drop policy (the default): a non-reading child's queue stays at the
    limit, what does not fit is counted, its siblings are served."""
    limit = 72 * 1024
    srv = chan("--queue", str(limit))
    deaf, sender, other = BusClient(srv), BusClient(srv), BusClient(srv)
    deaf.ok("DEAF")
    ctl = Control(control_path(srv))
    # 1 MiB at a child whose socket holds a few hundred KiB and queue 72 KiB.
    assert sender.ok("FLOOD SEND 1024 1024 %d" % deaf.pid) == []
    ch = by_pid(ctl, deaf.pid)
    assert 0 < ch["queued"] <= limit and ch["dropped"] > 0, ch
    st = ctl(cmd="stats")["channel"]
    assert st["dropped"] == ch["dropped"] and st["kicked_full"] == 0, st
    sender.ok("SEND %d served" % other.pid)
    assert msgs_of(other.sync()) == [("direct", sender.pid, "", b"served")]
    # deaf is still alive and answers its client.
    assert deaf.cmd("PID")[1] == "PID %d" % deaf.pid
    ctl.close()
    srv.stop()


def test_senders_wait_for_a_reading_subscriber_instead_of_overflowing_it(chan):
    """BUG (issue 11): four children publishing at once filled a reading
    subscriber's queue faster than it could read it, and under the kick
    policy it was disconnected ("it does not read it"). The senders are
    held while its queue is high: it gets every message, nobody is kicked."""
    limit = 72 * 1024
    srv = chan("--kick", "--queue", str(limit))
    sub = BusClient(srv)
    sub.ok("SUB t 0")
    sub.ok("MUTE")  # reads its channel, counts, writes nothing per message
    pubs = [BusClient(srv) for _ in range(4)]
    for p in pubs:
        p.send("FLOOD PUB 2000 1000 t")
    for p in pubs:
        assert p.line(LONG_WAIT) == "OK FLOOD sent=2000"
    sub.ok("SYNC")  # comes after every message routed to it
    msgs, count = sub.cmd("COUNT")
    assert msgs == [] and "topic=8000 " in count + " ", count
    ctl = Control(control_path(srv))
    st = ctl(cmd="stats")["channel"]
    assert st["kicked_full"] == 0 and st["dropped"] == 0, st
    ctl.close()
    srv.stop()
