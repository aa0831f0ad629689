"""
Two OAuth2 relays (issue 14): a Microsoft 365-like primary and a Gmail-like
fallback, each with its own token endpoint (its own CA), client, secret,
refresh token and mailbox, through the real sasl-xoauth2 plugin on Postfix
3.11 with smtp chrooted. Each relay gets its own token file, and the plugin
must use each file's own client, endpoint and CA bundle (its per-token
overrides): a token refreshed at the wrong endpoint, or checked with the
wrong CA, never reaches the relay. The tests run in order on one host (a
Debian unstable tree, see conftest.py).
"""

import json
import re
import time
import uuid

import pytest

from oauth2_endpoint import TokenEndpoint
from relay import Relay

TTL = 20  # seconds an access token is valid
CHROOT_DIR = "/var/spool/postfix/etc/sasl-xoauth2"
ACCOUNTS = {
    "primary": {"user": "alerts@example.org", "client_id": "m365-app-id",
                "secret": "M365-secret-4kq9z-never-logged",
                "refresh": "M365-refresh-8hd2x-never-logged"},
    "fallback": {"user": "alerts.example@gmail.example",
                 "client_id": "1234-gmail.apps.googleusercontent.example",
                 "secret": "Gmail-secret-3mv7c-never-logged",
                 "refresh": "Gmail-refresh-6pw1n-never-logged"},
}
SECRETS = [v for a in ACCOUNTS.values() for k, v in a.items() if k in ("secret", "refresh")]


def endpoint_for(name, cert_dir):
    account = ACCOUNTS[name]
    return TokenEndpoint(account["refresh"], client_id=account["client_id"], ttl=TTL,
                         user=account["user"], client_secret=account["secret"],
                         cert_dir=str(cert_dir))


@pytest.fixture(scope="module")
def endpoints(tmp_path_factory):
    """One token endpoint per provider, each with its own CA."""
    with endpoint_for("primary", tmp_path_factory.mktemp("m365-ca")) as m365, \
            endpoint_for("fallback", tmp_path_factory.mktemp("gmail-ca")) as gmail:
        yield {"primary": m365, "fallback": gmail}


@pytest.fixture(scope="module")
def relays(tmp_path_factory, endpoints):
    """Each relay takes only access tokens its own provider issued for its mailbox."""
    with Relay(tls="starttls", mechanisms=("XOAUTH2",), xoauth2_check=endpoints["primary"].valid,
               cert_dir=str(tmp_path_factory.mktemp("m365-relay"))) as primary, \
            Relay(tls="starttls", mechanisms=("XOAUTH2",),
                  xoauth2_check=endpoints["fallback"].valid,
                  cert_dir=str(tmp_path_factory.mktemp("gmail-relay"))) as fallback:
        yield {"primary": primary, "fallback": fallback}


class Host:
    """The Debian unstable tree with both relays in its pillar."""

    def __init__(self, sid, relays, endpoints):
        self.sid, self.relays, self.endpoints = sid, relays, endpoints
        self.outputs = []
        for name, endpoint in endpoints.items():
            self.sid.path(f"/srv/{name}-ca.pem").write_bytes(
                open(endpoint.ca_file, "rb").read())

    def relay_entry(self, name):
        account = ACCOUNTS[name]
        return {"host": "127.0.0.1", "port": self.relays[name].port,
                "username": account["user"],
                "oauth2": {"token_endpoint": self.endpoints[name].url,
                           "client_id": account["client_id"],
                           "client_secret": account["secret"],
                           "refresh_token": account["refresh"],
                           "ca_file": f"/srv/{name}-ca.pem"}}

    def salt_call(self, *args):
        code, data, res = self.sid.salt_call(*args, timeout=900)
        self.outputs.append(res.stdout + res.stderr)
        return code, data, res

    def apply(self, *extra, fallback=True):
        pillar = {"domain": "example.org", "recipient": "me@example.org", "listen": "none",
                  "relay": self.relay_entry("primary")}
        if fallback:
            pillar["fallback_relays"] = [self.relay_entry("fallback")]
        self.sid.write_pillar({"postfix_relay": pillar})
        code, data, res = self.salt_call("state.apply", "postfix_relay", *extra)
        assert code == 0 and data, res.stdout[-3000:] + res.stderr[-3000:]
        failed = {k: v["comment"] for k, v in data.items() if v["result"] is not True}
        assert not failed, failed
        return data

    def token_name(self, name):
        return f"127.0.0.1-{self.relays[name].port}.json"

    def token_file(self, name):
        return self.sid.path(f"{CHROOT_DIR}/{self.token_name(name)}")

    def token(self, name):
        return json.loads(self.token_file(name).read_text())

    def send(self):
        """A mail as cron sends it: sendmail as root."""
        token = uuid.uuid4().hex
        self.sid.run("/usr/sbin/sendmail", "-FCronDaemon", "-i", "-oem", "root",
                     input=f"Subject: cron {token}\n\n{token}\n")
        return token

    def log(self):
        return self.sid.path("/var/log/postfix.log").read_text(errors="replace")[-3000:]


