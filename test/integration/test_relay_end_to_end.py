"""
The formula applied masterless on this host's real Postfix, mail relayed to a
real STARTTLS + AUTH relay on loopback: what a sysadmin checks after applying.

Tests in this module run in order and share the host's Postfix.
"""

import os
import smtplib
import stat
import subprocess

from conftest import (
    OTHER_PASSWORD, OTHER_USER, PASSWORD, USER, changed_ids, dump, file_state, headers_named,
    log_count, master_pid, new_token, send_with_sendmail, state_results, stop_postfix,
    wait_for_token,
)


def test_apply_starts_a_stopped_postfix_without_init_system(applier, relay):
    stop_postfix()
    assert master_pid() is None
    res = applier.apply(applier.pillar())
    assert res.returncode == 0, dump(res)
    results = state_results(res)
    assert all(r["result"] for r in results.values()), dump(res)
    service = results["postfix-relay-service-running"]
    # No init system runs here: the formula started Postfix itself.
    assert "postfix start" in service["comment"], service
    assert subprocess.run(["postfix", "status"], capture_output=True).returncode == 0
    assert master_pid() is not None


def test_password_table_is_root_only_and_compiled(applier):
    for path in ("/etc/postfix/sasl/passwd", "/etc/postfix/sasl/passwd.db"):
        st = os.stat(path)
        assert stat.S_IMODE(st.st_mode) == 0o600, path
        assert st.st_uid == 0
    out = subprocess.run(["postmap", "-q", f"[127.0.0.1]:{applier.relay.port}",
                          "hash:/etc/postfix/sasl/passwd"], capture_output=True, text=True)
    assert out.stdout.strip() == f"{USER}:{PASSWORD}"


def test_main_cf_is_a_null_client_postfix_accepts(applier):
    lines = subprocess.run(["postconf", "-n"], capture_output=True, text=True,
                           check=True).stdout.splitlines()
    conf = {name.strip(): value.strip() for name, _, value in (x.partition("=") for x in lines)}
    assert conf["inet_interfaces"] == "loopback-only"
    assert conf["mydestination"] == ""
    assert conf["relayhost"] == f"[127.0.0.1]:{applier.relay.port}"
    assert conf["smtp_tls_security_level"] == "encrypt"
    # The host Postfix's own level: its release, as upstream's main.cf.dist sets it.
    release = subprocess.run(["postconf", "-d", "-h", "mail_version"], capture_output=True,
                             text=True, check=True).stdout.strip()
    assert conf["compatibility_level"] == ".".join(release.split(".")[:2])
    assert "smtp_use_tls" not in conf
    assert open("/etc/mailname").read().strip() == "example.org"
    assert subprocess.run(["postfix", "check"], capture_output=True).returncode == 0


def test_cron_mail_reaches_relay_rewritten_over_tls_with_auth(applier, relay):
    token = new_token()
    send_with_sendmail("root", token)
    record = wait_for_token(relay, token)
    assert record["rcpt_tos"] == ["me@example.org"]
    assert record["mail_from"] == "pi@example.org"
    assert record["tls"] is True
    assert record["auth_user"] == USER
    assert record["auth_mechanism"] in ("PLAIN", "LOGIN")
    assert headers_named(record, "To") == ["me@example.org"]
    assert "pi@example.org" in headers_named(record, "From")[0]
    assert headers_named(record, "Reply-To") == ["me@example.org"]


def test_mail_command_and_existing_reply_to_give_one_reply_to(applier, relay):
    token = new_token()
    subprocess.run(["mail", "-s", f"disk report {token}", "-a", "Reply-To: app@elsewhere.test",
                    "operator"], input=f"disk 91% full {token}\n".encode(), check=True)
    record = wait_for_token(relay, token)
    assert record["rcpt_tos"] == ["me@example.org"]
    assert headers_named(record, "Reply-To") == ["me@example.org"]


def test_mime_message_gets_reply_to_only_in_the_primary_header(applier, relay):
    token = new_token()
    mime = (
        "From: root\nTo: root\nSubject: mime " + token + "\nMIME-Version: 1.0\n"
        'Content-Type: multipart/mixed; boundary="b1"\n\n'
        "--b1\nContent-Type: text/plain\n\npart one\n"
        "--b1\nContent-Type: message/rfc822\n\n"
        "Date: Mon, 1 Jan 2024 00:00:00 +0000\nFrom: inner@example.net\nSubject: inner\n\n"
        "inner body\n--b1--\n"
    )
    subprocess.run(["/usr/sbin/sendmail", "-i", "root"], input=mime.encode(), check=True)
    record = wait_for_token(relay, token)
    assert record["data"].count("Reply-To:") == 1
    assert headers_named(record, "Reply-To") == ["me@example.org"]


