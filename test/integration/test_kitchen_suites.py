"""
kitchen.yml run here without Docker: each suite is applied to this host with its
pillar file and verified by the same testinfra tests with --hosts=local://, and
kitchen's verifier reads the pillar its suite applied.
"""

import os
import re
import subprocess

import pytest
import yaml

from conftest import REPO, dump

KITCHEN = yaml.safe_load((REPO / "kitchen.yml").read_text())
SUITES = {s["name"]: s["provisioner"]["pillars_from_files"]["postfix_relay.sls"]
          for s in KITCHEN["suites"]}
TESTINFRA = REPO / "test" / "testinfra"


def test_kitchen_verifies_each_suite_with_the_pillar_it_applied():
    # What `kitchen verify` runs for a suite: the verifier command with that
    # suite's name; its testinfra checks must read the pillar the suite applied.
    command = KITCHEN["verifier"]["command"]
    for suite, applied in SUITES.items():
        expanded = command.replace("${KITCHEN_SUITE}", suite)
        verified = re.search(r"POSTFIX_RELAY_PILLAR=(\S+)", expanded).group(1)
        assert verified == applied, suite
        assert (REPO / applied).is_file(), applied
        assert (REPO / expanded.split()[-1]).is_dir(), expanded  # the tests it runs


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
