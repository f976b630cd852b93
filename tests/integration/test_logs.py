"""Structured logs (issue 15): --log-format json, --log-file, and the log
file reopened at reload (SIGHUP, `ctl reload`), for serve, chat and run.

Every JSON line is parsed with json.loads and checked for the fixed keys;
the events each test expects are asserted where they come from. The last
tests check that the event table of docs/design.md and the events the
source emits are the same set, and that each is covered here (or listed
with the reason it is not)."""
import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time

import pytest

from conftest import (BIN, LONG_WAIT, ROOT, WAIT, DISCONNECTED_RE, CONNECTED_RE, Log, helper,
                      kill_session, recv_exact, recv_line, recv_until_eof, run_cli, server_env)

TS_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
LEVELS = {"error", "warn", "notice", "info", "debug"}
HANDLER = ('read line; case $line in die) kill -KILL $$;; '
           'segv) kill -SEGV $$;; esac; echo "got $line"; exec cat')


def parse_line(line):
    """One JSON log line: parsed, and its fixed keys checked."""
    rec = json.loads(line)
    assert isinstance(rec, dict), line
    keys = list(rec)
    assert keys[:6] == ["ts", "level", "event", "pid", "peer", "msg"], line
    assert TS_RE.match(rec["ts"]), line
    assert rec["level"] in LEVELS, line
    assert re.match(r"^[a-z_]+$", rec["event"]), line
    assert rec["pid"] is None or (isinstance(rec["pid"], int) and rec["pid"] > 0), line
    assert rec["peer"] is None or isinstance(rec["peer"], str), line
    assert isinstance(rec["msg"], str), line
    return rec


class FileLog:
    """A log file as the server appends to it: complete lines, parsed."""

    def __init__(self, path, json_lines=True):
        self.path = path
        self.json_lines = json_lines

    def lines(self):
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return []
        text = data.decode("utf-8")
        # A line is written with one write(2): never a partial one.
        assert text == "" or text.endswith("\n"), text[-200:]
        return text.splitlines()

    def records(self):
        return [parse_line(l) for l in self.lines()] if self.json_lines else self.lines()

    def wait(self, pred, count=1, start=0, timeout=WAIT):
        """Waits until count records at or after index start satisfy pred
        (bounded; the file is polled): the list of them."""
        deadline = time.monotonic() + timeout
        while True:
            recs = self.records()
            found = [r for r in recs[start:] if pred(r)]
            if len(found) >= count:
                return found
            if time.monotonic() >= deadline:
                raise AssertionError("%d record(s) not seen in %s; it holds:\n%s"
                                     % (count, self.path, "\n".join(self.lines()[-40:])))
            time.sleep(0.02)  # a bounded poll of a file for new lines

    def wait_event(self, event, count=1, start=0, timeout=WAIT, **fields):
        return self.wait(lambda r: r["event"] == event and
                         all(r.get(k) == v for k, v in fields.items()), count, start, timeout)

    def mark(self):
        return len(self.lines())

    def events(self):
        return {r["event"] for r in self.records()}


class JServer:
    """`sockfork serve|chat ... --log-file PATH`: stderr kept apart (it must
    hold nothing once the log goes to the file, sanitizer reports aside)."""

    def __init__(self, tmp_path, args, command="serve", fmt="json", log=None, env=None,
                 preload=None, listen="127.0.0.1:0"):
        self.tmp = str(tmp_path)
        self.log_path = log or os.path.join(self.tmp, "sockfork.log")
        self.ctl = os.path.join(self.tmp, "ctl-%d.sock" % len(os.listdir(self.tmp)))
        cmd = [BIN, command, "-l", listen, "--control", self.ctl,
               "--log-format", fmt, "--log-file", self.log_path] + list(args)
        self.stderr_path = os.path.join(self.tmp, "stderr-%d" % len(os.listdir(self.tmp)))
        self.stderr = open(self.stderr_path, "wb")
        self.log = FileLog(self.log_path, json_lines=(fmt == "json"))
        self.start_mark = self.log.mark()
        self.proc = subprocess.Popen(cmd, cwd=self.tmp, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=self.stderr,
                                     env=server_env(env, preload), start_new_session=True)
        self.pid = self.proc.pid
        if fmt == "json":
            rec = self.log.wait_event("listening", start=self.start_mark)[0]
            self.port = int(rec["addr"].rsplit(":", 1)[1])
        else:
            self.port = None

    def connect(self, source=None):
        s = socket.socket()
        s.settimeout(WAIT)
        if source:
            s.bind((source, 0))
        s.connect(("127.0.0.1", self.port))
        peer_of(s)
        return s

    def ctl_cmd(self, *args):
        return run_cli("ctl", "--control", self.ctl, *args)

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=LONG_WAIT)
        finally:
            kill_session(self.pid)
            self.stderr.close()
        with open(self.stderr_path, "rb") as f:
            err = f.read().decode("utf-8", "replace")
        assert "Sanitizer" not in err and "runtime error:" not in err, err
        return rc, err

    def kill(self):
        if self.proc.poll() is None:
            kill_session(self.pid)
            self.proc.kill()
            self.proc.wait(timeout=WAIT)
        if not self.stderr.closed:
            self.stderr.close()


