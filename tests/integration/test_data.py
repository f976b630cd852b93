"""Binary data and very long lines pass through intact: in --echo, through
the built-in line handler and through an exec'd `cat`."""
import random
import shutil
import socket

import pytest

from conftest import LONG_WAIT, exchange, expect_eof, recv_exact, recv_line, recv_until_eof

MODES = ["echo", "default", "cat"]


def start(sockfork, mode):
    if mode == "echo":
        return sockfork("--echo")
    if mode == "default":
        return sockfork()
    return sockfork("--", shutil.which("cat") or "/bin/cat")


def all_bytes():
    return bytes(range(256)) * 4 + b"\n"


def random_mb():
    rnd = random.Random(1234)
    data = bytearray(rnd.getrandbits(8) for _ in range(1 << 20))
    data += b"\n"
    return bytes(data)


def long_line():
    """10 MB of bytes other than CR and LF, then one LF."""
    rnd = random.Random(99)
    alphabet = bytes(b for b in range(256) if b not in (10, 13))
    chunk = bytes(rnd.choice(alphabet) for _ in range(1 << 16))
    return chunk * 160 + b"\n"


PAYLOADS = {"all-bytes": all_bytes, "random-1MB": random_mb, "10MB-line": long_line}


@pytest.fixture(scope="module")
def payloads():
    return {k: f() for k, f in PAYLOADS.items()}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", list(PAYLOADS))
def test_passes_through_intact(sockfork, payloads, mode, name):
    data = payloads[name]
    # The built-in handler treats a line "quit" (or "quit\r") as the end.
    assert b"\nquit\n" not in data and b"\nquit\r\n" not in data and not data.startswith(b"quit")
    srv = start(sockfork, mode)
    c = srv.connect(timeout=LONG_WAIT)
    if mode == "default":
        greeting = recv_line(c)
        assert greeting.startswith(b"Welcome to sockfork")
        got = exchange(c, data, len(data))
        assert got == data, "first difference at byte %d" % first_diff(got, data)
        c.sendall(b"quit\n")
        assert recv_exact(c, 6) == b"Bye.\r\n"
        expect_eof(c)
    else:
        got = exchange(c, data, len(data), shut_wr=True)
        assert got == data, "first difference at byte %d" % first_diff(got, data)
        assert recv_until_eof(c, timeout=LONG_WAIT) == b""
    _, d = srv.wait_disconnected(c)
    assert d.group("status") == "exited 0", d.group(0)


def first_diff(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


@pytest.mark.parametrize("mode", ["echo", "cat"])
def test_data_without_final_newline(sockfork, mode):
    srv = start(sockfork, mode)
    c = srv.connect()
    data = bytes(range(256))[::-1] + b"no newline at the end\r"
    got = exchange(c, data, len(data), shut_wr=True)
    assert got == data
    assert recv_until_eof(c) == b""


def test_client_vanishing_mid_stream_costs_only_its_child(sockfork):
    """A client that sends a lot and resets without reading: the child dies
    or exits, the server stays up and serves the next client."""
    srv = sockfork("--echo")
    c = srv.connect()
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    c.sendall(b"z" * 100000)
    c.close()  # RST: linger 0
    srv.clients.remove(c)
    srv.log.wait_one(r"disconnected pid=")
    d = srv.connect()
    d.sendall(b"still here\n")
    assert recv_exact(d, 11) == b"still here\n"
