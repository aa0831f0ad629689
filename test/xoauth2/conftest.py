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


def add_experimental(chroot):
    """What a sysadmin does before applying: add the source that has the plugin."""
    (chroot.root / "etc/apt/sources.list.d/experimental.list").write_text(
        "deb [check-valid-until=no] http://deb.debian.org/debian experimental main\n")
    (chroot.root / "etc/apt/apt.conf.d/99experimental-valid-until").write_text(
        'Acquire::Check-Valid-Until "false";\n')


@pytest.fixture(scope="module")
def sid(tmp_path_factory):
    chroot = build(tmp_path_factory.mktemp("sid") / "root", "sid", "sid",
                   python="python3.13", prepare=add_experimental)
    # The cached tree's package lists age with unstable; the formula installs
    # from them. The test host has no way out but these downloads: the plugin's
    # package is fetched now and installed by the formula from apt's cache.
    chroot.run("apt-get", "update", "-q", network=True)
    chroot.run("apt-get", "install", "-q", "-y", "--download-only", "sasl-xoauth2",
               network=True)
    yield chroot
    chroot.run("postfix", "stop", check=False)
