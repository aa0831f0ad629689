"""
Bad pillar values are refused with one message naming the key, before anything
on the host changes; clean undoes the formula. Runs on the host's real Postfix.
"""

import os
import pathlib
import subprocess
import time

import pytest

from conftest import MAILLOG, PASSWORD, dump, file_state, new_token, send_with_sendmail

ROOT_MAILBOX = "/var/mail/root"

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
    # Debian 12 offers no XOAUTH2 plugin Postfix can use: refused, naming it
    ({"relay": {"password": None, "oauth2": {
        "token_endpoint": "https://login.microsoftonline.com/t/oauth2/v2.0/token",
        "client_id": "app", "refresh_token": "r3fresh-never-shown"}}},
     "relay:oauth2", "needs the Cyrus SASL client plugin sasl-xoauth2"),
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


def delivered_locally(token, timeout=30):
    """True once the message carrying token is in root's mailbox."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(ROOT_MAILBOX) and token in open(ROOT_MAILBOX, errors="replace").read():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.parametrize("before", ["saved-main-cf", "no-configuration-install"])
def test_clean_removes_every_secret_and_postfix_delivers_locally(applied, before):
    """clean puts back the host's own main.cf (saved at the first apply), or on
    a host installed with "No configuration" (no main.cf, no aliases.db) the
    distro's template on loopback, and builds the alias database."""
    res = applied.apply(applied.pillar())
    assert res.returncode == 0, dump(res)
    saved = pathlib.Path("/etc/postfix/main.cf.pre-postfix_relay")
    if before == "no-configuration-install":
        saved.unlink(missing_ok=True)
        pathlib.Path("/etc/aliases.db").unlink(missing_ok=True)
    else:
        saved.write_text("# the host's own main.cf\ninet_interfaces = loopback-only\n"
                         "mydestination = $myhostname, localhost\n")
    expected = saved.read_text() if saved.exists() else None
    res = applied.apply(sls="postfix_relay.clean")
    assert res.returncode == 0, dump(res)
    main_cf = pathlib.Path("/etc/postfix/main.cf").read_text()
    if expected is not None:
        assert main_cf == expected and not saved.exists()
    else:
        assert main_cf.startswith(pathlib.Path("/usr/share/postfix/main.cf.debian").read_text())
        assert main_cf.endswith("inet_interfaces = loopback-only\n")
    for table in ("/etc/postfix/sasl/passwd", "/etc/postfix/reply_to_header"):
        for suffix in ("", ".db", ".lmdb", ".cdb"):
            assert not os.path.exists(table + suffix)
    for root in ("/etc/postfix", "/var/spool/postfix"):
        for dirpath, _, files in os.walk(root):
            for name in files:
                path = os.path.join(dirpath, name)
                if os.path.isfile(path):
                    with open(path, "rb") as handle:
                        assert PASSWORD.encode() not in handle.read(), path
    assert subprocess.run(["postfix", "check"], capture_output=True).returncode == 0
    assert subprocess.run(["postconf", "-h", "relayhost"], capture_output=True,
                          text=True).stdout.strip() == ""
    # Postfix runs and delivers root's mail to its mailbox on this host.
    assert subprocess.run(["postfix", "status"], capture_output=True).returncode == 0
    token = new_token()
    send_with_sendmail("root", token)
    assert delivered_locally(token), subprocess.run(
        ["tail", "-5", str(MAILLOG)], capture_output=True, text=True).stdout
    # Re-apply: the formula takes over again from a cleaned host.
    res = applied.apply(applied.pillar())
    assert res.returncode == 0, dump(res)
