"""Every child's channel, end to end: `sockfork ctl send` and `broadcast`
to the built-in handler, exec'd programs speaking JSON lines on fd 3 (a
shell, Python), bad input from a child, and through tests/helpers/chanserver
a child that floods, one that never reads, and one that writes bytes that
are not a frame."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import (BIN, LONG_WAIT, WAIT, BusClient, Control, control_path, expect_eof,
                      helper, recv_line, recv_until_eof, server_env)

SH = "/bin/sh"
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
SANITIZED = os.environ.get("SOCKFORK_SANITIZED") == "1"

# An exec'd handler that joins its client to its channel: what the client
# sends goes to fd 3 as it is, what comes on fd 3 goes to the client. The
# test speaks the channel's JSON lines itself, over TCP.
# Its cats' complaints (a client that resets) go to /dev/null: cat writes
# one in several pieces, which the supervisor's log lines could cut apart.
RELAY = 'cat <&3 2>/dev/null & cat >&3 2>/dev/null; kill $! 2>/dev/null'

KICKED = r"^sockfork: pid %d: %s: closing its channel and ending it$"
# What a chanserver child that wrote garbage may still say before SIGTERM.
CUT_OFF = b"OK GARBAGE\nCLOSED\n"


def ctl(path, *args):
    proc = subprocess.run([BIN, "ctl", "--control", path] + [str(a) for a in args],
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=WAIT,
                          env=server_env())
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


def ctl_json(path, *args):
    rc, out, err = ctl(path, "--json", *args)
    assert rc == 0, (rc, out, err)
    return json.loads(out)


def greeting_pid(sock):
    line = recv_line(sock)
    m = re.match(rb"^Welcome to sockfork \(pid (\d+)\)\.", line)
    assert m, line
    return int(m.group(1))


def json_line(sock, timeout=WAIT):
    return json.loads(recv_line(sock, timeout=timeout, limit=1 << 20))


def child(listing, pid):
    for ch in listing["children"]:
        if ch["pid"] == pid:
            return ch
    raise AssertionError("pid %d not in %r" % (pid, listing))


def vm_kib(pid, field):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError("no %s for pid %d" % (field, pid))


def chanserver(sockfork, tmp_path, *args, env=None):
    return sockfork("--control", str(tmp_path / "chan.sock"), *args, bin=helper("chanserver"),
                    env=env)


# Memory checks: under ASan freed memory sits in a quarantine (256 MiB by
# default); keep it small so that RSS says something.
ASAN_SMALL_QUARANTINE = {"ASAN_OPTIONS": (os.environ.get("ASAN_OPTIONS", "") +
                                          ":detect_leaks=1:quarantine_size_mb=8").lstrip(":")}
RSS_GROWTH_KIB = (32 if SANITIZED else 16) * 1024


# ------------------------------------------------- the built-in handler

def test_ctl_send_reaches_an_idle_client(sockfork, tmp_path):
    srv = sockfork("--control", str(tmp_path / "c.sock"))
    path = control_path(srv)
    c = srv.connect()
    pid = greeting_pid(c)
    srv.wait_connected(c)
    rc, out, err = ctl(path, "send", pid, "the build is done")
    assert (rc, out.strip()) == (0, "queued for %d" % pid), err
    # The client sent nothing: the line comes anyway, at once.
    assert recv_line(c) == b"the build is done\r\n"
    c.sendall(b"still echoing\n")
    assert recv_line(c) == b"still echoing\n"

    missing = srv.pid  # alive, but not one of its children
    rc, out, err = ctl(path, "send", missing, "hello?")
    assert rc == 1 and out == ""
    assert "no child with pid %d" % missing in err
    assert json.loads(ctl(path, "--json", "send", missing, "x")[1]) == {
        "ok": False, "error": "no child with pid %d" % missing}
    srv.stop()


def test_ctl_broadcast_reaches_100_clients(sockfork, tmp_path):
    srv = sockfork("--control", str(tmp_path / "c.sock"))
    path = control_path(srv)
    clients = [srv.connect() for _ in range(100)]
    pids = {greeting_pid(c) for c in clients}
    srv.log.wait(r"\] connected pid=\d+ active=\d+$", count=100)
    assert len(pids) == 100

    assert ctl_json(path, "broadcast", "restarting in 5 minutes") == {
        "ok": True, "delivered": 100, "dropped": 0}
    rc, out, err = ctl(path, "broadcast", "second notice")
    assert (rc, out.strip()) == (0, "delivered to 100, dropped for 0"), err
    for i, c in enumerate(clients):
        assert recv_line(c) == b"restarting in 5 minutes\r\n", i
        assert recv_line(c) == b"second notice\r\n", i
        # Exactly those lines: the next one is the echo of what we send.
        c.sendall(b"ping %d\n" % i)
        assert recv_line(c) == b"ping %d\n" % i
    st = ctl_json(path, "stats")
    assert st["channel"]["frames_out"] == 200 and st["channel"]["dropped"] == 0, st
    srv.stop()


def test_list_kick_and_stats_show_the_channel(sockfork, tmp_path):
    srv = sockfork("--control", str(tmp_path / "c.sock"))
    path = control_path(srv)
    a, b = srv.connect(), srv.connect()
    pa, pb = greeting_pid(a), greeting_pid(b)
    srv.wait_connected(a)
    srv.wait_connected(b)

    listing = ctl_json(path, "list")
    for pid in (pa, pb):
        ch = child(listing, pid)
        assert (ch["status"], ch["queued"], ch["dropped"], ch["state"]) == ("", 0, 0, "running"), ch
    rc, out, _ = ctl(path, "list")
    assert rc == 0 and out.splitlines()[0].split()[-1] == "STATUS"

    before = ctl_json(path, "stats")["channel"]
    for n in range(3):
        assert ctl(path, "send", pa, "n%d" % n)[0] == 0
    assert recv_line(a) == b"n0\r\n" and recv_line(a) == b"n1\r\n" and recv_line(a) == b"n2\r\n"
    after = ctl_json(path, "stats")["channel"]
    assert after["frames_out"] == before["frames_out"] + 3, (before, after)
    assert after["dropped"] == before["dropped"] == 0

    rc, out, err = ctl(path, "kick", pb)
    assert (rc, out.strip()) == (0, "kicked %d" % pb), err
    expect_eof(b)
    _, d = srv.wait_disconnected(b)
    assert d.group("status") == "killed by SIGTERM"
    listing = ctl_json(path, "list")
    assert [ch["pid"] for ch in listing["children"]] == [pa]
    # A kicked child is not there to send to.
    rc, _, err = ctl(path, "send", pb, "too late")
    assert rc == 1 and "no child with pid %d" % pb in err
    st = ctl_json(path, "stats")
    assert st["kicked"] == 1 and st["channel"]["kicked_bad"] == 0
    srv.stop()


# ---------------------------------------------------- exec'd programs

SHELL_HANDLER = r'''
echo "fd=$SOCKFORK_FD"
echo '{"op":"status","text":"busy"}' >&3
echo '{"op":"log","text":"hello"}' >&3
cat <&3 &
cat >/dev/null
kill $! 2>/dev/null
'''


def test_shell_handler_status_log_and_messages_on_fd_3(sockfork, tmp_path):
    srv = sockfork("--control", str(tmp_path / "c.sock"), "--", SH, "-c", SHELL_HANDLER)
    path = control_path(srv)
    c = srv.connect()
    pid = int(srv.wait_connected(c)[1].group(1))
    assert recv_line(c) == b"fd=3\n", "SOCKFORK_FD=3 is set"
    # The status went first on the same channel: once the log line is
    # there, the status is set.
    srv.log.wait_one(r"^sockfork: pid %d says: hello$" % pid)
    ch = child(ctl_json(path, "list"), pid)
    assert ch["status"] == "busy", ch
    rc, out, _ = ctl(path, "list")
    assert any(l.split()[0] == str(pid) and l.rstrip().endswith("busy") for l in out.splitlines()), out

    assert ctl(path, "send", pid, "to the shell")[0] == 0
    assert json_line(c) == {"op": "message", "kind": "direct", "from": 0, "data": "to the shell"}
    assert ctl_json(path, "broadcast", "to everyone")["delivered"] == 1
    assert json_line(c) == {"op": "message", "kind": "broadcast", "from": 0, "data": "to everyone"}
    st = ctl_json(path, "stats")["channel"]
    assert st["frames_in"] == 2 and st["frames_out"] == 2, st
    peer = srv.close_client(c)
    _, d = srv.wait_disconnected(peer)
    assert d.group("status") == "exited 0"
    srv.stop()


ROOM_PY = r'''
import json, os, selectors, sys

assert os.environ["SOCKFORK_FD"] == "3"
chan = os.fdopen(3, "r+b", buffering=0)
client = os.fdopen(0, "rb", buffering=0)
out = os.fdopen(1, "wb", buffering=0)
me = os.getpid()
token = [0]

def tell(**msg):
    chan.write(json.dumps(msg).encode() + b"\n")

def sync():
    # The supervisor handles our requests in order: once a message to
    # ourselves is back, everything before it has been routed.
    token[0] += 1
    tell(op="send", to=me, data="sync %d" % token[0])
    while True:
        msg = json.loads(chan.readline())
        if msg.get("kind") == "direct" and msg["from"] == me and msg["data"] == "sync %d" % token[0]:
            return
        show(msg)

def show(msg):
    if msg["op"] == "message" and msg["kind"] in ("topic", "history") and msg["from"] != me:
        out.write(("%s %d: %s\n" % (msg["kind"], msg["from"], msg["data"])).encode())
    elif msg["op"] == "error":
        out.write(("error: %s\n" % msg["error"]).encode())

tell(op="subscribe", topic="room", history=5)
sync()
out.write(b"READY %d\n" % me)
sel = selectors.DefaultSelector()
sel.register(client, selectors.EVENT_READ, "client")
sel.register(chan, selectors.EVENT_READ, "channel")
while True:
    for key, _ in sel.select():
        if key.data == "client":
            line = client.readline()
            if not line:
                sys.exit(0)
            tell(op="publish", topic="room", data=line.decode().rstrip("\n"))
            sync()
            out.write(b"SENT\n")
        else:
            line = chan.readline()
            if not line:
                sys.exit(3)
            show(json.loads(line))
'''


def test_python_handlers_talk_through_a_topic(sockfork, tmp_path):
    script = tmp_path / "room.py"
    script.write_text(ROOM_PY)
    srv = sockfork("--", PYTHON, str(script))
    a = srv.connect()
    m = re.match(rb"^READY (\d+)\n$", recv_line(a))
    assert m
    pa = int(m.group(1))
    for text in (b"one", b"two"):
        a.sendall(text + b"\n")
        assert recv_line(a) == b"SENT\n"

    # b comes late: it gets the history first, in order.
    b = srv.connect()
    assert recv_line(b) == b"history %d: one\n" % pa
    assert recv_line(b) == b"history %d: two\n" % pa
    m = re.match(rb"^READY (\d+)\n$", recv_line(b))
    assert m
    pb = int(m.group(1))

    a.sendall(b"hi b\n")
    assert recv_line(a) == b"SENT\n"
    assert recv_line(b) == b"topic %d: hi b\n" % pa
    b.sendall(b"hi a\n")
    assert recv_line(b) == b"SENT\n"
    assert recv_line(a) == b"topic %d: hi a\n" % pb
    for s in (a, b):
        _, d = srv.wait_disconnected(srv.close_client(s))
        assert d.group("status") == "exited 0"
    srv.stop()


# ----------------------------------------------------- bad input, JSON

def relay_client(srv):
    c = srv.connect()
    pid = int(srv.wait_connected(c)[1].group(1))
    return c, pid


@pytest.mark.parametrize("bad, why", [
    (b"this is not json\n", "a line that is not a JSON object"),
    (b"[1, 2, 3]\n", "a line that is not a JSON object"),
    (b'{"op": "log", "text": "a", "text": "b"}\n', "a line that is not a JSON object"),
    (b'{"op": "log", "text": "\xff"}\n', "a line that is not a JSON object"),
    (b"{" + b" " * (64 * 1024) + b"}\n", "a line over the channel's limit"),
    (b'{"op": "log", "text": "' + b"a" * (70 * 1024), "a line over the channel's limit"),
], ids=["text", "array", "duplicate-key", "not-utf8", "over-64k", "over-64k-no-newline"])
def test_bad_json_line_ends_that_child_only(sockfork, tmp_path, bad, why):
    srv = sockfork("--control", str(tmp_path / "c.sock"), "--", SH, "-c", RELAY)
    path = control_path(srv)
    good, pgood = relay_client(srv)
    victim, pvictim = relay_client(srv)
    mark = srv.log.mark()
    victim.sendall(bad)
    srv.log.wait_one(KICKED % (pvictim, re.escape(why)), mark)
    expect_eof(victim)
    _, d = srv.wait_disconnected(victim)
    assert d.group("status") == "killed by SIGTERM"

    good.sendall(b'{"op": "send", "to": %d, "data": "still here"}\n' % pgood)
    assert json_line(good) == {"op": "message", "kind": "direct", "from": pgood, "data": "still here"}
    st = ctl_json(path, "stats")
    assert st["channel"]["kicked_bad"] == 1 and st["active"] == 1, st
    srv.stop()


@pytest.mark.parametrize("end", [b"\n", b"\r\n"], ids=["lf", "crlf"])
def test_the_longest_json_line_is_accepted(sockfork, end):
    """A line of exactly 64 KiB, ended by LF or by CRLF (both ends of a
    line, docs/protocol.md), is taken."""
    srv = sockfork("--", SH, "-c", RELAY)
    c, pid = relay_client(srv)
    head = b'{"op": "send", "to": %d, "data": "' % pid
    line = head + b"z" * (64 * 1024 - len(head) - 2) + b'"}'
    assert len(line) == 64 * 1024
    c.sendall(line + end)
    try:
        msg = json_line(c)
    except AssertionError as e:
        raise AssertionError("%s; the server's last lines: %r" % (e, srv.log.snapshot()[-2:]))
    assert msg["kind"] == "direct" and msg["data"] == "z" * (64 * 1024 - len(head) - 2)
    srv.stop()


@pytest.mark.parametrize("req, error, code, about", [
    ({"op": "fly"}, "unknown op", "bad_request", None),
    ({"nop": "send"}, 'a message needs "op": a string', "bad_request", None),
    ({"op": "send", "data": "x"},
     'send needs "to": a pid, or "name": a name (1 to 255 bytes, no spaces)', "bad_request", None),
    ({"op": "send", "to": 1}, 'send, broadcast and publish need "data": a string', "bad_request", None),
    ({"op": "subscribe"}, 'this op needs "topic": 1 to 255 bytes, no spaces', "bad_request", None),
    ({"op": "subscribe", "topic": "a b"}, 'this op needs "topic": 1 to 255 bytes, no spaces',
     "bad_request", None),
    ({"op": "subscribe", "topic": "t", "history": -1}, '"history" must be a count', "bad_request", None),
    ({"op": "claim", "name": ""}, 'claim and release need "name": 1 to 255 bytes, no spaces',
     "bad_request", None),
    ({"op": "log"}, 'log and status need "text": a string', "bad_request", None),
    ({"op": "send", "to": 999999999, "data": "x"}, "send: no child with pid 999999999", "not_found",
     "999999999"),
    ({"op": "send", "name": "nobody", "data": "x"}, "send: nobody holds the name nobody", "not_found",
     "nobody"),
], ids=["unknown-op", "no-op", "send-no-to", "send-no-data", "subscribe-no-topic", "topic-with-space",
        "negative-history", "empty-name", "log-no-text", "send-missing-pid", "send-missing-name"])
def test_bad_json_request_gets_an_error_and_the_channel_stays(sockfork, req, error, code, about):
    srv = sockfork("--", SH, "-c", RELAY)
    c, pid = relay_client(srv)
    c.sendall(json.dumps(req).encode() + b"\n")
    want = {"op": "error", "error": error, "code": code}
    if about is not None:
        want["about"] = about
    assert json_line(c) == want
    c.sendall(b'{"op": "claim", "name": "after"}\n')
    assert json_line(c) == {"op": "claimed", "name": "after", "ok": True}
    srv.stop()


def test_a_log_line_from_a_child_stays_one_line(sockfork):
    """What a child logs is one line of the supervisor's log, whatever it
    contains: a newline in it must not let a child write lines that look
    like the supervisor's own."""
    srv = sockfork("--", SH, "-c", RELAY)
    c, pid = relay_client(srv)
    forged = "sockfork: [127.0.0.1:9] kicked through the control socket: pid=1"
    mark = srv.log.mark()
    c.sendall(json.dumps({"op": "log", "text": "first\n" + forged}).encode() + b"\n")
    c.sendall(json.dumps({"op": "log", "text": "marker"}).encode() + b"\n")
    srv.log.wait_one(r"^sockfork: pid %d says: marker$" % pid, mark)
    lines = srv.log.snapshot(mark)
    assert forged not in lines, "a child wrote a log line of its own: %r" % lines
    assert any(l.startswith("sockfork: pid %d says: first" % pid) for l in lines), lines
    srv.stop()


