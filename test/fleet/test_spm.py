"""
The formula as an SPM package: `spm build` from the repository (FORMULA),
`spm local install` into a file root, and a minion of a real master applies it
from there and relays its mail.
"""

import pathlib
import subprocess

from conftest import REPO, fleet_running, start_fleet

SPM = str(REPO / ".venv" / "bin" / "spm")


def spm(conf_dir, *args):
    res = subprocess.run([SPM, "-c", str(conf_dir), "-y", *args], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def test_spm_build_install_and_apply(salt_factories, tmp_path, fleet_roots, gpg_keydir,
                                     fleet_relay):
    root = tmp_path / "spm"
    (root / "conf").mkdir(parents=True)
    (root / "conf" / "spm").write_text("".join(f"{key}: {root / value}\n" for key, value in {
        "spm_build_dir": "build", "formula_path": "srv/salt", "pillar_path": "srv/pillar",
        "reactor_path": "srv/reactor", "spm_db": "spm.db", "spm_cache_dir": "cache",
        "spm_logfile": "spm.log", "cachedir": "cachedir",
        "spm_repos_config": "conf/spm.repos"}.items()))
    version = next(line.split(":", 1)[1].strip() for line in
                   (REPO / "FORMULA").read_text().splitlines() if line.startswith("version:"))
    spm(root / "conf", "build", str(REPO))
    package = root / "build" / f"postfix_relay-{version}-1.spm"
    assert package.exists()
    spm(root / "conf", "local", "install", str(package))
    installed = root / "srv" / "salt"
    for name in ("postfix_relay/init.sls", "postfix_relay/map.jinja", "_modules/postmap.py",
                 "_states/postmap.py", "_utils/postfix_files.py"):
        assert (installed / name).is_file(), name
    # The package holds the formula only (no tests, no venv).
    assert not (installed / "test").exists() and not (installed / ".venv").exists()
    assert "postfix_relay" in spm(root / "conf", "list", "packages")

    _, pillar = fleet_roots
    master, hosts, minions = start_fleet(salt_factories, tmp_path / "hosts", (installed, pillar),
                                         gpg_keydir, ("spm1",), master_id="spm-master")
    with fleet_running(master, minions, hosts):
        cli = master.salt_cli(timeout=300)
        assert cli.run("saltutil.sync_all", minion_tgt="spm1").returncode == 0
        res = cli.run("state.apply", "postfix_relay", minion_tgt="spm1")
        assert res.returncode == 0, res.stdout[-3000:]
        assert all(v["result"] is True for v in res.data.values())
        fleet_relay.reset()
        res = cli.run("postfix_relay.verify", "timeout=60", minion_tgt="spm1")
        assert res.data["status"] == "sent", res.data
    record = fleet_relay.wait_for(1)[0]
    assert record["mail_from"] == "spm1@example.org"
    assert pathlib.Path(hosts["spm1"].path("/etc/postfix/main.cf")).read_text().startswith(
        "# Managed by Salt (postfix_relay formula)")