@pytest.fixture
def jserver(tmp_path):
    servers = []

    def start(*args, **kw):
        srv = JServer(tmp_path, args, **kw)
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.kill()


def echo(sock, data=b"ping\n"):
    sock.sendall(data)
    assert recv_exact(sock, len(data)) == data


PEERS = {}  # a client's name in the log, kept for after it is closed


def peer_of(sock):
    if sock not in PEERS:
        host, port = sock.getsockname()[:2]
        PEERS[sock] = "%s:%d" % (host, port)
    return PEERS[sock]


# ----------------------------------------------------------------- serve


def test_json_lines_connect_disconnect_stop(jserver):
    srv = jserver("--echo")
    a = srv.connect()
    echo(a)
    con = srv.log.wait_event("connected", peer=peer_of(a))[0]
    assert con["level"] == "info" and isinstance(con["pid"], int) and con["active"] == 1
    # The text line is the one sf_log_cb would get, byte for byte.
    assert CONNECTED_RE.match("sockfork: " + con["msg"]), con
    a.close()
    dis = srv.log.wait_event("disconnected", peer=peer_of(a))[0]
    assert dis["pid"] == con["pid"] and dis["status"] == {"exited": 0}, dis
    assert isinstance(dis["duration_s"], float) and dis["duration_s"] >= 0
    assert DISCONNECTED_RE.match("sockfork: " + dis["msg"]), dis
    rc, err = srv.stop()
    assert rc == 0 and err == "", err
    recs = srv.log.records()
    assert [r["event"] for r in recs[:2]] == ["listening", "control"]
    assert recs[1]["path"] == srv.ctl
    stopping = [r for r in recs if r["event"] == "stopping"][0]
    assert stopping["children"] == 0 and stopping["grace_s"] == 10.0
    assert recs[-1]["event"] == "exiting" and recs[-1]["msg"] == "exiting"


def test_json_on_stderr_without_a_file(tmp_path):
    proc = subprocess.Popen([BIN, "serve", "--echo", "-l", "127.0.0.1:0", "--no-control",
                             "--log-format", "json"], cwd=str(tmp_path),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=server_env(), start_new_session=True)
    log = Log(proc.stderr)
    try:
        _, m = log.wait_one(r'"event": "listening"')
        rec = parse_line(m.string)
        s = socket.create_connection(("127.0.0.1", int(rec["addr"].rsplit(":", 1)[1])), WAIT)
        echo(s)
        s.close()
        log.wait_one(r'"event": "disconnected"')
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=LONG_WAIT) == 0
        assert log.join(WAIT)
        events = [parse_line(l)["event"] for l in log.snapshot()]
        assert events[0] == "listening" and events[-1] == "exiting", events
        assert {"connected", "disconnected", "stopping"} <= set(events)
    finally:
        kill_session(proc.pid)
        proc.kill()
        proc.wait(timeout=WAIT)
        proc.stderr.close()