def test_a_status_cut_at_127_bytes_keeps_the_child_listed(sockfork, tmp_path):
    """A status of 128 bytes of UTF-8 (126 ASCII, then a 2-byte character)
    is cut to 127 bytes, in the middle of the character: `list` must still
    show that child."""
    srv = sockfork("--control", str(tmp_path / "c.sock"), "--", SH, "-c", RELAY)
    path = control_path(srv)
    c, pid = relay_client(srv)
    other, pother = relay_client(srv)
    c.sendall(json.dumps({"op": "status", "text": "a" * 126 + "\u00e9"}).encode() + b"\n")
    c.sendall(json.dumps({"op": "log", "text": "status sent"}).encode() + b"\n")
    srv.log.wait_one(r"^sockfork: pid %d says: status sent$" % pid)
    listing = ctl_json(path, "list")
    assert sorted(ch["pid"] for ch in listing["children"]) == sorted([pid, pother]), listing
    srv.stop()


# ------------------------------------------ chanserver: garbage frames

@pytest.mark.parametrize("kind, why", [
    ("type", "a malformed frame"),
    ("flags", "a malformed frame"),
    ("short", "a malformed frame"),
    ("badname", "a malformed frame"),
    ("fd", "a descriptor it should not have sent"),
    ("big", "a frame over the channel's limit"),
])
def test_garbage_frame_ends_that_child_only(sockfork, tmp_path, kind, why):
    srv = chanserver(sockfork, tmp_path, "bus")
    sibling, bad = BusClient(srv), BusClient(srv)
    mark = srv.log.mark()
    bad.send("GARBAGE %s" % kind)
    srv.log.wait_one(KICKED % (bad.pid, re.escape(why)), mark)
    # It may have been ended before it could answer, or after it saw its
    # channel closed.
    rest = bytes(bad.buf) + recv_until_eof(bad.sock)
    assert CUT_OFF.startswith(rest), rest
    _, d = srv.wait_disconnected(bad.sock)
    assert d.group("status") == "killed by SIGTERM"
    sibling.ok("SEND %d fine" % sibling.pid)
    third = BusClient(srv)
    third.ok("SEND %d me too" % sibling.pid)
    assert [(m.frm, m.data) for m in sibling.sync()] == [(third.pid, b"me too")]
    st = Control(control_path(srv))(cmd="stats")
    assert st["channel"]["kicked_bad"] == 1, st
    srv.stop()


