"""
Per-sender relays with sender_mode: local (issue 14): an application's mail
keeps its own sender and goes out through that sender's relay with that
sender's account; cron mail from root still goes to the primary, rewritten to
<host>@<domain>. Real Postfix, real relays on the test host's loopback.

Run inside a private test host (scripts/test-host).
"""

import subprocess

import pytest

from conftest import flush_queue, new_token, send_with_sendmail
from test_reliability import wait_queue
from test_several_relays import (  # noqa: F401 (a module fixture, autouse)
    ACCOUNTS, FAST_RETRY, apply_ok, arrival, entry, header, no_relay_password_leaked,
    postconf, send_as, start_relay,
)

SENDER_RELAYS = {"billing@example.org": "billing", "@shop.example.org": "shop"}


@pytest.fixture(scope="module")
def relays(applier, tmp_path_factory):
    """primary, billing and shop relays running, the formula applied with
    sender_mode local and a sender relay for billing@ and for @shop."""
    tmp = tmp_path_factory.mktemp("sender-relays")
    running = {name: start_relay(tmp, name) for name in ("primary", "billing", "shop")}
    try:
        flush_queue()
        apply_ok(applier, applier.pillar(
            relay={"port": running["primary"].port}, sender_mode="local",
            sender_relays={sender: entry(name, running[name].port)
                           for sender, name in SENDER_RELAYS.items()},
            main_cf=FAST_RETRY))
        yield running
    finally:
        for relay in running.values():
            relay.stop()
        flush_queue()


def lookup(table, key):
    """What Postfix's table lookup gives for key (None: no match)."""
    out = subprocess.run(["postmap", "-q", key, table], capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else None


def test_postfix_routes_each_sender_pattern_to_its_relay(relays):
    maps = postconf("sender_dependent_relayhost_maps")[0]
    assert maps, "no sender_dependent_relayhost_maps in main.cf"
    assert postconf("smtp_sender_dependent_authentication") == ["yes"]
    for sender, name in SENDER_RELAYS.items():
        assert lookup(maps, sender) == f"[127.0.0.1]:{relays[name].port}", sender
    # A sender of no pattern: no entry, the relayhost list applies.
    assert lookup(maps, "app@example.org") is None


def test_billing_mail_keeps_its_sender_and_goes_through_its_relay(relays):
    token = new_token()
    send_as("billing@example.org", "root", token)
    name, record = arrival(relays, token)
    assert name == "billing"
    assert record["auth_user"] == ACCOUNTS["billing"][0] and record["tls"] is True
    assert record["mail_from"] == "billing@example.org"
    assert header(record, "From") == ["billing@example.org"]
    assert record["rcpt_tos"] == ["me@example.org"]  # recipients still rewritten


@pytest.mark.parametrize("sender", ["orders@shop.example.org", "noreply@shop.example.org"])
def test_any_sender_of_a_domain_pattern_goes_through_its_relay(relays, sender):
    token = new_token()
    send_as(sender, "root", token)
    name, record = arrival(relays, token)
    assert name == "shop"
    assert record["auth_user"] == ACCOUNTS["shop"][0]
    assert record["mail_from"] == sender
    assert header(record, "From") == [sender]


def test_cron_mail_from_root_still_goes_to_the_primary_rewritten(relays):
    token = new_token()
    send_with_sendmail("root", token)  # as cron does: sendmail as root
    name, record = arrival(relays, token)
    assert name == "primary"
    assert record["auth_user"] == ACCOUNTS["primary"][0] and record["tls"] is True
    assert record["mail_from"] == "pi@example.org"
    assert "pi@example.org" in header(record, "From")[0]
    assert record["rcpt_tos"] == ["me@example.org"]


@pytest.mark.parametrize("sender", ["backup@localhost", "www-data@pi.example.org"])
def test_local_senders_are_rewritten_and_go_to_the_primary(relays, sender):
    token = new_token()
    send_as(sender, "root", token)
    name, record = arrival(relays, token)
    assert name == "primary"
    assert record["mail_from"] == "pi@example.org"
    assert header(record, "From") == ["pi@example.org"]


def test_an_application_sender_without_a_relay_keeps_its_address_via_the_primary(relays):
    token = new_token()
    send_as("app@example.org", "root", token)
    name, record = arrival(relays, token)
    assert name == "primary"
    assert record["auth_user"] == ACCOUNTS["primary"][0]
    assert record["mail_from"] == "app@example.org"
    assert header(record, "From") == ["app@example.org"]


def test_billing_relay_down_its_mail_waits_for_it_and_never_takes_the_primary(
        relays, tmp_path):
    """A sender relay down: its mail is deferred, not sent through the primary
    with the primary's account (which the provider may refuse or not), and it
    goes out through its own relay once that is back, exactly once."""
    flush_queue()
    port = relays["billing"].port
    relays["billing"].stop()
    token = new_token()
    send_as("billing@example.org", "root", token)
    records = wait_queue(lambda q: len(q) == 1 and q[0]["queue_name"] == "deferred")
    reason = records[0]["recipients"][0]["delay_reason"]
    assert f"127.0.0.1[127.0.0.1]:{port}" in reason, reason
    relays["billing"] = start_relay(tmp_path, "billing", port=port)
    subprocess.run(["postqueue", "-f"], check=True)
    name, record = arrival(relays, token)
    assert name == "billing" and record["auth_user"] == ACCOUNTS["billing"][0]
    assert record["mail_from"] == "billing@example.org"
    wait_queue(lambda q: q == [], timeout=10)
    assert sum(token in r["data"] for relay in relays.values() for r in relay.messages) == 1