def test_refused_denied_and_the_connection_limit(jserver, tmp_path):
    rules = tmp_path / "rules"
    rules.write_text("deny 127.0.0.2\ndefault allow\n")
    srv = jserver("--echo", "-c", "2", "--max-per-ip", "1", "--rules", str(rules))
    a = srv.connect("127.0.0.1")
    echo(a)
    b = srv.connect("127.0.0.1")
    assert recv_until_eof(b) == b""
    ref = srv.log.wait_event("refused", peer=peer_of(b))[0]
    assert ref["level"] == "notice" and ref["pid"] is None
    assert (ref["reason"], ref["count"], ref["limit"]) == ("per_ip", 1, 1), ref
    d = srv.connect("127.0.0.2")
    assert recv_until_eof(d) == b""
    den = srv.log.wait_event("denied", peer=peer_of(d))[0]
    assert den["rules"] == str(rules) and den["line"] == 1, den
    c = srv.connect("127.0.0.3")
    echo(c)
    lim = srv.log.wait_event("limit_reached")[0]
    assert lim["active"] == 2 and lim["level"] == "notice"
    c.close()
    srv.log.wait_event("limit_left")
    a.close()
    srv.log.wait_event("disconnected", count=2)
    assert srv.stop()[0] == 0


def test_sigsegv_status_in_fork_and_exec_mode(jserver):
    srv = jserver("--", "/bin/sh", "-c", HANDLER)
    v = srv.connect()
    v.sendall(b"segv\n")
    assert recv_until_eof(v) == b""
    dis = srv.log.wait_event("disconnected", peer=peer_of(v))[0]
    st = dis["status"]
    assert set(st) == {"signal", "core"} and st["signal"] == "SIGSEGV", dis
    assert isinstance(st["core"], bool)
    assert dis["msg"].endswith("status=killed by SIGSEGV" + (" (core dumped)" if st["core"] else ""))
    k = srv.connect()
    k.sendall(b"die\n")
    assert recv_until_eof(k) == b""
    dis = srv.log.wait_event("disconnected", peer=peer_of(k))[0]
    assert dis["status"] == {"signal": "SIGKILL", "core": False}, dis
    assert srv.stop()[0] == 0


def test_workers_events_and_a_worker_killed_by_sigsegv(jserver):
    # A sanitizer's SIGSEGV handler would make the death an exit: it is off.
    asan = server_env()["ASAN_OPTIONS"] + ":handle_segv=0"
    srv = jserver("--echo", "--workers", "1", env={"ASAN_OPTIONS": asan})
    pre = srv.log.wait_event("prefork")[0]
    assert (pre["min"], pre["max"], pre["max_requests"]) == (1, 1, 0)
    a = srv.connect()
    echo(a)
    con = srv.log.wait_event("connected", peer=peer_of(a))[0]
    os.kill(con["pid"], signal.SIGSEGV)
    assert recv_until_eof(a) == b""
    ex = srv.log.wait_event("worker_exited", pid=con["pid"])[0]
    assert ex["level"] == "warn" and ex["reason"] == "crashed" and ex["busy"] is True, ex
    assert ex["status"]["signal"] == "SIGSEGV" and ex["served"] == 0, ex
    dis = srv.log.wait_event("disconnected", peer=peer_of(a))[0]
    assert dis["status"]["signal"] == "SIGSEGV"
    # The next worker serves.
    b = srv.connect()
    echo(b)
    b.close()
    assert srv.stop()[0] == 0


def test_timed_out_kicked_and_killed(jserver):
    # A program that ignores SIGTERM: ended by the connection timeout, it
    # is killed after the kill grace.
    srv = jserver("--conn-timeout", "0.3", "--", "/bin/sh", "-c", "trap '' TERM; exec cat")
    a = srv.connect()
    echo(a)
    con = srv.log.wait_event("connected", peer=peer_of(a))[0]
    t = srv.log.wait_event("timed_out", peer=peer_of(a))[0]
    assert (t["pid"], t["timeout"], t["after_s"]) == (con["pid"], "conn", 0.3), t
    kl = srv.log.wait_event("killed", pid=con["pid"], timeout=LONG_WAIT)[0]
    assert kl["signal"] == "SIGKILL" and kl["level"] == "warn"
    dis = srv.log.wait_event("disconnected", peer=peer_of(a), timeout=LONG_WAIT)[0]
    assert dis["status"] == {"signal": "SIGKILL", "core": False}
    rc, out, err = srv.ctl_cmd("kick", str(con["pid"]))
    assert rc != 0  # gone already
    srv2 = jserver("--echo")
    b = srv2.connect()
    echo(b)
    con = srv2.log.wait_event("connected", peer=peer_of(b))[0]
    rc, out, err = srv2.ctl_cmd("kick", str(con["pid"]))
    assert rc == 0, (out, err)
    kick = srv2.log.wait_event("kicked", pid=con["pid"])[0]
    assert kick["peer"] == peer_of(b)
    assert recv_until_eof(b) == b""
    assert srv.stop()[0] == 0 and srv2.stop()[0] == 0


