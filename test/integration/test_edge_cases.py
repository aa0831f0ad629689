"""
Behaviours a sysadmin meets that the other suites do not cause for real: a relay
on port 465 itself, a relay over IPv6, a relay that refuses for good, the
password taken out of the pillar, and two applies started at the same time.

Run inside a private test host (scripts/test-host): the relay binds
127.0.0.1:465 and ::1 on the host's own loopback.
"""

import concurrent.futures
import json
import os
import pathlib
import subprocess
import threading
import time
import types

import pytest

from conftest import (
    MAILLOG, PASSWORD, USER, changed_ids, dump, flush_queue, new_token, send_with_sendmail,
    state_results, wait_for_token,
)
from relay import Relay


def start_relay(tmp_path, **kwargs):
    kwargs.setdefault("users", {USER: PASSWORD})
    return Relay(cert_dir=str(tmp_path / "certs"), **kwargs).start()


def postconf(name):
    return subprocess.run(["postconf", "-h", name], capture_output=True, text=True,
                          check=True).stdout.strip()


def apply_ok(applier, data):
    res = applier.apply(data)
    assert res.returncode == 0, dump(res)
    assert all(r["result"] is True for r in state_results(res).values()), dump(res)
    return res


def relay_cron_mail(relay):
    """A cron-style mail through sendmail, as the relay received it."""
    token = new_token()
    send_with_sendmail("root", token)
    return wait_for_token(relay, token, timeout=30)


