"""
XOAUTH2 for real: Debian has no usable plugin in 12 or 13, so these tests make a
Debian unstable tree (Postfix 3.11) with experimental as a package source
(sasl-xoauth2 0.27; that suite's Release may be past its Valid-Until on the
mirror, so apt skips that check for it), apply the formula inside, and relay
through a test relay that accepts only access tokens currently issued by a
test OAuth2 token endpoint (HTTPS with its own CA), both on loopback.
"""

import pytest

from debian_chroot import build


def prepare(chroot):
    """What a sysadmin does before applying, done once and cached with the
    tree: add the source that has the plugin. And what the tests need of the
    network, which a test host does not have: apt's package lists (both
    suites) and the plugin's packages in apt's cache, not installed (the
    formula installs them). Python 3, which the plugin's token tool pulls in
    and a Debian host has anyway, is installed now: its dozen packages and
    byte-compiling were most of each module's install time."""
    (chroot.root / "etc/apt/sources.list.d/experimental.list").write_text(
        "deb [check-valid-until=no] http://deb.debian.org/debian experimental main\n")
    (chroot.root / "etc/apt/apt.conf.d/99experimental-valid-until").write_text(
        'Acquire::Check-Valid-Until "false";\n')
    chroot.run("apt-get", "update", "-q", network=True)
    chroot.run("apt-get", "install", "-q", "-y", "python3", network=True, timeout=1200)
    chroot.run("apt-get", "clean")  # installed: only the plugin's packages stay in the cache
    chroot.run("apt-get", "install", "-q", "-y", "--download-only", "sasl-xoauth2",
               network=True)
    # Downloads done (with apt's retries): in the test host, which has no way
    # out, the apt-get update Salt's pkg.installed runs before installing
    # fails at once instead of retrying for 7 s.
    (chroot.root / "etc/apt/apt.conf.d/99test-host-no-retries").write_text(
        'Acquire::Retries "0";\n')


@pytest.fixture(scope="module")
def sid(tmp_path_factory):
    chroot = build(tmp_path_factory.mktemp("sid") / "root", "sid", "sid",
                   python="python3.13", prepare=prepare)
    yield chroot
    chroot.run("postfix", "stop", check=False)
    chroot.close()