@pytest.fixture(scope="module")
def host(sid, relays, endpoints):
    return Host(sid, relays, endpoints)


def token_states(data):
    """The token-file states of an apply, by file name."""
    return {v["name"].rsplit("/", 1)[1]: v for k, v in data.items()
            if k.startswith("postfix_xoauth2_|-")}


def relayhost_list(host):
    return re.split(r"[\s,]+", host.sid.run("postconf", "-h", "relayhost").stdout.strip())


def wait_for_idle_cache(relay):
    """Until smtp closed its cached session to relay: it keeps an idle one for
    smtp_connection_cache_time_limit and hands it to the next mail for the
    same destination list."""
    assert relay.wait_idle(), "Postfix kept its session to the relay open"


def test_apply_writes_one_private_token_file_per_relay(host):
    host.sid.run("postconf", "-F", "smtp/unix/chroot=y")  # the plugin runs in smtp's chroot
    data = host.apply("sync_mods=all")
    assert set(token_states(data)) == {host.token_name("primary"), host.token_name("fallback")}
    postfix_uid = int(host.sid.run("id", "-u", "postfix").stdout)
    cas = {"primary": "/etc/sasl-xoauth2/ca.pem",
           "fallback": f"/etc/sasl-xoauth2/127.0.0.1-{host.relays['fallback'].port}.ca.pem"}
    for name, account in ACCOUNTS.items():
        st = host.token_file(name).stat()
        assert (st.st_mode & 0o777, st.st_uid) == (0o600, postfix_uid), name
        assert host.token(name) == {
            "refresh_token": account["refresh"], "client_id": account["client_id"],
            "client_secret": account["secret"], "token_endpoint": host.endpoints[name].url,
            "ca_bundle_file": cas[name]}
        # each CA bundle, as smtp sees it in its chroot, is that provider's CA
        assert host.sid.path("/var/spool/postfix" + cas[name]).read_bytes() == \
            host.sid.path(f"/srv/{name}-ca.pem").read_bytes()
    assert cas["primary"] != cas["fallback"]
    # the plugin's own config (read when it loads): the first relay's, no secret
    for conf in ("/var/spool/postfix/etc/sasl-xoauth2.conf", "/etc/sasl-xoauth2.conf"):
        text = host.sid.path(conf).read_text()
        assert json.loads(text)["token_endpoint"] == host.endpoints["primary"].url
        assert [s for s in SECRETS if s in text] == [], conf
    maps = host.sid.run("postconf", "-hx", "smtp_sasl_password_maps").stdout.strip()
    for name, account in ACCOUNTS.items():
        key = f"[127.0.0.1]:{host.relays[name].port}"
        value = host.sid.run("postmap", "-q", key, maps).stdout.strip()
        assert value == f"{account['user']}:/etc/sasl-xoauth2/{host.token_name(name)}"
    assert relayhost_list(host) == [f"[127.0.0.1]:{host.relays[name].port}" for name in ACCOUNTS]


