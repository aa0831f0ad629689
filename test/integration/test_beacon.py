"""
The postfix_relay beacon against the real Postfix and the real test relay,
loaded and run by Salt's own beacon machinery (salt.beacons.Beacon, the
beacon synced with saltutil.sync_beacons into the minion's extension
modules, __salt__ and __opts__ as a minion gives them): one event per change
of condition, full tags, the relay's words, only the new part of the log
read, log rotation and truncation followed, and no secret in any event.
"""

import json
import pathlib
import subprocess
import time

import pytest
import salt.beacons
import salt.config
import salt.loader

from conftest import MAILLOG, PASSWORD, REPO, USER, dump, new_token, send_with_sendmail
from relay import Relay

# Quick retries: the log keeps growing with the same failure while we watch.
FAST_RETRY = {"queue_run_delay": "1s", "minimal_backoff_time": "1s",
              "maximal_backoff_time": "2s"}
WRONG_PASSWORD = "Wrong-pw-55xQ-never-logged"
EVENTS = []  # every event of the module, searched for secrets at the end


@pytest.fixture(scope="module")
def synced(applier, file_root, minion):
    """The beacon synced into the minion's extension modules, as
    saltutil.sync_all does from a formula's _beacons directory."""
    link = file_root / "_beacons"
    if not link.exists():
        link.symlink_to(REPO / "_beacons")
    res = applier.run("saltutil.sync_beacons")  # (the first run syncs all first)
    assert res.returncode == 0, res.stderr
    synced_file = pathlib.Path(minion.config["extension_modules"], "beacons",
                               "postfix_relay.py")
    assert synced_file.read_bytes() == (REPO / "_beacons" / "postfix_relay.py").read_bytes()
    return applier


class Watcher:
    """The beacon as a minion runs it: Salt's Beacon over the minion's
    config, with its own cachedir (the beacon's state lives there)."""

    def __init__(self, minion, cachedir, **settings):
        opts = salt.config.minion_config(minion.config_file)
        opts["cachedir"] = str(cachedir)
        self.opts = opts
        self.config = {"postfix_relay": [{key: value} for key, value in settings.items()]}
        # as the minion loads them: utils first, handed to the modules
        functions = salt.loader.minion_mods(opts, utils=salt.loader.utils(opts))
        self.beacon = salt.beacons.Beacon(opts, functions)
        self.prefix = f"salt/beacon/{opts['id']}/postfix_relay/"

    def run(self):
        """One interval: the events as (condition, data)."""
        events = self.beacon.process(self.config, self.opts.get("grains", {}))
        EVENTS.extend(events)
        for event in events:
            assert "error" not in event, event
            assert event["tag"].startswith(self.prefix), event["tag"]
        return [(e["tag"][len(self.prefix):], e["data"]) for e in events]


def start_relay(tmp_path, port=0, users=None):
    return Relay(users=users or {USER: PASSWORD}, cert_dir=str(tmp_path / "certs"),
                 port=port).start()


