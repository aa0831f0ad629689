"""
Every os_family the formula names renders to the packages and paths that family
needs. Only Debian is applied for real here; the others are rendered with the
os_family grain set, through the same map and SLS files.
"""

import pytest
import yaml

from conftest import REPO

FAMILIES = yaml.safe_load((REPO / "postfix_relay" / "osfamilymap.yaml").read_text())
EXPECTED_SASL = {
    "Debian": "libsasl2-modules",
    "RedHat": "cyrus-sasl-plain",
    "Suse": "cyrus-sasl-plain",
    "Alpine": "cyrus-sasl-plain",
    "Arch": "libsasl",
    "FreeBSD": "cyrus-sasl",
}


def test_every_family_in_the_map_is_checked():
    assert set(FAMILIES) == set(EXPECTED_SASL)


@pytest.mark.parametrize("family", sorted(EXPECTED_SASL))
def test_family_renders_postfix_and_its_sasl_plugins(salt_factories, file_root,
                                                     pillar_root, family):
    minion = salt_factories.salt_minion_daemon(
        f"family-{family.lower()}",
        overrides={"file_client": "local", "file_roots": {"base": [str(file_root)]},
                   "pillar_roots": {"base": [str(pillar_root)]},
                   "grains": {"os_family": family}})
    cli = minion.salt_call_cli(timeout=120)
    assert cli.run("--local", "saltutil.sync_all").returncode == 0
    res = cli.run("--local", "state.show_sls", "postfix_relay.package")
    assert res.returncode == 0, res.stdout
    pkgs = res.data["postfix-relay-package-installed"]["pkg"]
    pkgs = next(item["pkgs"] for item in pkgs if isinstance(item, dict) and "pkgs" in item)
    assert pkgs[0].startswith("postfix")
    assert EXPECTED_SASL[family] in pkgs
    lookup = cli.run("--local", "postfix_relay_settings.lookup").data
    assert lookup["config_dir"].endswith("/postfix")
    assert lookup["ca_bundle"].startswith("/")
