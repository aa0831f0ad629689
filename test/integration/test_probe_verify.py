"""
postfix_relay.probe / verify / status against real relays and the real Postfix:
the mechanism probe predicts is the one the relay saw Postfix use, and every
failure a sysadmin meets is caused for real and named with its fix.
"""

import os
import subprocess
import time

import pytest

from conftest import PASSWORD, REPO, USER, dump, stop_postfix
from relay import Relay

VARIANTS = [
    (("PLAIN", "LOGIN"), "starttls"), (("CRAM-MD5", "PLAIN"), "starttls"),
    (("LOGIN",), "starttls"), ((), "starttls"),
    (("PLAIN", "LOGIN"), "implicit"), (("CRAM-MD5", "PLAIN"), "implicit"),
    (("LOGIN",), "implicit"), ((), "implicit"),
]


def start_relay(tmp_path, mechanisms=("PLAIN", "LOGIN"), tls="starttls", **kwargs):
    return Relay(mechanisms=mechanisms, tls=tls, users={USER: PASSWORD},
                 cert_dir=str(tmp_path / "certs"), **kwargs).start()


def pillar_for(applier, server, **over):
    relay_over = {"port": server.port}
    relay_over.update(over.pop("relay", {}))
    main_cf = over.pop("main_cf", {})
    if server.tls == "implicit" and server.port != 465:
        main_cf.setdefault("smtp_tls_wrappermode", True)  # 465-style on a test port
    if main_cf:
        over["main_cf"] = main_cf
    return applier.pillar(relay=relay_over, **over)


def apply_ok(applier, data):
    res = applier.apply(data)
    assert res.returncode == 0, dump(res)


def call(applier, *args):
    res = applier.run(*args)
    return res.returncode, res.data


def causes(data):
    return " | ".join(d["cause"] + " => " + d["fix"] for d in data.get("diagnosis", []))


@pytest.mark.parametrize("mechanisms, tls", VARIANTS,
                         ids=[f"{tls}-{'+'.join(m) or 'noauth'}" for m, tls in VARIANTS])
def test_probe_predicts_the_mechanism_postfix_uses(applier, tmp_path, mechanisms, tls):
    relay = start_relay(tmp_path, mechanisms, tls)
    try:
        apply_ok(applier, pillar_for(applier, relay))
        code, verified = call(applier, "postfix_relay.verify", "timeout=30")
        assert code == 0, verified
        assert verified["status"] == "sent" and verified["dsn"].startswith("2.")
        assert verified["recipient"] == "me@example.org"
        assert verified["sender"] == "pi@example.org"
        assert verified["queue_id"] and verified["relay"].startswith("127.0.0.1[127.0.0.1]")
        seen = relay.wait_for(1)[0]
        assert seen["tls"] is True
        code, probed = call(applier, "postfix_relay.probe")
        assert code == 0 and probed["ok"] is True, probed
        assert probed["mechanisms_offered"] == sorted(mechanisms) or \
            set(probed["mechanisms_offered"]) == set(mechanisms)
        assert probed["negotiated_mechanism"] == seen["auth_mechanism"]
        assert verified["mechanism"] == seen["auth_mechanism"]
        assert probed["tls"]["protocol"].startswith("TLS")
        # one relay: one entry, the primary, whose fields are also at the top
        assert [(r["key"], r["role"]) for r in probed["relays"]] == [("relay", "primary")]
        assert probed["relays"][0]["negotiated_mechanism"] == seen["auth_mechanism"]
        assert probed["failing"] == []
        assert verified["relay_used"]["key"] == "relay" and verified["relay_as_configured"]
        if mechanisms:
            assert probed["credentials"]["accepted"] is True
            assert probed["credentials"]["key"] == f"[127.0.0.1]:{relay.port}"
    finally:
        relay.stop()


def test_status_shows_the_queue_and_deferral_reasons(applier, tmp_path):
    relay = start_relay(tmp_path)
    port = relay.port
    relay.stop()  # nothing listens there now
    apply_ok(applier, applier.pillar(relay={"port": port}))
    code, verified = call(applier, "postfix_relay.verify", "timeout=30")
    assert code != 0 and verified["status"] == "deferred"
    assert "Connection refused" in verified["reply"]
    code, status = call(applier, "postfix_relay.status")
    assert status["queues"].get("deferred", 0) >= 1
    assert status["oldest_age"] >= 0
    assert any("Connection refused" in r["reason"] for r in status["deferral_reasons"])
    subprocess.run(["postsuper", "-d", "ALL"], capture_output=True, check=False)