def queue():
    out = subprocess.run(["postqueue", "-j"], capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def wait_until(predicate, timeout=60, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what} not reached; queue: {queue()[:3]}")


def deferred(count):
    return lambda: len(queue()) == count and all(r["queue_name"] == "deferred"
                                                 for r in queue())


def apply_ok(applier, data):
    res = applier.apply(data)
    assert res.returncode == 0, dump(res)


def log_size():
    return MAILLOG.stat().st_size if MAILLOG.exists() else 0


def by_condition(events):
    return {name: data for name, data in events}


def test_dead_relay_one_event_per_change_then_recovered(synced, tmp_path, minion):
    relay = start_relay(tmp_path)
    port = relay.port
    relay.stop()  # the relay is down
    apply_ok(synced, synced.pillar(relay={"port": port}, main_cf=FAST_RETRY))
    prom = tmp_path / "metrics" / "postfix_relay.prom"
    watch = Watcher(minion, tmp_path / "cache", deferred_max=0, age_max=3600,
                    metrics_textfile=str(prom))
    assert watch.run() == []  # the first interval starts at the log's end
    tokens = [new_token() for _ in range(3)]
    for token in tokens:
        send_with_sendmail("root", token)
    wait_until(deferred(3), what="3 deferred")
    events = by_condition(watch.run())
    assert set(events) == {"unreachable", "deferred"}, events
    down = events["unreachable"]
    assert down["relay"] == f"127.0.0.1[127.0.0.1]:{port}", down
    assert "is unreachable" in down["cause"] and "Connection refused" in down["cause"], down
    assert "relay:host and relay:port" in down["fix"], down
    assert down["deferred"] == 3 and down["oldest_age"] >= 0, down
    assert events["deferred"]["cause"].startswith("3 messages wait in the deferred queue "
                                                  "(more than beacon:deferred_max 0)"), events
    assert "Connection refused" in events["deferred"]["cause"]
    text = prom.read_text()
    assert 'postfix_relay_queue_messages{queue="deferred"} 3' in text, text
    assert 'postfix_relay_condition{condition="unreachable"} 1' in text, text

    # Postfix keeps retrying (new failure lines): nothing changed, no event,
    # neither now nor from a restarted minion (state in the cachedir).
    grown = log_size()
    wait_until(lambda: log_size() > grown + 200, timeout=20, what="new retries logged")
    assert watch.run() == []
    assert Watcher(minion, tmp_path / "cache", deferred_max=0, age_max=3600).run() == []

    relay = start_relay(tmp_path, port=port)  # the relay is back
    try:
        subprocess.run(["postqueue", "-f"], check=True)
        wait_until(lambda: all(relay.find(t, 0.1) for t in tokens) and not queue(),
                   what="queue drained")
    finally:
        relay.stop()
    events = watch.run()
    assert sorted(name for name, _ in events) == ["recovered", "recovered"], events
    assert {data["recovered"] for _, data in events} == {"unreachable", "deferred"}, events
    assert all(data["deferred"] == 0 for _, data in events), events
    assert watch.run() == []
    assert 'postfix_relay_condition{condition="unreachable"} 0' in prom.read_text()
    assert "postfix_relay_last_sent_timestamp_seconds 0" not in prom.read_text()


def test_wrong_password_is_a_credentials_event_with_the_relays_reply(synced, tmp_path, minion):
    relay = start_relay(tmp_path)
    try:
        apply_ok(synced, synced.pillar(relay={"port": relay.port, "password": WRONG_PASSWORD},
                                       main_cf=FAST_RETRY))
        watch = Watcher(minion, tmp_path / "cache", deferred_max=10, age_max=3600)
        assert watch.run() == []
        token = new_token()
        send_with_sendmail("root", token)
        wait_until(deferred(1), what="1 deferred")
        events = by_condition(watch.run())
        assert set(events) == {"credentials"}, events  # 1 deferred: under deferred_max
        creds = events["credentials"]
        assert creds["relay"] == f"127.0.0.1[127.0.0.1]:{relay.port}", creds
        assert "535" in creds["reply"] and "authentication failed" in creds["reply"].lower()
        assert creds["cause"].startswith("the relay rejects the credentials (SASL "
                                         "authentication failed"), creds
        assert creds["fix"] == "fix relay:username / password in the pillar and re-apply"
        assert creds["relay_key"] == "relay"
        # the fix: the right password; the formula retries the queue at once
        apply_ok(synced, synced.pillar(relay={"port": relay.port}, main_cf=FAST_RETRY))
        assert relay.find(token, 30)
        wait_until(lambda: not queue(), what="queue drained")
        events = watch.run()
        assert [(name, data["recovered"]) for name, data in events] == \
            [("recovered", "credentials")], events
    finally:
        relay.stop()
