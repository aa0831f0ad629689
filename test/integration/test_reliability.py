"""
Nothing lost: each fault a relay client meets, caused for real against the
host's Postfix and a real relay, and every message counted at the relay
(sent = received, each exactly once).
"""

import collections
import concurrent.futures
import json
import subprocess
import time

from conftest import (
    MAILLOG, PASSWORD, USER, dump, log_count, new_token, send_with_sendmail, state_results,
    stop_postfix,
)
from relay import Relay

# Quick retries for the tests that wait for Postfix to retry on its own.
FAST_RETRY = {"queue_run_delay": "1s", "minimal_backoff_time": "1s",
              "maximal_backoff_time": "1s"}


def start_relay(tmp_path, name="relay", **kwargs):
    kwargs.setdefault("users", {USER: PASSWORD})
    return Relay(cert_dir=str(tmp_path / name), **kwargs).start()


def apply_ok(applier, data):
    res = applier.apply(data)
    assert res.returncode == 0, dump(res)
    return res


def submit(tokens, recipient="root", workers=4):
    """Submit one cron-style message per token from several processes at once;
    returns {token: (start, end)} submission times."""
    def one(token):
        start = time.monotonic()
        send_with_sendmail(recipient, token)
        return token, (start, time.monotonic())
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return dict(pool.map(one, tokens))


