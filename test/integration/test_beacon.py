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
from test_several_relays import entry, send_as
from test_several_relays import start_relay as named_relay

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


@pytest.fixture(autouse=True)
def empty_queue():
    """Each test starts and ends with an empty queue (a failed test's
    deferred mail must not count in the next one)."""
    subprocess.run(["postsuper", "-d", "ALL"], capture_output=True, check=False)
    yield
    subprocess.run(["postsuper", "-d", "ALL"], capture_output=True, check=False)


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
        self.functions = functions
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
    # Postfix's default backoff: a deferred message stays deferred (no retry
    # of its own during the test), so the counts are exact
    apply_ok(synced, synced.pillar(relay={"port": port}))
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
    # the same answer from the command line (salt-call postfix_watch.conditions)
    now = watch.functions["postfix_watch.conditions"](deferred_max=0)
    held = {entry["condition"]: entry for entry in now["active"].values()}
    assert sorted(held) == ["deferred", "unreachable"], now
    assert now["queue"]["deferred"] == 3 and held["unreachable"]["relay"] == \
        down["relay"], now
    text = prom.read_text()
    assert 'postfix_relay_queue_messages{queue="deferred"} 3' in text, text
    assert 'postfix_relay_condition{condition="unreachable"} 1' in text, text

    # Postfix retries (new failure lines): nothing changed, no event, neither
    # now nor from a restarted minion (state in the cachedir).
    refused = MAILLOG.read_text().count("Connection refused")
    subprocess.run(["postqueue", "-f"], check=True)
    wait_until(lambda: MAILLOG.read_text().count("Connection refused") >= refused + 3
               and deferred(3)(), timeout=30, what="3 retries logged, 3 deferred")
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
        apply_ok(synced, synced.pillar(relay={"port": relay.port, "password": WRONG_PASSWORD}))
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
        apply_ok(synced, synced.pillar(relay={"port": relay.port}))
        assert relay.find(token, 30)
        wait_until(lambda: not queue(), what="queue drained")
        events = watch.run()
        assert [(name, data["recovered"]) for name, data in events] == \
            [("recovered", "credentials")], events
    finally:
        relay.stop()


def client_line(qid, reply, relay="127.0.0.1[127.0.0.1]:1", status="deferred"):
    """A delivery line as Postfix's smtp client writes it to maillog_file."""
    stamp = time.strftime("%b %d %H:%M:%S")
    return (f"{stamp} pi postfix/smtp[4242]: {qid}: to=<me@example.org>, relay={relay}, "
            f"delay=1.2, delays=0.01/0/1.1/0, dsn=4.7.8, status={status} ({reply})\n")


def append_log(text):
    with open(MAILLOG, "a", encoding="utf-8") as handle:
        handle.write(text)


def test_old_log_lines_are_not_read_only_new_ones(synced, tmp_path, minion, relay):
    apply_ok(synced, synced.pillar(relay={"port": relay.port}))
    refused = "SASL authentication failed; server 127.0.0.1[127.0.0.1] said: 535 5.7.8 {}"
    filler = "".join(f"Nov 28 01:{i // 6000 % 60:02d}:00 pi postfix/qmgr[77]: Q{i:07X}: "
                     "removed\n" for i in range(100_000))
    append_log(filler + client_line("OLDMARK", refused.format("MARKER-OLD")))
    watch = Watcher(minion, tmp_path / "cache", deferred_max=10, age_max=3600)
    started = time.monotonic()
    assert watch.run() == []  # 100k lines and the marker are history: not read
    first = time.monotonic() - started
    state = json.loads((tmp_path / "cache" / "postfix_relay" / "beacon.json").read_text())
    assert state["position"]["offset"] == log_size(), state  # it starts at the end
    append_log(client_line("NEWMARK", refused.format("MARKER-NEW")))
    events = by_condition(watch.run())
    assert set(events) == {"credentials"}, events
    assert "MARKER-NEW" in events["credentials"]["reply"], events
    assert "MARKER-OLD" not in json.dumps(events)
    # no new line: nothing changed (nor proves the relay works again)
    assert watch.run() == []
    append_log(client_line("SENTMARK", "250 2.0.0 Ok: queued", status="sent"))
    assert [d["recovered"] for _, d in watch.run()] == ["credentials"]
    print(f"first interval over a {log_size() // 1024} KiB log: {first:.3f} s")


