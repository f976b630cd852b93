"""Limits: connections at once (-c), per client address (--max-per-ip) and
idle clients (--idle-timeout)."""
import re
import select
import socket
import time

from conftest import (BIN, LONG_WAIT, expect_eof, peer_text, recv_exact, recv_line, run_cli,
                      unused_port)


def echo_ok(sock, text=b"ping\n"):
    sock.sendall(text)
    assert recv_exact(sock, len(text)) == text


def test_concurrency_limit_reached_and_recovered(sockfork):
    srv = sockfork("-c", "3", "--echo")
    first = [srv.connect() for _ in range(3)]
    for c in first:
        srv.wait_connected(c)
        echo_ok(c)
    srv.log.wait_one(r"^sockfork: connection limit reached \(3 active\): not accepting until a child exits$")

    # The fourth connects (the kernel's backlog holds it) and speaks, but
    # nobody serves it until a child exits.
    fourth = srv.connect()
    fourth.sendall(b"waiting\n")
    mark = srv.log.mark()
    i_disc, _ = srv.wait_disconnected(srv.close_client(first[0]))
    i_again, _ = srv.log.wait_one(r"^sockfork: below the connection limit: accepting again$", start=mark)
    i_conn, m = srv.wait_connected(fourth)
    assert i_disc < i_conn and i_again < i_conn, "the 4th was accepted before a child exited"
    assert int(m.group(2)) == 3
    assert not srv.log.find(r"\[%s\] connected" % re.escape(peer_text(fourth)), 0, i_disc)
    assert recv_exact(fourth, 8) == b"waiting\n"
    echo_ok(fourth)
    for c in first[1:]:
        echo_ok(c)
    # At the limit again: reached once more, and left once more.
    srv.log.wait(r"connection limit reached \(3 active\)", count=2)
    srv.close_client(fourth)
    srv.log.wait(r"below the connection limit: accepting again", count=2)


def test_limit_holds_many_waiting_clients_and_serves_all(sockfork):
    srv = sockfork("-c", "2", "--echo")
    clients = [srv.connect() for _ in range(8)]
    for i, c in enumerate(clients):
        c.sendall(b"client %d\n" % i)
    # Serve them in order of acceptance: each one closed frees a place.
    done = 0
    while done < len(clients):
        ready = [c for c in clients if c.fileno() != -1]
        r, _, _ = select.select(ready, [], [], 10)
        assert r, "no client answered within 10 s (%d of %d done)" % (done, len(clients))
        for c in r:
            i = clients.index(c)
            want = b"client %d\n" % i
            assert recv_exact(c, len(want)) == want
            c.close()
            done += 1
    srv.clients = []
    lines = srv.log.wait(r"connected pid=\d+ active=(\d+)$", count=8)
    assert max(int(m.group(1)) for _, m in lines) == 2
    srv.log.wait(r"disconnected pid=", count=8)


def test_per_ip_limit(sockfork):
    srv = sockfork("--max-per-ip", "2", "--echo")
    a = srv.connect()
    b = srv.connect()
    srv.wait_connected(a)
    srv.wait_connected(b)
    echo_ok(a)
    echo_ok(b)

    third = srv.connect()
    third_peer = peer_text(third)
    _, refused = srv.log.wait_one(r"^sockfork: \[%s\] refused: " % re.escape(third_peer))
    try:
        third.sendall(b"anyone?\n")
    except (BrokenPipeError, ConnectionResetError):
        pass
    expect_eof(third)

    # Another source address has its own count.
    other = srv.connect(source="127.0.0.2")
    assert peer_text(other).startswith("127.0.0.2:")
    srv.wait_connected(other)
    echo_ok(other)

    # A place freed for 127.0.0.1 is usable again.
    i_disc, _ = srv.wait_disconnected(srv.close_client(a))
    again = srv.connect()
    i_conn, _ = srv.wait_connected(again)
    assert i_conn > i_disc
    echo_ok(again)
    echo_ok(b)
    assert len(srv.log.find(r"refused:")) == 1
    assert refused.string == ("sockfork: [%s] refused: 2 connections from 127.0.0.1 already "
                              "(per-IP limit 2)" % third_peer), refused.string