def test_a_descriptor_without_its_flag_is_refused(sockfork, tmp_path):
    """docs/protocol.md: a descriptor the supervisor did not expect gets the
    child disconnected. A LOG frame (no descriptor flag) with a descriptor
    attached is such a one: the supervisor must not keep it."""
    srv = chanserver(sockfork, tmp_path, "bus")
    bad = BusClient(srv)
    fds_before = len(os.listdir("/proc/%d/fd" % srv.pid))
    mark = srv.log.mark()
    # The supervisor reads a child's frames in order: a SYNC after the
    # stray descriptor comes back only if the supervisor went on. The child
    # may be ended before it can even say OK to the GARBAGE command.
    try:
        assert bad.cmd("GARBAGE strayfd")[1] == "OK GARBAGE"
        answer = bad.cmd("SYNC")
    except (AssertionError, ConnectionResetError) as e:  # EOF or reset: the child was ended
        answer = str(e)
    held = len(os.listdir("/proc/%d/fd" % srv.pid)) - fds_before
    assert answer != ([], "OK SYNC"), (
        "the supervisor took the stray descriptor and went on (it holds %d descriptors more); "
        "log: %r" % (held, srv.log.snapshot(mark)))
    srv.log.wait_one(KICKED % (bad.pid, ".+"), mark)
    srv.stop()


