"""
A machine without a command the tests need costs one clear line, from
scripts/setup and from pytest, not a traceback per test (issue 13: without
debootstrap, which made the trees then, 22 errors and ~4,400 lines). The
command is hidden for real: /dev/null (not executable) bind-mounted over it in
a private mount namespace, so this machine keeps it.
"""

import os
import shutil
import subprocess

import pytest

from setup_check import PREREQUISITES, TEST_DIR, missing_prerequisite, suite_commands

REPO = TEST_DIR.parent


def without(command, *argv):
    """Run argv in the repository with command hidden from it."""
    path = shutil.which(command, path="/usr/sbin:/usr/bin:/sbin:/bin")
    assert path, command
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
         'mount --bind /dev/null "$0" && exec "$@"', path, *argv],
        cwd=REPO, capture_output=True, text=True, timeout=300)


def test_pytest_stops_in_one_line_naming_the_missing_command():
    res = without("mmdebstrap", str(REPO / ".venv/bin/pytest"), "-p", "no:cacheprovider",
                  "test/debian13")
    out = res.stdout + res.stderr
    assert res.returncode == pytest.ExitCode.USAGE_ERROR, out[-3000:]
    assert "test/debian13 needs the command 'mmdebstrap' (Debian package mmdebstrap): " \
           "run ./scripts/setup --tests" in out
    assert "Traceback" not in out and len(out.splitlines()) < 10, out[-3000:]


def test_setup_names_the_missing_command_and_fails():
    res = without("gpgconf", str(REPO / "scripts/setup"), "--tests")
    assert res.returncode == 1, res.stdout + res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith(
        "setup: command 'gpgconf' is missing after installing Debian package gnupg"), res.stderr


def test_every_listed_command_is_here_after_setup():
    needs = suite_commands(PREREQUISITES.read_text())
    assert {"mmdebstrap", "unshare", "gpg", "postconf", "mail"} <= {
        command for pairs in needs.values() for command, _ in pairs}
    assert missing_prerequisite(set(needs), needs) is None


def test_a_suite_needing_nothing_listed_is_not_stopped():
    needs = suite_commands("foo  tests  other  no-such-command-4711\n")
    assert missing_prerequisite({"unit"}, needs) is None
    assert "'no-such-command-4711' (Debian package foo)" in missing_prerequisite({"other"}, needs)


def test_suites_that_drive_postfix_stop_outside_a_test_host():
    """Bare pytest on this machine: one line, before anything touches its
    Postfix or queue (collect-only: a broken check would only list tests)."""
    env = {k: v for k, v in os.environ.items() if k != "TEST_HOST_MACHINE_NET"}
    res = subprocess.run([str(REPO / ".venv/bin/pytest"), "-p", "no:cacheprovider",
                          "--collect-only", "-q", "test/integration/test_secrets.py"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    out = res.stdout + res.stderr
    assert res.returncode == pytest.ExitCode.USAGE_ERROR, out[-3000:]
    assert "test/integration drives Postfix and deletes queued mail: run it in a private " \
           "test host" in out
    assert "Traceback" not in out and len(out.splitlines()) < 10, out[-3000:]
