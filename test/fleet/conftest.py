"""
A fleet on one machine: a real salt-master and salt-minions started by
pytest-salt-factories, each minion its own host in private mount and UTS
namespaces (`unshare`): its own hostname, /etc (an overlay), /etc/postfix,
Postfix queue, data and log directories. No host sees another's Postfix files.

The hosts share the machine's network; their Postfix runs with `listen: none`
(no SMTP listener), so they don't compete for port 25 on loopback.
"""

import contextlib
import os
import pathlib
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from helpers import forwarded_logs

REPO = pathlib.Path(__file__).resolve().parents[2]
PYTHON = str(REPO / ".venv" / "bin" / "python3")
PRIVATE_DIRS = ("/etc/postfix", "/var/spool/postfix", "/var/lib/postfix", "/var/log", "/var/mail")
# The Postfix files a fresh package install has (no main.cf: "No configuration").
PRISTINE = ("dynamicmaps.cf", "dynamicmaps.cf.d", "postfix-files", "postfix-files.d",
            "post-install", "postfix-script", "main.cf.proto", "master.cf.proto", "makedefs.out")

WRAPPER = """#!/bin/sh
# Runs the minion's python as host {host_id}: own hostname, own /etc (overlay)
# and Postfix directories, in private mount and UTS namespaces.
exec unshare --mount --uts --propagation private -- /bin/sh -c '
set -e
hostname {host_id}
mount -t overlay overlay -o lowerdir=/etc,upperdir={root}/etc,workdir={root}/etc-work /etc
for dir in {dirs}; do mount --bind "{root}$dir" "$dir"; done
grep -q " {host_id}$" /etc/hosts || echo "127.0.1.1 {host_id}.example.org {host_id}" >> /etc/hosts
exec {python} "$@"' host "$@"
"""


class Host:
    """One fleet host's private directories and its python wrapper."""

    def __init__(self, base, host_id):
        self.id = host_id
        self.root = base / host_id
        for sub in ("etc", "etc-work", *(d.lstrip("/") for d in PRIVATE_DIRS)):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        conf = self.root / "etc/postfix"
        for name in PRISTINE:
            src = pathlib.Path("/etc/postfix") / name
            if src.is_symlink():
                (conf / name).symlink_to(os.readlink(src))
            elif src.is_dir():
                shutil.copytree(src, conf / name)
            elif src.exists():
                shutil.copy2(src, conf / name)
        dist = pathlib.Path("/usr/share/postfix/master.cf.dist")
        shutil.copy2(dist if dist.exists() else conf / "master.cf.proto", conf / "master.cf")
        shutil.chown(self.root / "var/lib/postfix", "postfix", "postfix")
        self.wrapper = self.root / "python"
        # salt-factories starts the minion as `python_executable script args`.
        self.wrapper.write_text(WRAPPER.format(host_id=host_id, root=self.root, python=PYTHON,
                                               dirs=" ".join(PRIVATE_DIRS)))
        self.wrapper.chmod(0o755)

    def path(self, inside):
        """Where a file of this host (path as the host sees it) lies on the machine."""
        for private in PRIVATE_DIRS:
            if inside == private or inside.startswith(private + "/"):
                return self.root / inside.lstrip("/")
        if inside.startswith("/etc/"):  # the overlay: this host's copy, else the machine's
            upper = self.root / "etc" / inside[len("/etc/"):]
            return upper if upper.exists() else pathlib.Path(inside)
        return pathlib.Path(inside)

    def stop_postfix(self):
        pid_file = self.root / "var/spool/postfix/pid/master.pid"
        try:
            pid = int(pid_file.read_text().strip())
            if pathlib.Path(f"/proc/{pid}/comm").read_text().strip() != "master":
                return
            os.kill(pid, signal.SIGTERM)
        except (OSError, ValueError):
            return
        deadline = time.monotonic() + 20
        while pathlib.Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)




# -- secrets the way fleets keep them: a GPG-encrypted pillar ------------------
KEY_NAME = "postfix_relay fleet test <salt@example.org>"
PASSWORDS = {"fleet": "Fleet-pw-3kq81-never-logged", "pi3-account": "Pi3-pw-77xz2-never-logged"}


