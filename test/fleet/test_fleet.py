"""
`salt '*' state.apply postfix_relay` over a fleet: a real master, three real
minions that are three hosts (own hostname, /etc, Postfix), per-host pillar
overrides and a GPG-encrypted relay password. Tests run in order.
"""

import os

from conftest import PASSWORDS

IDS = ("pi1", "pi2", "pi3")
RECIPIENT = {"pi1": "admin@example.org", "pi2": "pi2-owner@example.org",
             "pi3": "admin@example.org"}
ACCOUNT = {"pi1": "fleet", "pi2": "fleet", "pi3": "pi3-account"}


def per_minion(res):
    assert isinstance(res.data, dict), f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res.data


def test_state_apply_on_every_host(fleet):
    master, hosts, _ = fleet
    cli = master.salt_cli(timeout=300)
    assert cli.run("saltutil.sync_all", minion_tgt="*").returncode == 0
    res = cli.run("state.apply", "postfix_relay", minion_tgt="*")
    data = per_minion(res)
    assert sorted(data) == list(IDS)
    for host_id, states in data.items():
        assert isinstance(states, dict), f"{host_id}: {states}"
        failed = [v["__id__"] for v in states.values() if v["result"] is not True]
        assert not failed, f"{host_id}: {failed}"
    # Each host wrote its own files, and only its own.
    for host_id, host in hosts.items():
        main_cf = host.path("/etc/postfix/main.cf").read_text()
        assert f"myhostname = {host_id}.example.org" in main_cf
        assert "sender_canonical_maps = regexp:/etc/postfix/postfix_relay_sender" in main_cf
        rules = host.path("/etc/postfix/postfix_relay_sender").read_text()
        assert rules.rstrip().endswith(f" {host_id}@example.org")
        assert f"recipient_canonical_maps = static:{RECIPIENT[host_id]}" in main_cf
        table = host.path("/etc/postfix/sasl/passwd")
        assert oct(table.stat().st_mode & 0o777) == "0o600"
        assert f"{ACCOUNT[host_id]}:{PASSWORDS[ACCOUNT[host_id]]}" in table.read_text()
        assert host.path("/etc/mailname").read_text().strip() == "example.org"
    assert not os.path.exists("/etc/postfix/sasl/passwd") or all(
        pw not in open("/etc/postfix/sasl/passwd").read() for pw in PASSWORDS.values())


def test_verify_on_every_host_one_mail_each_rewritten_per_host(fleet, fleet_relay):
    master, _, _ = fleet
    fleet_relay.reset()
    res = master.salt_cli(timeout=300).run("postfix_relay.verify", "timeout=60",
                                           minion_tgt="*")
    data = per_minion(res)
    assert res.returncode == 0, data
    for host_id in IDS:
        assert data[host_id]["status"] == "sent", data[host_id]
        assert data[host_id]["sender"] == f"{host_id}@example.org"
        assert data[host_id]["recipient"] == RECIPIENT[host_id]
    messages = fleet_relay.wait_for(3, timeout=60)
    by_sender = {m["mail_from"]: m for m in messages}
    assert sorted(by_sender) == [f"{h}@example.org" for h in IDS]
    for host_id in IDS:
        record = by_sender[f"{host_id}@example.org"]
        assert record["rcpt_tos"] == [RECIPIENT[host_id]]
        assert record["auth_user"] == ACCOUNT[host_id] and record["tls"] is True


def test_second_apply_changes_nothing_anywhere(fleet):
    master, _, _ = fleet
    res = master.salt_cli(timeout=300).run("state.apply", "postfix_relay", minion_tgt="*")
    data = per_minion(res)
    for host_id, states in data.items():
        changed = [v["__id__"] for v in states.values() if v["changes"]]
        assert changed == [], f"{host_id}: {changed}"
        assert all(v["result"] is True for v in states.values())


def test_passwords_in_no_job_return_of_the_master(fleet):
    master, hosts, minions = fleet
    jobs = os.path.join(master.config["cachedir"], "jobs")
    scanned = 0
    for dirpath, _, names in os.walk(jobs):
        for name in names:
            with open(os.path.join(dirpath, name), "rb") as handle:
                data = handle.read()
            scanned += 1
            for password in PASSWORDS.values():
                assert password.encode() not in data, os.path.join(dirpath, name)
    assert scanned > 10  # the job cache really holds this module's jobs
    # Nor in the minions' own caches and logs.
    for minion in minions.values():
        for dirpath, _, names in os.walk(minion.config["root_dir"]):
            for name in names:
                path = os.path.join(dirpath, name)
                if os.path.isfile(path):
                    with open(path, "rb") as handle:
                        data = handle.read()
                    assert not any(p.encode() in data for p in PASSWORDS.values()), path
