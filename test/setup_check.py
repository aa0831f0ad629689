"""What the test suites need from this machine (scripts/prerequisites.txt):
the root conftest checks it before any test runs."""

import fcntl
import os
import pathlib
import shutil
import time

TEST_DIR = pathlib.Path(__file__).resolve().parent
PREREQUISITES = TEST_DIR.parent / "scripts" / "prerequisites.txt"
# Where the tests look for commands (root's PATH, whatever pytest was started with).
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin",
                               "/sbin"])
# Suites that run another Salt release from its own venv.
SUITE_VENVS = {"compat": [".venv-salt3007", ".venv-salt3006"]}


def suite_commands(listing):
    """{suite: [(command, package), ...]} from scripts/prerequisites.txt."""
    needs = {}
    for line in listing.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 3 or fields[2] == "-":
            continue
        package, _job, suites, *commands = fields
        for suite in suites.split(","):
            needs.setdefault(suite, []).extend((cmd, package) for cmd in commands)
    return needs


def missing_prerequisite(suites, needs):
    """One sentence naming the first missing command or venv a suite needs, or None."""
    for suite in sorted(suites):
        for command, package in needs.get(suite, ()):
            if not shutil.which(command, path=SEARCH_PATH):
                return (f"test/{suite} needs the command '{command}' (Debian package "
                        f"{package}): run ./scripts/setup --tests")
        for venv in SUITE_VENVS.get(suite, ()):
            # a link to a venv still being built counts: the suite waits for it
            if not os.path.lexists(TEST_DIR.parent / venv):
                return f"test/{suite} needs {venv}: run ./scripts/setup --tests"
    return None


def venvs_being_built(suite):
    """True while scripts/setup still builds one of suite's venvs in the
    background (the build holds the venv's lock)."""
    return any(venv_lock_held(TEST_DIR.parent / venv) for venv in SUITE_VENVS.get(suite, ()))


def venv_lock_held(link):
    return lock_held(f"{os.path.realpath(link)}.lock")


def lock_held(path):
    """True while a process holds an exclusive flock on path."""
    try:
        with open(path, "rb") as lock:
            fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except FileNotFoundError:
        return False
    except BlockingIOError:
        return True
    return False


def wait_for_venv(link, timeout=1800):
    """The venv link points to, once scripts/setup's background build of it
    ended, and ""; None and the end of its log when that build failed."""
    if not os.path.islink(link):  # a venv of a checkout set up before links
        return pathlib.Path(link), ""
    target = pathlib.Path(os.path.realpath(link))
    deadline = time.monotonic() + timeout
    # .complete first: a process the build started may outlive it, lock and all
    while (not (target / ".complete").exists() and venv_lock_held(link)
           and time.monotonic() < deadline):
        time.sleep(1)
    if (target / ".complete").exists():
        return target, ""
    if venv_lock_held(link):
        return None, f"still being built after {timeout} s (log: {target}.log)"
    log = pathlib.Path(f"{target}.log")
    tail = log.read_text(errors="replace")[-3000:] if log.exists() else "(no build log)"
    return None, tail


def older_salt_venv(release):
    """The venv of Salt release (test/compat), waited for while scripts/setup
    still builds it; the test fails with the end of the build's log if that
    build failed."""
    import pytest  # noqa: PLC0415 (scripts/setup's checks run without pytest)

    link = TEST_DIR.parent / f".venv-salt{release}"
    target, log = wait_for_venv(link)
    if target is None:
        pytest.fail(f"{link}: scripts/setup's build of it did not succeed (the next "
                    f"./scripts/setup --tests builds it again):\n{log}")
    return link