def test_garbage_mode_children_are_all_cut_off(sockfork, tmp_path):
    srv = chanserver(sockfork, tmp_path, "--garbage", "big", "garbage")
    for _ in range(3):
        c = srv.connect()
        line = recv_line(c)
        pid = int(line.split()[1])
        srv.log.wait_one(KICKED % (pid, "a frame over the channel's limit"))
        rest = recv_until_eof(c)
        assert CUT_OFF.startswith(rest), rest
        _, d = srv.wait_disconnected(c)
        assert d.group("status") == "killed by SIGTERM"
    srv.stop()


# ------------------------------------------ chanserver: flood, no read

def test_a_flooding_child_costs_its_siblings_nothing(sockfork, tmp_path):
    """One child broadcasts 200,000 messages of 1 KiB as fast as it can;
    meanwhile its siblings are served, the control socket answers, and the
    supervisor's memory stays bounded (queues are, and so is each read)."""
    count = 100000 if SANITIZED else 200000
    srv = chanserver(sockfork, tmp_path, "bus", env=ASAN_SMALL_QUARANTINE)
    ctl_sock = Control(control_path(srv))
    siblings = [BusClient(srv) for _ in range(3)]
    for s in siblings:
        s.ok("MUTE")  # counted, not written to us
    flooder = BusClient(srv)
    rss0 = vm_kib(srv.pid, "VmRSS")
    flooder.send("FLOOD BCAST %d 1024" % count)
    slowest = 0.0
    rounds = 0
    deadline = time.monotonic() + LONG_WAIT * 3
    while b"\n" not in flooder.buf:
        assert time.monotonic() < deadline, "the flood did not end"
        t = time.monotonic()
        st = ctl_sock(cmd="stats")
        assert st["ok"] is True
        for s in siblings:
            assert s.cmd("PID")[1] == "PID %d" % s.pid
        slowest = max(slowest, time.monotonic() - t)
        rounds += 1
        # Has the flooder answered? (a short read, not a pause)
        flooder.sock.settimeout(0.05)
        try:
            chunk = flooder.sock.recv(4096)
            assert chunk, "the flooder's connection closed"
            flooder.buf += chunk
        except TimeoutError:
            pass
    assert flooder.line() == "OK FLOOD sent=%d" % count
    assert slowest < 5.0, ("a round of stats and 3 siblings took %.2f s during the flood (%d rounds)"
                           % (slowest, rounds))
    growth = vm_kib(srv.pid, "VmHWM") - rss0
    print("supervisor peak RSS growth: %d KiB" % growth)
    assert growth < RSS_GROWTH_KIB, "supervisor peak RSS grew by %d KiB" % growth
    st = ctl_sock(cmd="stats")["channel"]
    assert st["frames_in"] >= count
    # Once a sibling's queue is empty, a SYNC fits in it, and comes back
    # after every broadcast it was given.
    for s in siblings:
        for _ in range(1000):
            if child(ctl_sock(cmd="list"), s.pid)["queued"] == 0:
                break
            s.cmd("PID")  # a round trip: the sibling reads meanwhile
        else:
            raise AssertionError("the queue of pid %d does not drain" % s.pid)
        s.sync()
    got = 0
    for s in siblings:
        _, line = s.cmd("COUNT")
        n = int(re.search(r"broadcast=(\d+)", line).group(1))
        assert n > 0
        got += n
    # What a sibling did not get was dropped at its full queue and counted.
    assert got + st["dropped"] == 3 * count, (got, st)
    ctl_sock.close()
    srv.stop()


