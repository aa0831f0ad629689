"""
probe and verify with several relays (issue 14): probe checks every relay
with its own account and names the one that fails by its pillar key; verify
sender=... follows a mail through the relay configured for its sender and
says so, or says it went elsewhere. Real Postfix, real relays on loopback.

Run inside a private test host (scripts/test-host).
"""

import subprocess

import pytest

from conftest import MAILLOG, PASSWORD, USER, dump
from relay import Relay

FALLBACK = ("fallback-one", "Fb1-pw-5Kx8w-never-logged")
BILLING = ("billing-api", "Bill-pw-8Zq1r-never-logged")
WRONG = "Wrong-pw-3Jd6t-never-logged"
SECRETS = (FALLBACK[1], BILLING[1], WRONG)


@pytest.fixture(scope="module", autouse=True)
def no_password_leaked(applier):
    """No return and no log line shows any relay's password (the primary's
    is checked by conftest's applier)."""
    yield
    leaked = [r for r in applier.returns if any(pw in r for pw in SECRETS)]
    assert not leaked, "a fallback or sender relay's password appeared in a return"
    text = MAILLOG.read_text(errors="replace") if MAILLOG.exists() else ""
    assert not any(pw in text for pw in SECRETS), f"a relay password is in {MAILLOG}"


def start_relay(tmp_path, name, users):
    return Relay(users=dict(users), cert_dir=str(tmp_path / f"certs-{name}")).start()


def entry(server, account):
    user, password = account
    return {"host": "127.0.0.1", "port": server.port, "username": user,
            "password": password, "tls": "encrypt"}


def apply_ok(applier, data):
    res = applier.apply(data)
    assert res.returncode == 0, dump(res)


def call(applier, *args):
    res = applier.run(*args)
    assert isinstance(res.data, dict), dump(res)
    return res.returncode, res.data


def causes(data, key=None):
    return [d["cause"] for d in data.get("diagnosis", []) if key is None or d.get("relay") == key]


def by_key(data):
    return {r["key"]: r for r in data["relays"]}


def test_probe_names_the_fallback_whose_password_is_refused(applier, tmp_path):
    """Primary right, fallback with a wrong password: probe checks both,
    each with its own account; ok is false and the diagnosis names
    fallback_relays:0 and the 535, the primary's fields stay at the top.
    With the right password every relay passes."""
    primary = start_relay(tmp_path, "primary", {USER: PASSWORD})
    fallback = start_relay(tmp_path, "fallback", [FALLBACK])
    try:
        wrong = dict(entry(fallback, FALLBACK), password=WRONG)
        apply_ok(applier, applier.pillar(relay={"port": primary.port},
                                         fallback_relays=[wrong]))
        _, bad = call(applier, "postfix_relay.probe")
        apply_ok(applier, applier.pillar(relay={"port": primary.port},
                                         fallback_relays=[entry(fallback, FALLBACK)]))
        _, good = call(applier, "postfix_relay.probe")
    finally:
        primary.stop()
        fallback.stop()
    assert bad["ok"] is False and bad["failing"] == ["fallback_relays:0"], bad
    assert [r["key"] for r in bad["relays"]] == ["relay", "fallback_relays:0"]
    assert [r["role"] for r in bad["relays"]] == ["primary", "fallback"]
    relays = by_key(bad)
    assert relays["relay"]["ok"] is True and relays["relay"]["credentials"]["accepted"] is True
    refused = relays["fallback_relays:0"]
    assert refused["ok"] is False and refused["port"] == fallback.port
    assert refused["credentials"]["key"] == f"[127.0.0.1]:{fallback.port}"
    assert refused["credentials"]["username"] == FALLBACK[0]
    assert refused["credentials"]["accepted"] is False and refused["credentials"]["code"] == 535
    named = causes(bad, "fallback_relays:0")
    assert any("the relay rejects the credentials (535" in c for c in named), bad
    assert any("fallback_relays:0" in c for c in named)
    assert causes(bad, "relay") == []
    # the primary's fields at the top, as with one relay
    assert bad["port"] == primary.port and bad["credentials"]["accepted"] is True
    # both relays saw a login: the primary's account at the primary, the
    # fallback's (wrong, then right) at the fallback
    assert {a["user"] for a in primary.auth_attempts} == {USER}
    assert {a["user"] for a in fallback.auth_attempts} == {FALLBACK[0]}
    assert good["ok"] is True, good.get("diagnosis")
    assert all(r["ok"] and r["credentials"]["accepted"] for r in good["relays"])


