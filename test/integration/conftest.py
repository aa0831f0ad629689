"""
Integration fixtures: the host's real Postfix, a real relay on loopback, and
salt-call --local through pytest-salt-factories.

These tests own the host's Postfix for the session: its files are saved first
and restored at the end, and Postfix is stopped before and after.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
import uuid

import pytest
import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "test"))

from helpers import forwarded_logs  # noqa: E402
from relay import Relay  # noqa: E402

PASSWORD = "Tst-pw-7f3k9Q-never-logged"  # scanned for in every return and log
USER = "relayuser"
# A second account on the same relay: one host's own (the per-host override test).
OTHER_USER, OTHER_PASSWORD = "pi-account", "Pi-pw-4mz81Q-never-logged"
SAVED = ["/etc/postfix/main.cf", "/etc/postfix/master.cf", "/etc/mailname",
         "/etc/postfix/main.cf.pre-postfix_relay"]
MAILLOG = pathlib.Path("/var/log/postfix.log")


# Queues postsuper -d ALL empties.
QUEUES = ("hold", "incoming", "active", "deferred")


def postfix_running():
    """A live master process. (Not `postfix status`: on a host without main.cf,
    or whenever a Postfix command fails, Postfix sleeps 1 s before exiting.)"""
    return master_pid() is not None


def stop_postfix():
    """Stop Postfix and wait until the master process is gone (not just unlocked)."""
    if postfix_running():
        subprocess.run(["postfix", "stop"], capture_output=True, check=False)
    deadline = time.monotonic() + 20
    while postfix_running() and time.monotonic() < deadline:
        time.sleep(0.05)


def queued():
    """Whether any queue postsuper -d ALL empties holds a message."""
    return any(files for name in QUEUES
               for _, _, files in os.walk(f"/var/spool/postfix/{name}"))


def flush_queue():
    """Every queued message deleted. Only when there is one: with Postfix
    stopped postsuper cannot open maillog_file (it drops to the postfix
    user) and fails after deleting, and a failing Postfix command sleeps 1 s."""
    if queued():
        subprocess.run(["postsuper", "-d", "ALL"], capture_output=True, check=False)


@pytest.fixture(scope="session")
def host_postfix(tmp_path_factory):
    """Save the host's Postfix files, hand over a stopped Postfix, restore after."""
    backup = tmp_path_factory.mktemp("postfix-backup")
    for path in SAVED:
        if os.path.exists(path):
            shutil.copy2(path, backup / os.path.basename(path))
    stop_postfix()
    flush_queue()
    yield
    stop_postfix()
    flush_queue()
    for path in SAVED:
        saved = backup / os.path.basename(path)
        if saved.exists():
            shutil.copy2(saved, path)
        elif os.path.exists(path):
            os.unlink(path)
    for table in ("/etc/postfix/sasl/passwd", "/etc/postfix/reply_to_header",
                  "/etc/postfix/recipient_canonical"):
        for suffix in ("", ".db", ".lmdb", ".cdb"):
            if os.path.exists(table + suffix):
                os.unlink(table + suffix)


@pytest.fixture(scope="session")
def relay(tmp_path_factory):
    """A STARTTLS + AUTH (PLAIN, LOGIN) relay on 127.0.0.1."""
    with Relay(tls="starttls", mechanisms=("PLAIN", "LOGIN"),
               users={USER: PASSWORD, OTHER_USER: OTHER_PASSWORD},
               cert_dir=str(tmp_path_factory.mktemp("relay-certs"))) as server:
        yield server


@pytest.fixture(scope="session")
def file_root(tmp_path_factory):
    """A file root holding only the formula (symlinks), as /srv/salt would."""
    root = tmp_path_factory.mktemp("file_root")
    for name in ("postfix_relay", "_modules", "_states", "_utils", "_beacons"):
        (root / name).symlink_to(REPO / name)
    return root


@pytest.fixture(scope="session")
def pillar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("pillar_root")
    (root / "top.sls").write_text("base:\n  '*':\n    - postfix_relay\n")
    return root


@pytest.fixture(scope="session")
def minion(salt_factories, file_root, pillar_root, host_postfix):
    overrides = {
        "file_client": "local",
        "file_roots": {"base": [str(file_root)]},
        "pillar_roots": {"base": [str(pillar_root)]},
        # Grains computed once and kept (grains_cache_expiration, 5 min), not
        # by every salt-call (~6 % of each one's CPU): no test changes them.
        "grains_cache": True,
        **forwarded_logs("minion"),
    }
    return salt_factories.salt_minion_daemon("postfix-relay-it", overrides=overrides)


