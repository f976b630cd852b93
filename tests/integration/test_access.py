"""Access rules (--rules) and the PROXY protocol (-l ADDR,proxy), in fork
and prefork mode (issue 14), and end to end behind the real HAProxy."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time

import pytest

from conftest import (LONG_WAIT, WAIT, BIN, Log, helper, recv_until_eof, run_cli, server_env,
                      unused_port)

DATA = os.path.join(os.path.dirname(__file__), "..", "data", "proxy-protocol")
MODES = [[], ["--workers", "2"]]
MODE_IDS = ["fork", "prefork"]


def capture(name):
    with open(os.path.join(DATA, name), "rb") as f:
        return f.read()


def connect(srv, source=None, port=None):
    s = socket.socket()
    s.settimeout(WAIT)
    if source:
        s.bind((source, 0))
    s.connect(("127.0.0.1", port or srv.port))
    return s


def talk(srv, data, source=None, shut=True):
    """Sends data, reads to EOF: what came back (b"" for a closed one)."""
    s = connect(srv, source)
    try:
        s.sendall(data)
        if shut:
            s.shutdown(socket.SHUT_WR)
        return recv_until_eof(s)
    except (ConnectionResetError, BrokenPipeError, OSError):
        return b""
    finally:
        s.close()


def ctl_stats(srv, path):
    rc, out, err = run_cli("ctl", "--control", path, "--json", "stats")
    assert rc == 0, (rc, err)
    return json.loads(out)


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


# ------------------------------------------------------------- the rules

RULES = """# the test's rules
deny 127.0.0.2          # one host of loopback
allow 127.0.0.0/8 ZONE=lo NOTE="two words"
default deny
"""


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_rules_deny_allow_and_pairs_for_a_c_handler(sockfork, tmp_path, mode):
    rules = str(tmp_path / "rules")
    write(rules, RULES)
    srv = sockfork("--rules", rules, "--say", "ZONE", *mode, bin=helper("execserver"))
    out = talk(srv, b"", source="127.0.0.1").decode()
    assert re.match(r"^127\.0\.0\.1:\d+ 127\.0\.0\.1:%d ZONE=lo\n$" % srv.port, out), out
    assert talk(srv, b"", source="127.0.0.2") == b""
    srv.log.wait_one(r"^sockfork: \[127\.0\.0\.2:\d+\] denied by rule %s:2$" % re.escape(rules))
    assert talk(srv, b"", source="127.0.0.3").startswith(b"127.0.0.3:")


def test_rules_pairs_reach_the_program_and_stats_count(sockfork, tmp_path):
    rules = str(tmp_path / "rules")
    write(rules, RULES)
    ctl = str(tmp_path / "ctl.sock")
    srv = sockfork("--rules", rules, "--control", ctl, "--", "sh", "-c",
                   'echo "$TCPREMOTEIP [$ZONE] [$NOTE]"')
    assert talk(srv, b"", source="127.0.0.1") == b"127.0.0.1 [lo] [two words]\n"
    assert talk(srv, b"", source="127.0.0.2") == b""
    st = ctl_stats(srv, ctl)
    assert st["denied"] == 1 and st["accepted"] == 1, st


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_reload_takes_new_rules_whole_or_not_at_all(sockfork, tmp_path, mode):
    rules = str(tmp_path / "rules")
    write(rules, RULES)
    srv = sockfork("--rules", rules, "--say", "ZONE", *mode, bin=helper("execserver"))
    assert b"ZONE=lo" in talk(srv, b"", source="127.0.0.1")
    held = connect(srv, source="127.0.0.1")  # a connection across the reload
    # Let in before the reload (the supervisor's verdict is what counts).
    srv.log.wait_one(r"^sockfork: \[127\.0\.0\.1:%d\] connected pid=" % held.getsockname()[1])
    # New rules: 127.0.0.1 denied from the next connection on.
    write(rules, "deny 127.0.0.1\nallow 127.0.0.0/8 ZONE=other\n")
    mark = srv.log.mark()
    srv.signal(signal.SIGHUP)
    srv.log.wait_one(r"^sockfork: SIGHUP: reload done: %s: 3 rules$" % re.escape(rules), start=mark)
    assert talk(srv, b"", source="127.0.0.1") == b""
    assert b"ZONE=other" in talk(srv, b"", source="127.0.0.4")
    # A bad file changes nothing, and says why.
    write(rules, "allow 127.0.0.0/8\nallow 10.0.0.1/8\n")
    mark = srv.log.mark()
    srv.signal(signal.SIGHUP)
    srv.log.wait_one(r"^sockfork: SIGHUP: reload failed, nothing changed: %s:2: .*10\.0\.0\.0/8"
                     % re.escape(rules), start=mark)
    assert talk(srv, b"", source="127.0.0.1") == b""
    assert b"ZONE=other" in talk(srv, b"", source="127.0.0.4")
    held.shutdown(socket.SHUT_WR)
    assert b"ZONE=lo" in recv_until_eof(held)
    held.close()


def test_ctl_reload_answers_and_fails_with_the_reason(sockfork, tmp_path):
    rules = str(tmp_path / "rules")
    write(rules, RULES)
    ctl = str(tmp_path / "ctl.sock")
    srv = sockfork("--rules", rules, "--control", ctl, "--echo")
    rc, out, err = run_cli("ctl", "--control", ctl, "reload")
    assert rc == 0 and out == "reloaded: %s: 3 rules\n" % rules, (rc, out, err)
    write(rules, "bogus\n")
    rc, out, err = run_cli("ctl", "--control", ctl, "reload")
    assert rc == 1 and "reload failed, nothing changed: %s:1:" % rules in err, (rc, out, err)
    assert talk(srv, b"still\n", source="127.0.0.1") == b"still\n"


def test_bad_rules_file_at_start_exits_2_with_file_and_line(tmp_path):
    rules = str(tmp_path / "rules")
    write(rules, "allow 127.0.0.1\n\nallow 300.0.0.1\n")
    rc, out, err = run_cli("serve", "--rules", rules, "--echo", "-l", "127.0.0.1:0")
    assert rc == 2, (rc, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sockfork: serve: bad rules: %s:3: " % rules), err
    rc, out, err = run_cli("serve", "--rules", str(tmp_path / "none"), "--echo", "-l", "127.0.0.1:0")
    assert rc == 2 and "No such file or directory" in err, (rc, err)


def test_chat_denies_before_any_process(sockfork, tmp_path):
    rules = str(tmp_path / "rules")
    write(rules, "deny 127.0.0.2\n")
    srv = sockfork("--rules", rules, command="chat")
    assert talk(srv, b"", source="127.0.0.2") == b""
    srv.log.wait_one(r"^sockfork: \[127\.0\.0\.2:\d+\] denied by rule %s:1$" % re.escape(rules))
    s = connect(srv, source="127.0.0.1")
    assert s.recv(100).startswith(b"*** Welcome")
    s.close()


# ------------------------------------------------------------ PROXY headers

@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("name, peer", [
    ("v1-tcp4.bin", "10.77.0.101:40001"),
    ("v1-tcp6.bin", "[fd77::101]:40005"),
    ("v2-tcp4.bin", "10.77.0.101:40003"),
    ("v2-tcp6.bin", "[fd77::101]:40007"),
    ("v2-tcp4-tlv-crc32c-uniqueid.bin", None),
    ("v1-unknown-unixfront.bin", "socket"),
    ("v2-local-healthcheck.bin", "socket"),
])
def test_proxy_header_taken_exactly_and_its_client_used(sockfork, tmp_path, mode, name, peer):
    srv = sockfork("--echo", "--proxy-from", "127.0.0.1", *mode,
                   listen=("127.0.0.1:0,proxy",))
    hdr = capture(name)
    assert talk(srv, hdr + b"hello, client bytes\n") == b"hello, client bytes\n"
    _, m = srv.log.wait_one(r"^sockfork: \[(.+)\] disconnected pid=")
    if peer == "socket":
        assert m.group(1).startswith("127.0.0.1:"), m.group(1)
    elif peer:
        assert m.group(1) == peer, m.group(1)


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_proxy_header_in_pieces(sockfork, mode):
    srv = sockfork("--echo", "--proxy-from", "127.0.0.1", *mode, listen=("127.0.0.1:0,proxy",))
    for name in ("v1-tcp4.bin", "v2-tcp6.bin"):
        s = connect(srv)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for b in capture(name):
            s.sendall(bytes([b]))
        s.sendall(b"after\n")
        s.shutdown(socket.SHUT_WR)
        assert recv_until_eof(s) == b"after\n"
        s.close()


def test_proxy_header_sets_the_programs_environment(sockfork):
    srv = sockfork("--proxy-from", "127.0.0.0/8", listen=("127.0.0.1:0,proxy",), *(
        "--", "sh", "-c", 'echo "$TCPREMOTEIP $TCPREMOTEPORT $TCPLOCALIP $TCPLOCALPORT"'))
    assert talk(srv, capture("v2-tcp4.bin")) == b"10.77.0.101 40003 10.77.0.4 7002\n"
    assert talk(srv, capture("v1-tcp6.bin")) == b"fd77::101 40005 fd77::4 7001\n"


def test_proxy_header_for_a_c_handler_in_prefork(sockfork):
    srv = sockfork("--workers", "1", "--proxy-from", "127.0.0.1", "--say", "K",
                   listen=("127.0.0.1:0,proxy",), bin=helper("execserver"))
    assert talk(srv, capture("v1-tcp4.bin")) == b"10.77.0.101:40001 10.77.0.4:7001 K=-\n"


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_proxy_refusals_are_logged_and_counted(sockfork, tmp_path, mode):
    ctl = str(tmp_path / "ctl.sock")
    srv = sockfork("--echo", "--proxy-from", "127.0.0.1", "--proxy-timeout", "300ms",
                   "--control", ctl, *mode, listen=("127.0.0.1:0,proxy",))
    # Not an allowed balancer: refused, header or not.
    assert talk(srv, capture("v1-tcp4.bin") + b"x\n", source="127.0.0.2") == b""
    srv.log.wait_one(r"^sockfork: \[127\.0\.0\.2:\d+\] refused: a PROXY listener, and not a "
                     r"source --proxy-from allows$")
    # No header at all: never guessed, refused as malformed.
    assert talk(srv, b"GET / HTTP/1.0\r\n\r\n") == b""
    srv.log.wait_one(r"^sockfork: \[127\.0\.0\.1:\d+\] bad PROXY header: .*; closed$")
    # Half a header, then silence: closed at the deadline.
    s = connect(srv)
    s.sendall(capture("v2-tcp4.bin")[:20])
    assert recv_until_eof(s, timeout=LONG_WAIT) == b""
    s.close()
    srv.log.wait_one(r"^sockfork: \[127\.0\.0\.1:\d+\] no whole PROXY header within 0\.3 s "
                     r"\(20 bytes came\); closed$")
    st = ctl_stats(srv, ctl)
    assert (st["proxy_refused"], st["proxy_bad"], st["proxy_timed_out"]) == (1, 1, 1), st
    assert talk(srv, capture("v1-tcp4.bin") + b"ok\n") == b"ok\n"


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_max_per_ip_and_rules_see_the_headers_client(sockfork, tmp_path, mode):
    rules = str(tmp_path / "rules")
    write(rules, "deny 10.77.0.102\n")
    ctl = str(tmp_path / "ctl.sock")
    srv = sockfork("--echo", "--proxy-from", "127.0.0.1", "--max-per-ip", "1", "--rules", rules,
                   "--control", ctl, *(mode[:1] + ["4"] if mode else []),
                   listen=("127.0.0.1:0,proxy",))
    a = connect(srv)
    a.sendall(capture("v1-tcp4.bin") + b"a\n")
    assert a.recv(2) == b"a\n"
    # Same client behind the same balancer: over the per-IP limit.
    assert talk(srv, capture("v2-tcp4.bin") + b"b\n") == b""
    srv.log.wait_one(r"^sockfork: \[10\.77\.0\.101:40003\] refused: 1 connections from 10\.77\.0\.101")
    # Another client: denied by its rule.
    assert talk(srv, capture("v1-tcp4-b.bin") + b"c\n") == b""
    srv.log.wait_one(r"^sockfork: \[10\.77\.0\.102:40002\] denied by rule %s:1$" % re.escape(rules))
    rc, out, err = run_cli("ctl", "--control", ctl, "--json", "list")
    peers = [c.get("peer") for c in json.loads(out)["children"]]
    assert "10.77.0.101:40001" in peers, peers
    a.close()


@pytest.mark.parametrize("args, why", [
    (["-l", "127.0.0.1:0,proxy", "--echo"], "needs --proxy-from CIDR"),
    (["-l", "127.0.0.1:0", "--proxy-from", "127.0.0.1", "--echo"], "there is none"),
    (["-l", "127.0.0.1:0,proxy", "--proxy-from", "300.1.2.3", "--echo"], "--proxy-from wants"),
    (["-l", "127.0.0.1:0,proxy", "--proxy-from", "127.0.0.1", "--proxy-timeout", "0", "--echo"],
     "--proxy-timeout wants"),
])
def test_proxy_usage_errors(args, why):
    rc, out, err = run_cli("serve", *args)
    assert rc == 2, (rc, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and why in lines[0], err


# ------------------------------------------------------ behind real HAProxy

def haproxy_config(tmp_path, p1, p2, backend):
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text("""global
    maxconn 100
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend v1
    bind 127.0.0.1:%d
    default_backend b1
