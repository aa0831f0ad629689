"""
Debian 12 and Debian 13 booted with systemd (systemd-nspawn -b), one boot per
variant: journald only, then rsyslog writing /var/log/mail.log. Runs only
inside scripts/test-host: the container shares the test host's network (its
Postfix reaches the test relay on 127.0.0.1, its port 25 is private) and its
PID namespace (the container dies with the test host).
"""

import os
import pathlib
import subprocess
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import nspawn  # noqa: E402
from relay import Relay  # noqa: E402

VARIANTS = [("bookworm", "journald"), ("trixie", "journald"),
            ("bookworm", "rsyslog"), ("trixie", "rsyslog")]
PASSWORD = nspawn.PASSWORD


def pytest_collection_modifyitems(items):
    # Booting in the machine's own network would put a second Postfix there.
    if os.environ.get("TEST_HOST_MACHINE_NET"):
        return
    skip = pytest.mark.skip(reason="boots a systemd host: run inside scripts/test-host")
    for item in items:
        if pathlib.Path(__file__).parent in pathlib.Path(item.fspath).parents:
            item.add_marker(skip)


def install_rsyslog(chroot):
    """rsyslog from the tree's apt cache (offline), enabled for the boot but
    not started now (policy-rc.d: nothing runs outside the container)."""
    policy = chroot.path("/usr/sbin/policy-rc.d")
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    try:
        chroot.run("apt-get", "-q", "-y", "--no-download", "install", "rsyslog")
    finally:
        policy.unlink()


@pytest.fixture(scope="module", autouse=True)
def quiet_loopback():
    """The containers share this test host's network: a Postfix of the test
    host itself (started by other suites on this worker) would answer on
    127.0.0.1:25 for them. Stopped while they run, started again after."""
    running = subprocess.run(["postfix", "status"], capture_output=True).returncode == 0
    if running:
        subprocess.run(["postfix", "stop"], capture_output=True, check=True)
    yield
    if running:
        subprocess.run(["postfix", "start"], capture_output=True, check=False)


@pytest.fixture(scope="module", params=VARIANTS, ids="-".join)
def host(request, tmp_path_factory):
    suite, logger = request.param
    tmp = tmp_path_factory.mktemp(f"systemd-{suite}-{logger}")
    chroot = nspawn.build(tmp / "tree", suite, f"{suite}-sd")
    box = nspawn.Container(chroot, f"pr-{suite}-{logger}", tmp / "boot.log")
    box.suite, box.logger = suite, logger
    try:
        # systemd sets the host name from /etc/hostname at boot (mmdebstrap
        # copied the machine's there)
        chroot.path("/etc/hostname").write_text(chroot.hostname + "\n")
        if logger == "rsyslog":
            install_rsyslog(chroot)
        box.boot_state = box.start()
        yield box
    finally:
        box.stop()
        nspawn.unmount(tmp / "tree")


@pytest.fixture(scope="module")
def relay(tmp_path_factory):
    with Relay(tls="starttls", mechanisms=("PLAIN", "LOGIN"), users={"systemd": PASSWORD},
               cert_dir=str(tmp_path_factory.mktemp("systemd-relay"))) as server:
        yield server