class Applier:
    """Runs the formula with a given pillar, the way a sysadmin would."""

    def __init__(self, minion, pillar_root, relay):
        self.cli = minion.salt_call_cli(timeout=180)
        self.pillar_root = pillar_root
        self.relay = relay
        self.returns = []  # every return, scanned for the password at the end
        self.synced = False

    def pillar(self, **over):
        """The default test pillar pointing at the test relay, with overrides."""
        data = {
            "domain": "example.org",
            "hostname": "pi.example.org",
            "recipient": "me@example.org",
            "reply_to": "me@example.org",
            "relay": {"host": "127.0.0.1", "port": self.relay.port,
                      "username": USER, "password": PASSWORD, "tls": "encrypt"},
        }
        for key, value in over.items():
            if key == "relay":
                data["relay"].update(value)
            elif value is None:
                data.pop(key, None)
            else:
                data[key] = value
        return data

    def write_pillar(self, data):
        path = self.pillar_root / "postfix_relay.sls"
        path.write_text(yaml.safe_dump({"postfix_relay": data}))
        path.chmod(0o600)

    def run(self, *args):
        if not self.synced:
            res = self.cli.run("--local", "saltutil.sync_all")
            assert res.returncode == 0, res.stderr
            self.synced = True
        res = self.cli.run("--local", *args)
        self.returns.append(res.stdout + res.stderr)
        return res

    def apply(self, data=None, sls="postfix_relay", test=False):
        if data is not None:
            self.write_pillar(data)
        args = ["state.apply", sls] + (["test=True"] if test else [])
        return self.run(*args)


@pytest.fixture(scope="session")
def applier(minion, pillar_root, relay):
    app = Applier(minion, pillar_root, relay)
    yield app
    # No return of the whole session may carry the password, nor any log.
    leaked = [r for r in app.returns if PASSWORD in r or OTHER_PASSWORD in r]
    assert not leaked, "the relay password appeared in a salt-call return"
    for log in (MAILLOG, pathlib.Path(minion.config["log_file"])):
        if log.exists():
            text = log.read_text(errors="replace")
            assert PASSWORD not in text and OTHER_PASSWORD not in text, f"password in {log}"


def state_results(res):
    """The state dicts of a state.apply return, by state ID."""
    data = res.data
    assert isinstance(data, dict), f"no state return: {res.stdout}\n{res.stderr}"
    return {v["__id__"]: v for v in data.values()}


def changed_ids(res):
    return sorted(i for i, v in state_results(res).items() if v["changes"])


def send_with_sendmail(recipient, token, extra_headers="", sender_flag="root"):
    """Submit a message exactly as cron does: sendmail -FCronDaemon -i -oem."""
    body = (
        f"From: {sender_flag} (Cron Daemon)\n"
        f"To: {recipient}\n"
        f"Subject: Cron <root@pi> /usr/local/bin/job {token}\n"
        f"{extra_headers}"
        "\n"
        f"output of the job {token}\n"
    )
    subprocess.run(["/usr/sbin/sendmail", "-FCronDaemon", "-i", "-oem", recipient],
                   input=body.encode(), check=True, timeout=30)


def wait_for_token(relay, token, timeout=60):
    """The relay's record of the message carrying token, or fail with the queue."""
    record = relay.find(token, timeout)
    if record:
        return record
    queue = subprocess.run(["postqueue", "-p"], capture_output=True, text=True).stdout
    log = MAILLOG.read_text()[-3000:] if MAILLOG.exists() else "(no log)"
    pytest.fail(f"message {token} did not reach the relay\nqueue:\n{queue}\nlog:\n{log}")


def headers_named(record, name):
    return [v for k, v in record["headers"] if k.lower() == name.lower()]


def new_token():
    return uuid.uuid4().hex[:12]


def master_pid():
    """The running master's pid, or None (the pid file outlives a stopped master)."""
    try:
        pid = int(pathlib.Path("/var/spool/postfix/pid/master.pid").read_text().strip())
        return pid if pathlib.Path(f"/proc/{pid}/comm").read_text().strip() == "master" else None
    except (OSError, ValueError):
        return None


def log_count(word):
    return MAILLOG.read_text().count(word) if MAILLOG.exists() else 0


def file_state(path):
    st = os.stat(path)
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def dump(res):
    return json.dumps(res.data, indent=1, default=str)[:4000]
