"""
A Raspberry Pi stand-in: an arm64 Debian 12 tree run through qemu-user-static
(binfmt_misc), the pinned Salt inside, the formula applied there masterless as a
Pi owner does. Its Postfix shares the test host's network and relays to a test
relay on the test host's loopback. The tree and its Salt venv are cached (slow
under emulation); a warm run copies them and pays only the apply.
"""

import pathlib
import sys
import time

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import arm64_tree  # noqa: E402


@pytest.fixture(scope="module")
def pi(tmp_path_factory):
    problem = arm64_tree.binfmt_problem()
    if problem:
        pytest.fail(problem, pytrace=False)
    started = time.monotonic()
    chroot = arm64_tree.build(tmp_path_factory.mktemp("pi") / "root", "bookworm", "pi")
    # Shown with -s or in --durations: cold (mmdebstrap + Salt under emulation) vs warm.
    print(f"\npi tree ready in {time.monotonic() - started:.0f} s")
    yield chroot
    chroot.run("postfix", "stop", check=False)
    chroot.close()
