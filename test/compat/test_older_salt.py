"""
The custom modules on the Salt releases users still run: 3007 and 3006 LTS,
each in its own venv (pinned in requirements-salt3007.txt / -salt3006.txt, built
by scripts/setup). The unit and functional suites run there unchanged: the
execution modules, states and the postmap state through that Salt's loaders.
"""

import subprocess

import pytest

from helpers import REPO
from setup_check import older_salt_venv


# The property sweeps (hypothesis tests, marked "sweep" by test/conftest.py)
# judge the modules' own parsing and validation against Postfix, which uses no
# Salt API that differs between releases; every other test of the same modules
# runs here through that Salt's loaders. They run on the pinned Salt only.
NOT_ON_OLDER_SALT = "not sweep"


@pytest.mark.parametrize("release", ["3007", "3006"])
def test_unit_and_functional_suites_pass_on_older_salt(release):
    venv = older_salt_venv(release)
    version = subprocess.run([str(venv / "bin" / "salt-call"), "--version"],
                             capture_output=True, text=True, check=True).stdout
    assert version.startswith(f"salt-call {release}."), version
    res = subprocess.run(
        [str(venv / "bin" / "pytest"), "-q", "-p", "no:cacheprovider", "-o", "testpaths=",
         "-m", NOT_ON_OLDER_SALT, "test/unit", "test/functional"],
        cwd=REPO, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert " passed" in res.stdout.splitlines()[-1]
