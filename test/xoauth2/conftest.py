"""
XOAUTH2 for real: Debian has no usable plugin in 12 or 13, so these tests make a
Debian unstable tree (Postfix 3.11) with experimental as a package source
(sasl-xoauth2 0.27; that suite's Release may be past its Valid-Until on the
mirror, so apt skips that check for it), apply the formula inside, and relay
through a test relay that accepts only access tokens currently issued by a
test OAuth2 token endpoint (HTTPS with its own CA), both on loopback.
"""

import os
import pathlib
import shutil

import pytest

from debian_chroot import Chroot, build, install_formula


def _sid_tree(root):
    chroot = build(root, "sid", "sid", python="python3.13")
    # What a sysadmin does before applying: add the source that has the plugin.
    (root / "etc/apt/sources.list.d/experimental.list").write_text(
        "deb [check-valid-until=no] http://deb.debian.org/debian experimental main\n")
    (root / "etc/apt/apt.conf.d/99experimental-valid-until").write_text(
        'Acquire::Check-Valid-Until "false";\n')
    chroot.run("apt-get", "update", "-q")
    return chroot


@pytest.fixture(scope="module")
def sid(tmp_path_factory):
    kept = os.environ.get("XOAUTH2_KEEP_TREE")  # development only: build once, reuse
    if kept and pathlib.Path(kept, "opt/salt/bin/salt-call").exists():
        root = pathlib.Path(kept)
        for name in ("postfix_relay", "_modules", "_states", "_utils", "../pillar"):
            shutil.rmtree(root / "srv/salt" / name)
        install_formula(root)
        chroot = Chroot(root, "sid")
    else:
        chroot = _sid_tree(pathlib.Path(kept) if kept else
                           tmp_path_factory.mktemp("sid") / "root")
    yield chroot
    chroot.run("postfix", "stop", check=False)
