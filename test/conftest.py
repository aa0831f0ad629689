"""Root conftest: makes test/ importable (relay.py, helpers.py) for every suite,
and stops a run in one line when a collected suite needs a command or venv
that is not there (instead of one traceback per test)."""

import contextlib
import json
import logging
import os
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from setup_check import (  # noqa: E402
    PREREQUISITES, SUITE_VENVS, TEST_DIR, lock_held, missing_prerequisite, suite_commands,
    venvs_being_built,
)

# test/testinfra checks a host the formula was applied to with a given pillar
# (kitchen's verifier, or test_kitchen_suites.py after applying it): not a suite
# of its own.
collect_ignore = [] if os.environ.get("POSTFIX_RELAY_PILLAR") else ["testinfra"]


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(session, config, items):
    """Check once, before any test runs, what the collected suites need; mark
    the property sweeps (hypothesis tests) ``sweep``."""
    suites = set()
    for item in items:
        if getattr(getattr(item, "obj", None), "is_hypothesis_test", False):
            item.add_marker("sweep")
        relative = pathlib.Path(str(item.path)).resolve().relative_to(TEST_DIR)
        if len(relative.parts) > 1:
            suites.add(relative.parts[0])
    problem = (outside_test_host(suites)
               or missing_prerequisite(suites, suite_commands(PREREQUISITES.read_text())))
    if problem:
        pytest.exit(problem, returncode=pytest.ExitCode.USAGE_ERROR)


# Suites that drive "the host's" Postfix (/etc/postfix, the queue: some delete
# every queued message): only in a private test host, which scripts/test-host
# marks with TEST_HOST_MACHINE_NET.
HOST_POSTFIX_SUITES = ("integration", "fleet", "compat", "isolation")


def outside_test_host(suites):
    """One line when a collected suite would drive this machine's own Postfix."""
    if os.environ.get("TEST_HOST_MACHINE_NET"):
        return None
    for suite in sorted(set(suites) & set(HOST_POSTFIX_SUITES)):
        return (f"test/{suite} drives Postfix and deletes queued mail: run it in a private "
                f"test host (./run-tests, or scripts/test-host .venv/bin/pytest test/{suite})")
    return None


# Suites whose tests wait for a Debian tree (debian_chroot.pristine): minutes
# each while the tree is built, so they go last while scripts/setup --tests
# still builds trees in the background (test/prebuild_trees.py).
TREE_SUITES = ("pi", "systemd", "debian13", "xoauth2")
# Files whose tests share no costly module fixture: each test is a unit of its
# own, so that each Salt release's compat run can go to another worker.
SPLIT_FILES = ("test/compat/test_older_salt.py",)
# Seconds a test of a suite takes when the last run's durations do not say
# (first run, new test), from a warm run: enough to put the slow ones first.
PRIOR_SECONDS = {"compat": 100, "isolation": 60, "pi": 25, "xoauth2": 8, "fleet": 5,
                 "debian13": 5, "integration": 2, "systemd": 2}
DURATIONS_FILE = "durations.json"


@pytest.hookimpl(optionalhook=True)  # test/compat's venvs have no xdist
def pytest_xdist_make_scheduler(config, log):
    """Longest work first (what the last run measured), each file on one
    worker: xdist's loadfile sends the files with the most tests first, which
    left the two slowest tests (compat, one file) to one worker at the end."""
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class LongestFirst(LoadFileScheduling):
        ordered = False

        def _split_scope(self, nodeid):
            return work_unit(nodeid)

        def _assign_work_unit(self, node):
            if not self.ordered:  # the first assignment: the queue is complete
                self.ordered = True
                units = sorted(self.workqueue.items(), key=unit_order(self.config))
                self.workqueue.clear()
                self.workqueue.update(units)
            super()._assign_work_unit(node)

    return LongestFirst(config, log)


def work_unit(nodeid):
    """The scope a test is handed out with: its file, or itself in SPLIT_FILES."""
    path = nodeid.split("::", 1)[0]
    return nodeid if path in SPLIT_FILES else path


def unit_order(config):
    """Sort key of a work unit (scope, {nodeid: done}): tree suites last
    while trees are still being built, and test/compat while its venvs are,
    then the longest first."""
    known = _durations_read()
    building = _trees_being_built()
    late = {suite for suite in SUITE_VENVS if venvs_being_built(suite)}
    if building:
        late.update(TREE_SUITES)

    def key(unit):
        scope, nodeids = unit
        suite = _suite_of_nodeid(scope)
        cost = sum(known.get(n, PRIOR_SECONDS.get(suite, 0.5)) for n in nodeids)
        return (suite in late, -cost)
    return key


def _suite_of_nodeid(nodeid):
    parts = pathlib.PurePath(nodeid.split("::", 1)[0]).parts
    return parts[1] if len(parts) > 2 and parts[0] == "test" else ""


def _trees_being_built():
    """True while test/prebuild_trees.py holds its lock."""
    from debian_chroot import cache_dir

    return lock_held(cache_dir() / "prebuild.lock")


def _durations_path():
    from debian_chroot import cache_dir
    return cache_dir() / DURATIONS_FILE


def _durations_read():
    try:
        return json.loads(_durations_path().read_text())
    except (OSError, ValueError):
        return {}


_measured = {}


def pytest_runtest_logreport(report):
    """Each test's setup + call + teardown seconds (on the xdist controller
    too: it sees every worker's reports)."""
    _measured[report.nodeid] = _measured.get(report.nodeid, 0.0) + report.duration


def pytest_sessionfinish(session):
    """The measured durations, merged into the last run's, for the next
    run's order (by the xdist controller only: not its workers, nor the
    pytest runs some tests start inside, under another Salt)."""
    config = session.config
    if hasattr(config, "workerinput") or getattr(config.option, "dist", "no") == "no":
        return
    if not _measured:
        return
    with contextlib.suppress(OSError):
        path = _durations_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        merged = {**_durations_read(), **{k: round(v, 2) for k, v in _measured.items()}}
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(merged, sort_keys=True))
        tmp.replace(path)


@pytest.fixture(scope="session")
def salt_factories_default_root_dir(tmp_path_factory):
    """Salt's daemons and CLIs keep their config and cache under pytest's tmp dir."""
    return tmp_path_factory.mktemp("salt-factories")


def pytest_unconfigure(config):
    """Salt's deferred log handler flushes at exit into pytest's closed capture
    stream; drop those records quietly so the run ends on pytest's summary."""
    logging.raiseExceptions = False
