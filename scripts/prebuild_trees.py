"""
scripts/prebuild_trees.py: build every Debian tree the test suites use, all at
once, so that a cold ./run-tests waits for the slowest tree (the arm64 Pi tree
under emulation) instead of their sum. scripts/setup --tests starts it in the
background (log: <tree cache>/prebuild.log) and goes on building the compat
venvs; the tests find each tree cached, or wait on its lock while it is
built. A tree that fails here is built again (and its error shown) by the
suite that needs it. Needs this machine's network: run it outside a test host.

The trees are named by the suites' own functions (same keys as the tests').
"""

import concurrent.futures
import fcntl
import importlib.util
import os
import pathlib
import sys
import threading
import time
import traceback

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "test"), str(REPO / "test/systemd"), str(REPO / "test/pi")]

import arm64_tree  # noqa: E402
import debian_chroot  # noqa: E402
import nspawn  # noqa: E402


def suite_module(path, name):
    """A suite's conftest, loaded by path (they are all named conftest)."""
    spec = importlib.util.spec_from_file_location(name, REPO / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sid_tree():
    xoauth2 = suite_module("test/xoauth2/conftest.py", "xoauth2_conftest")
    return debian_chroot.pristine("sid", python="python3.13", prepare=xoauth2.prepare)


# Longest first: the pool starts them in this order.
TREES = {
    "pi bookworm arm64": lambda: arm64_tree.pristine("bookworm"),
    "systemd trixie": lambda: nspawn.tree("trixie"),
    "systemd bookworm": lambda: nspawn.tree("bookworm"),
    "debian13 trixie": lambda: debian_chroot.pristine("trixie"),
    "xoauth2 sid": sid_tree,
}
# The arm64 tree is the longest (its dpkg and maintainer scripts run one at
# a time under qemu) and the tests that need it wait for it: it runs ahead of
# the other trees and of the tests on this machine's few cores (a nice value
# is a thread's, and what it starts inherits it).
NICE = {"pi bookworm arm64": -5}


def build(name):
    started = time.monotonic()
    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE.get(name, 0))
    try:
        tree = TREES[name]()
    except Exception:  # noqa: BLE001 - the suite builds it again and fails there
        return f"{name}: FAILED after {time.monotonic() - started:.0f} s\n{traceback.format_exc()}"
    return f"{name}: {tree} in {time.monotonic() - started:.0f} s"


def main():
    cache = debian_chroot.cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    # Held while building: the test run's scheduler puts the tree suites last meanwhile.
    with open(cache / "prebuild.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print("prebuild: another prebuild is running", flush=True)
            return 0
        with concurrent.futures.ThreadPoolExecutor(len(TREES)) as pool:
            for done in concurrent.futures.as_completed([pool.submit(build, n) for n in TREES]):
                print(time.strftime("%H:%M:%S"), done.result(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
