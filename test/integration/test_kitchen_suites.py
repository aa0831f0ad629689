"""
kitchen.yml, checked and run here without Docker: every suite's pillar file and
the verifier's tests exist, and each suite is applied to this host and verified
by the same testinfra tests with --hosts=local://.
"""

import os
import subprocess

import pytest
import yaml

from conftest import REPO, dump

KITCHEN = yaml.safe_load((REPO / "kitchen.yml").read_text())
SUITES = {s["name"]: s["provisioner"]["pillars_from_files"]["postfix_relay.sls"]
          for s in KITCHEN["suites"]}
TESTINFRA = REPO / "test" / "testinfra"


def test_every_suite_pillar_and_the_verifier_exist():
    assert set(SUITES) == {"default", "local_mode", "no_listener"}
    for path in SUITES.values():
        assert (REPO / path).is_file(), path
    command = KITCHEN["verifier"]["command"]
    assert "test/kitchen/pillar/${KITCHEN_SUITE}.sls" in command
    assert "test/testinfra" in command and TESTINFRA.is_dir()
    names = {p["name"] for p in KITCHEN["platforms"]}
    assert {"debian-11", "debian-12", "debian-13", "ubuntu-22.04", "ubuntu-24.04",
            "rockylinux-9", "fedora-latest", "opensuse-leap-15", "arch"} <= names


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_suite_applied_here_passes_the_testinfra_verifier(applier, suite):
    subprocess.run(["postsuper", "-d", "ALL"], capture_output=True, check=False)
    data = yaml.safe_load((REPO / SUITES[suite]).read_text())["postfix_relay"]
    res = applier.apply(data)
    assert res.returncode == 0, dump(res)
    env = dict(os.environ, POSTFIX_RELAY_PILLAR=str(REPO / SUITES[suite]))
    out = subprocess.run(
        [str(REPO / ".venv" / "bin" / "pytest"), "-q", "-p", "no:cacheprovider",
         "-o", "testpaths=", "--hosts=local://", str(TESTINFRA)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert " passed" in out.stdout and "failed" not in out.stdout