def test_idle_timeout_closes_silent_clients_only(sockfork):
    srv = sockfork("--idle-timeout", "1", "--echo")
    talker = srv.connect()
    echo_ok(talker, b"hello\n")

    def talk_until_cut(silent):
        """Pings the talker about every 0.25 s until the silent client is
        cut; the silent client's EOF is the clock."""
        pings = 0
        for _ in range(200):  # 200 * 0.25 s: far beyond the 10 s bound
            r, _, _ = select.select([silent], [], [], 0.25)
            if r:
                expect_eof(silent)
                return pings
            echo_ok(talker, b"ping %d\n" % pings)
            pings += 1
        raise AssertionError("silent client not cut within 50 s")

    t0 = time.monotonic()
    silent1 = srv.connect()
    _, m1 = srv.wait_connected(silent1)
    pings = talk_until_cut(silent1)
    elapsed = time.monotonic() - t0
    assert elapsed >= 0.9, "silent client cut after %.2f s, before the 1 s timeout" % elapsed
    assert pings >= 1
    i_idle, m = srv.log.wait_one(r"^sockfork: \[%s\] idle for 1 s: closing pid=(\d+)$"
                                 % re.escape(peer_text(silent1)))
    assert m.group(1) == m1.group(1)
    i_disc, d = srv.wait_disconnected(silent1)
    assert i_disc > i_idle

    # A second silent client, started after the first was cut: by the time
    # it is cut too, the talker has lived through two full timeouts.
    silent2 = srv.connect()
    talk_until_cut(silent2)
    srv.log.wait_one(r"\[%s\] idle for 1 s: closing" % re.escape(peer_text(silent2)))
    srv.wait_disconnected(silent2)
    echo_ok(talker, b"still talking\n")
    assert not srv.log.find(r"\[%s\] (idle|disconnected)" % re.escape(peer_text(talker))), \
        srv.log.text()


def test_idle_timeout_counts_client_data_not_server_output(sockfork, tmp_path):
    """A program that keeps writing to a silent client is still cut."""
    srv = sockfork("--idle-timeout", "1", "--", "/bin/sh", "-c",
                   "while :; do echo tick || exit 0; sleep 0.2; done")
    c = srv.connect()
    data = b""
    for _ in range(1000):
        chunk = c.recv(4096)
        if not chunk:
            break
        data += chunk
    else:
        raise AssertionError("never cut")
    assert data.startswith(b"tick\n")
    srv.log.wait_one(r"\[%s\] idle for 1 s: closing" % re.escape(peer_text(c)))
    srv.wait_disconnected(c)


def test_idle_timeout_does_not_apply_to_unix_clients(sockfork, tmp_path):
    path = str(tmp_path / "idle.sock")
    srv = sockfork("--idle-timeout", "1", "--echo", listen=("unix:" + path, "127.0.0.1:0"))
    u = srv.connect("unix")
    echo_ok(u)
    silent = srv.connect("tcp")
    expect_eof(silent)  # the TCP one is cut after 1 s...
    srv.wait_disconnected(silent)
    echo_ok(u)  # ...the silent Unix one is not
    assert not srv.log.find(r"\[unix:[^\]]*\] (idle|disconnected)")


def test_at_the_descriptor_limit_every_connection_is_served(sockfork, tmp_path):
    """More clients than descriptors: accept() may take the last one, leaving
    none for the child's channel. Such a connection is kept and started when
    descriptors come back, never closed unserved."""
    wrapper = tmp_path / "lowfd.sh"
    wrapper.write_text('#!/bin/sh\nulimit -n 64 || exit 99\nexec "%s" "$@"\n' % BIN)
    wrapper.chmod(0o755)
    srv = sockfork("--echo", "--control", str(tmp_path / "ctl.sock"), bin=str(wrapper))
    n = 150
    clients = {}
    for _ in range(n):
        c = srv.connect()
        clients[peer_text(c)] = c
    # Serve them as they come, closing each once served: that frees the
    # descriptors the next ones need.
    pos = 0
    while clients:
        i, m = srv.log.wait_one(r"^sockfork: \[(.+?)\] connected pid=\d+", start=pos,
                                timeout=LONG_WAIT)
        pos = i + 1
        c = clients.pop(m.group(1))
        msg = b"served %s\n" % m.group(1).encode()
        c.sendall(msg)
        assert recv_exact(c, len(msg)) == msg
        srv.close_client(c)
    assert not srv.log.find(r"dropped"), srv.log.text()
    assert srv.log.find(r"Too many open files"), "the limit was never reached"
    srv.wait_disconnected(peer_text(m.group(1)))




def port_sharing_clients(srv):
    """Two TCP client sockets that may bind one local port (SO_REUSEADDR),
    closed with the server."""
    pair = []
    for _ in range(2):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        srv.clients.append(s)
        s.settimeout(LONG_WAIT)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        pair.append(s)
    return pair


