"""
How ./run-tests hands test files to its workers (test/conftest.py): the
longest first by the last run's measured durations, each compat release a
unit of its own, and the suites waiting for a Debian tree last while
scripts/prebuild_trees.py still builds trees.
"""

import fcntl
import importlib.util
import json
import pathlib

# test/conftest.py by path: `import conftest` gets whichever suite's conftest
# was imported last.
_spec = importlib.util.spec_from_file_location(
    "root_conftest", pathlib.Path(__file__).resolve().parents[1] / "conftest.py")
conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(conftest)

COMPAT = "test/compat/test_older_salt.py"


def units(*nodeids):
    """xdist's work queue entries: (scope, {nodeid: done})."""
    queue = {}
    for nodeid in nodeids:
        queue.setdefault(conftest.work_unit(nodeid), {})[nodeid] = False
    return list(queue.items())


def order(monkeypatch, tmp_path, durations, queue):
    monkeypatch.setenv("POSTFIX_RELAY_TEST_CACHE", str(tmp_path))
    (tmp_path / conftest.DURATIONS_FILE).write_text(json.dumps(durations))
    return [scope for scope, _ in sorted(queue, key=conftest.unit_order(None))]


def test_longest_file_first_by_the_last_runs_durations(monkeypatch, tmp_path):
    queue = units("test/unit/test_a.py::t1", "test/unit/test_a.py::t2",
                  "test/integration/test_b.py::t")
    durations = {"test/unit/test_a.py::t1": 1, "test/unit/test_a.py::t2": 2,
                 "test/integration/test_b.py::t": 30}
    # xdist's own loadfile order is by test count: test_a (2 tests) first
    assert order(monkeypatch, tmp_path, durations, queue) == [
        "test/integration/test_b.py", "test/unit/test_a.py"]


def test_each_compat_release_is_a_unit_of_its_own(monkeypatch, tmp_path):
    queue = units(f"{COMPAT}::t[3007]", f"{COMPAT}::t[3006]", "test/unit/test_a.py::t")
    ordered = order(monkeypatch, tmp_path, {f"{COMPAT}::t[3007]": 90,
                                            f"{COMPAT}::t[3006]": 80}, queue)
    assert ordered == [f"{COMPAT}::t[3007]", f"{COMPAT}::t[3006]", "test/unit/test_a.py"]


def test_tree_suites_go_last_only_while_trees_are_built(monkeypatch, tmp_path):
    queue = units("test/pi/test_pi.py::t", "test/unit/test_a.py::t")
    durations = {"test/pi/test_pi.py::t": 60, "test/unit/test_a.py::t": 1}
    assert order(monkeypatch, tmp_path, durations, queue)[0] == "test/pi/test_pi.py"
    with open(tmp_path / "prebuild.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as scripts/prebuild_trees.py holds it
        assert order(monkeypatch, tmp_path, durations, queue) == [
            "test/unit/test_a.py", "test/pi/test_pi.py"]