def probe_with(applier, tmp_path, relay_kwargs=None, **pillar_over):
    relay = start_relay(tmp_path, **(relay_kwargs or {}))
    try:
        apply_ok(applier, pillar_for(applier, relay, **pillar_over))
        code, data = call(applier, "postfix_relay.probe")
        return relay, code, data
    finally:
        relay.stop()


def test_no_plugin_for_any_offered_mechanism(applier, tmp_path):
    _, _, data = probe_with(applier, tmp_path, {"mechanisms": ("XOAUTH2",)})
    assert data["ok"] is False
    assert "No worthy mechs found" in causes(data)
    assert "no SASL client plugin on this host for XOAUTH2" in causes(data)
    # XOAUTH2 has its own plugin: the fix names it, not libsasl2-modules
    assert "install the XOAUTH2 client plugin sasl-xoauth2" in causes(data)
    assert "libsasl2-modules" not in causes(data)


def test_noplaintext_against_a_plain_login_relay(applier, tmp_path):
    _, _, data = probe_with(applier, tmp_path, main_cf={
        "smtp_sasl_tls_security_options": "noanonymous, noplaintext"})
    assert "noplaintext" in causes(data)
    assert "smtp_sasl_tls_security_options = noanonymous" in causes(data)


def test_mechanism_filter_that_leaves_nothing(applier, tmp_path):
    _, _, data = probe_with(applier, tmp_path, relay={"mechanisms": ["cram-md5"]})
    assert "the mechanism filter (cram-md5) removes every mechanism" in causes(data)
    assert "remove relay:mechanisms" in causes(data)


def test_implicit_tls_port_without_wrappermode(applier, tmp_path):
    _, _, data = probe_with(applier, tmp_path, {"tls": "implicit"},
                            main_cf={"smtp_tls_wrappermode": False})
    assert "expects implicit TLS" in causes(data)
    assert "relay:port 465" in causes(data)


def test_wrappermode_on_a_starttls_port(applier, tmp_path):
    _, _, data = probe_with(applier, tmp_path, main_cf={"smtp_tls_wrappermode": True})
    assert "speaks plain SMTP first (STARTTLS)" in causes(data)


def test_password_key_not_matching_relayhost(applier, tmp_path):
    relay = start_relay(tmp_path)
    try:
        table = tmp_path / "passwd"
        table.write_text(f"127.0.0.1:{relay.port} {USER}:{PASSWORD}\n")
        table.chmod(0o600)
        subprocess.run(["postmap", f"hash:{table}"], check=True)
        apply_ok(applier, pillar_for(applier, relay, main_cf={
            "smtp_sasl_password_maps": f"hash:{table}"}))
        code, data = call(applier, "postfix_relay.probe")
    finally:
        relay.stop()
    assert data["credentials"]["key"] is None
    assert data["credentials"]["keys_tried"] == ["127.0.0.1", f"[127.0.0.1]:{relay.port}"]
    assert f"found 127.0.0.1:{relay.port}" in causes(data)
    assert f"write the key exactly as relayhost: [127.0.0.1]:{relay.port}" in causes(data)
    assert data["failing"] == ["relay"]


def test_password_table_missing_or_stale(applier, tmp_path):
    relay = start_relay(tmp_path)
    try:
        apply_ok(applier, pillar_for(applier, relay))
        os.unlink("/etc/postfix/sasl/passwd.db")
        _, missing = call(applier, "postfix_relay.probe")
        apply_ok(applier, pillar_for(applier, relay))
        future = time.time() + 5
        os.utime("/etc/postfix/sasl/passwd", (future, future))
        _, stale = call(applier, "postfix_relay.probe")
        apply_ok(applier, pillar_for(applier, relay))  # the formula repairs both
        _, repaired = call(applier, "postfix_relay.probe")
    finally:
        relay.stop()
    assert "was never compiled" in causes(missing)
    assert "is stale" in causes(stale)
    # the table is every relay's: its problem names no single relay
    assert [d.get("relay") for d in missing["diagnosis"] if "never compiled" in d["cause"]] \
        == [None]
    assert missing["ok"] is False and stale["ok"] is False
    assert repaired["ok"] is True, causes(repaired)