def test_primary_down_cron_mail_reaches_the_fallback_with_its_own_token(host):
    m365, gmail = host.endpoints["primary"], host.endpoints["fallback"]
    host.relays["primary"].stop()
    token = host.send()
    record = host.relays["fallback"].find(token)
    assert record, host.log()
    assert (record["auth_mechanism"], record["auth_user"], record["tls"]) == \
        ("XOAUTH2", ACCOUNTS["fallback"]["user"], True)
    # refreshed at the fallback's endpoint, with its client, secret and CA
    assert gmail.refreshes == 1 and gmail.saw(ACCOUNTS["fallback"]["refresh"])
    assert set(gmail.clients) == {ACCOUNTS["fallback"]["client_id"]}
    assert not m365.saw(ACCOUNTS["fallback"]["refresh"]) and m365.requests == []
    stored = host.token("fallback")
    assert gmail.valid(ACCOUNTS["fallback"]["user"], stored["access_token"])
    # the plugin rewrote the file keeping the relay's own client and endpoint
    # (else its next refresh would go to the primary's endpoint) and 0600
    assert (stored["client_id"], stored["token_endpoint"]) == \
        (ACCOUNTS["fallback"]["client_id"], gmail.url)
    assert host.token_file("fallback").stat().st_mode & 0o777 == 0o600
    assert "access_token" not in host.token("primary")  # never used
    assert f"connect to 127.0.0.1[127.0.0.1]:{host.relays['primary'].port}: " \
        "Connection refused" in host.log()


def test_primary_back_next_mail_goes_to_it_with_its_own_token(host):
    m365, gmail = host.endpoints["primary"], host.endpoints["fallback"]
    host.relays["primary"].start()  # same port
    wait_for_idle_cache(host.relays["fallback"])
    token = host.send()
    record = host.relays["primary"].find(token, timeout=30)
    assert record, host.log()
    assert (record["auth_mechanism"], record["auth_user"], record["tls"]) == \
        ("XOAUTH2", ACCOUNTS["primary"]["user"], True)
    assert not host.relays["fallback"].find(token, timeout=0.5)
    assert m365.refreshes == 1 and m365.saw(ACCOUNTS["primary"]["refresh"])
    assert set(m365.clients) == {ACCOUNTS["primary"]["client_id"]}
    assert not gmail.saw(ACCOUNTS["primary"]["refresh"]) and gmail.refreshes == 1
    assert m365.valid(ACCOUNTS["primary"]["user"], host.token("primary")["access_token"])


def test_probe_reports_each_relay_with_its_own_endpoint(host):
    before = {name: e.refreshes for name, e in host.endpoints.items()}
    code, result, res = host.salt_call("postfix_relay.probe")
    assert result is not None, res.stdout[-3000:] + res.stderr[-3000:]
    assert result["ok"] is True, result.get("diagnosis")
    by_key = {r["key"]: r for r in result["relays"]}
    assert list(by_key) == ["relay", "fallback_relays:0"]
    for key, name in (("relay", "primary"), ("fallback_relays:0", "fallback")):
        entry = by_key[key]
        assert entry["ok"] is True, (key, entry.get("diagnosis"))
        assert entry["relayhost"] == f"[127.0.0.1]:{host.relays[name].port}"
        assert entry["negotiated_mechanism"] == "XOAUTH2"
        assert entry["oauth2"]["token_endpoint"] == host.endpoints[name].url
        assert entry["oauth2"]["refresh_token_accepted"] is True
        assert entry["credentials"]["accepted"] is True
        assert host.endpoints[name].refreshes == before[name] + 1, name
    assert by_key["relay"]["oauth2"]["ca_bundle"] == "/etc/sasl-xoauth2/ca.pem"
    assert by_key["fallback_relays:0"]["oauth2"]["ca_bundle"] == \
        f"/etc/sasl-xoauth2/127.0.0.1-{host.relays['fallback'].port}.ca.pem"
    shown = json.dumps(result)
    assert [s for s in SECRETS if s in shown] == []