def test_idle_timeout_tells_apart_two_connections_from_one_client_port(sockfork, tmp_path):
    """One client port, two local addresses (two listeners on one port): two
    connections, two entries. When one closes, the other is still watched
    (cut when idle, its byte counts in `ctl list`)."""
    from test_ctl import ctl_json
    port = unused_port()
    ctl = str(tmp_path / "ctl.sock")
    srv = sockfork("--echo", "--idle-timeout", "2", "--control", ctl,
                   listen=("127.0.0.1:%d" % port, "127.0.0.2:%d" % port))
    a, b = port_sharing_clients(srv)
    a.bind(("127.0.0.1", 0))
    b.bind(("127.0.0.1", a.getsockname()[1]))
    a.connect(("127.0.0.1", port))
    b.connect(("127.0.0.2", port))
    srv.log.wait(r"\] connected pid=\d+", count=2)
    echo_ok(a, b"a\n")             # 2 bytes in
    echo_ok(b, b"bbbbbbbb\n")      # 9 bytes in
    kids = ctl_json(ctl, "list")["children"]
    assert sorted(k["bytes_in"] or 0 for k in kids) == [2, 9], kids
    pid_a = [k["pid"] for k in kids if k["bytes_in"] == 2][0]
    pid_b = [k["pid"] for k in kids if k["bytes_in"] == 9][0]

    mark = srv.log.mark()
    srv.close_client(a)
    srv.log.wait_one(r"disconnected pid=%d " % pid_a, start=mark)
    echo_ok(b, b"b\n")
    kids = ctl_json(ctl, "list")["children"]
    assert [(k["pid"], k["bytes_in"]) for k in kids] == [(pid_b, 11)], kids
    srv.log.wait_one(r"idle for 2 s: closing pid=%d$" % pid_b, start=mark, timeout=LONG_WAIT)
    expect_eof(b, timeout=LONG_WAIT)


def tcp_sockets(local, remote):
    """States (hex, as /proc/net/tcp has them) of the IPv4 sockets local -> remote."""
    def hexaddr(addr):
        return "%08X:%04X" % (int.from_bytes(socket.inet_aton(addr[0]), "little"), addr[1])
    out = []
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[1] == hexaddr(local) and fields[2] == hexaddr(remote):
                out.append(fields[3])
    return out


def test_idle_timeout_survives_a_reset_and_reconnect_from_the_same_port(sockfork, tmp_path):
    """A client resets its connection (SO_LINGER 0) and connects again from
    the same port while the first child still runs: one tuple, two live
    records. The newer holds the table's entry, and the older child's exit
    does not delete it: the new connection is still cut when idle. Before,
    it was never cut again."""
    import struct
    d = str(tmp_path)
    # The first connection's child waits for "go" and exits; later ones cat.
    prog = ('if mkdir "%s/first" 2>/dev/null; then '
            'while [ ! -e "%s/go" ]; do sleep 0.05; done; exit 0; else exec cat; fi' % (d, d))
    srv = sockfork("--idle-timeout", "2", "--", "/bin/sh", "-c", prog)
    port = srv.port
    a, b = port_sharing_clients(srv)
    a.bind(("127.0.0.1", 0))
    a.connect(("127.0.0.1", port))
    peer = peer_text(a)
    _, m = srv.wait_connected(a)
    pid_a = int(m.group(1))
    deadline = time.monotonic() + LONG_WAIT
    while not (tmp_path / "first").exists():  # the first child is the one that waits
        assert time.monotonic() < deadline, srv.log.text()
        time.sleep(0.02)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    a.close()  # a reset: no TIME_WAIT, the port can connect again at once
    # Once the server's side has taken the reset (its socket leaves the
    # kernel's table), a new connection from that port is a new one.
    deadline = time.monotonic() + LONG_WAIT
    while tcp_sockets(("127.0.0.1", port), ("127.0.0.1", int(peer.rsplit(":", 1)[1]))):
        assert time.monotonic() < deadline, "the reset never reached the server's socket"
        time.sleep(0.02)  # a bounded poll of /proc/net/tcp
    mark = srv.log.mark()
    b.bind(("127.0.0.1", int(peer.rsplit(":", 1)[1])))
    b.connect(("127.0.0.1", port))
    assert peer_text(b) == peer
    _, m = srv.wait_connected(b, start=mark)
    pid_b = int(m.group(1))
    assert pid_b != pid_a
    echo_ok(b, b"b\n")
    mark = srv.log.mark()
    (tmp_path / "go").write_text("")
    srv.log.wait_one(r"disconnected pid=%d " % pid_a, start=mark)
    srv.log.wait_one(r"idle for 2 s: closing pid=%d$" % pid_b, start=mark, timeout=LONG_WAIT)
    expect_eof(b, timeout=LONG_WAIT)