def test_rotated_and_truncated_log_is_followed(synced, tmp_path, minion):
    relay = start_relay(tmp_path)
    port = relay.port
    relay.stop()
    # Postfix's default backoff: no retry of its own during the test, so each
    # failure is logged once, in the file the test expects it in
    apply_ok(synced, synced.pillar(relay={"port": port}))
    watch = Watcher(minion, tmp_path / "cache", deferred_max=10, age_max=3600)
    assert watch.run() == []
    send_with_sendmail("root", new_token())
    wait_until(deferred(1), what="1 deferred")
    # rotated as logrotate does with maillog_file: renamed, then Postfix
    # reloaded so postlogd opens a new file; the failure is in the old one
    rotated = pathlib.Path(f"{MAILLOG}.1")
    MAILLOG.rename(rotated)
    subprocess.run(["postfix", "reload"], check=True, capture_output=True)

    def reopened():  # postlogd opens the new file on the first line after the reload
        subprocess.run(["postlog", "-t", "postfix/test", "after rotation"], check=False)
        return MAILLOG.exists()
    wait_until(reopened, timeout=10, what="a new log file")
    assert "Connection refused" in rotated.read_text()
    assert by_condition(watch.run()).keys() == {"unreachable"}
    # the beacon's offset well past what the next failure will write
    append_log("".join(f"Nov 28 01:00:00 pi postfix/qmgr[77]: Q{i:07X}: removed\n"
                       for i in range(5000)))
    assert watch.run() == []
    # copytruncate style: the same file emptied; the next failure (the relay
    # back, refusing our login) is at its top, below the old offset
    MAILLOG.write_text("")
    relay = start_relay(tmp_path, port=port, users={"someone-else": "x"})
    try:
        subprocess.run(["postqueue", "-f"], check=True)
        wait_until(lambda: "SASL authentication failed" in MAILLOG.read_text(),
                   timeout=30, what="the refused login logged")
        events = by_condition(watch.run())
    finally:
        relay.stop()
        subprocess.run(["postsuper", "-d", "ALL"], capture_output=True, check=False)
    assert events.keys() == {"credentials"}, events
    assert events["credentials"]["relay"] == f"127.0.0.1[127.0.0.1]:{port}", events


def test_relay_without_starttls_is_tls_and_an_old_message_is_age(synced, tmp_path, minion):
    relay = Relay(tls="none", auth_require_tls=False, users={USER: PASSWORD},
                  cert_dir=str(tmp_path / "certs")).start()
    try:
        apply_ok(synced, synced.pillar(relay={"port": relay.port}))
        watch = Watcher(minion, tmp_path / "cache", deferred_max=10, age_max=1)
        assert watch.run() == []
        send_with_sendmail("root", new_token())
        wait_until(deferred(1), what="1 deferred")
        time.sleep(max(0, queue()[0]["arrival_time"] + 2 - time.time()))  # older than 1 s
        events = by_condition(watch.run())
    finally:
        relay.stop()
    assert events.keys() == {"tls", "age"}, events
    assert events["tls"]["cause"].startswith("the relay offers no STARTTLS"), events
    assert "TLS is required, but was not offered" in events["tls"]["reply"], events
    assert events["age"]["cause"].startswith("the oldest deferred message waits for "), events
    assert "(more than beacon:age_max 1 s)" in events["age"]["cause"], events
    assert events["age"]["oldest_age"] >= 1 and relay.auth_attempts == []


def test_beacon_sls_under_salt_call_local_says_a_minion_is_needed(synced, relay):
    data = synced.pillar(relay={"port": relay.port}, beacon={"interval": 30})
    res = synced.apply(data)
    assert res.returncode == 0, dump(res)
    note = next(v for v in res.data.values()
                if v["__id__"] == "postfix-relay-beacon-needs-minion")
    assert "beacons run in a running salt-minion" in note["comment"], note
    res = synced.apply(synced.pillar(relay={"port": relay.port}, beacon={"interval": 5}))
    assert res.returncode != 0
    assert "postfix_relay:beacon:interval" in res.stdout, res.stdout