def test_grace_over_and_asked_again(jserver):
    srv = jserver("--grace", "0.2", "--", "/bin/sh", "-c", "trap '' TERM; exec cat")
    a = srv.connect()
    echo(a)
    srv.log.wait_event("connected")
    srv.proc.send_signal(signal.SIGTERM)
    srv.log.wait_event("stopping")
    g = srv.log.wait_event("grace_over")[0]
    assert g["children"] == 1
    srv.proc.send_signal(signal.SIGTERM)
    assert srv.proc.wait(timeout=LONG_WAIT) == 0
    srv2 = jserver("--", "/bin/sh", "-c", "trap '' TERM; exec cat")
    b = srv2.connect()
    echo(b)
    srv2.log.wait_event("connected")
    srv2.proc.send_signal(signal.SIGTERM)
    srv2.log.wait_event("stopping")
    srv2.proc.send_signal(signal.SIGINT)
    now = srv2.log.wait_event("stopping_now")[0]
    assert now["children"] == 1
    assert srv2.proc.wait(timeout=LONG_WAIT) == 0
    srv.stop()
    srv2.stop()


def test_exec_failed_and_said(jserver, tmp_path):
    prog = tmp_path / "prog.sh"
    prog.write_text('#!/bin/sh\necho \'{"op": "log", "text": "hello from a child"}\' >&3\n'
                    'exec cat\n')
    prog.chmod(0o755)
    srv = jserver("--", str(prog))
    a = srv.connect()
    echo(a)
    said = srv.log.wait_event("said")[0]
    assert said["text"] == "hello from a child" and isinstance(said["pid"], int), said
    a.close()
    srv.log.wait_event("disconnected", peer=peer_of(a))
    prog.chmod(0o644)  # no longer executable: the child cannot exec it
    b = srv.connect()
    assert recv_until_eof(b) == b""
    ef = srv.log.wait_event("exec_failed")[0]
    assert ef["level"] == "warn" and ef["error"] == os.strerror(13), ef
    dis = srv.log.wait_event("disconnected", peer=peer_of(b))[0]
    assert dis["status"] == {"exited": 126}, dis
    assert srv.stop()[0] == 0


def test_chat_logs_json(jserver):
    srv = jserver(command="chat")
    a = srv.connect()
    a.sendall(b"alice\n")
    recv_line(a)
    con = srv.log.wait_event("connected", peer=peer_of(a))[0]
    a.sendall(b"/quit\n")
    recv_until_eof(a)
    dis = srv.log.wait_event("disconnected", pid=con["pid"])[0]
    assert dis["status"] == {"exited": 0}
    assert srv.stop()[0] == 0


@pytest.mark.parametrize("var,events", [("SF_FAIL_SPAWN", ["start_failed", "start_resumed"]),
                                        ("SF_FAIL_ACCEPT", ["accept_failed"])])
def test_injected_failures_as_records(jserver, var, events):
    srv = jserver("--echo", env={var: "3"}, preload=helper("failinject.so"))
    a = srv.connect()
    a.settimeout(LONG_WAIT)
    echo(a)
    for e in events:
        r = srv.log.wait_event(e)[0]
        assert r["level"] in ("warn", "notice") and r["pid"] is None, r
    f = srv.log.wait_event(events[0])[0]
    assert isinstance(f["error"], str) and isinstance(f["retry_s"], float), f
    if var == "SF_FAIL_SPAWN":
        assert f["what"] == "fork"
        assert srv.log.wait_event("start_resumed")[0]["failures"] == 3
    # Its child counted and gone before the stop: a child whose start is
    # answered after shutdown began gets no grace timer (a supervisor race).
    srv.log.wait_event("connected", peer=peer_of(a))
    a.close()
    srv.log.wait_event("disconnected", peer=peer_of(a))
    assert srv.stop()[0] == 0