def test_smtp_on_loopback_port_25_is_relayed(applier, relay):
    token = new_token()
    with smtplib.SMTP("127.0.0.1", 25, timeout=30) as smtp:
        smtp.sendmail("app@localhost", ["someone@external.test"],
                      f"Subject: smtp {token}\n\nbody {token}\n")
    record = wait_for_token(relay, token)
    assert record["rcpt_tos"] == ["me@example.org"]
    assert record["mail_from"] == "pi@example.org"


def test_second_apply_changes_nothing_builds_nothing_reloads_nothing(applier):
    tables = [file_state(p) for p in ("/etc/postfix/sasl/passwd.db",
                                      "/etc/postfix/sasl/passwd", "/etc/postfix/main.cf")]
    reloads, pid = log_count("reload"), master_pid()
    res = applier.apply(applier.pillar())
    assert res.returncode == 0, dump(res)
    assert changed_ids(res) == [], dump(res)
    assert [file_state(p) for p in ("/etc/postfix/sasl/passwd.db",
                                    "/etc/postfix/sasl/passwd",
                                    "/etc/postfix/main.cf")] == tables
    assert log_count("reload") == reloads
    assert master_pid() == pid


def test_test_mode_reports_pending_changes_and_touches_nothing(applier):
    before = {p: open(p, "rb").read() for p in ("/etc/postfix/main.cf",
                                                 "/etc/postfix/sasl/passwd")}
    res = applier.apply(applier.pillar(recipient="other@example.org",
                                       relay={"password": "changed-pw-9"}), test=True)
    results = state_results(res)
    main_cf = results["postfix-relay-config-main-cf"]
    assert main_cf["result"] is None
    assert main_cf["changes"]["recipient_canonical_maps"]["new"] == "static:other@example.org"
    assert results["postfix-relay-config-password-table"]["result"] is None
    assert "changed-pw-9" not in res.stdout
    assert {p: open(p, "rb").read() for p in before} == before


def test_per_host_override_changes_recipient_and_account(applier, relay):
    # The same states with an overriding pillar: this host's own recipient,
    # sender and relay account.
    data = applier.pillar(recipient="pi-admin@example.org", sender="raspberry",
                          relay={"username": OTHER_USER, "password": OTHER_PASSWORD})
    res = applier.apply(data)
    assert res.returncode == 0, dump(res)
    assert {"postfix-relay-config-main-cf", "postfix-relay-config-password-table"} <= \
        set(changed_ids(res))
    token = new_token()
    send_with_sendmail("root", token)
    record = wait_for_token(relay, token)
    assert record["rcpt_tos"] == ["pi-admin@example.org"]
    assert record["mail_from"] == "raspberry@example.org"
    assert record["auth_user"] == OTHER_USER
    # Without the override the shared account logs in again.
    assert applier.apply(applier.pillar()).returncode == 0
    token = new_token()
    send_with_sendmail("root", token)
    assert wait_for_token(relay, token)["auth_user"] == USER


def test_local_mode_keeps_external_recipients(applier, relay):
    res = applier.apply(applier.pillar(recipient_mode="local"))
    assert res.returncode == 0, dump(res)
    token_root, token_ext = new_token(), new_token()
    send_with_sendmail("root", token_root)
    send_with_sendmail("customer@external.test", token_ext)
    assert wait_for_token(relay, token_root)["rcpt_tos"] == ["me@example.org"]
    assert wait_for_token(relay, token_ext)["rcpt_tos"] == ["customer@external.test"]


def test_listen_none_closes_port_25_and_sendmail_still_works(applier, relay):
    res = applier.apply(applier.pillar(listen="none"))
    assert res.returncode == 0, dump(res)
    try:
        smtplib.SMTP("127.0.0.1", 25, timeout=5).quit()
        listening = True
    except OSError:
        listening = False
    assert not listening
    token = new_token()
    send_with_sendmail("root", token)
    assert wait_for_token(relay, token)["rcpt_tos"] == ["me@example.org"]
    res = applier.apply(applier.pillar())
    assert res.returncode == 0, dump(res)
    smtplib.SMTP("127.0.0.1", 25, timeout=10).quit()


def test_config_change_reloads_and_listener_change_restarts(applier, relay):
    res = applier.apply(applier.pillar())
    assert res.returncode == 0, dump(res)
    pid, reloads = master_pid(), log_count("reload")
    res = applier.apply(applier.pillar(reply_to="ops@example.org"))
    assert state_results(res)["postfix-relay-service-running"]["comment"] == "Postfix reloaded"
    assert master_pid() == pid and log_count("reload") == reloads + 1
    res = applier.apply(applier.pillar(reply_to="ops@example.org",
                                       main_cf={"inet_interfaces": "127.0.0.1"}))
    assert state_results(res)["postfix-relay-service-running"]["comment"] == "Postfix restarted"
    assert master_pid() not in (None, pid)
    token = new_token()
    send_with_sendmail("root", token)
    assert headers_named(wait_for_token(relay, token), "Reply-To") == ["ops@example.org"]
    assert applier.apply(applier.pillar()).returncode == 0
