"""
The postfix_relay beacon on a real fleet: a salt-master and two salt-minions,
each minion its own host with its own Postfix and its own relay account on
its own test relay. The master's event bus is watched through salt-factories'
event listener; the example reactor (examples/reactor/postfix_relay_alert.sls)
runs on the master and posts each alert to a test webhook through the
formula's runner (_runners/postfix_relay_alert.py), which keeps the webhook's
URL and headers off the master's event bus. Tests run in order:
the fleet applies the formula and mails without a word, one host's relay goes
down and comes back, then another host's password is rotated at the provider.
"""

import json
import re
import secrets
import time

import pathlib

import pytest
from conftest import REPO, fleet_running, start_fleet
from relay import Relay
from webhook import Webhook

IDS = ("bcn1", "bcn2")
ACCOUNT = {"bcn1": "bcn1-account", "bcn2": "bcn2-account"}
PASSWORDS = {"bcn1-account": "Bcn1-pw-5rt93-never-logged",
             "bcn2-account": "Bcn2-pw-8qw21-never-logged"}
INTERVAL = 10  # the pillar's minimum, as the formula installs it
# The tests after the install set the running beacon to every second (Salt's
# beacons.modify, as an admin could), so "no event" is proven by waiting for
# beacon runs that read the log, not by sleeping through 10 s intervals.
FAST_INTERVAL = 1
EVENT_TIMEOUT = 30  # a deadline for an event that comes within seconds
# Postfix retries a deferred message within seconds, so "relay back" drains
# the queue without a flush, as it would on a real host (only slower there).
FAST_RETRY = {"queue_run_delay": "1s", "minimal_backoff_time": "1s",
              "maximal_backoff_time": "2s"}
REACTOR = REPO / "examples" / "reactor" / "postfix_relay_alert.sls"
DOWN = ("deferred", "unreachable")
# A chat webhook's URL is its secret (Slack: /services/T…/B…/<token>), as is a
# header token: neither may show on the master's event bus or in its cache.
HOOK_TOKEN = secrets.token_hex(12)
HEADER_TOKEN = secrets.token_hex(12)
STARTS = {}  # when the first alert's test began: the reactor test looks from there


@pytest.fixture(scope="module")
def relays(tmp_path_factory):
    """One test relay per host, each holding that host's account only."""
    started = {}
    try:
        for host_id in IDS:
            account = ACCOUNT[host_id]
            started[host_id] = Relay(
                tls="starttls", mechanisms=("PLAIN", "LOGIN"),
                users={account: PASSWORDS[account]},
                cert_dir=str(tmp_path_factory.mktemp(f"relay-{host_id}"))).start()
        yield started
    finally:
        for relay in started.values():
            relay.stop()


def write_roots(base, relays):
    """file_roots with the formula; pillar: shared defaults with the beacon at
    its shortest interval, each host its own relay port and account."""
    files = base / "salt"
    files.mkdir()
    for name in ("postfix_relay", "_modules", "_states", "_utils", "_beacons", "_runners"):
        (files / name).symlink_to(REPO / name)
    pillar = base / "pillar"
    (pillar / "mail").mkdir(parents=True)
    top = "base:\n  '*':\n    - mail.defaults\n"
    main_cf = "".join(f"    {key}: {value}\n" for key, value in FAST_RETRY.items())
    (pillar / "mail" / "defaults.sls").write_text(
        "postfix_relay:\n  domain: example.org\n  recipient: admin@example.org\n"
        "  listen: none\n"
        f"  beacon:\n    interval: {INTERVAL}\n    deferred_max: 50\n    age_max: 1h\n"
        f"  main_cf:\n{main_cf}")
    for host_id in IDS:
        account = ACCOUNT[host_id]
        top += f"  '{host_id}':\n    - mail.{host_id}\n"
        (pillar / "mail" / f"{host_id}.sls").write_text(
            f"postfix_relay:\n  relay:\n    host: 127.0.0.1\n    port: {relays[host_id].port}\n"
            f"    username: {account}\n    password: {PASSWORDS[account]}\n"
            "    tls: encrypt\n")
    (pillar / "top.sls").write_text(top)
    return files, pillar


