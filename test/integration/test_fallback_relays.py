"""
Fallback relays (issue 14): when the primary smarthost cannot be reached or
refuses service, cron mail goes out through the fallbacks, in order, each with
its own account, every message exactly once; the primary is used again as soon
as it is back. Real Postfix, real relays on the test host's loopback.

Run inside a private test host (scripts/test-host).
"""

import pytest

from conftest import MAILLOG, flush_queue, new_token, send_with_sendmail
from relay import GreetingRefuser, free_port
from test_reliability import assert_exactly_once, queue, received_once_queue_empty, submit
from test_several_relays import (  # noqa: F401 (a module fixture, autouse)
    ACCOUNTS, FAST_RETRY, apply_ok, arrival, entry, no_relay_password_leaked, postconf,
    relayhost_list, start_relay,
)



def fallback_pillar(applier, primary_port, fb1_port, fb2_port, host=("127.0.0.1",) * 3):
    return applier.pillar(relay={"host": host[0], "port": primary_port},
                          fallback_relays=[entry("fb1", fb1_port, host=host[1]),
                                           entry("fb2", fb2_port, host=host[2])],
                          main_cf=FAST_RETRY)


def assert_all_from(seen, tokens, relay, name):
    """Every token reached relay (name), once, over TLS with name's account,
    rewritten as a cron mail is."""
    assert_exactly_once(seen, tokens)
    user = ACCOUNTS[name][0]
    elsewhere = [t for t, (record,) in seen.items() if record not in relay.messages]
    assert elsewhere == [], f"{len(elsewhere)} of {len(tokens)} did not reach {name}"
    wrong = [(r["auth_user"], r["tls"], r["mail_from"], r["rcpt_tos"])
             for (r,) in seen.values()
             if (r["auth_user"], r["tls"], r["mail_from"], r["rcpt_tos"])
             != (user, True, "pi@example.org", ["me@example.org"])]
    assert wrong == [], (len(wrong), wrong[:3])


def settle(relays, tokens):
    """What reached relays, once the queue is empty (nothing left that could
    arrive a second time)."""
    return received_once_queue_empty(relays, tokens)


def wait_for_idle_cache(relay):
    """Until Postfix closed its cached session to relay (it keeps an idle one
    for smtp_connection_cache_time_limit, 2 s, and gives it to the next mail
    for the same destination: the fallback's session must be gone before
    "primary back" can show)."""
    assert relay.wait_idle(), "Postfix kept its session to the fallback open"


def primary_down(fault, port):
    """The primary on port is down: nothing listens, or it greets with 421."""
    if fault == "port closed":
        return None
    return GreetingRefuser(port=port).start()


@pytest.mark.parametrize("fault", ["port closed", "greets with 421"])
def test_primary_down_100_cron_mails_reach_the_first_fallback_once_each(
        applier, tmp_path, fault):
    flush_queue()  # another test's deferred mail would go to these relays
    port = free_port("127.0.0.1")
    fb1, fb2 = start_relay(tmp_path, "fb1"), start_relay(tmp_path, "fb2")
    refuser, primary = primary_down(fault, port), None
    try:
        apply_ok(applier, fallback_pillar(applier, port, fb1.port, fb2.port))
        assert relayhost_list() == [f"[127.0.0.1]:{p}" for p in (port, fb1.port, fb2.port)]
        tokens = [new_token() for _ in range(100)]
        submit(tokens)  # as cron does: sendmail as root, several at once
        seen = settle([fb1, fb2], tokens)
        assert_all_from(seen, tokens, fb1, "fb1")
        assert fb2.messages == []
        if refuser:
            assert refuser.connections > 0  # the primary was tried and refused
            refuser.stop()
        else:
            assert f"connect to 127.0.0.1[127.0.0.1]:{port}: Connection refused" \
                in MAILLOG.read_text(errors="replace")
        # The primary is back: the next mail goes to it, with its account.
        primary = start_relay(tmp_path, "primary", port=port)
        wait_for_idle_cache(fb1)
        token = new_token()
        send_with_sendmail("root", token)
        name, record = arrival({"primary": primary, "fb1": fb1, "fb2": fb2}, token, 30)
    finally:
        for server in (refuser, primary, fb1, fb2):
            if server:
                server.stop()
    assert name == "primary"
    assert record["auth_user"] == ACCOUNTS["primary"][0] and record["tls"] is True
    assert queue() == []


def _relays_for(tmp_path, mode):
    """Ports and hosts of primary, fb1, fb2, and fb2 running. implicit: each on
    port 465 (the formula's implicit TLS) of its own loopback address."""
    if mode == "implicit":
        hosts, ports = ("127.0.0.1", "127.0.0.2", "127.0.0.3"), (465, 465, 465)
        fb2 = start_relay(tmp_path, "fb2", host=hosts[2], port=465, tls="implicit")
    else:
        hosts = ("127.0.0.1",) * 3
        fb2 = start_relay(tmp_path, "fb2")
        ports = (free_port(hosts[0]), free_port(hosts[0]), fb2.port)
    return hosts, ports, fb2


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
def test_primary_and_first_fallback_down_the_second_fallback_gets_them(
        applier, tmp_path, mode):
    flush_queue()
    hosts, ports, fb2 = _relays_for(tmp_path, mode)
    try:
        apply_ok(applier, fallback_pillar(applier, *ports, host=hosts))
        assert relayhost_list() == [f"[{h}]:{p}" for h, p in zip(hosts, ports)]
        # One smtp transport for the list: implicit TLS for all, or for none.
        assert postconf("smtp_tls_wrappermode") == ["yes" if mode == "implicit" else "no"]
        tokens = [new_token() for _ in range(20)]
        submit(tokens)
        seen = settle([fb2], tokens)
    finally:
        fb2.stop()
    assert_all_from(seen, tokens, fb2, "fb2")
    if mode == "implicit":
        assert all(r["tls_version"].startswith("TLSv1.") for (r,) in seen.values())
        assert f"relay={hosts[2]}[{hosts[2]}]:465," in MAILLOG.read_text(errors="replace")
    assert queue() == []
