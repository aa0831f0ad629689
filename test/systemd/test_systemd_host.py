"""
The formula on a Debian host booted with systemd, as real users run it:
`salt-call --local` inside, Salt's service states talking to systemd (not the
offline path), journald (and rsyslog writing /var/log/mail.log in the rsyslog
variant). Assertions are what a sysadmin checks: systemctl's exit codes, the
master's PID and cgroup, the relay's mailbox, the log lines. Tests run in
order, one container per variant (see conftest.py).
"""

import socket
import time
import uuid

import pytest
from nspawn import PASSWORD

RECIPIENT = "me@example.org"


def apply(host, relay, *extra, listen="loopback", reply_to="me@example.org"):
    host.chroot.write_pillar({"postfix_relay": {
        "domain": "example.org", "recipient": RECIPIENT, "reply_to": reply_to,
        "listen": listen,
        "relay": {"host": "127.0.0.1", "port": relay.port, "username": "systemd",
                  "password": PASSWORD}}})
    code, data, res = host.salt_call("state.apply", "postfix_relay", *extra)
    assert code == 0 and data, res.stdout[-3000:] + res.stderr[-3000:]
    failed = {v["__id__"]: v["comment"] for v in data.values() if v["result"] is not True}
    assert not failed
    return data, res


def master_pid(host):
    """Postfix's master, from its pid file (a number in the container's PID
    namespace, the one systemd sees)."""
    return int(host.chroot.path("/var/spool/postfix/pid/master.pid").read_text().split()[0])


def master_cgroup(host):
    return host.run("cat", f"/proc/{master_pid(host)}/cgroup").stdout.strip()


def systemctl_ok(host, *args):
    return host.run("systemctl", "--quiet", *args, check=False).returncode == 0