def test_relay_unreachable(applier, tmp_path):
    relay = start_relay(tmp_path)
    relay.stop()
    apply_ok(applier, pillar_for(applier, relay))
    code, data = call(applier, "postfix_relay.probe")
    assert data["ok"] is False
    assert f"relay 127.0.0.1:{relay.port} is unreachable" in causes(data)
    assert data["failing"] == ["relay"]
    assert {d["relay"] for d in data["diagnosis"]} == {"relay"}


def test_relay_name_not_resolving(applier, minion):
    # In a private network namespace no DNS query can leave this machine.
    assert applier.run("saltutil.sync_all").returncode == 0
    res = subprocess.run(
        ["unshare", "-n", str(REPO / ".venv" / "bin" / "salt-call"), "--local", "-c",
         str(minion.config_dir), "--out=json", "postfix_relay.probe",
         "relay=[relay.invalid]:587"], capture_output=True, text=True, timeout=120)
    assert "the relay name relay.invalid does not resolve" in res.stdout, res.stdout[-2000:]


def test_certificate_not_verifying(applier, tmp_path):
    _, _, data = probe_with(applier, tmp_path, relay={"tls": "secure"})
    assert data["tls"]["verified"] is False
    assert "certificate does not verify" in causes(data)
    assert "relay:ca_file" in causes(data)


# (relay host in the pillar, names on the relay's certificate, CA file given, Postfix sends)
CERT_CASES = {
    "right-name-right-ca": ("localhost", ("localhost",), "relay", True),
    "unknown-ca": ("localhost", ("localhost",), "other", False),
    "wrong-name": ("localhost", ("wrong.test",), "relay", False),
    "ip-address-only": ("127.0.0.1", ("127.0.0.1", "localhost"), "relay", False),
}


@pytest.mark.parametrize("case", CERT_CASES)
def test_tls_secure_probe_agrees_with_postfix(applier, tmp_path, case):
    """With tls: secure, probe's verdict on the certificate is Postfix's: sent
    with the right CA and name, mail kept in the queue (never sent in clear)
    with an unknown CA, a wrong name or a bare IP address (Postfix matches DNS
    names only)."""
    host, names, ca, sends = CERT_CASES[case]
    relay = start_relay(tmp_path, cert_names=names, hostname=names[0])
    other_ca = None
    if ca == "other":
        with Relay(cert_dir=str(tmp_path / "other")) as other:
            other_ca = other.ca_file
    try:
        # native lookup: "localhost" from /etc/hosts, no DNS query leaves the host
        apply_ok(applier, pillar_for(
            applier, relay, relay={"host": host, "tls": "secure",
                                   "ca_file": other_ca or relay.ca_file},
            main_cf={"smtp_host_lookup": "native"}))
        _, probed = call(applier, "postfix_relay.probe")
        code, verified = call(applier, "postfix_relay.verify", "timeout=20")
    finally:
        relay.stop()
    subprocess.run(["postsuper", "-d", "ALL"], capture_output=True, check=False)
    assert probed["tls"]["verified"] is sends, probed
    assert (verified["status"] == "sent") is sends, verified
    assert probed["ok"] is sends, causes(probed)
    if not sends:
        assert code != 0 and verified["status"] == "deferred", verified
        assert not relay.messages
        assert "certificate does not verify" in causes(probed)
        assert not [a for a in relay.auth_attempts if a["user"] is not None]


def test_credentials_rejected(applier, tmp_path):
    _, _, data = probe_with(applier, tmp_path, relay={"password": "wrong-password-1"})
    assert data["credentials"]["accepted"] is False
    assert data["credentials"]["code"] == 535
    assert "the relay rejects the credentials (535" in causes(data)
    assert "relay:username" in causes(data)
    assert data["relays"][0]["credentials"]["accepted"] is False
    assert "wrong-password-1" not in str(data)


def test_verify_fails_with_nonzero_retcode_when_postfix_is_down(applier, tmp_path):
    relay = start_relay(tmp_path)
    try:
        apply_ok(applier, pillar_for(applier, relay))
        stop_postfix()
        # nothing is ever logged with Postfix down: a short wait proves as much
        code, data = call(applier, "postfix_relay.verify", "timeout=1")
    finally:
        relay.stop()
        subprocess.run(["postsuper", "-d", "ALL"], capture_output=True, check=False)
    assert code != 0
    assert data["ok"] is False
    assert "no delivery attempt was logged within 1 s" in causes(data)