PILLAR_ROOT = []  # the fleet's pillar root, for the test that changes it


@pytest.fixture(scope="module")
def webhook():
    with Webhook(path=f"/services/T000/B000/{HOOK_TOKEN}") as hook:
        yield hook


@pytest.fixture(scope="module")
def beacon_fleet(salt_factories, tmp_path_factory, relays, webhook):
    """The master runs the example reactor on every postfix_relay beacon
    event, the way the README configures it."""
    roots = write_roots(tmp_path_factory.mktemp("beacon-roots"), relays)
    PILLAR_ROOT.append(roots[1])
    master, hosts, minions = start_fleet(
        salt_factories, tmp_path_factory.mktemp("beacon-hosts"), roots,
        tmp_path_factory.mktemp("beacon-gpg"), IDS, master_id="beacon-master",
        master_overrides={
            "reactor": [{"salt/beacon/*/postfix_relay/*": [str(REACTOR)]}],
            "postfix_relay_alert_url": webhook.url,
            "postfix_relay_alert_headers": {"X-Alert-Token": HEADER_TOKEN},
        },
        # Salt's default: the minion runs beacons once a second and counts
        # their intervals in loop_intervals; salt-factories' 0.05 would make
        # a 10 s beacon interval 200 s.
        minion_overrides={"loop_interval": 1})
    with fleet_running(master, minions, hosts):
        # As the README says: the master loads the formula's runner from its
        # file_roots (_runners) once synced.
        synced = master.salt_run_cli(timeout=120).run("saltutil.sync_runners")
        assert "runners.postfix_relay_alert" in (synced.data or []), synced.stdout + synced.stderr
        yield master, hosts, minions


# -- helpers -------------------------------------------------------------------
def beacon_events(listener, master, host_id, after):
    """This host's postfix_relay beacon events on the master's bus since after,
    oldest first."""
    found = listener.get_events([(master.id, f"salt/beacon/{host_id}/postfix_relay/*")],
                                after_time=after)
    return sorted(found, key=lambda event: event.stamp)


def wait_event(listener, master, host_id, conditions, after, timeout):
    """The first of this host's beacon events since after whose condition is
    one of conditions, waiting up to timeout seconds; fails naming what came."""
    deadline = time.monotonic() + timeout
    while True:
        events = beacon_events(listener, master, host_id, after)
        for event in events:
            if event.tag.rsplit("/", 1)[-1] in conditions:
                return event
        assert time.monotonic() < deadline, (
            f"no {conditions} event from {host_id} in {timeout} s; "
            f"came: {[(e.tag, e.data) for e in events]}")
        time.sleep(0.5)


def maillog_count(host, text):
    """How many lines of that host's Postfix log hold text."""
    path = host.path("/var/log/postfix.log")
    if not path.exists():
        return 0
    return sum(text in line for line in path.read_text(errors="replace").splitlines())


def wait_logged(host, text, count, timeout=EVENT_TIMEOUT):
    """Wait until that host's Postfix log holds count lines with text; the
    time it was seen."""
    deadline = time.monotonic() + timeout
    while maillog_count(host, text) < count:
        assert time.monotonic() < deadline, f"{count} '{text}' lines not logged on {host.id}"
        time.sleep(0.2)
    return time.time()


def beacon_checked(minion):
    """When the running beacon last judged its host (its state file's
    "checked"), or 0."""
    path = pathlib.Path(minion.config["cachedir"]) / "postfix_relay" / "beacon.json"
    try:
        return json.loads(path.read_text()).get("checked") or 0
    except (OSError, ValueError):
        return 0


