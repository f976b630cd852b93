"""The several-hosts fixture (netns.py) on its own, then the chain the
multi-host tests stand on: clients in one host, HAProxy (send-proxy-v2,
round robin) in another, two `sockfork chat` instances in two more, each
seeing the clients' real addresses.

Every wait is bounded and waits on a condition.
"""
import json
import os
import re
import socket
import subprocess
import time

import pytest

from conftest import WAIT, run_cli
from netns import (Front, hosts, hosts_or_skip, root_network_state, sockfork_in,  # noqa: F401 (fixture)
                   start_haproxy, start_redis)
from test_chat import Chat

PORT = 7000


def namespaces():
    out = subprocess.run(["ip", "netns", "list"], stdout=subprocess.PIPE, check=True,
                         timeout=WAIT).stdout.decode()
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def listener(hosts, name, port=0):
    """A listening TCP socket in host NAME on its address."""
    s = hosts.socket(name)
    s.bind((hosts.addr(name), port))
    s.listen(16)
    s.settimeout(WAIT)
    return s


def accept_from(lsock, hosts, name):
    conn, peer = lsock.accept()
    assert peer[0] == hosts.addr(name), peer
    conn.settimeout(WAIT)
    return conn


def recv_exactly(sock, n, timeout=WAIT):
    deadline = time.monotonic() + timeout
    got = b""
    while len(got) < n:
        left = deadline - time.monotonic()
        assert left > 0, "timed out after %r" % got
        sock.settimeout(left)
        chunk = sock.recv(n - len(got))
        assert chunk, "EOF after %r" % got
        got += chunk
    return got


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# ------------------------------------------------------------ the fixture

def test_two_hosts_reach_each_other(hosts):
    a = hosts.add("a")
    b = hosts.add("b")
    assert a != b and a.startswith("10.213.") and b.startswith("10.213.")
    lb = listener(hosts, "b")
    c = hosts.connect("a", lb.getsockname())
    conn = accept_from(lb, hosts, "a")
    c.sendall(b"ping from a\n")
    assert recv_exactly(conn, 12) == b"ping from a\n"
    conn.sendall(b"pong")
    assert recv_exactly(c, 4) == b"pong"
    # Both ways.
    la = listener(hosts, "a")
    c2 = hosts.connect("b", la.getsockname())
    conn2 = accept_from(la, hosts, "b")
    for s in (c, conn, c2, conn2, la, lb):
        s.close()


def test_the_callers_network_is_untouched_and_nothing_is_left():
    before = root_network_state()
    h = hosts_or_skip()
    with h:
        for name in ("one", "two", "three"):
            h.add(name)
        made = [ns for ns in namespaces() if ns.startswith(h.tag + "-")]
        assert sorted(made) == sorted([h.bridge_ns] + [h.ns(n) for n in ("one", "two", "three")])
        # While the hosts exist: no device, address, route or rule of
        # theirs in the caller's namespace.
        assert root_network_state() == before
        lsock = listener(h, "two")
        s = h.connect("one", lsock.getsockname())
        s.close()
        lsock.close()
    assert root_network_state() == before
    assert [ns for ns in namespaces() if ns.startswith(h.tag)] == []
    assert not os.path.exists(h.dir or "/nonexistent")


def test_teardown_runs_when_the_body_raises():
    h = hosts_or_skip()
    procs = []
    with pytest.raises(RuntimeError, match="the body failed"):
        with h:
            h.add("a")
            h.add("b")
            # A process with a child of its own that the fixture never saw.
            procs.append(h.run("a", ["sh", "-c", "sleep 1000 & sleep 1000 & wait"]))
            deadline = time.monotonic() + WAIT
            while len(h.pids("a")) < 3:
                assert time.monotonic() < deadline, h.pids("a")
                time.sleep(0.02)  # bounded: the shell is forking
            pids = h.pids("a")
            raise RuntimeError("the body failed")
    assert [ns for ns in namespaces() if ns.startswith(h.tag)] == []
    assert procs[0].returncode is not None, "the process was not reaped"
    assert [p for p in pids if alive(p)] == []


def test_kill_all_ends_every_process_of_one_host_only(hosts):
    hosts.add("a")
    hosts.add("b")
    pa = hosts.run("a", ["sh", "-c", "sleep 1000 & sleep 1000 & wait"])
    pb = hosts.run("b", ["sleep", "1000"])
    deadline = time.monotonic() + WAIT
    while len(hosts.pids("a")) < 3 or len(hosts.pids("b")) < 1:
        assert time.monotonic() < deadline, (hosts.pids("a"), hosts.pids("b"))
        time.sleep(0.02)  # bounded: the processes are starting
    in_a = hosts.pids("a")
    hosts.kill_all("a")
    assert hosts.pids("a") == []
    assert pa.returncode == -9
    assert [p for p in in_a if alive(p)] == []
    assert hosts.pids("b") == [pb.pid] and pb.poll() is None