def test_flood_mode_publishes_then_exits(sockfork, tmp_path):
    """flood mode: each child publishes to a topic nobody reads (kept in its
    history) and exits 0; the supervisor's memory stays bounded."""
    count = 100000 if SANITIZED else 200000
    srv = chanserver(sockfork, tmp_path, "--what", "PUB", "--target", "void", "--count", str(count),
                     "flood", env=ASAN_SMALL_QUARANTINE)
    rss0 = vm_kib(srv.pid, "VmRSS")
    c = srv.connect(timeout=LONG_WAIT)
    assert recv_line(c).startswith(b"HELLO ")
    assert recv_line(c, timeout=LONG_WAIT * 3) == b"DONE sent=%d rc=0\n" % count
    _, d = srv.wait_disconnected(c, timeout=LONG_WAIT)
    assert d.group("status") == "exited 0"
    growth = vm_kib(srv.pid, "VmHWM") - rss0
    print("supervisor peak RSS growth: %d KiB" % growth)
    assert growth < RSS_GROWTH_KIB, "supervisor peak RSS grew by %d KiB" % growth
    st = Control(control_path(srv))(cmd="stats")
    assert st["channel"]["frames_in"] == count and st["exited"] == {"0": 1}, st
    srv.stop()


def test_a_child_that_never_reads_hits_the_queue_limit(sockfork, tmp_path):
    limit = 80 * 1024
    srv = chanserver(sockfork, tmp_path, "--queue", str(limit), "noread", env=ASAN_SMALL_QUARANTINE)
    path = control_path(srv)
    ctl_sock = Control(path)
    deaf = BusClient(srv)
    rss0 = vm_kib(srv.pid, "VmRSS")
    text = "n" * (16 * 1024)
    for sent in range(2000):
        reply = ctl_sock(cmd="send", pid=deaf.pid, text=text)
        if not reply["ok"]:
            break
    else:
        raise AssertionError("ctl send never reported a full queue")
    assert reply["error"] == ("pid %d does not read its channel: its queue is full, message dropped"
                              % deaf.pid)
    assert sent > 0
    rc, out, err = ctl(path, "send", deaf.pid, text)
    assert rc == 1 and out == "" and "queue is full" in err, (rc, out, err)
    assert ctl_json(path, "broadcast", text) == {"ok": True, "delivered": 0, "dropped": 1}
    # 64 MiB more, pushed at it: nothing of it is kept.
    big = "N" * (64 * 1024 - 100)
    for _ in range(300):
        assert ctl_sock(cmd="send", pid=deaf.pid, text=big)["ok"] is False
    for _ in range(700):
        assert ctl_sock(cmd="broadcast", text=big) == {"ok": True, "delivered": 0, "dropped": 1}
    ch = child(ctl_json(path, "list"), deaf.pid)
    assert 0 < ch["queued"] <= limit and ch["dropped"] == 1003, ch
    growth = vm_kib(srv.pid, "VmHWM") - rss0
    print("supervisor peak RSS growth: %d KiB" % growth)
    assert growth < RSS_GROWTH_KIB, "supervisor peak RSS grew by %d KiB" % growth
    # The child itself is fine and still answers its client.
    assert deaf.cmd("PID")[1] == "PID %d" % deaf.pid
    st = ctl_sock(cmd="stats")["channel"]
    assert st["dropped"] == 1003 and st["kicked_full"] == 0, st
    ctl_sock.close()
    srv.stop()