def test_a_failed_connection_dump_is_not_read_by_the_next(sockfork, tmp_path):
    """A kernel dump that fails half way (the first netlink read made to fail
    by failinject.so) leaves its reply queued on the socket: a new socket is
    used for the next, whose counts are today's. Before, the next `ctl list`
    read the stale reply (or an EBUSY) of the failed one."""
    from conftest import helper
    from test_ctl import ctl_json
    ctl = str(tmp_path / "ctl.sock")
    srv = sockfork("--echo", "--control", ctl, env={"SF_FAIL_DIAG": "1"},
                   preload=helper("failinject.so"))
    c = srv.connect()
    srv.wait_connected(c)
    echo_ok(c, b"a\n")
    kids = ctl_json(ctl, "list")["children"]
    assert [k["bytes_in"] for k in kids] == [None], kids  # the failed dump: unknown
    echo_ok(c, b"bbbbbbbb\n")
    kids = ctl_json(ctl, "list")["children"]
    assert [k["bytes_in"] for k in kids] == [11], kids


# ------------------------------------------------------------ --conn-timeout

def test_conn_timeout_ends_a_busy_connection_and_spares_a_short_one(sockfork):
    """A client that keeps talking is not idle, yet its child is ended once
    it has held the connection for --conn-timeout; a connection that ends
    sooner is untouched."""
    srv = sockfork("--conn-timeout", "1", "--echo")
    short = srv.connect()
    echo_ok(short, b"quick\n")
    name = peer_text(short)
    short.close()
    _, d = srv.wait_disconnected(name)
    assert d.group("status") == "exited 0", d.group(0)

    t0 = time.monotonic()
    busy = srv.connect()
    _, m = srv.wait_connected(busy)
    pings = 0
    cut = False
    for _ in range(200):  # 200 * 0.2 s: far beyond the 1 s timeout
        r, _, _ = select.select([busy], [], [], 0.2)
        if r:
            break
        # The end may come between the select and the ping: the ping then
        # meets a closed socket (a reset) or its echo never comes (EOF).
        try:
            busy.sendall(b"ping %d\n" % pings)
            got = recv_exact(busy, len(b"ping %d\n" % pings))
        except (ConnectionResetError, BrokenPipeError):
            cut = True
            break
        except AssertionError as e:
            if not str(e).startswith("EOF"):
                raise
            cut = True
            break
        assert got == b"ping %d\n" % pings, got
        pings += 1
    else:
        raise AssertionError("busy client not cut within 40 s")
    if not cut:
        expect_eof(busy)
    assert time.monotonic() - t0 >= 0.9
    assert pings >= 1, "the client talked until it was cut"
    i_held, h = srv.log.wait_one(r"^sockfork: \[%s\] connection held for 1 s: ending pid=(\d+)$"
                                 % re.escape(peer_text(busy)))
    assert h.group(1) == m.group(1)
    i_disc, d = srv.wait_disconnected(busy)
    assert i_disc > i_held
    assert d.group("status") == "killed by SIGTERM", d.group(0)


def test_conn_timeout_kills_a_child_that_ignores_sigterm(sockfork):
    """TERM to the group first; what ignores it gets SIGKILL after the kill
    grace, and only then does the client see the end."""
    srv = sockfork("--conn-timeout", "0.5", "--", "/bin/sh", "-c",
                   "trap '' TERM; echo up; while :; do sleep 0.1; done")
    c = srv.connect()
    assert recv_line(c) == b"up\n"
    expect_eof(c, timeout=LONG_WAIT)
    srv.log.wait_one(r"connection held for 0.5 s: ending pid=\d+$")
    srv.log.wait_one(r"did not exit after SIGTERM: sending SIGKILL")
    _, d = srv.wait_disconnected(c)
    assert d.group("status") == "killed by SIGKILL", d.group(0)


def test_conn_timeout_wants_a_duration():
    rc, out, err = run_cli("serve", "--conn-timeout", "soon", "--echo")
    assert (rc, out) == (2, "")
    assert err == "sockfork: serve: --conn-timeout wants a duration, not 'soon'\n"