def logged(text, timeout=10):
    """Whether Postfix's log shows text (the relay's 250 comes before the log line)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if MAILLOG.exists() and text in MAILLOG.read_text():
            return True
        time.sleep(0.1)
    return False


def queue_ids():
    out = subprocess.run(["postqueue", "-j"], capture_output=True, text=True).stdout
    return {json.loads(line)["queue_id"] for line in out.splitlines() if line.strip()}


def test_relay_on_port_465_is_reached_on_465_with_implicit_tls(applier, tmp_path):
    relay = start_relay(tmp_path, port=465, tls="implicit")
    try:
        # No smtp_tls_wrappermode in the pillar: port 465 alone must switch it on.
        apply_ok(applier, applier.pillar(relay={"port": 465}))
        assert postconf("relayhost") == "[127.0.0.1]:465"
        assert postconf("smtp_tls_wrappermode") == "yes"
        record = relay_cron_mail(relay)
    finally:
        relay.stop()
    assert record["tls"] is True and record["tls_version"].startswith("TLSv1.")
    assert record["auth_user"] == USER and record["auth_mechanism"] in ("PLAIN", "LOGIN")
    assert record["rcpt_tos"] == ["me@example.org"]
    assert logged("relay=127.0.0.1[127.0.0.1]:465,")


def test_relay_over_ipv6_loopback(applier, tmp_path):
    relay = start_relay(tmp_path, host="::1")
    try:
        apply_ok(applier, applier.pillar(relay={"host": "::1", "port": relay.port}))
        # Postfix's own spelling of an IPv6 next hop.
        assert postconf("relayhost") == f"[ipv6:::1]:{relay.port}"
        record = relay_cron_mail(relay)
    finally:
        relay.stop()
    assert record["peer"][0] == "::1"
    assert record["tls"] is True and record["auth_user"] == USER
    assert record["mail_from"] == "pi@example.org"
    assert logged(f"relay=::1[::1]:{relay.port},")


@pytest.mark.parametrize("stage", ["MAIL", "RCPT", "DATA"])
def test_permanent_refusal_bounces_with_the_relays_reason(applier, tmp_path, stage):
    reply = f"550 5.7.1 relay policy refuses this {stage.lower()}"
    relay = start_relay(tmp_path, reject={stage: reply})
    try:
        apply_ok(applier, applier.pillar(relay={"port": relay.port}))
        res = applier.run("postfix_relay.verify", "timeout=30")
        time.sleep(1)  # room for the bounce and a double bounce to be tried
    finally:
        relay.stop()
        count = len(relay.refusals)
        flush_queue()  # the bounces left deferred must not reach the next test's relay
    found = res.data
    assert res.returncode != 0, found
    assert found["ok"] is False and found["status"] == "bounced", found
    assert found["dsn"] == "5.7.1", found
    assert f"relay policy refuses this {stage.lower()}" in found["reply"], found
    causes = " | ".join(d["cause"] for d in found["diagnosis"])
    assert "bounced" in causes and "relay policy refuses" in causes, found["diagnosis"]
    # Refused once and dropped from the queue: a 5xx is final, never retried.
    # A bounce carries the null sender: were it rewritten to the host's address
    # too, the relay would refuse it, and it would bounce again, in a loop.
    own = [r for r in relay.refusals[:count] if r["stage"] == stage and
           r["mail_from"] == found["sender"]]
    assert len(own) == 1, f"{len(own)} refused messages from {found['sender']} " \
        f"({count} refusals in all): " + " | ".join(
            line for line in MAILLOG.read_text().splitlines()[-400:] if "from=<" in line)[-800:]
    # The message itself, the bounce (null sender) and at most a double bounce.
    assert count <= 3, relay.refusals[:5]
    assert found["queue_id"] not in queue_ids()


def test_password_removed_from_pillar_leaves_no_credentials(applier, tmp_path):
    # This relay offers AUTH but, like many internal relays, does not require it.
    relay = start_relay(tmp_path)
    try:
        apply_ok(applier, applier.pillar(relay={"port": relay.port}))
        maps = postconf("smtp_sasl_password_maps")
        assert relay_cron_mail(relay)["auth_user"] == USER
        table = maps.split(":", 1)[1]
        data = applier.pillar(relay={"port": relay.port})
        del data["relay"]["username"], data["relay"]["password"]
        apply_ok(applier, data)
        relay.reset()
        record = relay_cron_mail(relay)
        second = applier.apply(data)
    finally:
        relay.stop()
    leftovers = [table + suffix for suffix in ("", ".db", ".lmdb", ".cdb")
                 if os.path.exists(table + suffix)]
    assert leftovers == []
    assert postconf("smtp_sasl_auth_enable") == "no"
    assert record["tls"] is True and record["auth_mechanism"] is None
    assert relay.auth_attempts == []
    holding = [str(p) for p in pathlib.Path("/etc/postfix").rglob("*")
               if p.is_file() and PASSWORD.encode() in p.read_bytes()]
    assert holding == []
    assert second.returncode == 0 and changed_ids(second) == [], dump(second)


def _apply_together(applier, count=2):
    """count salt-call state.apply processes released at the same instant.

    Separate processes, started here: one salt-factories CLI object is not
    safe to run from two threads at once.
    """
    cmd = applier.cli.cmdline("--local", "state.apply", "postfix_relay")
    barrier = threading.Barrier(count)

    def one(_):
        barrier.wait()
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        try:
            data = json.loads(done.stdout)["local"]
        except (ValueError, KeyError):
            data = None
        return types.SimpleNamespace(returncode=done.returncode, data=data,
                                     stdout=done.stdout, stderr=done.stderr)

    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        results = list(pool.map(one, range(count)))
    applier.returns.extend(r.stdout + r.stderr for r in results)
    return results


def _refused_as_busy(res):
    """Salt's state-run lock: the second run says which run holds it."""
    return isinstance(res.data, list) and \
        any("is running as PID" in str(line) for line in res.data)


def test_two_applies_at_once_finish_and_leave_the_right_state(applier, relay):
    apply_ok(applier, applier.pillar())  # also syncs the modules first
    applier.write_pillar(applier.pillar(recipient="ops@example.org"))
    results = _apply_together(applier)
    busy = [r for r in results if _refused_as_busy(r)]
    applied = [r for r in results if r not in busy]
    assert applied, [r.stdout[-2000:] + r.stderr[-2000:] for r in results]
    # A run refused as busy fails (cron and CI see it); one that ran is complete.
    assert all(r.returncode != 0 for r in busy), [r.stdout for r in busy]
    for res in applied:
        assert res.returncode == 0, dump(res)
        assert all(v["result"] is True for v in state_results(res).values()), dump(res)
    assert any(changed_ids(r) for r in applied)
    leftovers = [str(p) for p in pathlib.Path("/etc/postfix").rglob("*.tmp")]
    assert leftovers == []
    assert subprocess.run(["postfix", "check"], capture_output=True).returncode == 0
    again = applier.apply()
    assert again.returncode == 0 and changed_ids(again) == [], dump(again)
    relay.reset()
    assert relay_cron_mail(relay)["rcpt_tos"] == ["ops@example.org"]

