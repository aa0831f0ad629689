"""
A second Debian release for real: Debian 13 (trixie) made by mmdebstrap from
Debian's mirror, Salt (the pinned release, in a venv inside it) and the formula
applied inside, its own Postfix started there, mail relayed to a test relay on
the machine's loopback (the chroot shares the network, so its Postfix runs with
`listen: none`: port 25 on loopback stays the machine's).
"""

import pytest

from debian_chroot import build


@pytest.fixture(scope="module")
def trixie(tmp_path_factory):
    chroot = build(tmp_path_factory.mktemp("debian13") / "root", "trixie", "trixie")
    yield chroot
    chroot.run("postfix", "stop", check=False)
    chroot.close()
