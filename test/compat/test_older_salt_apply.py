"""
The formula applied for real by the Salt releases users still run (3007 and
3006 LTS, the venvs scripts/setup builds): that release's own salt-call
--local applies postfix_relay on the real Postfix, the second apply is a
no-op, and a cron-style mail reaches a STARTTLS + AUTH relay rewritten.

Run it inside a private test host (scripts/test-host): it drives Postfix.
"""

import json
import pathlib
import shutil
import subprocess
import time
import uuid

import pytest
import yaml

from helpers import REPO
from setup_check import older_salt_venv
from relay import Relay

PASSWORD = "Compat-pw-4Rt8-never-logged"
USER = "compatuser"
POSTFIX_DIR = pathlib.Path("/etc/postfix")


def stop_postfix():
    subprocess.run(["postfix", "stop"], capture_output=True, check=False)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and subprocess.run(
            ["postfix", "status"], capture_output=True).returncode == 0:
        time.sleep(0.05)
    subprocess.run(["postsuper", "-d", "ALL"], capture_output=True, check=False)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """/etc/postfix as the test host started it, put back before each release."""
    saved = tmp_path_factory.mktemp("postfix-pristine") / "postfix"
    shutil.copytree(POSTFIX_DIR, saved, symlinks=True)

    def restore():
        stop_postfix()
        for entry in POSTFIX_DIR.iterdir():  # a mount point: empty it, keep it
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        shutil.copytree(saved, POSTFIX_DIR, symlinks=True, dirs_exist_ok=True)
    yield restore
    stop_postfix()


@pytest.fixture(scope="module")
def relay(tmp_path_factory):
    with Relay(tls="starttls", mechanisms=("PLAIN", "LOGIN"), users={USER: PASSWORD},
               cert_dir=str(tmp_path_factory.mktemp("certs"))) as server:
        yield server


def minion_config(tmp_path, relay):
    """A masterless minion config dir: file root of symlinks to the formula."""
    file_root, pillar_root = tmp_path / "file_root", tmp_path / "pillar"
    file_root.mkdir()
    pillar_root.mkdir()
    for name in ("postfix_relay", "_modules", "_states", "_utils"):
        (file_root / name).symlink_to(REPO / name)
    (pillar_root / "top.sls").write_text("base:\n  '*':\n    - postfix_relay\n")
    pillar = {"postfix_relay": {
        "domain": "example.org", "hostname": "pi.example.org",
        "recipient": "me@example.org", "reply_to": "me@example.org",
        "relay": {"host": "127.0.0.1", "port": relay.port, "username": USER,
                  "password": PASSWORD, "tls": "encrypt"}}}
    (pillar_root / "postfix_relay.sls").write_text(yaml.safe_dump(pillar))
    (pillar_root / "postfix_relay.sls").chmod(0o600)
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "minion").write_text(yaml.safe_dump({
        "file_client": "local", "root_dir": str(tmp_path / "root"), "id": "compat-pi",
        "file_roots": {"base": [str(file_root)]},
        "pillar_roots": {"base": [str(pillar_root)]},
        "log_file": str(tmp_path / "minion.log")}))
    return conf


def salt_call(release, conf, *args):
    cmd = [str(REPO / f".venv-salt{release}" / "bin" / "salt-call"), "--local", "-c",
           str(conf), "--out=json", "--retcode-passthrough", "--log-level=quiet", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert PASSWORD not in res.stdout + res.stderr, "the password is in a salt-call return"
    return res


def cron_mail(token):
    body = (f"From: root (Cron Daemon)\nTo: root\nSubject: Cron <root@pi> job {token}\n\n"
            f"output of the job {token}\n")
    subprocess.run(["/usr/sbin/sendmail", "-FCronDaemon", "-i", "-oem", "root"],
                   input=body.encode(), check=True, timeout=30)


@pytest.mark.parametrize("release", ["3007", "3006"])
def test_older_salt_applies_the_formula_and_mail_is_relayed(release, tmp_path, relay,
                                                            pristine):
    version = subprocess.run([str(older_salt_venv(release) / "bin" / "salt-call"),
                              "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith(f"salt-call {release}."), version.stdout
    pristine()
    conf = minion_config(tmp_path, relay)
    sync = salt_call(release, conf, "saltutil.sync_all")
    assert sync.returncode == 0, sync.stdout[-2000:] + sync.stderr[-2000:]
    first = salt_call(release, conf, "state.apply", "postfix_relay")
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-2000:]
    states = json.loads(first.stdout)["local"]
    assert states and all(s["result"] is True for s in states.values()), first.stdout[-4000:]
    # From the package's /etc/postfix: the first apply writes the configuration.
    assert any(s["changes"] for s in states.values())
    assert (POSTFIX_DIR / "main.cf").read_text().startswith("# Managed by Salt")
    second = salt_call(release, conf, "state.apply", "postfix_relay")
    assert second.returncode == 0, second.stdout[-4000:]
    changed = sorted(s["__id__"] for s in json.loads(second.stdout)["local"].values()
                     if s["changes"])
    assert changed == []
    log = tmp_path / "minion.log"
    if log.exists():
        assert PASSWORD not in log.read_text(errors="replace")
    token = uuid.uuid4().hex[:12]
    cron_mail(token)
    record = relay.find(token, timeout=30)
    assert record, subprocess.run(["postqueue", "-p"], capture_output=True, text=True).stdout
    assert record["tls"] is True
    assert record["auth_user"] == USER and record["auth_mechanism"] in ("PLAIN", "LOGIN")
    assert record["mail_from"] == "pi@example.org"
    assert record["rcpt_tos"] == ["me@example.org"]
    reply_to = [v for k, v in record["headers"] if k.lower() == "reply-to"]
    assert reply_to == ["me@example.org"]
