"""Output offload (docs/design.md, "Output offload"): once its nickname is
set, a chat member hands its client's socket to the supervisor, which is
from then on that client's only writer. These tests check what that must
keep: one order for the member's own lines and the room's, a room switch
in one step, slow clients reported and cut, the client's end when its
member ends (fork and prefork), the supervisor's descriptors, and the
bounded buffer at its limit. Real processes, real sockets, bounded waits.
"""
import os
import re
import signal
import time

import pytest

from conftest import LONG_WAIT, WAIT, Control, wait_for
from test_chat import NO_FLOOD, Chat, chat_server, lobby, sync

KICKED = "*** You were disconnected: messages for you piled up faster than you read them."


def stats(srv):
    c = Control(srv.ctl_path)
    try:
        return c(cmd="stats")
    finally:
        c.close()


def fds_of(pid):
    return {int(f): os.readlink("/proc/%d/fd/%s" % (pid, f)) for f in os.listdir("/proc/%d/fd" % pid)
            if os.path.exists("/proc/%d/fd/%s" % (pid, f))}


def sockets_of(pid):
    return sorted(t for t in fds_of(pid).values() if t.startswith("socket:"))


def test_members_hand_their_output_over(sockfork, tmp_path):
    """ctl stats counts the outputs the supervisor holds: one per member with
    a nickname (not before), gone once the member is."""
    srv = chat_server(sockfork, tmp_path, "--history", "0", *NO_FLOOD)
    anon = Chat(srv)
    anon.welcome()
    assert "output" not in stats(srv)  # nobody handed anything over yet
    alice, bob = lobby(srv, "alice", "bob")
    out = stats(srv)["output"]
    assert out["clients"] == 2 and out["opened"] == 2 and out["failed"] == 0, out
    bob.send("/quit")
    assert bob.lines_to_eof() == ["*** Bye."]
    alice.expect("*** bob has quit")
    wait_for(lambda: stats(srv)["output"]["clients"] == 1, "bob's output closed")
    out = stats(srv)["output"]
    assert out["lingering"] == 0 and out["written"] > 0, out


def test_own_lines_and_room_lines_never_split_each_other(sockfork, tmp_path):
    """Long room lines stream to bob while he asks for /help and /who: every
    line arrives whole (CRLF, no CR inside: Chat.take checks), the room's in
    order, each answer once, after what he had seen when he asked."""
    srv = chat_server(sockfork, tmp_path, "--history", "0", *NO_FLOOD)
    alice, bob = lobby(srv, "alice", "bob")
    pad = "x" * 3000
    n = 300
    alice.send("".join("a%04d %s\n" % (i, pad) for i in range(n)).encode())
    got, asked, answers = [], 0, []
    while len(got) < n:
        text = bob.line(LONG_WAIT)
        m = re.match(r"^<alice> a(\d{4}) x{3000}$", text)
        if m:
            got.append(int(m.group(1)))
            if len(got) in (10, 100, 200):
                bob.send("/help\n/who")
                asked += 2
            continue
        answers.append((len(got), text))
    assert got == list(range(n)), got[:20]
    rest = sync(srv, bob)[0]
    answers += [(n, t) for t in rest]
    assert len(answers) == asked, answers
    for seen, text in answers:
        assert text.startswith("*** /nick NAME") or text.startswith("*** in lobby (2): "), text
        assert seen >= 10, answers


def test_a_room_switch_under_a_burst_is_one_step(sockfork, tmp_path):
    """bob leaves the lobby for den while alice pours lines into the lobby:
    he gets a prefix of them, in order, then "you are now in den", and not
    one lobby line after it (carol, who stays, gets them all)."""
    srv = chat_server(sockfork, tmp_path, "--history", "0", *NO_FLOOD)
    alice, bob, carol = lobby(srv, "alice", "bob", "carol")
    n = 4000
    alice.send("".join("b%05d\n" % i for i in range(1000)).encode())
    bob.until("<alice> b00100")
    bob.send("/join den")
    alice.send("".join("b%05d\n" % i for i in range(1000, n)).encode())
    before = bob.until("*** you are now in den", LONG_WAIT)[:-1]
    nums = [int(t[9:]) for t in before if t.startswith("<alice> b")]
    assert nums == list(range(101, 101 + len(nums))), nums[:10]
    got = carol.until("<alice> b%05d" % (n - 1), LONG_WAIT)
    if "*** bob has left lobby" not in got:
        carol.expect("*** bob has left lobby")
    assert [t for t in got if t.startswith("<alice>")] == ["<alice> b%05d" % i for i in range(n)]
    after = sync(srv, bob)[0]
    assert after == [], after[:5]  # nothing of the lobby after the reply
    assert alice.until("*** bob has left lobby") == ["*** bob has left lobby"]