def test_probe_names_an_unreachable_fallback_and_reads_main_cf_without_pillar(
        applier, tmp_path):
    """A fallback whose port is closed is named; probe relay=... checks just
    that relay; without a pillar probe reads the relays from main.cf."""
    primary = start_relay(tmp_path, "primary", {USER: PASSWORD})
    fallback = start_relay(tmp_path, "fallback", [FALLBACK])
    fallback.stop()  # nothing listens there now
    try:
        apply_ok(applier, applier.pillar(relay={"port": primary.port},
                                         fallback_relays=[entry(fallback, FALLBACK)]))
        _, data = call(applier, "postfix_relay.probe")
        _, one = call(applier, "postfix_relay.probe", f"relay=[127.0.0.1]:{primary.port}")
        applier.write_pillar({})  # the formula applied, its pillar gone
        _, live = call(applier, "postfix_relay.probe")
    finally:
        primary.stop()
    assert data["ok"] is False and data["failing"] == ["fallback_relays:0"]
    assert any(f"relay 127.0.0.1:{fallback.port} is unreachable" in c
               for c in causes(data, "fallback_relays:0")), data
    assert by_key(data)["relay"]["ok"] is True
    assert one["ok"] is True and [r["key"] for r in one["relays"]] == ["relay"]
    assert live["source"] == "main.cf"
    assert [(r["key"], r["relayhost"]) for r in live["relays"]] == [
        ("relay", f"[127.0.0.1]:{primary.port}"),
        ("fallback_relays:0", f"[127.0.0.1]:{fallback.port}")]
    assert live["failing"] == ["fallback_relays:0"]


def test_verify_sender_follows_the_sender_relay(applier, tmp_path):
    """verify sender=billing@example.org: the mail goes through its sender
    relay with its account, and verify says so; a root mail goes through
    the primary. With sender_dependent_relayhost_maps emptied behind the
    formula's back, billing's mail goes through the primary and verify
    fails, naming the relay it went through and the one configured."""
    primary = start_relay(tmp_path, "primary", {USER: PASSWORD, BILLING[0]: BILLING[1]})
    billing = start_relay(tmp_path, "billing", [BILLING])
    try:
        apply_ok(applier, applier.pillar(
            relay={"port": primary.port}, sender_mode="local",
            sender_relays={"billing@example.org": entry(billing, BILLING)}))
        _, probed = call(applier, "postfix_relay.probe")
        code, sent = call(applier, "postfix_relay.verify", "sender=billing@example.org",
                          "timeout=30")
        _, root = call(applier, "postfix_relay.verify", "timeout=30")
        subprocess.run(["postconf", "-e", "sender_dependent_relayhost_maps="], check=True)
        subprocess.run(["postfix", "reload"], capture_output=True, check=True)
        wrong_code, wrong = call(applier, "postfix_relay.verify",
                                 "sender=billing@example.org", "timeout=30")
    finally:
        primary.stop()
        billing.stop()
    assert probed["ok"] is True, probed.get("diagnosis")
    sender_relay = by_key(probed)["sender_relays:billing@example.org"]
    assert sender_relay["role"] == "sender" and sender_relay["sender"] == "billing@example.org"
    assert sender_relay["credentials"]["key"] == "billing@example.org"
    assert sender_relay["credentials"]["accepted"] is True
    assert code == 0 and sent["ok"] is True, sent
    assert sent["sender"] == "billing@example.org"
    assert sent["relay_used"]["key"] == "sender_relays:billing@example.org"
    assert sent["relay_expected"] == ["sender_relays:billing@example.org"]
    assert sent["relay_as_configured"] is True
    assert [m["mail_from"] for m in billing.messages] == ["billing@example.org"]
    assert billing.messages[0]["auth_user"] == BILLING[0]
    assert root["ok"] is True and root["relay_used"]["key"] == "relay"
    assert root["relay_as_configured"] is True
    assert wrong_code != 0 and wrong["ok"] is False and wrong["status"] == "sent"
    assert wrong["relay_used"]["key"] == "relay"
    assert wrong["relay_as_configured"] is False
    assert "went through relay" in " ".join(causes(wrong))
    assert "sender_relays:billing@example.org is configured for it" in " ".join(causes(wrong))


def test_probe_checks_each_relay_at_its_own_tls_level(applier, tmp_path):
    """Primary at encrypt, fallback at secure with a CA that did not sign its
    certificate: Postfix applies the fallback's level from
    smtp_tls_policy_maps, and so does probe: the fallback's certificate
    fails and is named, the primary (no verification asked) passes."""
    primary = start_relay(tmp_path, "primary", {USER: PASSWORD})
    fallback = Relay(users=dict([FALLBACK]), cert_dir=str(tmp_path / "certs-fallback"),
                     cert_names=("localhost",), hostname="localhost").start()
    with Relay(cert_dir=str(tmp_path / "other")) as other:
        other_ca = other.ca_file
    try:
        secure = dict(entry(fallback, FALLBACK), host="localhost", tls="secure",
                      ca_file=other_ca)
        apply_ok(applier, applier.pillar(relay={"port": primary.port},
                                         fallback_relays=[secure],
                                         main_cf={"smtp_host_lookup": "native"}))
        _, data = call(applier, "postfix_relay.probe")
    finally:
        primary.stop()
        fallback.stop()
    relays = by_key(data)
    assert relays["relay"]["tls_level"] == "encrypt" and relays["relay"]["ok"] is True, data
    refused = relays["fallback_relays:0"]
    assert refused["tls_level"] == "secure" and refused["tls"]["verified"] is False
    assert data["failing"] == ["fallback_relays:0"]
    assert any("certificate does not verify" in c for c in causes(data, "fallback_relays:0"))
    # never sent the password to a certificate Postfix would refuse
    assert refused["credentials"]["checked"] is False
    assert not fallback.auth_attempts


