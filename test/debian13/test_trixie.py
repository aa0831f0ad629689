"""
Debian 13 (Postfix 3.10) with the formula applied inside: what differs from
Debian 12 (Postfix version, compatibility level, defaults) is the formula's
business; the test only says what a sysadmin would check. Tests run in order.
"""

import stat
import sys
import uuid

import pytest

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))

from relay import Relay  # noqa: E402

PASSWORD = "Trixie-pw-0x9m2-never-logged"


@pytest.fixture(scope="module")
def relay(tmp_path_factory):
    with Relay(tls="starttls", mechanisms=("PLAIN", "LOGIN"), users={"trixie": PASSWORD},
               cert_dir=str(tmp_path_factory.mktemp("trixie-relay"))) as server:
        yield server


def apply(trixie, relay, *extra):
    pillar = {"postfix_relay": {
        "domain": "example.org", "recipient": "me@example.org", "reply_to": "me@example.org",
        "listen": "none",
        "relay": {"host": "127.0.0.1", "port": relay.port, "username": "trixie",
                  "password": PASSWORD}}}
    trixie.write_pillar(pillar)
    return trixie.salt_call("state.apply", "postfix_relay", *extra)


def release(version):
    """(major, minor) of a Postfix version as numbers: "3.9.1" -> (3, 9)."""
    return tuple(int(part) for part in version.split(".")[:2])


def test_releases_compare_as_numbers():
    # As strings "3.9" would sort after "3.10" and pass for Debian 12's 3.7.
    assert release("3.9.1") < release("3.10.0") and release("3.7.11") < (3, 10)


def new_install_level(trixie):
    """The compatibility_level this Postfix writes for a new install (its own
    main.cf.dist), read apart from the formula's derivation."""
    for line in trixie.path("/usr/share/postfix/main.cf.dist").read_text().splitlines():
        name, _, value = line.partition("=")
        if name.strip() == "compatibility_level":
            return value.strip()
    raise AssertionError("main.cf.dist sets no compatibility_level")


def test_it_is_debian_13_with_its_own_postfix(trixie):
    assert trixie.path("/etc/debian_version").read_text().startswith("13.")
    version = trixie.run("postconf", "-d", "-h", "mail_version").stdout.strip()
    assert release(version) >= (3, 10), version


def test_unsynced_modules_are_named_before_anything_changes(trixie, relay):
    before = trixie.path("/etc/postfix/main.cf").read_bytes()
    code, _, res = apply(trixie, relay)
    assert code != 0
    assert "the formula's modules are not synced to this minion yet" in res.stdout + res.stderr
    assert trixie.path("/etc/postfix/main.cf").read_bytes() == before


def test_formula_applies_and_starts_postfix(trixie, relay):
    code, data, res = apply(trixie, relay, "sync_mods=all")
    assert code == 0 and data, res.stdout[-3000:] + res.stderr[-3000:]
    failed = {v["__id__"]: v["comment"] for v in data.values() if v["result"] is not True}
    assert not failed
    assert trixie.run("postfix", "status", check=False).returncode == 0
    conf = dict(line.split(" = ", 1) for line in
                trixie.run("postconf", "-n").stdout.splitlines() if " = " in line)
    assert conf["compatibility_level"] == new_install_level(trixie)  # not Debian 12's 3.7
    assert conf["relayhost"] == f"[127.0.0.1]:{relay.port}"
    kind = trixie.run("postconf", "-h", "default_database_type").stdout.strip()
    suffix = {"hash": ".db", "btree": ".db", "lmdb": ".lmdb", "cdb": ".cdb"}[kind]
    for name in ("passwd", "passwd" + suffix):
        st = trixie.path(f"/etc/postfix/sasl/{name}").stat()
        assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0


def test_cron_mail_is_relayed_rewritten(trixie, relay):
    token = uuid.uuid4().hex
    trixie.run("/usr/sbin/sendmail", "-FCronDaemon", "-i", "root",
               input=f"Subject: cron on trixie {token}\n\n{token}\n")
    deadline_messages = relay.wait_for(1, timeout=60)
    record = next(m for m in deadline_messages if token in m["data"])
    assert record["mail_from"] == "trixie@example.org"
    assert record["rcpt_tos"] == ["me@example.org"]
    assert record["tls"] is True and record["auth_user"] == "trixie"


def test_verify_inside_and_second_apply_changes_nothing(trixie, relay):
    code, verified, res = trixie.salt_call("postfix_relay.verify", "timeout=60")
    assert code == 0 and verified["status"] == "sent", res.stdout[-3000:]
    code, data, res = apply(trixie, relay)
    assert code == 0
    assert [v["__id__"] for v in data.values() if v["changes"]] == []
    assert PASSWORD not in res.stdout + res.stderr
