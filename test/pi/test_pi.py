"""
The formula on a Raspberry Pi (arm64 Debian 12 under qemu): the Pi owner's
masterless steps from the README (sync, apply), then a cron mail reaches the
relay over TLS with AUTH, its sender rewritten to <host>@<domain>; a second
apply changes nothing. Tests run in order on one tree.
"""

import uuid

import pytest

from arm64_tree import EM_AARCH64
from relay import Relay

PASSWORD = "Pi-owner-pw-7Qx2-never-logged"


@pytest.fixture(scope="module")
def relay(tmp_path_factory):
    with Relay(tls="starttls", mechanisms=("PLAIN", "LOGIN"), users={"pi-alerts": PASSWORD},
               cert_dir=str(tmp_path_factory.mktemp("pi-relay"))) as server:
        yield server


def write_pillar(pi, relay):
    """The pillar a Pi owner writes (pillar.example's minimum, plus a Reply-To);
    inet_interfaces stays the formula's default: port 25 on the test host's
    loopback is free."""
    pi.write_pillar({"postfix_relay": {
        "domain": "example.org", "recipient": "me@example.org",
        "reply_to": "me@example.org",
        "relay": {"host": "127.0.0.1", "port": relay.port, "username": "pi-alerts",
                  "password": PASSWORD}}})


def elf_machine(path):
    """e_machine of an ELF file, read from its header (no `file` needed)."""
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF", f"{path} is not an ELF file"
    return int.from_bytes(header[18:20], "little")


def test_it_is_an_arm64_debian_12(pi):
    assert pi.run("uname", "-m").stdout.strip() == "aarch64"
    assert pi.path("/etc/debian_version").read_text().startswith("12.")
    # The real arm64 build, not this machine's: the binary Postfix runs is aarch64.
    assert elf_machine(pi.path("/usr/lib/postfix/sbin/master")) == EM_AARCH64
    assert pi.run("postconf", "-d", "-h", "mail_version").stdout.startswith("3.7.")


def test_pi_owner_syncs_and_applies(pi, relay):
    write_pillar(pi, relay)
    code, synced, res = pi.salt_call("saltutil.sync_all")
    assert code == 0 and "modules.postfix_relay" in synced["modules"], res.stderr[-2000:]
    code, data, res = pi.salt_call("state.apply", "postfix_relay")
    assert code == 0 and data, res.stdout[-3000:] + res.stderr[-3000:]
    failed = {v["__id__"]: v["comment"] for v in data.values() if v["result"] is not True}
    assert not failed
    assert pi.salt_call("grains.get", "cpuarch")[1] == "aarch64"
    assert pi.run("postfix", "status", check=False).returncode == 0
    assert pi.run("postconf", "-h", "relayhost").stdout.strip() == f"[127.0.0.1]:{relay.port}"
    assert pi.run("postconf", "-h", "inet_interfaces").stdout.strip() == "loopback-only"


def test_cron_mail_reaches_the_relay_rewritten(pi, relay):
    token = uuid.uuid4().hex
    pi.run("/usr/sbin/sendmail", "-FCronDaemon", "-i", "-oem", "root",
           input=f"Subject: cron on the pi {token}\n\n{token}\n")
    record = relay.find(token, timeout=60)
    assert record, pi.run("postqueue", "-p", check=False).stdout
    assert record["mail_from"] == "pi@example.org"
    assert record["rcpt_tos"] == ["me@example.org"]
    assert record["tls"] is True
    assert record["auth_user"] == "pi-alerts" and record["auth_mechanism"] in ("PLAIN", "LOGIN")
    headers = [(k.lower(), v) for k, v in record["headers"]]
    assert [v for k, v in headers if k == "reply-to"] == ["me@example.org"]


def test_second_apply_is_a_no_op(pi, relay):
    code, data, res = pi.salt_call("state.apply", "postfix_relay")
    assert code == 0
    assert [v["__id__"] for v in data.values() if v["changes"]] == []
    assert PASSWORD not in res.stdout + res.stderr
