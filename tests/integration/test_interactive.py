"""The built-in interactive handler: a greeting, every line echoed exactly,
`quit` says goodbye and closes; and the connect/disconnect log lines."""
import re
import signal

from conftest import (DISCONNECTED_RE, expect_eof, peer_text, recv_exact, recv_line)


def read_greeting(sock):
    line = recv_line(sock)
    assert line.startswith(b"Welcome to sockfork"), line
    assert line.endswith(b"\r\n"), line
    return line


def test_session_greeting_echo_quit(sockfork):
    srv = sockfork()
    c = srv.connect()
    greeting = read_greeting(c)
    sent = received = 0
    received += len(greeting)
    for line in (b"hello\n", b"with crlf\r\n", b"\n", b"\r\n", b"  spaces and\ttabs  \n",
                 b"quitting is not quit\n", b"QUIT\n", b"quit now\n", b"utf-8 \xc3\xa9\xe2\x82\xac\n"):
        c.sendall(line)
        sent += len(line)
        assert recv_exact(c, len(line)) == line
        received += len(line)
    c.sendall(b"quit\r\n")
    sent += 6
    assert recv_exact(c, 6) == b"Bye.\r\n"
    received += 6
    expect_eof(c)
    peer = peer_text(c)

    _, m = srv.wait_connected(c)
    pid = int(m.group(1))
    assert int(m.group(2)) == 1
    _, d = srv.wait_disconnected(c)
    assert int(d.group("pid")) == pid
    assert d.group("status") == "exited 0", d.group(0)
    # The supervisor does not keep the socket (see src/server/server.c),
    # so it has no byte counts to claim once the child is gone.
    assert d.group("bytes_in") is None, d.group(0)
    assert float(d.group("duration")) < 30
    assert d.group("peer") == peer


def test_quit_with_bare_lf(sockfork):
    srv = sockfork()
    c = srv.connect()
    read_greeting(c)
    c.sendall(b"quit\n")
    assert recv_exact(c, 6) == b"Bye.\r\n"
    expect_eof(c)


def test_lines_split_across_writes_and_batched(sockfork):
    srv = sockfork()
    c = srv.connect()
    read_greeting(c)
    # One line in three writes, then three lines in one write.
    for part in (b"par", b"tial li", b"ne\n"):
        c.sendall(part)
    assert recv_exact(c, len(b"partial line\n")) == b"partial line\n"
    batch = b"one\ntwo\r\nthree\n"
    c.sendall(batch)
    assert recv_exact(c, len(batch)) == batch
    # quit in the middle of a batch: the line before it is echoed, then Bye.
    c.sendall(b"last\nquit\n")
    assert recv_exact(c, len(b"last\nBye.\r\n")) == b"last\nBye.\r\n"
    expect_eof(c)


def test_client_closing_first_is_a_clean_exit(sockfork):
    srv = sockfork()
    c = srv.connect()
    read_greeting(c)
    c.sendall(b"bye without quit\n")
    recv_exact(c, len(b"bye without quit\n"))
    c.close()
    srv.clients.remove(c)
    _, d = srv.log.wait_one(r"disconnected pid=")
    assert DISCONNECTED_RE.match(d.string).group("status") == "exited 0", d.string


def test_two_sessions_have_distinct_pids_and_active_counts(sockfork):
    srv = sockfork()
    a = srv.connect()
    read_greeting(a)
    b = srv.connect()
    read_greeting(b)
    _, ma = srv.wait_connected(a)
    _, mb = srv.wait_connected(b)
    assert ma.group(1) != mb.group(1)
    assert (int(ma.group(2)), int(mb.group(2))) == (1, 2)
    for s, text in ((a, b"from a\n"), (b, b"from b\n")):
        s.sendall(text)
        assert recv_exact(s, len(text)) == text


def test_quiet_drops_only_connection_lines(sockfork):
    srv = sockfork("-q")
    c = srv.connect()
    read_greeting(c)
    c.sendall(b"quit\n")
    assert recv_exact(c, 6) == b"Bye.\r\n"
    expect_eof(c)
    # With -q nothing marks the child's end; after SIGTERM the server
    # reaps everything before 'exiting', so the whole log is final then.
    srv.close_clients()
    srv.signal(signal.SIGTERM)
    assert srv.wait_exit() == 0
    log = srv.stop()
    text = log.text()
    assert "listening on" in text and "exiting" in text
    assert not re.search(r"\] (connected|disconnected) ", text), text
