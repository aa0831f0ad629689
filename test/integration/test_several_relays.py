"""
Several relays (issue 14): the pillar keys fallback_relays, sender_relays,
sender_mode and queue_lifetime as an admin meets them. This file holds what the
three several-relay files share, the bad combinations refused before any change
and queue_lifetime; test_fallback_relays.py and test_sender_relays.py send mail.

Run inside a private test host (scripts/test-host): the relays bind loopback
addresses and ports of the host's own network namespace (127.0.0.2:465 ...).
"""

import pathlib
import re
import subprocess
import time

import pytest

from conftest import (
    MAILLOG, PASSWORD, USER, dump, file_state, flush_queue, state_results,
)
from relay import Relay

# One account per relay: a relay that sees another relay's account refuses it.
ACCOUNTS = {
    "primary": (USER, PASSWORD),
    "fb1": ("fallback-one", "Fb1-pw-9Lq2x-never-logged"),
    "fb2": ("fallback-two", "Fb2-pw-3Rt8v-never-logged"),
    "billing": ("billing-api", "Bill-pw-6Hn4c-never-logged"),
    "shop": ("apikey", "Shop-pw-2Wd7m-never-logged"),
}
SECRETS = [pw for name, (_, pw) in ACCOUNTS.items() if name != "primary"]
# Quick retries, so a message deferred once is retried within seconds.
FAST_RETRY = {"queue_run_delay": "1s", "minimal_backoff_time": "1s",
              "maximal_backoff_time": "2s", "smtp_connect_timeout": "5s"}


@pytest.fixture(scope="module", autouse=True)
def no_relay_password_leaked(applier):
    """No salt-call return and no log line may show any relay's password
    (conftest's applier checks the primary's at the end of the session)."""
    yield
    leaked = [r for r in applier.returns if any(pw in r for pw in SECRETS)]
    assert not leaked, "a fallback or sender relay's password appeared in a return"
    text = MAILLOG.read_text(errors="replace") if MAILLOG.exists() else ""
    assert not any(pw in text for pw in SECRETS), f"a relay password is in {MAILLOG}"


def start_relay(tmp_path, name, host="127.0.0.1", **kwargs):
    """A STARTTLS (or tls="implicit") relay that accepts only name's account."""
    user, password = ACCOUNTS[name]
    return Relay(host=host, users={user: password}, cert_dir=str(tmp_path / f"certs-{name}"),
                 **kwargs).start()


def entry(name, port, host="127.0.0.1", **over):
    """The pillar entry of relay name (its own account)."""
    user, password = ACCOUNTS[name]
    data = {"host": host, "port": port, "username": user, "password": password,
            "tls": "encrypt"}
    data.update(over)
    return data


def postconf(*names):
    """The values of names as Postfix reads them ($parameters expanded)."""
    out = subprocess.run(["postconf", "-hx", *names], capture_output=True, text=True,
                         check=True).stdout
    return out.splitlines()


def relayhost_list():
    """relayhost as a list of next hops (Postfix takes commas or spaces)."""
    return [hop for hop in re.split(r"[\s,]+", postconf("relayhost")[0]) if hop]


def apply_ok(applier, data):
    res = applier.apply(data)
    assert res.returncode == 0, dump(res)
    assert all(r["result"] is True for r in state_results(res).values()), dump(res)
    return res


def arrival(relays, token, timeout=60):
    """(name, record) of the relay, out of {name: relay}, that got the message
    carrying token; fails with the queue and the log's end when none did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, relay in relays.items():
            for record in list(relay.messages):
                if token in record["data"]:
                    return name, record
        time.sleep(0.1)
    queue = subprocess.run(["postqueue", "-p"], capture_output=True, text=True).stdout
    log = MAILLOG.read_text()[-3000:] if MAILLOG.exists() else "(no log)"
    pytest.fail(f"message {token} reached none of {sorted(relays)}\nqueue:\n{queue}\n"
                f"log:\n{log}")


def send_as(sender, recipient, token):
    """An application's mail: envelope sender and From are sender."""
    body = (f"From: {sender}\nTo: {recipient}\nSubject: invoice {token}\n\n"
            f"invoice run {token}\n")
    subprocess.run(["/usr/sbin/sendmail", "-f", sender, "-i", recipient],
                   input=body.encode(), check=True, timeout=30)


def header(record, name):
    return [v for k, v in record["headers"] if k.lower() == name.lower()]


# -- bad combinations: refused while the SLS renders, nothing on the host touched

