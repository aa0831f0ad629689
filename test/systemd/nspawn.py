"""
A Debian tree booted with systemd as its init (systemd-nspawn -b), in the
network namespace of the process that boots it: inside scripts/test-host
that is the test host's private loopback, where the test relay listens.

There is no systemd-machined on the machine, so the container is not
registered (--register=no) and commands run in it through nsenter on its
init's PID: they see its mounts, its /run/systemd (systemctl, journalctl
talk to its systemd and journald) and its PID namespace.
"""

import contextlib
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# The relay account's password of these tests (here, not in conftest.py: a test
# module's `from conftest import` gets whichever conftest was imported last).
PASSWORD = "Systemd-pw-7f3k-never-logged"

import debian_chroot  # noqa: E402

PACKAGES = ["systemd", "systemd-sysv", "dbus"]
PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def fetch_rsyslog(chroot):
    """rsyslog's packages in the tree's apt cache, not installed: the rsyslog
    variant installs them offline (a test host has no outside network)."""
    chroot.run("apt-get", "-q", "update", network=True)
    chroot.run("apt-get", "-q", "-y", "install", "--download-only", "rsyslog", network=True)


def tree(suite):
    """The cached systemd tree of suite, in a cache directory of its own:
    debian_chroot.prune() keeps one tree per suite and kind, and the plain
    bookworm/trixie trees other suites use live beside (given as an argument,
    not through the environment: scripts/prebuild_trees.py builds in threads)."""
    return debian_chroot.pristine(suite, packages=PACKAGES, prepare=fetch_rsyslog,
                                  cache=debian_chroot.cache_dir() / "systemd")


def build(work, suite, hostname):
    """The cached systemd tree of suite as an overlay at work/root
    (debian_chroot.session_copy(): the cached tree stays untouched), with
    resolver, host name and formula. unmount() undoes it."""
    return debian_chroot.session_copy(tree(suite), work / "root", hostname)


def unmount(work):
    """The overlay and its writable layer gone; fails if the cached tree
    changed."""
    try:
        debian_chroot.release(work / "root")
    finally:
        shutil.rmtree(work, ignore_errors=True)


class Container:
    """A booted tree: start() boots it, run() runs a command inside, stop()
    powers it off (and kills it if it does not go)."""

    def __init__(self, chroot, name, log_path):
        self.chroot, self.name, self.log_path = chroot, name, log_path
        self.proc = self.leader = None

    def start(self, timeout=60):
        """Boot; returns the state systemd reached (running or degraded)."""
        argv = ["systemd-nspawn", "--quiet", "--boot", "--directory", str(self.chroot.root),
                f"--machine={self.name}", f"--hostname={self.chroot.hostname}",
                "--register=no", "--keep-unit", "--console=read-only", "--link-journal=no",
                "--resolv-conf=off", "--timezone=off",
                # the booting process's network: the test host's own loopback
                f"--network-namespace-path=/proc/{os.getpid()}/ns/net"]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT)
        self.leader = self._find_leader(timeout)
        return self._wait_booted(timeout)

    def _find_leader(self, timeout):
        """The container's init: the child of systemd-nspawn that runs in
        another PID namespace."""
        own = os.readlink("/proc/self/ns/pid")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"systemd-nspawn exited:\n{self.boot_log()}"
            for pid in children(self.proc.pid):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/ns/pid") != own:
                        return pid
            time.sleep(0.05)
        raise AssertionError(f"no container init after {timeout} s:\n{self.boot_log()}")

    def _wait_booted(self, timeout):
        """Until systemd says the boot is over (systemctl cannot connect
        while its private socket is not there yet)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            res = self.run("systemctl", "is-system-running", "--wait", check=False,
                           timeout=max(1, deadline - time.monotonic()))
            state = res.stdout.strip()
            if state in ("running", "degraded"):
                return state
            time.sleep(0.2)
        raise AssertionError(f"not booted after {timeout} s:\n{self.boot_log()}")

    def run(self, *argv, input=None, check=True, timeout=120):
        """argv inside the container, as root, with a clean environment."""
        res = subprocess.run(
            ["nsenter", "-t", str(self.leader), "-m", "-u", "-i", "-n", "-p", "-C", "-r", "-w",
             "env", "-i", PATH, "HOME=/root", "LANG=C.UTF-8", *argv],
            input=input, capture_output=True, text=True, timeout=timeout)
        if check:
            assert res.returncode == 0, f"{argv}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
        return res

    def salt_call(self, *args, timeout=300):
        """(retcode, the JSON return or None, the process) of a masterless call."""
        return debian_chroot.masterless_call(self.run, *args, timeout=timeout)

    def boot_log(self):
        return pathlib.Path(self.log_path).read_text(errors="replace")[-4000:]

    def stop(self, timeout=30):
        """Power off (nspawn passes SIGTERM on as a shutdown request); kill
        what is left after timeout seconds."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def children(pid):
    """PIDs whose parent is pid."""
    found = []
    for task in pathlib.Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            found += [int(c) for c in task.read_text().split()]
    return found


if __name__ == "__main__":
    # Warm the cache (needs the machine's network): python3 test/systemd/nspawn.py bookworm
    for name in sys.argv[1:]:
        started = time.monotonic()
        print(name, tree(name), round(time.monotonic() - started, 1), "s", flush=True)