def test_a_child_that_never_reads_is_kicked_under_the_kick_policy(sockfork, tmp_path):
    limit = 72 * 1024
    srv = chanserver(sockfork, tmp_path, "--queue", str(limit), "--kick", "noread")
    path = control_path(srv)
    ctl_sock = Control(path)
    deaf = BusClient(srv)
    mark = srv.log.mark()
    for _ in range(2000):
        if not ctl_sock(cmd="send", pid=deaf.pid, text="k" * 16384)["ok"]:
            break
    else:
        raise AssertionError("ctl send never reported a full queue")
    srv.log.wait_one(KICKED % (deaf.pid, re.escape("its channel queue is full (it does not read it)")),
                     mark)
    expect_eof(deaf.sock)
    _, d = srv.wait_disconnected(deaf.sock)
    assert d.group("status") == "killed by SIGTERM"
    st = ctl_sock(cmd="stats")["channel"]
    assert st["kicked_full"] == 1 and st["dropped"] == 1, st
    ctl_sock.close()
    srv.stop()


# ------------------------------------------- a child that does not read its channel

NOT_READ = "queued for %d, behind earlier text it has not read yet"


@pytest.mark.parametrize("handler", [["--echo"], ["--", SH, "-c", "exec cat"]], ids=["echo", "ignores-fd-3"])
def test_ctl_send_says_when_the_child_does_not_read(sockfork, tmp_path, handler):
    srv = sockfork("--control", str(tmp_path / "c.sock"), *handler)
    path = control_path(srv)
    c = srv.connect()
    pid = int(srv.wait_connected(c)[1].group(1))
    rc, out, err = ctl(path, "send", pid, "first")
    assert (rc, out.strip()) == (0, "queued for %d" % pid), err
    for text in ("second", "third"):
        rc, out, err = ctl(path, "send", pid, text)
        assert (rc, out.strip()) == (0, NOT_READ % pid), err
    assert ctl_json(path, "send", pid, "fourth")["unread_before"] is True
    c.sendall(b"ping\n")
    assert recv_line(c) == b"ping\n"  # the client got only its own bytes back