frontend v2
    bind 127.0.0.1:%d
    default_backend b2
backend b1
    server s1 127.0.0.1:%d send-proxy
backend b2
    server s2 127.0.0.1:%d send-proxy-v2
""" % (p1, p2, backend, backend))
    return str(cfg)




@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_behind_haproxy_send_proxy_v1_and_v2(sockfork, tmp_path, mode):
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not os.path.exists(haproxy):
        pytest.fail("haproxy not installed (./dev installs it)")
    ctl = str(tmp_path / "ctl.sock")
    mode = ["--workers", "4"] if mode else []  # two held, and room for the one refused
    srv = sockfork("--proxy-from", "127.0.0.1", "--max-per-ip", "1", "--control", ctl, *mode,
                   *(["--echo"] if mode else ["--", "sh", "-c", 'echo "$TCPREMOTEIP"; exec cat']),
                   listen=("127.0.0.1:0,proxy",))
    for attempt in range(20):  # HAProxy binds its own ports: retry one taken meanwhile
        p1, p2 = unused_port(), unused_port()
        proc = subprocess.Popen([haproxy, "-db", "-f", haproxy_config(tmp_path, p1, p2, srv.port)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)
        log = Log(proc.stderr)
        deadline = time.monotonic() + WAIT
        up = False
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", p2), timeout=WAIT).close()
                socket.create_connection(("127.0.0.1", p1), timeout=WAIT).close()
                up = True
                break
            except OSError:
                time.sleep(0.05)  # bounded: HAProxy is starting
        if up:
            break
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    else:
        pytest.fail("HAProxy did not start: %s" % log.text())
    try:
        held = []
        for port, source in ((p1, "127.0.0.2"), (p2, "127.0.0.3")):
            s = socket.socket()
            s.settimeout(WAIT)
            s.bind((source, 0))
            s.connect(("127.0.0.1", port))
            s.sendall(b"hi\n")
            got = b""
            want = (source.encode() + b"\nhi\n") if not mode else b"hi\n"
            while len(got) < len(want):
                chunk = s.recv(100)
                assert chunk, got
                got += chunk
            assert got == want, got
            held.append(s)
            srv.log.wait_one(r"^sockfork: \[%s:%d\] connected pid=" % (re.escape(source),
                                                                         s.getsockname()[1]))
        rc, out, err = run_cli("ctl", "--control", ctl, "--json", "list")
        peers = sorted(c.get("peer") or "" for c in json.loads(out)["children"])
        assert [p for p in peers if p.startswith("127.0.0.2:") or p.startswith("127.0.0.3:")] \
            == ["127.0.0.2:%d" % held[0].getsockname()[1], "127.0.0.3:%d" % held[1].getsockname()[1]], peers
        # --max-per-ip counts HAProxy's clients, not HAProxy: a second one
        # from 127.0.0.2 is over the limit, though HAProxy is one address.
        s = socket.socket()
        s.settimeout(WAIT)
        s.bind(("127.0.0.2", 0))
        s.connect(("127.0.0.1", p1))
        s.sendall(b"again\n")
        assert recv_until_eof(s) == b""
        s.close()
        srv.log.wait_one(r"^sockfork: \[127\.0\.0\.2:\d+\] refused: 1 connections from 127\.0\.0\.2")
        for s in held:
            s.close()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def test_chat_in_prefork_denies_and_serves(sockfork, tmp_path):
    rules = str(tmp_path / "rules")
    write(rules, "deny 127.0.0.2\n")
    srv = sockfork("--rules", rules, "--workers", "2", command="chat")
    assert talk(srv, b"", source="127.0.0.2") == b""
    srv.log.wait_one(r"^sockfork: \[127\.0\.0\.2:\d+\] denied by rule %s:1$" % re.escape(rules))
    s = connect(srv, source="127.0.0.1")
    assert s.recv(100).startswith(b"*** Welcome")
    s.close()