def test_a_client_that_does_not_read_is_reported_and_cut(sockfork, tmp_path):
    """The supervisor reports a client that takes nothing (its buffer past
    half for 2 s); chat cuts it off with its text, the reason last, and the
    report is counted."""
    srv = chat_server(sockfork, tmp_path, "--history", "0", "--client-backlog", "64K", *NO_FLOOD)
    slow = Chat(srv, "slow", rcvbuf=4096)
    alice = Chat(srv, "alice")
    slow.expect("*** alice has joined lobby")
    pad = "p" * 2000
    cut = r"^sockfork: pid %d says: slow client: (\d+) bytes waiting for it; disconnected$" % slow.pid
    deadline = time.monotonic() + LONG_WAIT
    i = 0
    while not srv.log.find(cut):
        assert time.monotonic() < deadline, "slow never cut off"
        alice.send("".join("s%06d %s\n" % (i + k, pad) for k in range(8)).encode())
        i += 8
        time.sleep(0.05)
    alice.until("*** slow was disconnected (not reading)", LONG_WAIT)
    _, m = srv.log.wait_one(cut)
    assert int(m.group(1)) <= 65536
    data = bytearray(slow.buf)
    slow.sock.settimeout(WAIT)
    while True:
        chunk = slow.sock.recv(1 << 20)
        if not chunk:
            break
        data += chunk
    lines = bytes(data).split(b"\r\n")
    assert lines.pop() == b""
    assert lines[-1].decode() == ("*** You were disconnected: you are not reading "
                                  "(%s bytes were waiting for you)." % m.group(1)), lines[-2:]
    assert stats(srv)["output"]["reports"] >= 1


def test_the_client_sees_the_end_when_its_member_exits(sockfork, tmp_path):
    """The supervisor's copy of a client's socket closes when its member
    ends (here it is killed): the client sees EOF, and the supervisor holds
    no more descriptors than before the client came."""
    srv = chat_server(sockfork, tmp_path, "--history", "0", *NO_FLOOD)
    (alice,) = lobby(srv, "alice")
    base = len(fds_of(srv.pid))
    bob = Chat(srv, "bob")
    alice.expect("*** bob has joined lobby")
    assert len(fds_of(srv.pid)) == base + 2  # its channel and its client
    os.kill(bob.pid, signal.SIGKILL)
    alice.expect("*** bob has left lobby (connection lost)")
    assert bob.lines_to_eof() == []
    wait_for(lambda: len(fds_of(srv.pid)) == base, "the supervisor's copies closed")


def test_a_prefork_member_ending_its_connection(sockfork, tmp_path):
    """In prefork mode the worker stays: the supervisor closes its copy of
    the client at the connection's end (the client sees EOF after its
    goodbye), and the worker's next client has an output of its own."""
    srv = chat_server(sockfork, tmp_path, "--history", "0", "--workers", "2:2", *NO_FLOOD)
    (alice,) = lobby(srv, "alice")
    bob = Chat(srv, "bob")
    alice.expect("*** bob has joined lobby")
    worker = bob.pid
    bob.send("/quit")
    assert bob.lines_to_eof() == ["*** Bye."]
    alice.expect("*** bob has quit")
    carol = Chat(srv, "carol")
    alice.expect("*** carol has joined lobby")
    alice.send("hello carol")
    carol.expect("<alice> hello carol")
    carol.send("/quit")
    assert carol.lines_to_eof() == ["*** Bye."]
    alice.expect("*** carol has quit")
    wait_for(lambda: stats(srv)["output"]["clients"] == 1, "the ended connections' outputs closed")
    assert stats(srv)["output"]["opened"] == 3
    del worker


def test_clients_sockets_do_not_leak_into_children(sockfork, tmp_path):
    """The supervisor holds every member's client socket; a child forked
    later holds its own connection and its channel, and none of those."""
    srv = chat_server(sockfork, tmp_path, "--history", "0", *NO_FLOOD)
    first = Chat(srv, "first")
    one = sockets_of(first.pid)
    others = lobby(srv, *["m%d" % i for i in range(5)])
    last = Chat(srv)
    last.welcome()
    assert len(sockets_of(last.pid)) == len(one), (sockets_of(last.pid), one)
    mine = set(sockets_of(last.pid))
    for c in [first] + others:  # each member's connection is its fd 3 (fork mode)
        assert fds_of(c.pid)[3] not in mine, (c, fds_of(c.pid), mine)