def test_ctl_send_to_a_child_that_reads_says_queued_only(sockfork, tmp_path):
    srv = sockfork("--control", str(tmp_path / "c.sock"))
    path = control_path(srv)
    c = srv.connect()
    pid = greeting_pid(c)
    srv.wait_connected(c)
    for n in range(3):
        rc, out, err = ctl(path, "send", pid, "n%d" % n)
        assert (rc, out.strip()) == (0, "queued for %d" % pid), err
        # Once the client has it, the child has read it from its channel.
        assert recv_line(c) == b"n%d\r\n" % n


def test_ctl_send_to_a_busy_child_that_reads_states_only_the_fact(sockfork, tmp_path):
    """Review of issue 11: the hint is a fact of the moment, not a verdict
    on the program. A child that reads its channel but has not got to it yet
    (here: stopped, as a busy one is for a moment) is not said to be a
    program that may not read it; once it runs, the client gets both."""
    srv = sockfork("--control", str(tmp_path / "c.sock"))
    path = control_path(srv)
    c = srv.connect()
    pid = greeting_pid(c)
    srv.wait_connected(c)
    os.kill(pid, signal.SIGSTOP)
    try:
        rc, out, err = ctl(path, "send", pid, "one")
        assert (rc, out.strip()) == (0, "queued for %d" % pid), err
        rc, out, err = ctl(path, "send", pid, "two")
        assert (rc, out.strip()) == (0, NOT_READ % pid), err
        assert "may not read" not in out
    finally:
        os.kill(pid, signal.SIGCONT)
    assert recv_line(c) == b"one\r\n"
    assert recv_line(c) == b"two\r\n"


