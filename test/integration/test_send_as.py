"""
Send-as refusals (issue 15, part 3): the formula rewrites every sender to
<host>@<domain>, and a relay account may only send as some addresses. The
test relay answers with each provider's own refusal text (as users reported
them: Microsoft 365 gophish#1600 / AVideo#1017, SendAsDenied gophish#2900,
outlook.com rss2email#147, Exchange nodemailer#145, Amazon SES sul-dlss/dlme#813,
SendGrid chatwoot#2371); verify names the provider and the fix and says what
became of the mail (5xx bounced and reported, 4xx deferred and still queued);
probe tests MAIL FROM / RCPT TO without sending a message.

Real Postfix, real salt-call, the real test relay. Run inside a private test
host: scripts/test-host .venv/bin/pytest -p no:cacheprovider test/integration/test_send_as.py
"""

import json
import subprocess
import time

import pytest

from conftest import PASSWORD, USER, dump, flush_queue
from relay import Relay

SENDER, RECIPIENT = "pi@example.org", "me@example.org"
FIX = "set postfix_relay:sender (and domain) to an address the account may send as, " \
      f"or grant the account send-as rights for <{SENDER}>"
# (id, the relay's reply, the provider verify and probe must name, the
# provider's own step the fix must carry)
REFUSALS = [
    ("m365-5.7.60", "550 5.7.60 SMTP; Client does not have permissions to send as this "
     "sender [MW2PR1901MB2155.namprd19.prod.outlook.com]", "Microsoft 365",
     "Add-RecipientPermission pi@example.org -AccessRights SendAs"),
    ("m365-sendasdenied", "554 5.2.252 SendAsDenied; relay@contoso.com not allowed to send "
     f"as {SENDER}; STOREDRV.Submission.Exception:SendAsDeniedException."
     "MapiExceptionSendAsDenied; Failed to process message due to a permanent exception "
     "with message [BeginDiagnosticData]Cannot submit message. 0.35250:1F009983, "
     "1.36674:0A000000, 1.61250:00000000", "Microsoft 365", "-Trustee relay@contoso.com"),
    ("outlook.com", "554 5.2.252 SendAsDenied; pi.owner@outlook.com not allowed to send as "
     f"{SENDER}; STOREDRV.Submission.Exception:SendAsDeniedException."
     "MapiExceptionSendAsDenied; Failed to process message due to a permanent exception "
     "with message [BeginDiagnosticData]Cannot submit message.", "outlook.com",
     "make the rewritten sender pi.owner@outlook.com (sender: pi.owner, domain: outlook.com)"),
    ("exchange-5.7.1", "550 5.7.1 Client does not have permissions to send as this sender",
     "Microsoft Exchange", "grant the relay account Send As on pi@example.org"),
    ("ses", "554 Message rejected: Email address is not verified. The following identities "
     f"failed the check in region US-WEST-2: {SENDER}", "Amazon SES",
     "verify pi@example.org or its domain in SES in region US-WEST-2"),
    ("sendgrid", "550 The from address does not match a verified Sender Identity. Mail "
     "cannot be sent until this error is resolved. Visit https://sendgrid.com/docs/"
     "for-developers/sending-email/sender-identity/ to see the Sender Identity "
     "requirements", "SendGrid", "verify pi@example.org as a Single Sender"),
]
IDS = [case[0] for case in REFUSALS]


@pytest.fixture(scope="module")
def send_as_relay(applier, tmp_path_factory):
    """One relay for the module, the formula applied against it once; each
    test sets the refusal it answers (relay.reject is read per command)."""
    server = Relay(users={USER: PASSWORD},
                   cert_dir=str(tmp_path_factory.mktemp("send-as-certs"))).start()
    try:
        flush_queue()
        res = applier.apply(applier.pillar(relay={"port": server.port}))
        assert res.returncode == 0, dump(res)
        yield server
    finally:
        server.stop()
        flush_queue()


@pytest.fixture()
def refusing(send_as_relay):
    """The relay with a clean record; the test's refusal is gone afterwards,
    and no mail left queued reaches the next test."""
    send_as_relay.reset()
    yield send_as_relay
    send_as_relay.reject = {}
    flush_queue()


def call(applier, *args):
    res = applier.run(*args)
    assert isinstance(res.data, dict), res.stdout + res.stderr
    return res.returncode, res.data