def snapshot():
    """Every file under /etc/postfix (main.cf, master.cf, every table and its
    compiled form) and /etc/mailname: bytes and inode, mtime, size."""
    paths = [p for p in pathlib.Path("/etc/postfix").rglob("*") if p.is_file()]
    paths.append(pathlib.Path("/etc/mailname"))
    return {str(p): (p.read_bytes(), file_state(p)) for p in paths if p.exists()}


@pytest.fixture(scope="module")
def applied(applier):
    """A working several-relay setup to refuse changes to (relays need not run:
    nothing is sent)."""
    data = applier.pillar(relay={"port": 2601}, sender_mode="local",
                          fallback_relays=[entry("fb1", 2602), entry("fb2", 2603)],
                          sender_relays={"billing@example.org": entry("billing", 2604),
                                         "@shop.example.org": entry("shop", 2605)})
    apply_ok(applier, data)
    yield data
    flush_queue()


def _without_password(relay):
    relay = dict(relay)
    del relay["password"]
    return relay


BAD = {
    # every sender is rewritten to <host>@<domain>: no sender relay could match
    "sender relays with sender_mode all": (
        lambda d: {**d, "sender_mode": "all"}, r"sender_(relays|mode)", "sender_mode"),
    "the primary again as a fallback": (
        lambda d: {**d, "fallback_relays": [entry("fb1", 2601), entry("fb2", 2603)]},
        r"fallback_relays:0", "2601"),
    "465 next to 587 in one list": (
        lambda d: {**d, "fallback_relays": [entry("fb1", 465, host="127.0.0.2"),
                                            entry("fb2", 2603)]},
        r"fallback_relays:0", "465"),
    "a bad port in the second fallback": (
        lambda d: {**d, "fallback_relays": [entry("fb1", 2602), entry("fb2", 70000)]},
        r"fallback_relays:1:port", "out of range"),
    "a sender relay without its password": (
        lambda d: {**d, "sender_relays": {
            **d["sender_relays"],
            "billing@example.org": _without_password(d["sender_relays"]["billing@example.org"])}},
        r"sender_relays:billing@example\.org:password", "required"),
    "a domain sender relay without its password": (
        lambda d: {**d, "sender_relays": {
            **d["sender_relays"],
            "@shop.example.org": _without_password(d["sender_relays"]["@shop.example.org"])}},
        r"sender_relays:@shop\.example\.org:password", "required"),
    "a queue_lifetime Postfix cannot read": (
        lambda d: {**d, "queue_lifetime": "5 days"}, r"queue_lifetime", "5 days"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_combination_is_refused_naming_the_key_before_any_change(applied, applier, case):
    change, key, words = BAD[case]
    before = snapshot()
    res = applier.apply(change(applied))
    text = res.stdout + res.stderr
    assert res.returncode != 0, dump(res)
    # One message naming the key, as every other refused pillar value does.
    assert re.search(rf"pillar postfix_relay:{key}[:\s]", text), text[-2000:]
    assert words in text, text[-2000:]
    after = snapshot()
    assert sorted(after) == sorted(before), "files appeared or vanished"
    changed = [p for p in before if after[p] != before[p]]
    assert changed == [], f"changed although the pillar was refused: {changed}"


def test_the_refusals_left_the_several_relay_setup_working(applied, applier):
    """After the refused runs the last good pillar applies with no change."""
    res = applier.apply(applied)
    assert res.returncode == 0, dump(res)
    assert [i for i, v in state_results(res).items() if v["changes"]] == [], dump(res)


# -- queue_lifetime

def test_queue_lifetime_sets_both_queue_lifetimes_and_goes_away_with_the_key(applier):
    apply_ok(applier, applier.pillar(queue_lifetime="2d"))
    assert postconf("maximal_queue_lifetime", "bounce_queue_lifetime") == ["2d", "2d"]
    apply_ok(applier, applier.pillar(queue_lifetime="12h"))
    assert postconf("maximal_queue_lifetime", "bounce_queue_lifetime") == ["12h", "12h"]
    # Key removed: Postfix's own defaults (5d) again, nothing left in main.cf.
    apply_ok(applier, applier.pillar())
    explicit = subprocess.run(["postconf", "-n"], capture_output=True, text=True,
                              check=True).stdout
    assert "queue_lifetime" not in explicit
    assert postconf("maximal_queue_lifetime", "bounce_queue_lifetime") == ["5d", "5d"]