def wait_beacon_runs(minion, after, runs=2, timeout=EVENT_TIMEOUT):
    """Wait until the beacon has started runs runs after the time after: the
    first read everything logged by then, and the events of all but the last
    were sent to the master before the last began."""
    deadline = time.monotonic() + timeout
    seen, last = 0, after
    while seen < runs:
        checked = beacon_checked(minion)
        if checked > last:
            seen, last = seen + 1, checked
            continue
        assert time.monotonic() < deadline, f"the beacon of {minion.id} did not run"
        time.sleep(0.1)


def send_mail(master, host_id, token):
    """A mail the way cron sends one, submitted on that host."""
    mail = f"printf 'Subject: {token}\\n\\n{token}\\n' | sendmail -FCronDaemon -i -oem root"
    res = master.salt_cli(timeout=60).run("cmd.run", mail, "python_shell=True",
                                          minion_tgt=host_id)
    assert res.returncode == 0 and res.data == "", res.stdout + res.stderr


def deferred_on(master, host_id):
    """The messages in that host's queue (postqueue -j: one JSON line each)."""
    res = master.salt_cli(timeout=60).run("cmd.run", "postqueue -j", minion_tgt=host_id)
    assert res.returncode == 0, res.stdout + res.stderr
    return [line for line in (res.data or "").splitlines() if line.strip()]


def alerts_of(webhook, count=1, **fields):
    """The webhook's alerts (parsed JSON bodies) that carry these fields,
    once there are count of them (30 s at most)."""
    posts = webhook.wait_for(count, timeout=30, match=lambda post: all(
        (post["json"] or {}).get(key) == value for key, value in fields.items()))
    return [post["json"] for post in posts]


def assert_webhook_kept_off_the_bus(listener, master, after):
    """Every event on the master's bus since after: the runner's jobs are
    there (so the search below sees job arguments), and none carries the
    webhook's URL token or header token; nor does any file in the master's
    cachedir (the job cache)."""
    deadline = time.monotonic() + 10
    while True:
        events = listener.get_events([(master.id, "*")], after_time=after)
        runs = [e for e in events if e.tag.startswith("salt/run/") and e.tag.endswith("/new")
                and e.data.get("fun") == "runner.postfix_relay_alert.post"]
        if runs or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert runs, f"no postfix_relay_alert.post job on the bus: {[e.tag for e in events]}"
    assert any("minion" in repr(e.data.get("fun_args")) for e in runs), runs[0].data
    leaks = [(e.tag, e.full_data) for e in events
             if HOOK_TOKEN in e.tag + repr(e.full_data) or HEADER_TOKEN in repr(e.full_data)]
    assert not leaks, leaks
    cached = [path for path in pathlib.Path(master.config["cachedir"]).rglob("*")
              if path.is_file() and (HOOK_TOKEN.encode() in path.read_bytes()
                                     or HEADER_TOKEN.encode() in path.read_bytes())]
    assert not cached, cached


def assert_no_secret(*texts):
    for text in texts:
        for password in PASSWORDS.values():
            assert password not in repr(text)


# -- tests -----------------------------------------------------------------------
def test_apply_installs_the_beacon_on_every_host(beacon_fleet):
    master, _, _ = beacon_fleet
    cli = master.salt_cli(timeout=300)
    assert cli.run("saltutil.sync_all", minion_tgt="*").returncode == 0
    res = cli.run("state.apply", "postfix_relay", minion_tgt="*")
    assert isinstance(res.data, dict), res.stdout[-3000:] + res.stderr[-3000:]
    for host_id in IDS:
        states = res.data[host_id]
        assert isinstance(states, dict), f"{host_id}: {states}"
        failed = {v["__id__"]: v["comment"] for v in states.values() if v["result"] is not True}
        assert not failed, f"{host_id}: {failed}"
    # The running minion (not only its config file) has the beacon.
    listed = cli.run("beacons.list", "return_yaml=False", minion_tgt="*").data
    for host_id in IDS:
        assert {"interval": INTERVAL} in listed[host_id]["postfix_relay"], listed[host_id]