def gpg(keydir, *args, data=None):
    res = subprocess.run(["gpg", "--homedir", str(keydir), "--batch", "--yes",
                          "--pinentry-mode", "loopback", "--passphrase", "", *args],
                         input=data, capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    return res.stdout


def encrypted(keydir, secret):
    """The secret as an ASCII-armoured PGP message for the master's key."""
    armor = gpg(keydir, "--armor", "--trust-model", "always", "--encrypt",
                "--recipient", KEY_NAME, data=secret)
    return "|\n" + "".join(f"        {line}\n" for line in armor.strip().splitlines())


@pytest.fixture(scope="session")
def gpg_keydir(tmp_path_factory):
    keydir = tmp_path_factory.mktemp("gpgkeys")
    keydir.chmod(0o700)
    gpg(keydir, "--quick-generate-key", KEY_NAME, "default", "default", "never")
    yield keydir
    subprocess.run(["gpgconf", "--homedir", str(keydir), "--kill", "all"],
                   capture_output=True, check=False)


@pytest.fixture(scope="session")
def fleet_relay(tmp_path_factory):
    from relay import Relay  # noqa: PLC0415 (test/ is on sys.path via the root conftest)
    with Relay(tls="starttls", mechanisms=("PLAIN", "LOGIN"), users=PASSWORDS,
               cert_dir=str(tmp_path_factory.mktemp("fleet-relay"))) as relay:
        yield relay


@pytest.fixture(scope="session")
def fleet_roots(tmp_path_factory, gpg_keydir, fleet_relay):
    """file_roots with the formula; pillar: shared defaults, one host with
    another recipient, one with another relay account; passwords encrypted."""
    base = tmp_path_factory.mktemp("fleet-roots")
    files = base / "salt"
    files.mkdir()
    for name in ("postfix_relay", "_modules", "_states", "_utils"):
        (files / name).symlink_to(REPO / name)
    pillar = base / "pillar"
    (pillar / "fleet").mkdir(parents=True)
    (pillar / "top.sls").write_text(
        "base:\n  '*':\n    - fleet.defaults\n  'pi2':\n    - fleet.pi2\n"
        "  'pi3':\n    - fleet.pi3\n")
    (pillar / "fleet" / "defaults.sls").write_text(
        "#!yaml|gpg\n"
        "postfix_relay:\n  domain: example.org\n  recipient: admin@example.org\n"
        "  reply_to: admin@example.org\n  listen: none\n"
        f"  relay:\n    host: 127.0.0.1\n    port: {fleet_relay.port}\n"
        "    username: fleet\n    tls: encrypt\n"
        f"    password: {encrypted(gpg_keydir, PASSWORDS['fleet'])}")
    (pillar / "fleet" / "pi2.sls").write_text(
        "postfix_relay:\n  recipient: pi2-owner@example.org\n")
    (pillar / "fleet" / "pi3.sls").write_text(
        "#!yaml|gpg\npostfix_relay:\n  relay:\n    username: pi3-account\n"
        f"    password: {encrypted(gpg_keydir, PASSWORDS['pi3-account'])}")
    return files, pillar


def start_fleet(salt_factories, base, roots, keydir, ids, master_id="fleet-master",
                master_overrides=None, minion_overrides=None):
    """A master and one minion per id, each minion its own host.
    master_overrides, minion_overrides: more config (e.g. the master's
    `reactor:`), added to the fleet's."""
    files, pillar = roots
    master = salt_factories.salt_master_daemon(master_id, overrides={
        "file_roots": {"base": [str(files)]},
        "pillar_roots": {"base": [str(pillar)]},
        "gpg_keydir": str(keydir),
        "worker_threads": 3,
        # Keys accepted at the first authentication: otherwise each minion
        # waits for salt-factories to run `salt-key --accept` (a process of
        # its own) and retries; the tests are about the formula, not keys.
        "auto_accept": True,
        **forwarded_logs("master"),
        **(master_overrides or {}),
    })
    hosts = {host_id: Host(base, host_id) for host_id in ids}
    minions = {}
    for host_id in ids:
        minion = master.salt_minion_daemon(host_id, overrides={"enable_fqdns_grains": False,
                                                               **forwarded_logs("minion"),
                                                               **(minion_overrides or {})})
        # salt-factories starts `python_executable script args`: the wrapper
        # makes the minion process (and all it spawns) that host.
        minion.python_executable = str(hosts[host_id].wrapper)
        # SIGKILL at the end: a stopped minion's child ignores SIGTERM and
        # salt-factories then waits 5 s for it; nothing of the minion's needs
        # a clean exit (each host's Postfix is stopped by Host.stop_postfix).
        minion.slow_stop = False
        minions[host_id] = minion
    return master, hosts, minions


@contextlib.contextmanager
def fleet_running(master, minions, hosts):
    """The master, then its minions side by side (each start waits for its
    start event, which salt-factories polls every 1.5 s); at the end the
    minions stopped side by side with their hosts' Postfix, then the master."""
    with master.started(start_timeout=120), ThreadPoolExecutor(len(minions)) as pool:
        starts = [pool.submit(minion.start, start_timeout=120) for minion in minions.values()]
        try:
            for start in starts:
                start.result()
            yield
        finally:
            list(pool.map(lambda host_id: _stop_host(minions[host_id], hosts[host_id]),
                          minions))


def _stop_host(minion, host):
    if minion.is_running():
        minion.terminate()
    host.stop_postfix()


@pytest.fixture(scope="module")
def fleet(salt_factories, tmp_path_factory, fleet_roots, gpg_keydir):
    master, hosts, minions = start_fleet(salt_factories, tmp_path_factory.mktemp("hosts"),
                                         fleet_roots, gpg_keydir, ("pi1", "pi2", "pi3"))
    with fleet_running(master, minions, hosts):
        yield master, hosts, minions