def test_proxy_refusals_as_records(jserver):
    srv = jserver("--echo", "--proxy-from", "127.0.0.2", "--proxy-timeout", "0.3",
                  listen="127.0.0.1:0,proxy")
    a = srv.connect("127.0.0.1")
    assert recv_until_eof(a) == b""
    r = srv.log.wait_event("refused", peer=peer_of(a))[0]
    assert r["reason"] == "proxy_source"
    b = srv.connect("127.0.0.2")
    b.sendall(b"GET / HTTP/1.0\r\n\r\n")
    assert recv_until_eof(b) == b""
    bad = srv.log.wait_event("proxy_bad", peer=peer_of(b))[0]
    assert isinstance(bad["error"], str) and bad["error"], bad
    c = srv.connect("127.0.0.2")
    assert recv_until_eof(c) == b""
    late = srv.log.wait_event("proxy_timed_out", peer=peer_of(c))[0]
    assert late["after_s"] == 0.3 and late["bytes"] == 0, late
    assert srv.stop()[0] == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping to another user needs root")
def test_user_as_a_record(jserver):
    srv = jserver("-u", "nobody", "--echo")
    r = srv.log.wait_event("user")[0]
    assert r["uid"] == int(subprocess.check_output(["id", "-u", "nobody"]))
    assert isinstance(r["gid"], int)
    assert srv.stop()[0] == 0


def test_channel_cut_as_a_record(jserver):
    srv = jserver("--", "/bin/sh", "-c", "echo 'not json' >&3; exec cat")
    a = srv.connect()
    cut = srv.log.wait_event("channel_cut")[0]
    assert isinstance(cut["pid"], int) and cut["reason"], cut
    assert recv_until_eof(a) == b""
    assert srv.stop()[0] == 0


# ------------------------------------------------------------------ text


def test_text_format_to_a_file_is_the_stderr_text(jserver, tmp_path):
    log = tmp_path / "text.log"
    log.write_text("kept from before\n")
    srv = jserver("--echo", fmt="text", log=str(log))
    lines = FileLog(str(log), json_lines=False)
    first = lines.wait(lambda l: l.startswith("sockfork: listening on "))[0]
    srv.port = int(first.rsplit(":", 1)[1])
    a = srv.connect()
    echo(a)
    a.close()
    lines.wait(lambda l: DISCONNECTED_RE.match(l) is not None)
    rc, err = srv.stop()
    assert rc == 0 and err == ""
    got = lines.records()
    assert got[0] == "kept from before"  # appended
    assert got[1] == first and got[2] == "sockfork: control socket unix:" + srv.ctl
    assert CONNECTED_RE.match(got[3]) and DISCONNECTED_RE.match(got[4]), got
    assert got[-2].startswith("sockfork: shutting down: 0 children")
    assert got[-1] == "sockfork: exiting"


def test_json_log_file_appends(jserver, tmp_path):
    log = tmp_path / "j.log"
    srv = jserver("--echo", log=str(log))
    assert srv.stop()[0] == 0
    n = len(FileLog(str(log)).records())
    srv = jserver("--echo", log=str(log))
    assert srv.stop()[0] == 0
    recs = FileLog(str(log)).records()
    assert len(recs) == 2 * n and recs[n]["event"] == "listening"


# ---------------------------------------------------------------- reload


def test_reopen_after_rename_by_sighup_and_ctl_reload(jserver, tmp_path):
    rules = tmp_path / "rules"
    rules.write_text("default allow\n")
    srv = jserver("--echo", "--rules", str(rules))
    log = srv.log_path
    a = srv.connect()
    echo(a)
    srv.log.wait_event("connected")
    os.rename(log, log + ".1")
    srv.proc.send_signal(signal.SIGHUP)
    old = FileLog(log + ".1")
    new = FileLog(log)
    r = new.wait_event("reload")[0]
    assert r["ok"] is True and r["by"] == "SIGHUP" and r["level"] == "notice"
    assert r["what"] == "%s: 1 rules; log file %s reopened" % (rules, log), r
    assert r["msg"] == "SIGHUP: reload done: " + r["what"]
    old_text = old.lines()
    assert not [l for l in old_text if '"reload"' in l]
    a.close()
    new.wait_event("disconnected")
    # ctl reload, after another rotation.
    os.rename(log, log + ".2")
    rc, out, err = srv.ctl_cmd("reload")
    assert rc == 0 and out == "reloaded: %s: 1 rules; log file %s reopened\n" % (rules, log), (out, err)
    newer = FileLog(log)
    r = newer.wait_event("reload")[0]
    assert r["by"] == "ctl" and r["ok"] is True
    b = srv.connect()
    echo(b)
    newer.wait_event("connected", peer=peer_of(b))
    b.close()
    assert old.lines() == old_text  # the first file kept what it had
    assert [x["event"] for x in FileLog(log + ".2").records()] == ["reload", "disconnected"]
    assert srv.stop()[0] == 0