def test_verify_names_the_sender_account_on_a_shared_relay(applier, tmp_path):
    """One provider, one account per sender (issue 14 review 2 and 4): the
    sender relay of billing@example.org is the primary's host and port.
    Postfix sends billing's mail, and billing+june's (recipient_delimiter +),
    with billing's account; verify names sender_relays:billing@example.org
    as the relay used, as configured, and says the log cannot tell the
    accounts apart; probe of that next hop checks both accounts, and so does
    probe without a pillar (sender relays read from main.cf's table)."""
    shared = start_relay(tmp_path, "shared", {USER: PASSWORD, BILLING[0]: BILLING[1]})
    try:
        apply_ok(applier, applier.pillar(
            relay={"port": shared.port}, sender_mode="local",
            main_cf={"recipient_delimiter": "+"},
            sender_relays={"billing@example.org": entry(shared, BILLING)}))
        code, sent = call(applier, "postfix_relay.verify", "sender=billing@example.org",
                          "timeout=30")
        june_code, june = call(applier, "postfix_relay.verify",
                               "sender=billing+june@example.org", "timeout=30")
        _, probed = call(applier, "postfix_relay.probe", f"relay=[127.0.0.1]:{shared.port}")
        applier.write_pillar({})  # the formula applied, its pillar gone
        _, live = call(applier, "postfix_relay.probe")
    finally:
        shared.stop()
    # without a pillar, the sender relay is read from sender_dependent_relayhost_maps
    assert live["source"] == "main.cf"
    assert [(r["key"], r["relayhost"], r["credentials"]["username"]) for r in live["relays"]] \
        == [("relay", f"[127.0.0.1]:{shared.port}", USER),
            ("sender_relays:billing@example.org", f"[127.0.0.1]:{shared.port}", BILLING[0])]
    assert live["ok"] is True, live.get("diagnosis")
    assert [(m["mail_from"], m["auth_user"]) for m in shared.messages] == \
        [("billing@example.org", BILLING[0]), ("billing+june@example.org", BILLING[0])]
    for code_, data in ((code, sent), (june_code, june)):
        assert code_ == 0 and data["ok"] is True, data
        assert data["relay_used"]["key"] == "sender_relays:billing@example.org"
        assert data["relay_expected"] == ["sender_relays:billing@example.org"]
        assert data["relay_as_configured"] is True
        assert "cannot tell which of their accounts" in data["relay_note"]
    assert [r["key"] for r in probed["relays"]] == \
        ["relay", "sender_relays:billing@example.org"], probed
    assert [r["credentials"]["username"] for r in probed["relays"]] == [USER, BILLING[0]]
    assert probed["ok"] is True, probed.get("diagnosis")


class HangingUpRelay(Relay):
    """A relay that closes the connection on AUTH instead of answering (some
    relays drop a login they refuse)."""

    def _authenticate(self, server, session, envelope, mechanism, auth_data):
        server.transport.close()
        return super()._authenticate(server, session, envelope, mechanism, auth_data)


def test_probe_reports_a_relay_that_hangs_up_during_auth(applier, tmp_path):
    """The fallback closes the session during AUTH: probe still reports every
    relay, names the fallback and why, and the primary passes."""
    primary = start_relay(tmp_path, "primary", {USER: PASSWORD})
    hangup = HangingUpRelay(users=dict([FALLBACK]),
                            cert_dir=str(tmp_path / "certs-hangup")).start()
    try:
        apply_ok(applier, applier.pillar(relay={"port": primary.port},
                                         fallback_relays=[entry(hangup, FALLBACK)]))
        _, data = call(applier, "postfix_relay.probe")
    finally:
        primary.stop()
        hangup.stop()
    assert [r["key"] for r in data["relays"]] == ["relay", "fallback_relays:0"], data
    assert data["ok"] is False and data["failing"] == ["fallback_relays:0"]
    assert by_key(data)["relay"]["ok"] is True
    assert any("closed the connection during AUTH" in c
               for c in causes(data, "fallback_relays:0")), data