# ------------------------------------ fork mode: a channel made at its first use

def socket_fds(client):
    """The descriptors of a chanserver child that are sockets."""
    client.send("FDS")
    line = client.line()
    assert line.startswith("FDS "), line
    fds = dict(item.split("=", 1) for item in line.split()[1:])
    return sorted(int(k) for k, v in fds.items() if v.startswith("socket:"))


def test_a_channel_is_made_at_its_first_use_and_gets_what_waited(sockfork, tmp_path):
    """Issue 13: a forked child gets its connection and the server's broker,
    no channel, until it first uses one. What `ctl send` sends it before
    then waits in its queue, and arrives, in order, once it has made it."""
    srv = chanserver(sockfork, tmp_path, "noread")
    ctl_sock = Control(control_path(srv))
    a = BusClient(srv)
    assert socket_fds(a) == [3, 4]  # the connection and the broker
    for text in ("early", "later"):
        reply = ctl_sock(cmd="send", pid=a.pid, text=text)
        assert reply["ok"] is True, reply
    assert child(ctl_sock(cmd="list"), a.pid)["queued"] > 0
    msgs, last = a.cmd("HEAR")
    assert last == "OK HEAR", (msgs, last)
    msgs += a.sync()
    assert [m.data for m in msgs if m.frm == 0] == [b"early", b"later"], msgs
    fds = socket_fds(a)
    assert len(fds) == 3 and fds[:2] == [3, 4], fds  # and now its channel
    assert child(ctl_sock(cmd="list"), a.pid)["queued"] == 0
    # It speaks too: a message to itself comes back through the bus.
    msgs = a.ok("SEND %d hello" % a.pid)
    assert [m.data for m in msgs if m.frm == a.pid] == [b"hello"], msgs
    a.send("QUIT")
    assert a.line() == "BYE"
    ctl_sock.close()
    srv.stop()


def test_many_children_making_their_channels_at_once_each_get_their_own(sockfork, tmp_path):
    """Offers may come before the spawner's word that the child started:
    each is matched to its child by the pid the kernel gives, none lost."""
    srv = chanserver(sockfork, tmp_path, "bus")
    clients = [BusClient(srv) for _ in range(40)]
    for c in clients:
        msgs = c.ok("SEND %d mine-%d" % (c.pid, c.pid))
        assert [m.data for m in msgs if m.frm == c.pid] == [b"mine-%d" % c.pid], msgs
    for c in clients:
        c.close()
    srv.stop()


def test_a_process_the_handler_forks_cannot_make_the_childs_channel(sockfork, tmp_path):
    """The broker takes a channel only from a child of the server (the pid
    the kernel gives): one made first in a process the handler forked is
    refused, and the child's own, made afterwards, works."""
    srv = chanserver(sockfork, tmp_path, "noread")
    a, b = BusClient(srv), BusClient(srv)
    msgs, last = a.cmd("GRANDSEND %d ghost" % b.pid)
    assert last.startswith("OK GRANDSEND"), (msgs, last)
    b.ok("HEAR")
    a.ok("HEAR")
    a.ok("SEND %d real" % b.pid)
    got = [m.data for m in b.sync() if m.frm != b.pid]
    assert got == [b"real"], got
    assert srv.proc.poll() is None
    srv.stop()