@pytest.fixture(scope="module")
def beacon_each_second(beacon_fleet):
    """The running beacons, as the formula installed them, but every second."""
    master, _, _ = beacon_fleet
    cli = master.salt_cli(timeout=60)
    listed = cli.run("beacons.list", "return_yaml=False", minion_tgt="*").data
    for host_id in IDS:
        config = [item for item in listed[host_id]["postfix_relay"] if "interval" not in item]
        res = cli.run("beacons.modify", "postfix_relay",
                      json.dumps([{"interval": FAST_INTERVAL}, *config]), minion_tgt=host_id)
        assert res.returncode == 0 and res.data["result"], res.stdout + res.stderr
    listed = cli.run("beacons.list", "return_yaml=False", minion_tgt="*").data
    for host_id in IDS:
        assert {"interval": FAST_INTERVAL} in listed[host_id]["postfix_relay"], listed[host_id]


def test_healthy_hosts_say_nothing(beacon_fleet, beacon_each_second, relays, event_listener):
    """Mail that leaves raises no event: a fleet whose mail works is quiet."""
    master, hosts, minions = beacon_fleet
    start = time.time()
    sent = {host_id: maillog_count(hosts[host_id], "status=sent") for host_id in IDS}
    for host_id in IDS:
        send_mail(master, host_id, f"{host_id}-healthy")
    for host_id in IDS:
        assert relays[host_id].find(f"{host_id}-healthy", timeout=30), host_id
        logged = wait_logged(hosts[host_id], "status=sent", sent[host_id] + 1)
        wait_beacon_runs(minions[host_id], logged)
    for host_id in IDS:
        assert beacon_events(event_listener, master, host_id, start) == [], host_id


def test_relay_down_one_event_from_that_host_only(beacon_fleet, beacon_each_second, relays,
                                                  event_listener):
    master, hosts, minions = beacon_fleet
    start = STARTS["down"] = time.time()
    relays["bcn1"].stop()
    send_mail(master, "bcn1", "while-bcn1-relay-down")
    send_mail(master, "bcn2", "bcn2-still-fine")
    event = wait_event(event_listener, master, "bcn1", DOWN, start, timeout=EVENT_TIMEOUT)
    data = event.data
    assert data["condition"] == event.tag.rsplit("/", 1)[-1]
    assert data["deferred"] >= 1, data
    assert "Connection refused" in data["reply"] and data["cause"] and data["fix"], data
    assert str(relays["bcn1"].port) in data["relay"], data
    assert_no_secret(event.full_data)
    # The other host's mail left: it has nothing to report.
    assert relays["bcn2"].find("bcn2-still-fine", timeout=30)
    # One event per change, not per interval: Postfix retries twice more
    # (and logs it), the beacon reads that and stays quiet.
    deferrals = maillog_count(hosts["bcn1"], "status=deferred")
    logged = wait_logged(hosts["bcn1"], "status=deferred", deferrals + 2)
    wait_beacon_runs(minions["bcn1"], logged)
    events = beacon_events(event_listener, master, "bcn1", start)
    assert [e.tag for e in events] == [event.tag], [(e.tag, e.data) for e in events]
    assert beacon_events(event_listener, master, "bcn2", start) == []
    assert deferred_on(master, "bcn1"), "the mail is still queued on bcn1"


def test_reactor_posts_the_alert_while_mail_cannot_leave(beacon_fleet, relays, webhook,
                                                         event_listener):
    master, _, _ = beacon_fleet
    post = webhook.wait_for(1, timeout=30,
                            match=lambda p: (p["json"] or {}).get("minion") == "bcn1")[0]
    # To the configured URL, with the configured header: the runner read both
    # from the master's config.
    assert post["path"] == f"/services/T000/B000/{HOOK_TOKEN}", post["path"]
    assert post["headers"].get("X-Alert-Token") == HEADER_TOKEN, post["headers"]
    alert = post["json"]
    assert alert["condition"] in DOWN, alert
    assert alert["deferred"] >= 1 and alert["cause"] and alert["fix"], alert
    assert "bcn1" in alert["text"] and alert["cause"] in alert["text"], alert
    assert not [m for m in relays["bcn1"].messages if "while-bcn1-relay-down" in m["data"]], \
        "the alert came while bcn1's mail could not leave"
    assert not [p for p in webhook.posts if (p["json"] or {}).get("minion") == "bcn2"]
    assert_no_secret(*(p["body"] for p in webhook.posts))
    assert_webhook_kept_off_the_bus(event_listener, master, STARTS["down"])


