"""What the test suites need from this machine (scripts/prerequisites.txt):
the root conftest checks it before any test runs."""

import os
import pathlib
import shutil

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
            if not (TEST_DIR.parent / venv / "bin" / "salt-call").exists():
                return f"test/{suite} needs {venv}: run ./scripts/setup --tests"
    return None