def test_no_secret_in_any_event(synced, tmp_path, minion, relay):
    apply_ok(synced, synced.pillar(relay={"port": relay.port}))
    access = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJzbXRwIn0.c2lnbmF0dXJlMTIz"
    refresh = "1//0gAbCdEf-GhIjKl_MnOpQrStUv0123456789zz"
    watch = Watcher(minion, tmp_path / "cache", deferred_max=10, age_max=3600)
    assert watch.run() == []
    # the plugin's failure line, when its syslog is on: the endpoint's answer
    stamp = time.strftime("%b %d %H:%M:%S")
    append_log(f"{stamp} pi postfix/smtp[4243]: TokenStore::Refresh: http error: "
               f'{{"access_token":"{access}","refresh_token":"{refresh}","error":'
               '"invalid_grant","error_description":"AADSTS700082: The refresh token has '
               f'expired due to inactivity."}} Authorization: Bearer {access}\n')
    events = by_condition(watch.run())
    assert events.keys() == {"oauth2"}, events
    assert "invalid_grant" in events["oauth2"]["cause"], events
    assert "AADSTS700082" in events["oauth2"]["cause"], events
    assert "refresh_token" in events["oauth2"]["fix"], events
    everything = json.dumps(EVENTS)
    assert EVENTS  # the events of every test of this module run so far
    for secret in (PASSWORD, WRONG_PASSWORD, access, refresh, access[:20], refresh[:20]):
        assert secret not in everything, "a secret in a beacon event"


def refused_count():
    return MAILLOG.read_text().count("Connection refused") if MAILLOG.exists() else 0


def retry_all(count):
    """postqueue -f, until each of count deferred messages failed once more."""
    before = refused_count()
    subprocess.run(["postqueue", "-f"], check=True)
    wait_until(lambda: refused_count() >= before + count and deferred(count)(),
               timeout=30, what=f"{count} retries logged, {count} deferred")


def test_two_dead_relays_one_event_each_and_a_delivery_clears_only_its_own(
        synced, tmp_path, minion):
    """The primary and a sender relay both down: one unreachable event per
    relay, none while Postfix retries (either wording of a refused
    connection), none taken by the CLI, and the sender relay's deliveries
    clear its condition only: the primary is still down."""
    primary, billing = named_relay(tmp_path, "primary"), named_relay(tmp_path, "billing")
    ports = {"primary": primary.port, "billing": billing.port}
    primary.stop()
    billing.stop()
    apply_ok(synced, synced.pillar(relay={"port": ports["primary"]}, sender_mode="local",
                                   sender_relays={"billing@example.org":
                                                  entry("billing", ports["billing"])},
                                   # one at a time: the second message of a dead
                                   # relay gets "delivery temporarily suspended"
                                   main_cf={"initial_destination_concurrency": "1"}))
    watch = Watcher(minion, tmp_path / "cache", deferred_max=100, age_max=86400)
    assert watch.run() == []
    tokens = [new_token() for _ in range(4)]
    for cron, app in zip(tokens[:2], tokens[2:]):
        send_with_sendmail("root", cron)
        send_as("billing@example.org", "root", app)
    wait_until(deferred(4), what="4 deferred")
    dead = {name: f"127.0.0.1[127.0.0.1]:{port}" for name, port in ports.items()}
    events = watch.run()
    assert sorted((name, data["relay"]) for name, data in events) == \
        sorted(("unreachable", relay) for relay in dead.values()), events
    for _ in range(3):  # Postfix retries; nothing changed
        retry_all(4)
        assert watch.run() == []
    assert "delivery temporarily suspended: connect to" in MAILLOG.read_text()
    billing = named_relay(tmp_path, "billing", port=ports["billing"])  # billing's back
    try:
        subprocess.run(["postqueue", "-f"], check=True)
        wait_until(lambda: all(billing.find(t, 0.1) for t in tokens[2:]) and deferred(2)(),
                   what="billing's mail delivered, the primary's deferred")
    finally:
        billing.stop()
    events = watch.run()
    assert [(name, data["recovered"], data["relay"]) for name, data in events] == \
        [("recovered", "unreachable", dead["billing"])], events
    retry_all(2)
    assert watch.run() == []
    held = watch.functions["postfix_watch.conditions"]()["active"]
    assert [(e["condition"], e["relay"]) for e in held.values()] == \
        [("unreachable", dead["primary"])], held


def test_the_cli_never_takes_the_beacons_events(synced, tmp_path, minion):
    """salt-call postfix_watch.interval (once the documented example) on the
    beacon's own state would advance its log position and swallow its
    event; conditions only reads."""
    relay = start_relay(tmp_path)
    relay.stop()
    apply_ok(synced, synced.pillar(relay={"port": relay.port}))
    watch = Watcher(minion, tmp_path / "cache", deferred_max=10, age_max=3600)
    assert watch.run() == []
    send_with_sendmail("root", new_token())
    wait_until(deferred(1), what="1 deferred")
    state = tmp_path / "cache" / "postfix_relay" / "beacon.json"
    saved = state.read_bytes()
    with pytest.raises(Exception, match="the beacon's state is the beacon's own"):
        watch.functions["postfix_watch.interval"]({"deferred_max": 10, "age_max": 3600})
    assert watch.functions["postfix_watch.conditions"]()["active"] == {}
    assert state.read_bytes() == saved
    assert [name for name, _ in watch.run()] == ["unreachable"]