def test_failed_reload_changes_nothing_and_says_why(jserver, tmp_path):
    d = tmp_path / "logs"
    d.mkdir()
    rules = tmp_path / "rules"
    rules.write_text("default allow\n")
    srv = jserver("--echo", "--rules", str(rules), log=str(d / "s.log"))
    # The directory goes (moved away: the open file lives on in it), and the
    # rules change to deny everyone.
    os.rename(str(d), str(tmp_path / "logs.old"))
    moved = FileLog(str(tmp_path / "logs.old" / "s.log"))
    rules.write_text("default deny\n")
    rc, out, err = srv.ctl_cmd("reload")
    why = "log file %s: %s" % (d / "s.log", os.strerror(2))
    assert rc == 1 and "reload failed, nothing changed: " + why in err, (rc, out, err)
    r = moved.wait_event("reload")[0]
    assert r["ok"] is False and r["level"] == "warn" and r["what"] == why, r
    srv.proc.send_signal(signal.SIGHUP)
    r = moved.wait_event("reload", count=2)[1]
    assert r["by"] == "SIGHUP" and r["ok"] is False and r["what"] == why
    # The old rules hold (allow), and the old file still gets the lines.
    a = srv.connect()
    echo(a)
    moved.wait_event("connected", peer=peer_of(a))
    a.close()
    assert not os.path.exists(str(d))
    assert srv.stop()[0] == 0
    assert moved.records()[-1]["event"] == "exiting"


def test_reload_without_a_log_file_says_what_it_did_before(jserver, tmp_path):
    # Text, no rules, a log file: the reply names the log file; without
    # a file (test_shutdown) it says nothing to re-read as before.
    srv = jserver("--echo")
    rc, out, err = srv.ctl_cmd("reload")
    assert rc == 0 and out == "reloaded: log file %s reopened\n" % srv.log_path, (out, err)
    assert srv.stop()[0] == 0


# ------------------------------------------------------------ bad values


@pytest.mark.parametrize("command", ["serve", "chat"])
def test_bad_log_values_exit_2_with_one_line(command, tmp_path):
    rc, out, err = run_cli(command, "--log-format", "xml")
    assert rc == 2 and out == ""
    assert err == "sockfork: %s: --log-format is text or json, not 'xml'\n" % command
    bad = str(tmp_path / "no" / "such" / "dir.log")
    rc, out, err = run_cli(command, "-l", "127.0.0.1:0", "--log-file", bad)
    assert rc == 2 and out == ""
    assert err == "sockfork: %s: cannot open the log file %s: %s\n" % (command, bad,
                                                                      os.strerror(2))
    rc, out, err = run_cli(command, "--log-file", "")
    assert rc == 2 and err == "sockfork: %s: --log-file wants a path\n" % command


def test_run_bad_log_format_is_a_usage_error():
    rc, out, err = run_cli("run", "--log-format", "yaml", "true")
    assert rc == 255 and out == ""
    assert err == ("sockfork: run: --log-format is text or json, not 'yaml' "
                   "(try 'sockfork run --help')\n")


# ------------------------------------------------------------------- run


def run_json(tmp_path, *args, stdin=b""):
    log = str(tmp_path / "run.log")
    proc = subprocess.run([BIN, "run", "--log-format", "json", "--log-file", log] + list(args),
                          input=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=server_env(), timeout=LONG_WAIT, cwd=str(tmp_path))
    return proc, FileLog(log).records()