def test_fallback_checks_its_endpoint_with_its_own_ca(host):
    # The fallback's CA bundle replaced by the primary's (trusted by the
    # primary's endpoint only) and its access token expired: the plugin must
    # refresh, with this file's ca_bundle_file, and the TLS check fails.
    m365, gmail = host.endpoints["primary"], host.endpoints["fallback"]
    ca = host.sid.path(f"{CHROOT_DIR}/127.0.0.1-{host.relays['fallback'].port}.ca.pem")
    ca.write_bytes(host.sid.path(f"{CHROOT_DIR}/ca.pem").read_bytes())
    expire_access_token(host, "fallback")
    refreshes, m365_requests = gmail.refreshes, len(m365.requests)
    host.relays["primary"].stop()
    try:
        token = host.send()
        assert wait_deferred(host), host.log()
        assert not host.relays["fallback"].find(token, timeout=0.5)
        assert (gmail.refreshes, len(m365.requests)) == (refreshes, m365_requests)
        code, result, res = host.salt_call("postfix_relay.probe")
        assert result["failing"] == ["relay", "fallback_relays:0"], result.get("diagnosis")
        causes = [d["cause"] for d in result["diagnosis"] if d.get("relay") == "fallback_relays:0"]
        assert any(f"not trusted by /etc/sasl-xoauth2/{ca.name}" in c for c in causes), causes
        host.apply()  # puts the fallback's CA back
        host.sid.run("postqueue", "-f")
        record = host.relays["fallback"].find(token, timeout=30)
    finally:
        host.relays["primary"].start()
    assert record and record["auth_user"] == ACCOUNTS["fallback"]["user"], host.log()
    assert gmail.refreshes == refreshes + 1
    wait_for_idle_cache(host.relays["fallback"])


def expire_access_token(host, name):
    """As if the stored access token had run out (the plugin refreshes next)."""
    path = host.token_file(name)
    data = json.loads(path.read_text())
    data["expiry"] = "0"
    path.write_text(json.dumps(data))  # in place: owner and mode kept


def wait_deferred(host, timeout=60):
    """The deferred messages, once there are any."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = host.sid.run("postqueue", "-j").stdout
        waiting = [m for m in map(json.loads, out.splitlines()) if m["queue_name"] == "deferred"]
        if waiting:
            return waiting
        time.sleep(0.5)
    return []


def test_reapply_keeps_both_refreshed_token_files(host):
    before = {name: host.token_file(name).read_text() for name in ACCOUNTS}
    assert all("access_token" in text for text in before.values())
    data = host.apply()
    states = token_states(data)
    assert {name: s["changes"] for name, s in states.items()} == \
        {host.token_name("primary"): {}, host.token_name("fallback"): {}}
    assert {name: host.token_file(name).read_text() for name in ACCOUNTS} == before


def test_fallback_removed_prunes_only_its_token_file(host):
    primary_before = host.token_file("primary").read_text()
    data = host.apply(fallback=False)
    states = token_states(data)
    assert list(states) == [host.token_name("primary")]
    fallback_ca = host.token_name("fallback")[:-len(".json")] + ".ca.pem"
    assert states[host.token_name("primary")]["changes"] == \
        {"removed": sorted([host.token_name("fallback"), fallback_ca])}
    assert not host.token_file("fallback").exists()
    assert not (host.token_file("fallback").parent / fallback_ca).exists()
    assert host.token_file("primary").read_text() == primary_before
    assert relayhost_list(host) == [f"[127.0.0.1]:{host.relays['primary'].port}"]
    token = host.send()
    record = host.relays["primary"].find(token, timeout=30)
    assert record and record["auth_user"] == ACCOUNTS["primary"]["user"], host.log()


def test_no_secret_in_any_salt_output(host):
    issued = [t for e in host.endpoints.values() for t in e.issued]
    for output in host.outputs:
        assert [s for s in SECRETS + issued if s in output] == []