def queue():
    """queue id -> queue name, as postqueue -j lists them."""
    out = subprocess.run(["postqueue", "-j"], capture_output=True, text=True).stdout
    return {item["queue_id"]: item["queue_name"]
            for item in map(json.loads, filter(None, out.splitlines()))}


def named(data, provider):
    """The diagnosis items that name provider."""
    return [d for d in data.get("diagnosis", []) if provider in d["cause"]]


@pytest.mark.parametrize("case", REFUSALS, ids=IDS)
def test_verify_names_a_permanent_refusal_and_reports_the_bounce(applier, refusing, case):
    _, reply, provider, step = case
    refusing.reject = {"DATA": reply}
    code, found = call(applier, "postfix_relay.verify", "timeout=30")
    assert code != 0 and found["ok"] is False
    assert found["status"] == "bounced" and found["dsn"].startswith("5."), found
    assert found["sender"] == SENDER and found["recipient"] == RECIPIENT
    assert found["refusal"]["provider"] == provider and found["refusal"]["kind"] == "send_as"
    assert found["refusal"]["code"] == int(reply[:3]) and found["refusal"]["stage"] == "DATA"
    items = named(found, provider)
    assert len(items) == 1, found.get("diagnosis")
    assert f"refuses the sender <{SENDER}>" in items[0]["cause"]
    assert "bounced" in items[0]["cause"]
    assert FIX in items[0]["fix"] and step in items[0]["fix"], items[0]["fix"]
    assert "BeginDiagnosticData" not in items[0]["cause"]  # Microsoft's hex stays out
    assert found["outcome"].startswith("bounced") and f"<{SENDER}>" in found["outcome"]
    # the relay really refused this message (its sender, after DATA) and took none
    assert [r["stage"] for r in refusing.refusals if r["mail_from"] == SENDER][:1] == ["DATA"]
    assert refusing.messages == []
    # reported, not lost: Postfix returns it to its sender and keeps no copy
    deadline = time.monotonic() + 10
    while found["queue_id"] in queue() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert found["queue_id"] not in queue()


def test_verify_names_a_refusal_at_mail_from(applier, refusing):
    """Exchange on premises refuses at MAIL FROM: named just the same."""
    _, reply, provider, step = REFUSALS[3]
    refusing.reject = {"MAIL": reply}
    code, found = call(applier, "postfix_relay.verify", "timeout=30")
    assert code != 0 and found["status"] == "bounced", found
    assert found["refusal"]["provider"] == provider and found["refusal"]["stage"] == "MAIL"
    assert step in named(found, provider)[0]["fix"]
    # refused once: verify's own probe (for the mechanism) sends no second MAIL FROM
    assert [r["stage"] for r in refusing.refusals if r["mail_from"] == SENDER] == ["MAIL"]


def test_verify_a_temporary_refusal_defers_and_keeps_the_mail(applier, refusing):
    # Providers send these as 5xx; a 4xx (here Microsoft's text with 451 4.7.60,
    # as a relay under maintenance or a greylisting front may answer) must
    # leave the mail queued for Postfix's retries.
    refusing.reject = {"DATA": "451 4.7.60 SMTP; Client does not have permissions to send "
                               "as this sender"}
    code, found = call(applier, "postfix_relay.verify", "timeout=30")
    assert code != 0 and found["status"] == "deferred" and found["dsn"] == "4.7.60", found
    assert found["refusal"]["provider"] == "Microsoft 365" and found["refusal"]["code"] == 451
    item = named(found, "Microsoft 365")[0]
    assert "temporary refusal: Postfix keeps the mail queued" in item["cause"]
    assert FIX in item["fix"]
    assert found["still_queued"] is True and "still queued" in found["outcome"]
    assert queue().get(found["queue_id"]) in ("deferred", "active"), queue()
    assert refusing.messages == []


