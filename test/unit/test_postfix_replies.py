"""Relay replies named (issue 15 part 3): each provider's send-as refusal,
as the relay says it or as Postfix logs it, gets its provider, code, stage and
fix; any other reply is left to the caller."""

import pytest

from helpers import load_module

replies = load_module("_utils/postfix_replies.py")

LOGGED = ("host smtp.office365.com[52.96.0.1] said: 550 5.7.60 SMTP; Client does not have "
          "permissions to send as this sender [MW2PR1901MB2155.namprd19.prod.outlook.com] "
          "(in reply to end of DATA command)")


def test_a_logged_refusal_is_split_and_named():
    found = replies.classify(LOGGED, sender="pi@example.org", relay_key="relay")
    assert (found["provider"], found["code"], found["dsn"], found["stage"]) == \
        ("Microsoft 365", 550, "5.7.60", "DATA")
    assert found["temporary"] is False
    assert found["reply"].startswith("550 5.7.60 SMTP;") and "in reply to" not in found["reply"]
    assert "send-as rights for <pi@example.org>" in found["fix"]


@pytest.mark.parametrize("login, relay_host, provider", [
    ("pi.owner@outlook.com", None, "outlook.com"),
    ("pi.owner@hotmail.co.uk", None, "outlook.com"),
    ("relay@contoso.com", "smtp.office365.com", "Microsoft 365"),
    ("relay@contoso.com", "smtp-mail.outlook.com", "outlook.com"),
    ("pi.owner@live.co.uk", None, "outlook.com"),
    ("pi.owner@msn.com", None, "outlook.com"),
    # a company domain that starts with live. or outlook. is Microsoft 365
    ("ops@live.contoso.com", "smtp.office365.com", "Microsoft 365"),
    ("ops@outlook.contoso.com", None, "Microsoft 365"),
    ("ops@msn.com.contoso.com", None, "Microsoft 365"),
])
def test_sendasdenied_tells_outlook_com_from_microsoft_365(login, relay_host, provider):
    reply = (f"554 5.2.252 SendAsDenied; {login} not allowed to send as pi@example.org; "
             "STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied; "
             "Failed to process message due to a permanent exception with message "
             "[BeginDiagnosticData]Cannot submit message. 0.35250:1F009983, 1.36674:0A000000")
    found = replies.classify(reply, sender="pi@example.org", relay_host=relay_host)
    assert found["provider"] == provider
    assert "BeginDiagnosticData" not in found["cause"] and "0.35250" not in found["cause"]


def test_a_sender_relay_fix_names_its_account():
    found = replies.classify("550 The from address does not match a verified Sender "
                             "Identity.", sender="billing@example.org",
                             relay_key="sender_relays:billing@example.org")
    assert found["provider"] == "SendGrid"
    assert found["fix"].startswith("give sender_relays:billing@example.org the account of "
                                   "<billing@example.org>")


def test_a_4xx_is_temporary():
    found = replies.classify("451 4.7.60 SMTP; Client does not have permissions to send as "
                             "this sender", sender="pi@example.org")
    assert found["temporary"] is True and "keeps the mail queued" in found["cause"]


@pytest.mark.parametrize("reply", [
    "host h[192.0.2.1] said: 550 5.1.1 <me@example.org>: Recipient address rejected "
    "(in reply to RCPT TO command)",
    "535 5.7.3 Authentication unsuccessful",
    "connect to h[192.0.2.1]:587: Connection refused",
    "",
])
def test_other_replies_are_not_named(reply):
    assert replies.classify(reply, sender="pi@example.org") is None


def test_the_older_sendasdenied_form_names_no_login():
    # smtp-mail.outlook.com's reply before 5.2.252 (rss2email issue 147)
    reply = ("554 5.2.0 STOREDRV.Submission.Exception:SendAsDeniedException."
             "MapiExceptionSendAsDenied; Failed to process message due to a permanent "
             "exception with message Cannot submit message. 0.35250:7D060000, 1.36674:0A000000")
    assert replies.classify(reply, relay_host="smtp-mail.outlook.com")["provider"] == \
        "outlook.com"
    found = replies.classify(reply, relay_host="smtp.office365.com")
    assert found["provider"] == "Microsoft 365" and found["dsn"] == "5.2.0"
    assert "-Trustee <the relay account>" in found["fix"]
    assert "0.35250" not in found["cause"]


def test_postfix_sender_login_mismatch_is_a_send_as_refusal():
    # a Postfix relay (ISP, self-hosted) with reject_sender_login_mismatch
    logged = ("host mail.isp.example[192.0.2.7] said: 553 5.7.1 <pi@example.org>: Sender "
              "address rejected: not owned by user relayuser (in reply to RCPT TO command)")
    found = replies.classify(logged, sender="pi@example.org", relay_key="relay")
    assert found["kind"] == "send_as"
    assert (found["provider"], found["code"], found["dsn"], found["stage"]) == \
        ("Postfix (reject_sender_login_mismatch)", 553, "5.7.1", "RCPT")
    assert "smtpd_sender_login_maps must list pi@example.org for the login relayuser" \
        in found["fix"]
    assert "set postfix_relay:sender" in found["fix"]


def test_zoho_refusal_is_a_send_as_refusal():
    found = replies.classify("553 Sender is not allowed to relay emails",
                             sender="billing@example.org",
                             relay_key="sender_relays:billing@example.org")
    assert (found["provider"], found["code"], found["temporary"]) == ("Zoho", 553, False)
    assert "Send Mail As" in found["fix"]
    assert found["fix"].startswith("give sender_relays:billing@example.org the account")
