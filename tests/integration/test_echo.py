"""--echo: byte-for-byte echo, no greeting, many clients at once."""
import os
import selectors
import socket
import time

from conftest import LONG_WAIT, expect_eof, recv_exact


def test_echo_has_no_greeting_and_closes_after_client(sockfork):
    srv = sockfork("--echo")
    c = srv.connect()
    c.sendall(b"x")
    assert recv_exact(c, 1) == b"x"  # the first byte back is ours: no greeting
    c.sendall(b"quit\n")  # no meaning in --echo
    assert recv_exact(c, 5) == b"quit\n"
    c.shutdown(socket.SHUT_WR)
    expect_eof(c)
    _, d = srv.wait_disconnected(c)
    assert d.group("status") == "exited 0"


def test_200_concurrent_clients_each_echoed_exactly(sockfork):
    n = 200
    srv = sockfork("--echo")
    clients = [srv.connect() for _ in range(n)]
    # Everyone is connected before anyone is answered: the server holds
    # 200 children at once.
    srv.log.wait(r"connected pid=\d+ active=", count=n, timeout=LONG_WAIT)
    srv.log.wait_one(r"connected pid=\d+ active=%d$" % n)

    payloads = [b"client %03d " % i + os.urandom(100 + 37 * i) + b"\n" for i in range(n)]
    for c in clients:
        c.setblocking(False)
    sel = selectors.DefaultSelector()
    pending = {}
    for i, c in enumerate(clients):
        sel.register(c, selectors.EVENT_WRITE | selectors.EVENT_READ, i)
        pending[i] = [memoryview(payloads[i]), bytearray()]
    deadline = time.monotonic() + LONG_WAIT
    open_ = n
    while open_:
        left = deadline - time.monotonic()
        assert left > 0, "%d clients not fully echoed in time" % open_
        for key, ev in sel.select(min(left, 1.0)):
            i = key.data
            out, got = pending[i]
            s = key.fileobj
            if ev & selectors.EVENT_WRITE and len(out):
                k = s.send(out)
                out = pending[i][0] = out[k:]
                if not len(out):
                    sel.modify(s, selectors.EVENT_READ, i)
            if ev & selectors.EVENT_READ:
                chunk = s.recv(65536)
                assert chunk, "client %d: EOF after %d bytes" % (i, len(got))
                got += chunk
                assert len(got) <= len(payloads[i]), "client %d got more than it sent" % i
                if len(got) == len(payloads[i]):
                    sel.unregister(s)
                    open_ -= 1
    sel.close()
    for i in range(n):
        assert bytes(pending[i][1]) == payloads[i], "client %d got another client's data" % i
    for c in clients:
        c.close()
    srv.clients = []
    srv.log.wait(r"disconnected pid=\d+ .*status=exited 0$", count=n, timeout=LONG_WAIT)