def test_oauth2_each_relay_on_its_own(synced, tmp_path, minion, relay):
    """The keep-alive's notes: one relay's success does not clear another's
    failure, a note written while the clock was behind still counts, and
    the plugin's own log line for the same revoked token is no new event."""
    apply_ok(synced, synced.pillar(relay={"port": relay.port}))
    office, google = "[smtp.office365.com]:587", "[smtp.gmail.com]:587"
    watch = Watcher(minion, tmp_path / "cache", deferred_max=10, age_max=3600)
    note = watch.functions["postfix_watch.note_oauth2"]
    assert watch.run() == []
    note(office, False, error="invalid_grant: AADSTS700082: The refresh token has expired",
         error_code="invalid_grant")
    events = watch.run()
    assert [(name, data["relay"]) for name, data in events] == [("oauth2", office)], events
    stamp = time.strftime("%b %d %H:%M:%S")
    append_log(f"{stamp} pi postfix/smtp[4244]: TokenStore::Refresh: http error: "
               '{"error":"invalid_grant","error_description":"AADSTS700082: The refresh '
               'token has expired due to inactivity."}\n')
    note(office, False, error="invalid_grant: AADSTS700082: The refresh token has expired",
         error_code="invalid_grant")
    assert watch.run() == []  # the same revoked token, in other words
    note(google, True)
    assert watch.run() == []  # google's success says nothing about office's token
    notes = tmp_path / "cache" / "postfix_relay" / "oauth2.json"
    note(google, False, error="invalid_grant: Token has been expired or revoked.",
         error_code="invalid_grant")
    written = json.loads(notes.read_text())
    written[google]["at"] -= 7200  # the clock was two hours behind
    notes.write_text(json.dumps(written))
    events = watch.run()
    assert [(name, data["relay"]) for name, data in events] == [("oauth2", google)], events
    note(office, True)
    events = watch.run()
    assert [(name, data["recovered"], data["relay"]) for name, data in events] == \
        [("recovered", "oauth2", office)], events


def applied_without_local(synced, data):
    """salt-call state.apply as a masterless host runs it: file_client local in
    the minion config, no --local, no salt-minion daemon."""
    synced.write_pillar(data)
    res = synced.cli.run("state.apply", "postfix_relay")
    synced.returns.append(res.stdout + res.stderr)
    assert res.returncode == 0, dump(res)
    return res


def test_beacon_sls_masterless_without_local_and_no_daemon(synced, relay, minion):
    assert salt.config.minion_config(minion.config_file)["file_client"] == "local"
    res = applied_without_local(synced, synced.pillar(relay={"port": relay.port},
                                                      beacon={"interval": 30}))
    note = next(v for v in res.data.values()
                if v["__id__"] == "postfix-relay-beacon-needs-minion")
    assert "no salt-minion running" in note["comment"], note
    res = applied_without_local(synced, synced.pillar(relay={"port": relay.port}))
    assert not [v for v in res.data.values() if v["__id__"] == "postfix-relay-beacon"]


def test_without_the_key_the_beacons_files_are_removed(synced, tmp_path, minion, relay):
    """What the beacon wrote (its state, the metrics textfile) goes with the
    key: node_exporter stops exporting the old condition, and a later beacon
    sends no recovered for a condition from before."""
    cachedir = pathlib.Path(salt.config.minion_config(minion.config_file)["cachedir"])
    prom = tmp_path / "metrics" / "postfix_relay.prom"
    apply_ok(synced, synced.pillar(relay={"port": relay.port}))
    watch = Watcher(minion, cachedir, deferred_max=10, age_max=3600,
                    metrics_textfile=str(prom))
    assert watch.run() == []
    append_log(client_line("LEFTOVER", "SASL authentication failed; server 127.0.0.1"
                           "[127.0.0.1] said: 535 5.7.8 Error: authentication failed"))
    assert [name for name, _ in watch.run()] == ["credentials"]
    assert 'postfix_relay_condition{condition="credentials"} 1' in prom.read_text()
    state = cachedir / "postfix_relay" / "beacon.json"
    assert watch.functions["postfix_watch.leftovers"]() == [str(state), str(prom)]
    apply_ok(synced, synced.pillar(relay={"port": relay.port}))  # no beacon key
    assert not prom.exists() and not state.exists()
    assert Watcher(minion, cachedir, deferred_max=10, age_max=3600).run() == []