def queue():
    """postqueue -j records (queue_name, queue_id, reasons)."""
    out = subprocess.run(["postqueue", "-j"], capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def wait_queue(predicate, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = queue()
        if predicate(records):
            return records
        time.sleep(0.2)
    raise AssertionError(f"queue never reached the expected state: {queue()[:5]}")


def all_deferred(count):
    return lambda records: len(records) == count and \
        all(r["queue_name"] == "deferred" for r in records)


def received(relays, tokens):
    """{token: [record, ...]} for the messages carrying tokens, over relays."""
    seen = collections.defaultdict(list)
    for relay in relays:
        for record in list(relay.messages):
            subject = next((v for k, v in record["headers"] if k.lower() == "subject"), "")
            token = subject.rsplit(" ", 1)[-1]
            if token in tokens:
                seen[token].append(record)
    return seen


def wait_received(relays, tokens, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = received(relays, tokens)
        if len(seen) == len(tokens):
            return seen
        time.sleep(0.2)
    seen = received(relays, tokens)
    left = queue()
    raise AssertionError(f"{len(seen)} of {len(tokens)} messages arrived; queue: {left[:3]}\n"
                         + log_of(left[:3]))


def log_of(records):
    """Postfix's log lines of these queue records, to tell why they stayed."""
    ids = [r["queue_id"] for r in records]
    text = MAILLOG.read_text(errors="replace") if MAILLOG.exists() else ""
    return "\n".join(line for line in text.splitlines() if any(i in line for i in ids))


def received_once_queue_empty(relays, tokens, timeout=120):
    """{token: [record, ...]} once every message arrived and Postfix's queue
    is empty: nothing is left that could be delivered a second time."""
    wait_received(relays, tokens, timeout)
    deadline = time.monotonic() + 60
    while queue() and time.monotonic() < deadline:
        time.sleep(0.2)
    left = queue()
    assert not left, f"{len(left)} messages still queued: {left[:3]}\n" + log_of(left[:3])
    return received(relays, tokens)


def assert_exactly_once(seen, tokens):
    assert set(seen) == set(tokens)
    twice = [t for t, records in seen.items() if len(records) != 1]
    assert not twice, f"delivered more than once: {twice[:5]}"


def test_relay_down_200_messages_all_deferred_then_all_delivered(applier, tmp_path):
    relay = start_relay(tmp_path)
    port = relay.port
    relay.stop()  # the relay is down
    apply_ok(applier, applier.pillar(relay={"port": port}))
    bounced = log_count("status=bounced")
    tokens = [new_token() for _ in range(200)]
    submit(tokens)
    wait_queue(all_deferred(200), timeout=120)
    assert log_count("status=bounced") == bounced  # deferred, never bounced
    relay = start_relay(tmp_path, port=port)  # the relay is back
    try:
        subprocess.run(["postqueue", "-f"], check=True)
        seen = received_once_queue_empty([relay], tokens)
    finally:
        relay.stop()
    assert_exactly_once(seen, tokens)
    for (record,) in seen.values():
        assert record["rcpt_tos"] == ["me@example.org"]
        assert record["mail_from"] == "pi@example.org"
        assert record["auth_user"] == USER and record["tls"] is True
    assert queue() == []


def test_rejected_credentials_defer_and_reapply_with_the_right_password_drains(
        applier, tmp_path):
    relay = start_relay(tmp_path)
    try:
        apply_ok(applier, applier.pillar(relay={"port": relay.port,
                                                "password": "wrong-password-88"}))
        bounced = log_count("status=bounced")
        tokens = [new_token() for _ in range(10)]
        submit(tokens)
        records = wait_queue(all_deferred(10))
        assert any("authentication failed" in r["recipients"][0].get("delay_reason", "")
                   for r in records), records[0]
        assert log_count("status=bounced") == bounced
        assert not relay.messages
        assert any(a["success"] is False for a in relay.auth_attempts)
        # The fix: the right password in the pillar, applied again.
        res = apply_ok(applier, applier.pillar(relay={"port": relay.port}))
        service = state_results(res)["postfix-relay-service-running"]
        assert service["changes"].get("flushed") == 10, service
        seen = wait_received([relay], tokens, timeout=30)
    finally:
        relay.stop()
    assert_exactly_once(seen, tokens)
    assert queue() == []


def test_stopped_postfix_comes_back_with_apply_and_the_queue_drains(applier, tmp_path):
    relay = start_relay(tmp_path)
    port = relay.port
    relay.stop()
    apply_ok(applier, applier.pillar(relay={"port": port}))
    deferred = [new_token() for _ in range(10)]
    submit(deferred)
    wait_queue(all_deferred(10))
    stop_postfix()
    # Submitted while Postfix is down: kept in the maildrop queue.
    dropped = [new_token() for _ in range(10)]
    submit(dropped)
    relay = start_relay(tmp_path, port=port)
    try:
        res = apply_ok(applier, applier.pillar(relay={"port": port}))
        service = state_results(res)["postfix-relay-service-running"]
        assert "Postfix started" in service["comment"], service
        seen = wait_received([relay], deferred + dropped, timeout=60)
    finally:
        relay.stop()
    assert_exactly_once(seen, deferred + dropped)


def test_flaky_relay_dropping_connections_loses_nothing(applier, tmp_path):
    # Each dropped connection also makes Postfix suspend the relay until its
    # next queue run ("delivery temporarily suspended"), as on a real host:
    # 30 messages at 20 % go through several such rounds.
    relay = start_relay(tmp_path, flaky=0.2, seed=7)
    try:
        apply_ok(applier, applier.pillar(relay={"port": relay.port}, main_cf=FAST_RETRY))
        tokens = [new_token() for _ in range(30)]
        submit(tokens)
        seen = received_once_queue_empty([relay], tokens, timeout=180)
    finally:
        relay.stop()
    assert relay.dropped >= 5  # the fault really happened, again and again
    assert_exactly_once(seen, tokens)


def test_relay_without_starttls_never_gets_the_password(applier, tmp_path):
    # Offers AUTH in clear: Postfix must neither authenticate nor send.
    relay = start_relay(tmp_path, tls="none", auth_require_tls=False)
    try:
        apply_ok(applier, applier.pillar(relay={"port": relay.port}))
        tokens = [new_token() for _ in range(3)]
        submit(tokens)
        records = wait_queue(all_deferred(3))
        reason = records[0]["recipients"][0]["delay_reason"]
        assert "TLS is required, but was not offered" in reason, reason
        time.sleep(1)
        assert relay.auth_attempts == [] and relay.messages == []
    finally:
        relay.stop()
        subprocess.run(["postsuper", "-d", "ALL"], capture_output=True, check=False)


def test_reapply_during_a_1000_message_burst(applier, tmp_path):
    """New recipient and new relay port applied (and Postfix reloaded) while
    1,000 messages are submitted from several processes at once."""
    old, new = start_relay(tmp_path, "old"), start_relay(tmp_path, "new")
    try:
        apply_ok(applier, applier.pillar(relay={"port": old.port}))
        tokens = [new_token() for _ in range(1000)]
        with concurrent.futures.ThreadPoolExecutor(1) as background:
            burst = background.submit(submit, tokens[:800], "root", 6)
            while len(old.messages) < 150:  # well into the burst
                time.sleep(0.05)
            started = time.monotonic()
            apply_ok(applier, applier.pillar(recipient="new-admin@example.org",
                                             relay={"port": new.port}))
            finished = time.monotonic()
            # The last 200 once the apply has returned (plus 1 s), beside what is
            # left of the 800: a slow or busy machine may submit all 800 before.
            time.sleep(1.0)
            times = submit(tokens[800:], "root", 6)
            times.update(burst.result(timeout=600))
        seen = received_once_queue_empty([old, new], tokens, timeout=300)
    finally:
        old.stop()
        new.stop()
    assert_exactly_once(seen, tokens)
    before = [t for t, (_, end) in times.items() if end < started]
    # Postfix processes finish their current work before they re-read main.cf.
    after = [t for t, (start, _) in times.items() if start > finished + 1.0]
    during = [t for t, (start, end) in times.items() if start < finished and end > started]
    assert before and during and after, (len(before), len(during), len(after))
    # Summaries, not the first token: a failure must show how many and when.
    wrong_before = [t for t in before if seen[t][0]["rcpt_tos"] != ["me@example.org"]]
    wrong_after = [(t, round(times[t][0] - finished, 2), seen[t][0]["rcpt_tos"],
                    seen[t][0] in new.messages) for t in after
                   if seen[t][0]["rcpt_tos"] != ["new-admin@example.org"]
                   or seen[t][0] not in new.messages]
    assert not wrong_before, (len(wrong_before), len(before))
    assert not wrong_after, (len(wrong_after), len(after), wrong_after[:5])
    assert MAILLOG.exists() and PASSWORD not in MAILLOG.read_text(errors="replace")
