"""
Bad pillar values are refused with one message naming the key, before anything
on the host changes; clean undoes the formula. Runs on the host's real Postfix.
"""

import os
import subprocess

import pytest

from conftest import PASSWORD, dump, file_state, new_token, send_with_sendmail

LIVE = ("/etc/postfix/main.cf", "/etc/postfix/master.cf", "/etc/postfix/sasl/passwd",
        "/etc/postfix/sasl/passwd.db")


def snapshot():
    return {p: open(p, "rb").read() for p in LIVE if os.path.exists(p)}


@pytest.fixture(scope="module")
def applied(applier):
    res = applier.apply(applier.pillar())
    assert res.returncode == 0, dump(res)
    return applier


@pytest.mark.parametrize("over, key, words", [
    ({"domain": None}, "domain", "is required"),
    ({"recipient": "not-an-address"}, "recipient", "not an e-mail address"),
    ({"relay": {"port": 70000}}, "relay:port", "out of range"),
    ({"relay": {"tls": "none"}}, "relay:tls", "in clear"),
    ({"recipient": "me@example.org\nrelayhost = [evil.test]"}, "recipient", "newline"),
    ({"hostname": "pi.example.org\x07"}, "hostname", "control character"),
    ({"main_cf": {"inet_interfaces=all": "1"}}, "main_cf:inet_interfaces=all",
     "not a main.cf parameter"),
    ({"main_cf": {"smtpd_banner": "hi\ninet_interfaces = all"}}, "main_cf:smtpd_banner",
     "newline"),
    ({"relay": {"password": "pw\nrelay2 x"}}, "relay:password", "newline"),
])
def test_bad_pillar_fails_naming_the_key_and_changes_nothing(applied, over, key, words):
    before = snapshot()
    stamps = {p: file_state(p) for p in before}
    res = applied.apply(applied.pillar(**over))
    assert res.returncode != 0
    text = res.stdout + res.stderr
    assert f"pillar postfix_relay:{key}:" in text, text[-2000:]
    assert words in text
    assert snapshot() == before
    assert {p: file_state(p) for p in before} == stamps


@pytest.mark.parametrize("main_cf, words", [
    ({"smtp_tls_securty_level": "encrypt"},
     "main_cf:smtp_tls_securty_level: Postfix refuses the resulting main.cf: "
     "main_cf:smtp_tls_securty_level: Postfix does not know this parameter"),
    ({"default_process_limit": "abc"},
     "main_cf:default_process_limit: Postfix refuses the resulting main.cf: postfix check "
     "failed: postfix: fatal: bad numerical configuration: default_process_limit = abc"),
])
def test_main_cf_postfix_refuses_fails_before_any_file_changes(applied, main_cf, words):
    """Postfix's own check runs while the SLS renders: with a new password
    too, neither the password table nor main.cf is touched."""
    before = snapshot()
    res = applied.apply(applied.pillar(main_cf=main_cf, relay={"password": "new-pw-2741"}))
    assert res.returncode != 0
    text = res.stdout + res.stderr
    assert f"pillar postfix_relay:{words}" in text, text[-2000:]
    assert snapshot() == before


def test_clean_restores_postfix_and_removes_the_password(applied, relay):
    res = applied.apply(sls="postfix_relay.clean")
    assert res.returncode == 0, dump(res)
    assert not os.path.exists("/etc/postfix/sasl/passwd")
    assert not os.path.exists("/etc/postfix/sasl/passwd.db")
    assert subprocess.run(["postfix", "check"], capture_output=True).returncode == 0
    for root in ("/etc/postfix",):
        for dirpath, _, files in os.walk(root):
            for name in files:
                path = os.path.join(dirpath, name)
                with open(path, "rb") as handle:
                    assert PASSWORD.encode() not in handle.read(), path
    conf = subprocess.run(["postconf", "-h", "relayhost", "mydestination"],
                          capture_output=True, text=True, check=True).stdout.splitlines()
    assert conf[0] == ""  # no relay any more
    assert "localhost" in conf[1]  # delivers locally again
    # Postfix still runs and accepts mail for local delivery.
    assert subprocess.run(["postfix", "status"], capture_output=True).returncode == 0
    send_with_sendmail("root", new_token())
    # Re-apply: the formula takes over again from a cleaned host.
    res = applied.apply(applied.pillar())
    assert res.returncode == 0, dump(res)