@pytest.mark.parametrize("policy", ["kick", "drop"])
def test_the_client_buffer_at_its_limit(sockfork, tmp_path, policy):
    """A member whose process is stopped cannot act on the report: its
    client, reading nothing, holds the room's senders for BUS_STALL_S (4 s)
    at most; then its buffer fills to --client-backlog and the full-queue
    policy applies as for a channel queue: dropped and counted, or the
    member cut off, its client told so last."""
    srv = chat_server(sockfork, tmp_path, "--history", "0", "--client-backlog", "64K",
                      "--channel-full", policy, *NO_FLOOD)
    stuck = Chat(srv, "stuck", rcvbuf=4096)
    alice, carol = Chat(srv, "alice"), None
    stuck.expect("*** alice has joined lobby")
    carol = Chat(srv, "carol")
    alice.expect("*** carol has joined lobby")
    stuck_pid = stuck.pid
    os.kill(stuck_pid, signal.SIGSTOP)
    try:
        pad = "q" * 2000
        deadline = time.monotonic() + LONG_WAIT
        i = left = 0
        full = re.compile(r"^sockfork: pid %d: its client's output buffer is full" % stuck_pid)
        while True:
            alice.send("".join("f%06d %s\n" % (i + k, pad) for k in range(32)).encode())
            for k in range(32):  # carol, who reads, is never held for more than 4 s
                got = carol.line(LONG_WAIT)
                if got == "*** stuck has left lobby (connection lost)" and policy == "kick":
                    left += 1
                    got = carol.line(LONG_WAIT)
                assert got == "<alice> f%06d %s" % (i + k, pad), got[:40]
            i += 32
            out = stats(srv)["output"]
            assert out["bytes"] <= 65536 + 4096, out
            if (policy == "drop" and out["dropped"] > 0) or (policy == "kick" and srv.log.find(full)):
                break
            assert time.monotonic() < deadline, "the buffer never reached its limit: %r" % out
    finally:
        try:  # a kick sends SIGTERM and SIGCONT itself (process/stop.c)
            os.kill(stuck_pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    if policy == "kick":
        lines = stuck.lines_to_eof(LONG_WAIT)
        assert lines[-1] == KICKED, lines[-2:]
        if not left:
            carol.expect("*** stuck has left lobby (connection lost)", timeout=LONG_WAIT)
        assert left <= 1
    else:
        st = stats(srv)
        assert st["channel"]["dropped"] > 0 and st["output"]["dropped"] > 0, st
        # Running again, it gets the report and cuts its client off.
        carol.until("*** stuck was disconnected (not reading)", LONG_WAIT)


def test_a_passed_socket_is_never_kept_by_mistake(sockfork, tmp_path):
    """Every OUT_OPEN the supervisor refuses closes the descriptor that came
    with it: not a socket (an error, EINVAL), a second one (EALREADY), a
    malformed one (the child is cut off); the one it takes is its only
    extra descriptor, closed when the child is gone."""
    from conftest import BusClient
    from test_channel import KICKED, chanserver
    srv = chanserver(sockfork, tmp_path, "bus")
    child = BusClient(srv)

    def held():
        return len(fds_of(srv.pid))

    child.sync()
    before, had = held(), fds_of(srv.pid)
    msgs = child.ok("GARBAGE outpipe") + child.sync()
    assert [(m.kind, m.ok, m.topic) for m in msgs] == [("error", 22, "out: not a socket")], msgs
    assert held() == before, (had, fds_of(srv.pid))
    assert child.ok("GARBAGE outopen") + child.sync() == []
    assert held() == before + 1, "the client's socket, in the supervisor"
    msgs = child.ok("GARBAGE outopen") + child.sync()
    assert [(m.kind, m.ok) for m in msgs] == [("error", 114)], msgs
    assert held() == before + 1, "the second copy was closed"
    mark = srv.log.mark()
    child.send("GARBAGE outshort")
    srv.log.wait_one(KICKED % (child.pid, "a malformed output request"), mark)
    srv.wait_disconnected(child.sock)
    wait_for(lambda: held() == before - 1, "the channel and the socket's copy closed")