def test_relay_back_queue_drained_recovered(beacon_fleet, beacon_each_second, relays,
                                            event_listener, webhook):
    master, _, _ = beacon_fleet
    start = time.time()
    relays["bcn1"].start()  # same port: Postfix retries it by itself
    assert relays["bcn1"].find("while-bcn1-relay-down", timeout=30), "queue not drained"
    event = wait_event(event_listener, master, "bcn1", ("recovered",), start,
                       timeout=EVENT_TIMEOUT)
    assert event.data["recovered"] in DOWN and event.data["deferred"] == 0, event.data
    assert deferred_on(master, "bcn1") == []
    assert beacon_events(event_listener, master, "bcn2", start) == []
    alert = alerts_of(webhook, minion="bcn1", condition="recovered")[0]
    assert alert["recovered"] == event.data["recovered"] and alert["deferred"] == 0, alert
    assert_webhook_kept_off_the_bus(event_listener, master, start)


def test_rotated_password_credentials_event_with_the_relays_reply(
        beacon_fleet, beacon_each_second, relays, event_listener, webhook):
    master, _, _ = beacon_fleet
    relay = relays["bcn2"]
    account = ACCOUNT["bcn2"]
    start = time.time()
    relay.users[account] = "rotated-at-the-provider"  # bcn2's pillar password is now wrong
    try:
        send_mail(master, "bcn2", "after-password-rotation")
        event = wait_event(event_listener, master, "bcn2", ("credentials",), start,
                           timeout=EVENT_TIMEOUT)
    finally:
        relay.users[account] = PASSWORDS[account]
    data = event.data
    assert "535" in data["reply"] and "Authentication credentials invalid" in data["reply"], data
    assert str(relay.port) in data["relay"] and data["fix"], data
    assert_no_secret(event.full_data)
    assert beacon_events(event_listener, master, "bcn1", start) == []
    alert = alerts_of(webhook, minion="bcn2", condition="credentials")[0]
    assert "535" in alert["reply"] and alert["fix"] in alert["text"], alert
    assert_webhook_kept_off_the_bus(event_listener, master, start)


def test_removing_the_beacon_key_removes_the_beacon(beacon_fleet):
    """An admin turns the alerts off by deleting postfix_relay:beacon and
    applying postfix_relay: the running minions drop the beacon."""
    master, _, _ = beacon_fleet
    defaults = PILLAR_ROOT[0] / "mail" / "defaults.sls"
    text = defaults.read_text()
    defaults.write_text(re.sub(r"  beacon:\n(    .*\n)+", "", text))
    cli = master.salt_cli(timeout=300)
    assert cli.run("saltutil.refresh_pillar", "wait=True", minion_tgt="*").returncode == 0
    res = cli.run("state.apply", "postfix_relay", minion_tgt="*")
    for host_id in IDS:
        states = res.data[host_id]
        assert isinstance(states, dict), f"{host_id}: {states}"
        removed = [v for v in states.values() if v["__id__"] == "postfix-relay-beacon"]
        # (Salt's beacon.absent says so in its comment, with no changes)
        assert removed and removed[0]["result"] is True, states
        assert "Removed postfix_relay" in removed[0]["comment"], removed
    listed = cli.run("beacons.list", "return_yaml=False", minion_tgt="*").data
    for host_id in IDS:
        assert "postfix_relay" not in (listed[host_id] or {}), listed[host_id]
