"""Root conftest: makes test/ importable (relay.py, helpers.py) for every suite."""

import logging
import os
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

# test/testinfra checks a host the formula was applied to with a given pillar
# (kitchen's verifier, or test_kitchen_suites.py after applying it): not a suite
# of its own.
collect_ignore = [] if os.environ.get("POSTFIX_RELAY_PILLAR") else ["testinfra"]


@pytest.fixture(scope="session")
def salt_factories_default_root_dir(tmp_path_factory):
    """Salt's daemons and CLIs keep their config and cache under pytest's tmp dir."""
    return tmp_path_factory.mktemp("salt-factories")


def pytest_unconfigure(config):
    """Salt's deferred log handler flushes at exit into pytest's closed capture
    stream; drop those records quietly so the run ends on pytest's summary."""
    logging.raiseExceptions = False
