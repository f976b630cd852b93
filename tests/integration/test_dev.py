"""./dev, the README's two commands: `serve` installs only what building
needs, `test` the suite's tools as well; `test` ends with one line per stage
and a total, and fails when a stage fails. The stages run a stand-in for make
here (MAKE=...), which prints what each runner prints at its end.
"""
import os
import re
import stat
import subprocess

from conftest import ROOT

DEV = os.path.join(ROOT, "dev")
TEST_TOOLS = {"valgrind", "clang", "libclang-rt-dev", "python3-pytest", "mandoc"}

# What each stage's runner prints last: meson test, pytest -q, make fuzz.
RUNNER_OUTPUT = {
    "test-unit": "1/14 test_addr OK 0.01s\nOk:                 14  \nExpected Fail:      0   \n"
                 "Fail:               0   \nSkipped:            0   \nTimeout:            0   \n",
    "test-integration": "....s.\n287 passed, 3 skipped in 120.51s (0:02:00)\n",
    "test-asan-unit": "Ok:                 14  \nFail:               0   \n",
    "test-asan-integration": "280 passed, 10 skipped in 300.20s (0:05:00)\n",
    "fuzz": "fuzz_addr: 1000 runs in 10 s, no crash\nfuzz: 5 targets, 123456 runs, no crash\n",
}


def packages(command):
    out = subprocess.run(["sh", DEV, "packages", command], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


def test_serve_installs_no_test_tools():
    serve, test = packages("serve"), packages("test")
    assert {"gcc", "meson", "libev-dev", "libjansson-dev"} <= serve
    assert not serve & TEST_TOOLS, serve & TEST_TOOLS
    assert serve | TEST_TOOLS <= test
    assert packages("install") == serve


def fake_make(tmp_path, fail=None):
    """A make that prints RUNNER_OUTPUT[target] and exits 0, or 2 for `fail`."""
    script = tmp_path / "make"
    cases = []
    for target, text in RUNNER_OUTPUT.items():
        rc = 2 if target == fail else 0
        if rc:
            text = "1 failed, 286 passed in 100.00s\n" if "integration" in target else text
        cases.append("%s) printf '%%s' '%s'; exit %d ;;" % (target, text, rc))
    script.write_text("#!/bin/sh\nfor a; do t=$a; done\ncase $t in\n%s\n*) exit 9 ;;\nesac\n"
                      % "\n".join(cases))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def stages(tmp_path, fail=None):
    env = dict(os.environ, MAKE=fake_make(tmp_path, fail))
    return subprocess.run(["sh", DEV, "stages"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, env=env, timeout=60)


def tail(text):
    """The lines after the `== summary` mark."""
    return text.split("\n== summary\n", 1)[1].splitlines()


def test_stages_end_with_a_line_per_stage_and_a_total(tmp_path):
    out = stages(tmp_path)
    assert out.returncode == 0, out.stdout
    # The runners' own lines are still there, for CI and for a person.
    assert "287 passed, 3 skipped in 120.51s" in out.stdout
    assert re.search(r"^Ok: +14", out.stdout, re.M)
    lines = tail(out.stdout)
    expected = [r"unit: 14 ok \(\d+ s\)",
                r"integration: 287 passed, 3 skipped \(\d+ s\)",
                r"asan unit: 14 ok \(\d+ s\)",
                r"asan integration: 280 passed, 10 skipped \(\d+ s\)",
                r"fuzz: 5 targets, 123456 runs, no crash \(\d+ s\)",
                r"total: 5 stages passed in \d+ s"]
    assert len(lines) == len(expected), lines
    for line, pattern in zip(lines, expected):
        assert re.fullmatch(pattern, line), (line, pattern)


def test_a_failed_stage_fails_the_whole_and_the_rest_still_run(tmp_path):
    out = stages(tmp_path, fail="test-integration")
    assert out.returncode != 0, out.stdout
    lines = tail(out.stdout)
    assert re.fullmatch(r"integration: FAILED, exit 2: 1 failed, 286 passed \(\d+ s\)", lines[1]), lines
    assert lines[4].startswith("fuzz: 5 targets"), lines
    assert re.fullmatch(r"total: FAILED \(integration\) in \d+ s", lines[-1]), lines


def test_readme_c_example_compiles_cleanly(tmp_path):
    """The README's C program, as a reader would paste it: no warning."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        blocks = re.findall(r"^```c\n(.*?)^```$", f.read(), re.S | re.M)
    assert len(blocks) == 1, blocks
    src = tmp_path / "hello.c"
    src.write_text(blocks[0])
    out = subprocess.run(["cc", "-Wall", "-Wextra", "-Werror", "-I", os.path.join(ROOT, "include"),
                          "-c", "-o", str(tmp_path / "hello.o"), str(src)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60)
    assert out.returncode == 0, out.stdout