def test_link_down_partitions_a_host_and_link_up_restores_it(hosts):
    hosts.add("a")
    hosts.add("b")
    lb = listener(hosts, "b")
    held = hosts.connect("a", lb.getsockname())
    conn = accept_from(lb, hosts, "a")

    hosts.link_down("b")
    t0 = time.monotonic()
    s = hosts.socket("a")
    s.settimeout(1.5)
    # Lost packets: the connect times out (or, once ARP gives up on a cold
    # cache, the host is unreachable); bounded either way.
    with pytest.raises((socket.timeout, OSError)) as e:
        s.connect(lb.getsockname())
    assert isinstance(e.value, socket.timeout) or e.value.errno in (113, 110), e.value
    assert time.monotonic() - t0 < 5
    s.close()
    # A connection made before the partition stays open; what is sent
    # across it meanwhile arrives once the link is back.
    held.sendall(b"sent during the partition")

    hosts.link_up("b")
    c = hosts.connect("a", lb.getsockname())
    accept_from(lb, hosts, "a").close()
    c.close()
    assert recv_exactly(conn, 25, timeout=20) == b"sent during the partition"
    for x in (held, conn, lb):
        x.close()


def test_redis_in_one_host_answers_a_client_in_another(hosts):
    hosts.add("redis")
    hosts.add("client")
    redis = start_redis(hosts, "redis")
    assert redis.command("PING", frm="client") == "PONG"
    assert redis.command("SET", "k", "from another host", frm="client") == "OK"
    assert redis.command("GET", "k") == b"from another host"
    # Bound to the host's address, nowhere else.
    info = redis.command("CONFIG", "GET", "bind", frm="client")
    assert info == [b"bind", redis.addr.encode()], info


# ------------------------------------------------------------ HAProxy → sockfork

def two_instances_behind_haproxy(hosts, sockfork, tmp_path, *args):
    """Hosts lb, s1, s2, clients; `sockfork chat ARGS` in s1 and s2 behind
    HAProxy in lb. Returns (front, [srv1, srv2], haproxy)."""
    lb = hosts.add("lb")
    hosts.add("s1")
    hosts.add("s2")
    hosts.add("clients")
    servers = []
    for name in ("s1", "s2"):
        srv = sockfork_in(hosts, sockfork, name, "--proxy-from", lb + "/32", *args,
                          listen=("%s:%d,proxy" % (hosts.addr(name), PORT),),
                          ctl_path=str(tmp_path / ("%s.sock" % name)))
        servers.append(srv)
    haproxy = start_haproxy(hosts, "lb", PORT, [(hosts.addr(n), PORT) for n in ("s1", "s2")])
    return Front(hosts, "clients", (lb, PORT)), servers, haproxy


def instance_of(servers, sock, timeout=WAIT):
    """Which of servers logged the client of sock as connected, under the
    client's own address (the PROXY header's): (index, pid)."""
    rx = re.compile(r"^sockfork: \[%s:%d\] connected pid=(\d+) " % (
        re.escape(sock.getsockname()[0]), sock.getsockname()[1]))
    deadline = time.monotonic() + timeout
    while True:
        found = [(i, int(m.group(1))) for i, srv in enumerate(servers)
                 for _, m in srv.log.find(rx.pattern)]
        if found:
            assert len(found) == 1, found
            return found[0]
        assert time.monotonic() < deadline, "no instance logged %r" % (sock.getsockname(),)
        time.sleep(0.02)  # bounded poll of two logs filled by threads


def test_haproxy_round_robin_to_two_instances_with_the_clients_address(hosts, sockfork, tmp_path):
    front, servers, _ = two_instances_behind_haproxy(hosts, sockfork, tmp_path, "--history", "0")
    client_addr = hosts.addr("clients")
    clients = []
    where = []
    for i in range(6):
        c = Chat(front)
        c.welcome()
        assert c.sock.getsockname()[0] == client_addr
        idx, pid = instance_of(servers, c.sock)
        assert pid == c.pid
        where.append(idx)
        clients.append(c)
    # Round robin: one, the other, one, ...
    assert where == [where[0], 1 - where[0]] * 3, where
    for idx, srv in enumerate(servers):
        rc, out, err = run_cli("ctl", "--control", srv.ctl_path, "--json", "list")
        assert rc == 0, err
        peers = sorted(ch.get("peer") for ch in json.loads(out)["children"])
        want = sorted("%s:%d" % c.sock.getsockname() for c, w in zip(clients, where) if w == idx)
        assert peers == want, (idx, peers, want)
    # And it is chat: two clients on one instance talk through HAProxy.
    a, b = clients[0], clients[2]
    a.login("alice")
    b.login("bob")
    a.expect("*** bob has joined lobby")
    b.send("hello through haproxy")
    a.expect("<bob> hello through haproxy")
    for c in clients:
        c.close()


def test_a_host_can_have_a_host_name_of_its_own(hosts):
    hosts.add("w1")
    proc = hosts.run("w1", ["hostname"], hostname="w1", stdout=subprocess.PIPE)
    out, _ = proc.communicate(timeout=WAIT)
    assert out == b"w1\n" and proc.returncode == 0
    assert socket.gethostname() != "w1"