def smtp_open(port=25):
    """Whether something accepts connections on the test host's loopback
    (the container shares it)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


def journal_since(host, since, *matches):
    return host.run("journalctl", "--no-pager", "-o", "cat", "--since", f"@{int(since)}",
                    *matches).stdout


def logged_status(lines, message_id):
    """The status= of the delivery logged for the message with this
    Message-ID (its queue id from cleanup's message-id= line)."""
    qids = {line.split(": message-id=")[0].split()[-1] for line in lines
            if f": message-id={message_id}" in line}
    for line in lines:
        words = line.split()
        for qid in qids:
            if f" {qid}: to=<" in line and "status=" in line:
                return next(w for w in words if w.startswith("status=")).split("=", 1)[1]
    return None


def test_boots_with_systemd_as_init(host):
    assert host.boot_state == "running", host.run("systemctl", "--failed", check=False).stdout
    assert host.run("readlink", "/proc/1/exe").stdout.strip().endswith("/systemd")
    assert systemctl_ok(host, "is-active", "systemd-journald")
    if host.logger == "rsyslog":
        assert systemctl_ok(host, "is-active", "rsyslog")


def test_apply_enables_and_starts_postfix_through_systemd(host, relay):
    apply(host, relay, "sync_mods=all")
    assert systemctl_ok(host, "is-enabled", "postfix")
    assert systemctl_ok(host, "is-active", "postfix")
    # systemd started the master: it runs in a postfix unit's cgroup, not in
    # the cgroup of the salt-call that asked for it.
    cgroup = master_cgroup(host)
    assert "postfix" in cgroup and cgroup.endswith(".service"), cgroup
    assert host.run("postfix", "status", check=False).returncode == 0
    assert smtp_open()


def test_main_cf_leaves_logging_to_syslog(host):
    main_cf = host.chroot.path("/etc/postfix/main.cf").read_text()
    names = {line.split("=", 1)[0].strip() for line in main_cf.splitlines() if "=" in line}
    assert "maillog_file" not in names
    assert host.run("postconf", "-h", "maillog_file").stdout.strip() == ""


def test_config_change_reloads_without_restart(host, relay):
    before, since = master_pid(host), time.time() - 1
    apply(host, relay, reply_to="oncall@example.org")
    assert master_pid(host) == before
    assert systemctl_ok(host, "is-active", "postfix")
    # the master logs each reload it performs (Postfix's words, not systemd's)
    logged = journal_since(host, since, "SYSLOG_IDENTIFIER=postfix/master")
    assert "reload" in logged, logged


def test_listener_change_restarts(host, relay):
    before = master_pid(host)
    apply(host, relay, listen="none", reply_to="oncall@example.org")
    assert systemctl_ok(host, "is-active", "postfix")
    after = master_pid(host)
    assert after != before
    cgroup = master_cgroup(host)
    assert "postfix" in cgroup and cgroup.endswith(".service"), cgroup
    assert not smtp_open()


def test_cron_mail_is_relayed(host, relay):
    token = uuid.uuid4().hex
    host.run("/usr/sbin/sendmail", "-FCronDaemon", "-i", "-oem", "root",
             input=f"Subject: cron on {host.suite} {token}\n\n{token}\n")
    record = relay.find(token, timeout=60)
    assert record, host.run("postqueue", "-p", check=False).stdout
    assert record["mail_from"] == f"{host.chroot.hostname}@example.org"
    assert record["rcpt_tos"] == [RECIPIENT]
    assert [v for k, v in record["headers"] if k.lower() == "reply-to"] == ["oncall@example.org"]
    assert record["tls"] is True and record["auth_user"] == "systemd"


def test_verify_follows_the_mail_through_the_log(host):
    code, verified, res = host.salt_call("postfix_relay.verify", "timeout=60")
    assert code == 0 and verified["status"] == "sent", res.stdout[-3000:] + res.stderr[-3000:]
    qid = verified["queue_id"]
    if host.logger == "journald":
        assert verified["log"]["type"] == "journal"
    journal = host.run("journalctl", "--no-pager", "-o", "cat", "SYSLOG_FACILITY=2").stdout
    assert any(f"{qid}: to=<" in line and "status=sent" in line for line in journal.splitlines())
    if host.logger == "rsyslog":
        mail_log = host.chroot.path("/var/log/mail.log").read_text()
        assert any(f"{qid}: to=<" in line and "status=sent" in line
                   for line in mail_log.splitlines()), mail_log[-2000:]


def test_second_apply_changes_nothing_and_no_password_is_logged(host, relay):
    data, res = apply(host, relay, listen="none", reply_to="oncall@example.org")
    assert [v["__id__"] for v in data.values() if v["changes"]] == []
    assert PASSWORD not in res.stdout + res.stderr
    assert PASSWORD not in host.run("journalctl", "--no-pager", "-o", "cat").stdout
    if host.logger == "rsyslog":
        for name in ("mail.log", "syslog", "messages"):
            path = host.chroot.path(f"/var/log/{name}")
            assert not path.exists() or PASSWORD not in path.read_text(errors="replace")



def wait_in_journal(host, since, text, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in journal_since(host, since, "SYSLOG_FACILITY=2"):
            return True
        time.sleep(0.5)
    return False


def test_beacon_follows_the_journal_from_its_cursor(host, relay):
    """What the postfix_relay beacon does each interval (postfix_watch.interval),
    on a host that logs to journald (and rsyslog beside it): the first interval
    starts at the log's end, a relay refusing the login afterwards is one
    credentials event, the next interval reads nothing new from its cursor,
    and delivery after the fix is recovered."""
    limits = '{"deferred_max": 100, "age_max": 86400}'
    own = "path=/root/postfix_watch.json"  # the beacon's own state is private
    code, first, res = host.salt_call("postfix_watch.interval", limits, own)
    assert code == 0 and first == [], res.stdout[-3000:] + res.stderr[-3000:]
    since, token = time.time() - 1, uuid.uuid4().hex
    relay.users["systemd"] = "not-" + PASSWORD  # the account's password changed
    try:
        host.run("/usr/sbin/sendmail", "-i", "root", input=f"Subject: {token}\n\n{token}\n")
        assert wait_in_journal(host, since, "SASL authentication failed")
        code, events, res = host.salt_call("postfix_watch.interval", limits, own)
        assert code == 0, res.stdout[-3000:] + res.stderr[-3000:]
        assert [e["condition"] for e in events] == ["credentials"], events
        assert "535" in events[0]["reply"] and events[0]["relay_key"] == "relay"
        _, held, _ = host.salt_call("postfix_watch.conditions", own)
        assert held["log_position"].get("cursor"), held["log_position"]
        assert host.salt_call("postfix_watch.interval", limits, own)[1] == []
    finally:
        relay.users["systemd"] = PASSWORD
    host.run("postqueue", "-f")
    assert relay.find(token, timeout=60)
    assert wait_in_journal(host, since, "status=sent")
    code, events, _ = host.salt_call("postfix_watch.interval", limits, own)
    assert [(e["condition"], e.get("recovered")) for e in events] == \
        [("recovered", "credentials")], events
    assert PASSWORD not in str(events)

def test_verify_reads_mail_log_when_the_journal_keeps_nothing(host):
    # journald only passing messages on to rsyslog (Storage=none): a common
    # setup on SD cards; mail.log is then the only record. Runs last: it
    # changes journald's configuration.
    if host.logger != "rsyslog":
        pytest.skip("only rsyslog keeps a log when journald stores nothing")
    host.run("mkdir", "-p", "/etc/systemd/journald.conf.d")
    host.chroot.path("/etc/systemd/journald.conf.d/storage.conf").write_text(
        "[Journal]\nStorage=none\nForwardToSyslog=yes\n")
    host.run("systemctl", "restart", "systemd-journald")
    code, verified, res = host.salt_call("postfix_relay.verify", "timeout=10")
    mail_log = host.chroot.path("/var/log/mail.log").read_text().splitlines()
    # the mail went out and mail.log says so: verify had what it needed
    assert logged_status(mail_log, verified["message_id"]) == "sent", mail_log[-10:]
    assert code == 0 and verified["status"] == "sent", verified
