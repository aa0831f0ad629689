"""Root conftest: makes test/ importable (relay.py, helpers.py) for every suite,
and stops a run in one line when a collected suite needs a command or venv
that is not there (instead of one traceback per test)."""

import logging
import os
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from setup_check import PREREQUISITES, TEST_DIR, missing_prerequisite, suite_commands  # noqa: E402

# test/testinfra checks a host the formula was applied to with a given pillar
# (kitchen's verifier, or test_kitchen_suites.py after applying it): not a suite
# of its own.
collect_ignore = [] if os.environ.get("POSTFIX_RELAY_PILLAR") else ["testinfra"]


def pytest_collection_modifyitems(session, config, items):
    """Check once, before any test runs, what the collected suites need."""
    suites = set()
    for item in items:
        relative = pathlib.Path(str(item.path)).resolve().relative_to(TEST_DIR)
        if len(relative.parts) > 1:
            suites.add(relative.parts[0])
    problem = missing_prerequisite(suites, suite_commands(PREREQUISITES.read_text()))
    if problem:
        pytest.exit(problem, returncode=pytest.ExitCode.USAGE_ERROR)
    # Suites that first build a Debian tree (minutes when the cache is cold)
    # start first: pytest-xdist hands out modules in this order, so the other
    # worker runs the rest meanwhile instead of waiting for them at the end.
    order = {suite: rank for rank, suite in enumerate(FIRST_SUITES)}
    items.sort(key=lambda item: order.get(_suite_of(item), len(FIRST_SUITES)))


FIRST_SUITES = ("pi", "xoauth2", "systemd", "debian13", "compat", "fleet")


def _suite_of(item):
    relative = pathlib.Path(str(item.path)).resolve().relative_to(TEST_DIR)
    return relative.parts[0] if len(relative.parts) > 1 else ""


@pytest.fixture(scope="session")
def salt_factories_default_root_dir(tmp_path_factory):
    """Salt's daemons and CLIs keep their config and cache under pytest's tmp dir."""
    return tmp_path_factory.mktemp("salt-factories")


def pytest_unconfigure(config):
    """Salt's deferred log handler flushes at exit into pytest's closed capture
    stream; drop those records quietly so the run ends on pytest's summary."""
    logging.raiseExceptions = False