def test_run_json_events(tmp_path):
    proc, recs = run_json(tmp_path, "--timeout", "0.5", "sh", "-c",
                          'echo \'{"log": "task says hi"}\' >&3; [ "$0" = slow ] && sleep 5; '
                          'echo out $0', ":::", "fast", "slow")
    assert proc.returncode == 1 and proc.stderr == b"", proc.stderr
    assert sorted(proc.stdout.split(b"\n")) == [b"", b"out fast"]
    by = {}
    for r in recs:
        by.setdefault(r["event"], []).append(r)
    assert sorted(r["text"] for r in by["said"]) == ["task says hi", "task says hi"]
    assert all(isinstance(r["pid"], int) for r in by["said"])
    (t,) = by["timed_out"]
    assert t["task"] == 2 and t["after_s"] == 0.5 and t["level"] == "info"
    (s,) = by["summary"]
    assert recs[-1] is s
    assert (s["tasks"], s["succeeded"], s["failed"], s["timed_out"]) == (2, 1, 1, 1), s
    assert s["msg"].startswith("run: 2 tasks in ")


def test_run_json_halt_output_limit_and_exec_failure(tmp_path):
    proc, recs = run_json(tmp_path, "-j1", "--halt", "now,fail=1", "sh", "-c", "exit $0",
                          ":::", "0", "3", "0", "0")
    events = [r["event"] for r in recs]
    assert "halt" in events and "halting" in events, events
    h = [r for r in recs if r["event"] == "halting"][0]
    assert h["cancelled"] is False and h["stop_running"] is True
    assert [r for r in recs if r["event"] == "halt"][0]["failed"] == 1
    proc, recs = run_json(tmp_path, "--max-output", "10", "sh", "-c",
                          "head -c 100 /dev/zero; sleep 5", ":::", "x")
    o = [r for r in recs if r["event"] == "output_limited"][0]
    assert o["limit"] == 10 and o["task"] == 1 and isinstance(o["stopped"], bool)
    proc, recs = run_json(tmp_path, str(tmp_path / "not-there"), ":::", "x")
    e = [r for r in recs if r["event"] == "exec_failed"][0]
    assert e["program"] == str(tmp_path / "not-there") and e["error"] == os.strerror(2)
    proc, recs = run_json(tmp_path, "sh", "-c", "echo 'not json' >&3", ":::", "x")
    bad = [r for r in recs if r["event"] == "task_bad_output"][0]
    assert bad["task"] == 1 and bad["level"] == "warn" and isinstance(bad["pid"], int)
    proc, recs = run_json(tmp_path, "echo", stdin=b"a\0b\n")
    w = [r for r in recs if r["event"] == "run_warning"][0]
    assert "NUL" in w["msg"] and w["level"] == "warn"


# ----------------------------------------------------- the event table


