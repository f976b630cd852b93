"""`make install` into the default prefix, a program built against the
installed library with pkg-config as the README says, and `make uninstall`
leaving nothing behind.

Root only: the default prefix is /usr/local and ldconfig writes the system's
cache (CI runs as root on a throwaway machine). Skipped as well on the
sanitizer build (installing an ASan library would test nothing more), and
when sockfork is installed in the prefix already: the test would overwrite
that installation and then remove it.

Whatever fails, the `finally` runs `make uninstall` and checks that every
file and directory meson's install log lists is gone.
"""
import fcntl
import json
import os
import shlex
import signal
import socket
import subprocess
import time

import pytest

from conftest import BIN, ROOT, WAIT

BUILD = os.path.dirname(os.path.abspath(BIN))
INSTALL_LOG = os.path.join(BUILD, "meson-logs", "install-log.txt")
MAN_PAGES = ["sockfork.1", "sockfork-serve.1", "sockfork-chat.1", "sockfork-ctl.1",
             "sockfork-run.1", "sockfork.3"]

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0,
                       reason="make install writes /usr/local and runs ldconfig: root only"),
    pytest.mark.skipif(os.environ.get("SOCKFORK_SANITIZED") == "1",
                       reason="install is tested on the normal build only"),
    pytest.mark.skipif(not os.path.exists(os.path.join(BUILD, "build.ninja")),
                       reason="SOCKFORK_BIN is not in a meson build directory"),
]


def run(cmd, **kw):
    """Runs cmd (bounded), returns the CompletedProcess with text output."""
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=600, **kw)


def to_install():
    """The paths `make install` would write, as meson knows them."""
    out = run(["meson", "introspect", "--installed", BUILD])
    assert out.returncode == 0, out.stdout
    return sorted(json.loads(out.stdout).values())


def install_log():
    """What the last install wrote: files, then the directories it made."""
    if not os.path.exists(INSTALL_LOG):
        return []
    with open(INSTALL_LOG, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip() and not line.startswith("#")]


def greeting(path):
    """Connects to the Unix socket at path once it exists, returns the line
    the server writes first."""
    deadline = time.monotonic() + WAIT
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(WAIT)
            s.connect(path)
            data = b""
            while not data.endswith(b"\n") and time.monotonic() < deadline:
                chunk = s.recv(256)
                if not chunk:
                    break
                data += chunk
            return data.decode()
        except (FileNotFoundError, ConnectionRefusedError):
            if time.monotonic() > deadline:
                raise
        finally:
            s.close()
        time.sleep(0.02)


@pytest.fixture
def install_lock():
    """One install test at a time on this machine (two suites run at once
    would install over each other)."""
    with open("/tmp/sockfork-install-test.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def test_install_pkgconfig_program_runs_and_uninstall_removes_all(tmp_path, install_lock):
    planned = to_install()
    present = [p for p in planned if os.path.lexists(p)]
    if present:
        pytest.skip("sockfork is installed already (%s): not overwriting it" % present[0])
    # So that the uninstall below acts only on what this install wrote.
    if os.path.exists(INSTALL_LOG):
        os.unlink(INSTALL_LOG)

    hello = None
    try:
        inst = run(["make", "-C", ROOT, "BUILD=" + BUILD, "install"])
        assert inst.returncode == 0, inst.stdout
        assert "ldconfig" in inst.stdout
        written = install_log()
        for page in MAN_PAGES:
            section = page.rsplit(".", 1)[1]
            assert any(p.endswith("/man%s/%s" % (section, page)) for p in written), \
                "%s not installed: %s" % (page, written)

        # The README's build line, against the installed library.
        flags = run(["pkg-config", "--cflags", "--libs", "sockfork"])
        assert flags.returncode == 0, flags.stdout
        exe = str(tmp_path / "hello")
        cc = run(["cc", "-o", exe, os.path.join(ROOT, "examples", "hello.c")]
                 + shlex.split(flags.stdout))
        assert cc.returncode == 0, cc.stdout
        ldd = run(["ldd", exe])
        assert "libsockfork.so.4" in ldd.stdout and "not found" not in ldd.stdout, ldd.stdout

        sock = str(tmp_path / "hello.sock")
        hello = subprocess.Popen([exe, "unix:" + sock], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True)
        line = greeting(sock)
        assert line.startswith("hello ") and "this is pid" in line, line
        hello.send_signal(signal.SIGTERM)
        _, err = hello.communicate(timeout=WAIT)
        assert hello.returncode == 0, err
        hello = None

        # man finds the installed pages (its path follows PATH's /usr/local/bin).
        for name, section in (("sockfork-serve", "1"), ("sockfork", "3")):
            where = run(["man", "-w", section, name])
            found = os.path.realpath(where.stdout.strip())
            assert where.returncode == 0 and found in map(os.path.realpath, written), where.stdout
    finally:
        if hello is not None:
            hello.kill()
            hello.wait(timeout=WAIT)
        written = install_log()
        if written:
            un = run(["make", "-C", ROOT, "BUILD=" + BUILD, "uninstall"])
            left = [p for p in written if os.path.lexists(p)]
            assert un.returncode == 0 and not left, (left, un.stdout)
            os.unlink(INSTALL_LOG)  # a later `make uninstall` has nothing to do
    # Nothing of it in the loader's cache either.
    assert "libsockfork" not in run(["ldconfig", "-p"]).stdout