@pytest.mark.parametrize("stage", ["MAIL", "RCPT"])
@pytest.mark.parametrize("case", REFUSALS, ids=IDS)
def test_probe_names_the_refusal_without_sending(applier, refusing, case, stage):
    _, reply, provider, step = case
    refusing.reject = {stage: reply}
    code, data = call(applier, "postfix_relay.probe")
    assert data["ok"] is False and data["failing"] == ["relay"], data
    envelope = data["relays"][0]["envelope"]
    assert envelope["sender"] == SENDER and envelope["recipient"] == RECIPIENT
    assert envelope["tested"] is True and envelope["accepted"] is False
    assert envelope["stage"] == stage and envelope["provider"] == provider
    items = named(data, provider)
    assert len(items) == 1 and items[0]["relay"] == "relay", data.get("diagnosis")
    command = "MAIL FROM" if stage == "MAIL" else "RCPT TO"
    assert items[0]["cause"].startswith(f"relay ([127.0.0.1]:{refusing.port}): at {command}:")
    assert FIX in items[0]["fix"] and step in items[0]["fix"]
    # the login worked and no message was sent: no DATA, nothing recorded
    assert data["credentials"]["accepted"] is True
    assert [(r["stage"], r["mail_from"]) for r in refusing.refusals] == [(stage, SENDER)]
    assert refusing.messages == []


def test_probe_says_the_envelope_is_accepted(applier, refusing):
    code, data = call(applier, "postfix_relay.probe")
    assert code == 0 and data["ok"] is True, data.get("diagnosis")
    envelope = data["envelope"]
    assert envelope == {**envelope, "sender": SENDER, "recipient": RECIPIENT,
                        "tested": True, "accepted": True}
    assert "after DATA" in envelope["note"]  # accepted here does not prove send-as
    assert refusing.refusals == [] and refusing.messages == []


def test_probe_names_other_refusals_in_its_own_words(applier, refusing):
    refusing.reject = {"RCPT": "550 5.1.1 <me@example.org>: Recipient address rejected"}
    _, data = call(applier, "postfix_relay.probe")
    causes = " | ".join(d["cause"] for d in data["diagnosis"])
    assert f"refuses RCPT TO:<{RECIPIENT}> (Postfix bounces the mail)" in causes, causes
    assert "provider" not in data["envelope"]
    assert refusing.messages == []


# Last in the module: it applies a pillar of its own (sender relays).
def test_sender_relays_are_probed_with_their_sender(applier, refusing, tmp_path):
    """billing@ (an address) is tested with MAIL FROM:<billing@example.org>
    through its own relay and its refusal names its account; @shop (a domain)
    is not tested (any address of the domain goes there: an invented one
    could be refused while the ones in use are allowed)."""
    billing = Relay(users={USER: PASSWORD}, cert_dir=str(tmp_path / "billing")).start()
    shop = Relay(users={USER: PASSWORD}, cert_dir=str(tmp_path / "shop")).start()
    try:
        account = {"host": "127.0.0.1", "username": USER, "password": PASSWORD,
                   "tls": "encrypt"}
        res = applier.apply(applier.pillar(
            relay={"port": refusing.port}, sender_mode="local", sender_relays={
                "billing@example.org": {**account, "port": billing.port},
                "@shop.example.org": {**account, "port": shop.port}}))
        assert res.returncode == 0, dump(res)
        billing.reject = {"MAIL": REFUSALS[4][1].replace(SENDER, "billing@example.org")}
        _, data = call(applier, "postfix_relay.probe")
        billing.reject = {"DATA": billing.reject["MAIL"]}
        _, found = call(applier, "postfix_relay.verify", "sender=billing@example.org",
                        "timeout=30")
    finally:
        billing.stop()
        shop.stop()
    by_key = {r["key"]: r for r in data["relays"]}
    key = "sender_relays:billing@example.org"
    assert by_key["relay"]["envelope"]["sender"] == SENDER  # root, rewritten (mode local)
    assert by_key["relay"]["envelope"]["accepted"] is True
    assert by_key[key]["envelope"]["sender"] == "billing@example.org"
    assert by_key[key]["envelope"]["provider"] == "Amazon SES"
    shop_envelope = by_key["sender_relays:@shop.example.org"]["envelope"]
    assert shop_envelope["tested"] is False and shop_envelope["sender"] is None
    assert "@shop.example.org stands for every sender" in shop_envelope["note"]
    assert shop.refusals == [] and shop.messages == []
    assert data["failing"] == [key]
    item = named(data, "Amazon SES")[0]
    assert item["relay"] == key
    assert f"give {key} the account of <billing@example.org> ({key}:username and " \
        "password)" in item["fix"]
    # verify through the sender relay: the refusal names that relay's account
    assert found["status"] == "bounced" and found["relay_used"]["key"] == key, found
    assert found["refusal"]["provider"] == "Amazon SES"
    assert f"give {key} the account of <billing@example.org>" in \
        named(found, "Amazon SES")[0]["fix"]
    assert billing.messages == []
