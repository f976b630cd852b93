"""The man pages in man/: they lint clean (mandoc), they render (man-db and
groff, as `man` shows them), and they say what the binary says: every option
of each command's real --help output appears in that command's page, every
command of `sockfork --help` has a page, and sockfork(3) names every public
function of include/sockfork.h.
"""
import os
import re
import shutil
import subprocess

import pytest

from conftest import BIN, ROOT

MAN = os.path.join(ROOT, "man")
PAGES = sorted(f for f in os.listdir(MAN) if re.search(r"\.[0-9]$", f)) if os.path.isdir(MAN) else []
# An option as --help writes it: -l, --listen, --channel-full; not a word
# with a hyphen inside (fork-per-connection) nor a bare `--`. `--channel-*`
# stands for a family.
OPTION_RE = re.compile(r"(?<![\w-])(--?[A-Za-z][A-Za-z0-9-]*\*?)")
# A public function in the header: SF_EXTERN <type> [*]name(
FUNCTION_RE = re.compile(r"SF_EXTERN\s[^;(]*?\b(sf_\w+)\s*\(")


def help_text(command):
    argv = [BIN] + ([command] if command else []) + ["--help"]
    out = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         timeout=30)
    assert out.returncode == 0, (argv, out.stderr)
    return out.stdout


def commands():
    """The commands `sockfork --help` lists (its `commands:` block)."""
    text = help_text(None)
    block = text.split("commands:", 1)[1].split("\n\n", 1)[0]
    names = re.findall(r"^\s+([a-z]+)\s", block, re.M)
    assert names, text
    return names


def render(page):
    """The page as `man` shows it, as plain text: no overstrike, ASCII
    hyphens. Fails on any warning of man-db or groff."""
    env = dict(os.environ, MANWIDTH="80", MANPAGER="cat", PAGER="cat", LANG="C.UTF-8")
    env.pop("MANROFFOPT", None)
    out = subprocess.run(["man", "--warnings=w", "-l", os.path.join(MAN, page)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env, timeout=60)
    assert out.returncode == 0 and not out.stderr.strip(), (page, out.stderr)
    text = re.sub(r".\x08", "", out.stdout)
    return text.replace("\u2010", "-").replace("\u2212", "-")


def page_of(command):
    return "sockfork-%s.1" % command if command else "sockfork.1"


def appears(word, text):
    """word is in text as a whole token; `--x-*`: some option starting so."""
    if word.endswith("*"):
        return re.search(r"(?<![\w-])%s\w" % re.escape(word[:-1]), text) is not None
    return re.search(r"(?<![\w-])%s(?![\w-])" % re.escape(word), text) is not None


def test_pages_exist_and_are_installed():
    with open(os.path.join(ROOT, "meson.build"), encoding="utf-8") as f:
        build = f.read()
    expected = {page_of(None), "sockfork.3"} | {page_of(c) for c in commands()}
    assert expected <= set(PAGES), sorted(expected - set(PAGES))
    for page in PAGES:
        assert "'man/%s'" % page in build, "%s is not in meson.build's install_man" % page


@pytest.mark.parametrize("page", PAGES)
def test_page_lints_clean(page):
    if not shutil.which("mandoc"):
        pytest.skip("mandoc not installed (Debian package mandoc; ./dev test installs it)")
    out = subprocess.run(["mandoc", "-T", "lint", "-W", "warning", os.path.join(MAN, page)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60)
    assert out.returncode == 0 and not out.stdout.strip(), out.stdout


@pytest.mark.parametrize("page", PAGES)
def test_page_renders(page):
    text = render(page)
    name, section = page.rsplit(".", 1)
    assert text.startswith("%s(%s)" % (name.upper(), section)), text[:200]
    for heading in ("NAME", "SYNOPSIS", "DESCRIPTION", "SEE ALSO"):
        assert re.search(r"^%s$" % heading, text, re.M), (page, heading)


@pytest.mark.parametrize("command", [None, "serve", "chat", "ctl", "run"])
def test_every_help_option_is_in_the_page(command):
    options = sorted(set(OPTION_RE.findall(help_text(command))))
    assert options
    text = render(page_of(command))
    missing = [o for o in options if not appears(o, text)]
    assert not missing, "%s lacks %s" % (page_of(command), missing)


def test_every_command_is_in_sockfork_1():
    text = render("sockfork.1")
    for c in commands():
        assert appears("sockfork-%s(1)" % c, text), c


def test_library_page_names_every_public_function():
    with open(os.path.join(ROOT, "include", "sockfork.h"), encoding="utf-8") as f:
        functions = sorted(set(FUNCTION_RE.findall(f.read())))
    assert len(functions) > 40, functions
    text = render("sockfork.3")
    missing = [f for f in functions if not appears(f, text)]
    assert not missing, "sockfork(3) lacks %s" % missing
