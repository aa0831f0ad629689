"""
Upgrading from the last released formula (commit 931050e) to this tree, both
as SPM packages installed into one formula_path, the way a master's admin
upgrades: spm remove, spm local install, saltutil.sync_all, state.apply.

The upgraded host must look exactly like a fresh install of this tree (same
files in /etc/postfix, same main.cf parameters: nothing stale, nothing lost),
relay its mail, and the next apply must be a no-op.
"""

import pathlib
import shutil
import subprocess

import pytest
import yaml
from helpers import forwarded_logs

from conftest import (
    PASSWORD, REPO, USER, changed_ids, dump, flush_queue, new_token, send_with_sendmail,
    state_results, stop_postfix, wait_for_token,
)

PREVIOUS_RELEASE = "931050e"
SPM = str(REPO / ".venv" / "bin" / "spm")
POSTFIX_DIR = pathlib.Path("/etc/postfix")
# What scripts/test-host puts in /etc/postfix: the package's files, no main.cf.
PACKAGE_FILES = {"dynamicmaps.cf", "dynamicmaps.cf.d", "postfix-files", "postfix-files.d",
                 "post-install", "postfix-script", "main.cf.proto", "master.cf.proto",
                 "makedefs.out", "master.cf"}


def spm(conf_dir, *args):
    res = subprocess.run([SPM, "-c", str(conf_dir), "-y", *args], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def spm_root(root):
    (root / "conf").mkdir(parents=True)
    (root / "conf" / "spm").write_text("".join(f"{key}: {root / value}\n" for key, value in {
        "formula_path": "srv/salt", "pillar_path": "srv/pillar", "reactor_path": "srv/reactor",
        "spm_db": "spm.db", "spm_cache_dir": "cache", "spm_logfile": "spm.log",
        "cachedir": "cachedir", "spm_build_dir": "build",
        "spm_repos_config": "conf/spm.repos"}.items()))
    return root / "conf"


def build_package(source, build_dir):
    """spm build of a formula tree into build_dir; the package's path."""
    conf = spm_root(build_dir)
    spm(conf, "build", str(source))
    packages = list((build_dir / "build").glob("postfix_relay-*.spm"))
    assert len(packages) == 1, packages
    return packages[0]


def previous_release_tree(dest):
    dest.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", PREVIOUS_RELEASE],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def package_fresh_postfix():
    """/etc/postfix back to what the package left (as scripts/test-host makes it)."""
    stop_postfix()
    flush_queue()
    for entry in POSTFIX_DIR.iterdir():
        if entry.name in PACKAGE_FILES - {"master.cf"}:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    shutil.copy("/usr/share/postfix/master.cf.dist", POSTFIX_DIR / "master.cf")


def files_under(directory):
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def main_cf():
    out = subprocess.run(["postconf", "-n"], capture_output=True, text=True, check=True)
    return dict(line.split(" = ", 1) if " = " in line else (line.rstrip(" ="), "")
                for line in out.stdout.splitlines())


class Host:
    """One minion whose file root is an SPM formula_path."""

    def __init__(self, cli, spm_conf):
        self.cli, self.spm_conf = cli, spm_conf
        self.returns = []

    def install(self, package, replacing=False):
        if replacing:
            spm(self.spm_conf, "remove", "postfix_relay")
        spm(self.spm_conf, "local", "install", str(package))
        # Salt's module cache follows the formula only when synced (README).
        assert self.call("saltutil.sync_all").returncode == 0

    def call(self, *args):
        res = self.cli.run("--local", *args)
        self.returns.append(res.stdout + res.stderr)
        return res

    def apply(self):
        res = self.call("state.apply", "postfix_relay")
        assert res.returncode == 0, dump(res)
        assert all(v["result"] is True for v in state_results(res).values()), dump(res)
        return res


@pytest.fixture()
def host(salt_factories, tmp_path, relay, host_postfix):
    conf = spm_root(tmp_path / "installed")
    formula_path, pillar = tmp_path / "installed" / "srv" / "salt", tmp_path / "pillar"
    formula_path.mkdir(parents=True)
    pillar.mkdir()
    (pillar / "top.sls").write_text("base:\n  '*':\n    - postfix_relay\n")
    (pillar / "postfix_relay.sls").write_text(yaml.safe_dump({"postfix_relay": {
        "domain": "example.org", "hostname": "pi.example.org", "recipient": "me@example.org",
        "reply_to": "me@example.org",
        "relay": {"host": "127.0.0.1", "port": relay.port, "username": USER,
                  "password": PASSWORD, "tls": "encrypt"}}}))
    minion = salt_factories.salt_minion_daemon("postfix-relay-upgrade", overrides={
        "file_client": "local", "file_roots": {"base": [str(formula_path)]},
        "pillar_roots": {"base": [str(pillar)]}, **forwarded_logs("minion")})
    upgraded = Host(minion.salt_call_cli(timeout=300), conf)
    yield upgraded
    assert not [r for r in upgraded.returns if PASSWORD in r], "password in a return"


def relayed(relay):
    token = new_token()
    send_with_sendmail("root", token)
    return wait_for_token(relay, token, timeout=30)


def test_upgrade_from_previous_release_matches_a_fresh_install(host, tmp_path, relay):
    old = build_package(previous_release_tree(tmp_path / "previous"), tmp_path / "build-old")
    new = build_package(REPO, tmp_path / "build-new")
    # A fresh install of this tree: what the upgraded host must look like.
    package_fresh_postfix()
    host.install(new)
    host.apply()
    fresh_files, fresh_conf = files_under(POSTFIX_DIR), main_cf()

    package_fresh_postfix()
    host.install(old, replacing=True)
    host.apply()
    old_files, old_conf = files_under(POSTFIX_DIR), main_cf()
    assert relayed(relay)["auth_user"] == USER

    host.install(new, replacing=True)
    upgrade = host.apply()
    files, conf = files_under(POSTFIX_DIR), main_cf()
    stale = sorted(set(files) - set(fresh_files))
    assert stale == [], f"left by {PREVIOUS_RELEASE}: {stale}"
    assert files == fresh_files
    lost = {k: v for k, v in old_conf.items() if k not in conf}
    assert conf == fresh_conf, (f"changed by the upgrade: {changed_ids(upgrade)}; "
                                f"settings of {PREVIOUS_RELEASE} gone: {lost}")
    assert sorted(set(old_files) - set(files)) == sorted(set(old_files) - set(fresh_files))
    again = host.apply()
    assert changed_ids(again) == [], dump(again)
    relay.reset()
    record = relayed(relay)
    assert record["auth_user"] == USER and record["tls"] is True
    assert record["mail_from"] == "pi@example.org" and record["rcpt_tos"] == ["me@example.org"]