# Where each event is asserted, or why it is not produced here.
COVERED = {
    "listening": "test_json_lines_connect_disconnect_stop",
    "control": "test_json_lines_connect_disconnect_stop",
    "connected": "test_json_lines_connect_disconnect_stop",
    "disconnected": "test_json_lines_connect_disconnect_stop",
    "stopping": "test_json_lines_connect_disconnect_stop",
    "exiting": "test_json_lines_connect_disconnect_stop",
    "refused": "test_refused_denied_and_the_connection_limit",
    "denied": "test_refused_denied_and_the_connection_limit",
    "limit_reached": "test_refused_denied_and_the_connection_limit",
    "limit_left": "test_refused_denied_and_the_connection_limit",
    "prefork": "test_workers_events_and_a_worker_killed_by_sigsegv",
    "worker_exited": "test_workers_events_and_a_worker_killed_by_sigsegv",
    "timed_out": "test_timed_out_kicked_and_killed, test_run_json_events",
    "killed": "test_timed_out_kicked_and_killed",
    "kicked": "test_timed_out_kicked_and_killed",
    "grace_over": "test_grace_over_and_asked_again",
    "stopping_now": "test_grace_over_and_asked_again",
    "said": "test_exec_failed_and_said, test_run_json_events",
    "exec_failed": "test_exec_failed_and_said, test_run_json_halt_output_limit_and_exec_failure",
    "reload": "test_reopen_after_rename_by_sighup_and_ctl_reload",
    "summary": "test_run_json_events",
    "halt": "test_run_json_halt_output_limit_and_exec_failure",
    "halting": "test_run_json_halt_output_limit_and_exec_failure",
    "output_limited": "test_run_json_halt_output_limit_and_exec_failure",
    "run_warning": "test_run_json_halt_output_limit_and_exec_failure",
    "task_bad_output": "test_run_json_halt_output_limit_and_exec_failure",
    "start_failed": "test_injected_failures_as_records",
    "start_resumed": "test_injected_failures_as_records",
    "accept_failed": "test_injected_failures_as_records",
    "proxy_bad": "test_proxy_refusals_as_records",
    "proxy_timed_out": "test_proxy_refusals_as_records",
    "user": "test_user_as_a_record (as root)",
    "channel_cut": "test_channel_cut_as_a_record",
    "metrics": "test_upgrade.py::test_upgrade_events_as_json_records",
    "upgrade_started": "test_upgrade.py::test_upgrade_events_as_json_records",
    "upgrade_ready": "test_upgrade.py::test_upgrade_events_as_json_records",
    "upgrade_done": "test_upgrade.py::test_upgrade_events_as_json_records",
    "upgrade_failed": "test_upgrade.py::test_upgrade_events_as_json_records",
    "upgrade_refused": "test_upgrade.py::test_upgrade_events_as_json_records",
    "drained": "test_upgrade.py::test_upgrade_events_as_json_records",
    "drain_grace_over": "test_upgrade.py::test_upgrade_events_as_json_records",
    "previous_gone": "test_upgrade.py::test_upgrade_events_as_json_records",
    "upgrade_child_exited": "test_upgrade.py::test_upgrade_events_as_json_records",
    "bridge": "test_upgrade.py::test_a_second_upgrade_before_the_first_drained_moves_the_bridge",
    "bus_redis_up": "test_bus_redis.py (every test waits for it)",
    "bus_redis_down": "test_bus_redis.py::test_redis_connections_killed_mid_stream",
    "bus_redis_peer_gone": "test_bus_redis.py::test_kill_9_of_an_instance",
    "bus_redis_missed": "test_bus_redis.py::test_trimmed_past_the_cursor_gives_the_notice",
    "queue_down": "test_queue.py::test_unreachable_redis_one_line",
    "queue_waiting": "test_queue.py::test_worker_waits_for_its_run",
    "queue_bad_entry": "test_queue.py::test_an_entry_that_does_not_parse_is_dead_lettered",
    "queue_dead": "test_queue.py::test_poison_task_dead_lettered",
    "queue_duplicate": "test_queue.py::test_a_second_result_is_dropped",
    "queue_lease_lost": "test_queue.py::test_a_worker_cut_off_past_its_lease_stops_its_copy",
}
NOT_HERE = {
    # Failures that need a fault injected; their text lines are tested
    # where the fault is (test_robustness, test_spawner, test_limits,
    # test_bus, test_prefork, test_run): the same call makes the record.
    "bus_stalled", "channel_failed", "control_dropped", "dropped", "fd_limit", "fork_failed",
    "guard_failed", "idle_check_failed", "no_pidfd", "notify_failed", "pool_failed",
    "signal", "spawner_exited", "spawner_failed", "spawner_lost", "worker_broke",
    "worker_retired", "worker_start_failed", "workers_dying", "workers_recovered",
    "stray_listener",
    "bus_redis_error",  # Redis refusing a write of ours: none of the tests' makes it
    # DEBUG: the command logs up to INFO.
    "spawner_started", "worker_started",
}

CALL_RE = re.compile(r'\b(?:sf_logev|sf_logn|logsink_say)\([^;"]*?"([a-z_]+)"', re.S)
FIELD_RE = re.compile(r'\.event = "([a-z_]+)"')


def source_events():
    found = set()
    files = glob.glob(os.path.join(ROOT, "src", "**", "*.c"), recursive=True)
    files += glob.glob(os.path.join(ROOT, "tools", "sockfork", "*.c"))
    for path in files:
        with open(path) as f:
            text = f.read()
        found |= set(CALL_RE.findall(text)) | set(FIELD_RE.findall(text))
    return found


def doc_events():
    with open(os.path.join(ROOT, "docs", "design.md")) as f:
        text = f.read()
    section = text.split("## Structured logs", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z_]+)` \|", section, re.M))


def test_every_event_is_documented_and_covered():
    src = source_events()
    assert len(src) > 40, src
    assert src == doc_events(), (src ^ doc_events())
    assert src == set(COVERED) | NOT_HERE, src ^ (set(COVERED) | NOT_HERE)
    assert not set(COVERED) & NOT_HERE
    with open(os.path.join(ROOT, "man", "sockfork.1")) as f:
        man = f.read()
    missing = [e for e in src if e.replace("_", "\\_") not in man and e not in man]
    assert not missing, missing
