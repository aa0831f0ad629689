"""
OAuth2 relays (Microsoft 365, Gmail) through sasl-xoauth2 on a real Postfix
3.11, chrooted smtp: tokens refreshed, revoked refresh tokens leave mail
queued, no token or secret anywhere but the token file. Tests run in order.
"""

import json
import shutil
import time
import uuid

import pytest
import yaml

from oauth2_endpoint import TokenEndpoint
from relay import Relay

USER = "alerts@example.org"
REFRESH = "Refresh-tok-5tq8w-never-logged"
SECRET = "Client-secret-9zk3p-never-logged"


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory):
    with TokenEndpoint(REFRESH, ttl=12, user=USER,
                       cert_dir=str(tmp_path_factory.mktemp("oauth-ca"))) as server:
        yield server


@pytest.fixture(scope="module")
def relay(tmp_path_factory, endpoint):
    with Relay(tls="starttls", mechanisms=("XOAUTH2",), xoauth2_check=endpoint.valid,
               cert_dir=str(tmp_path_factory.mktemp("xo-relay"))) as server:
        yield server


class Host:
    def __init__(self, sid, relay, endpoint):
        self.sid, self.relay, self.endpoint = sid, relay, endpoint
        self.outputs = []
        shutil.copy(endpoint.ca_file, sid.path("/srv/oauth-ca.pem"))

    def salt_call(self, *args):
        res = self.sid.run("/opt/salt/bin/salt-call", "--local", "--out=json",
                           "--retcode-passthrough", *args, check=False, timeout=900)
        self.outputs.append(res.stdout + res.stderr)
        try:
            return res.returncode, json.loads(res.stdout)["local"], res
        except ValueError:
            return res.returncode, None, res

    def apply(self, *extra):
        pillar = {"postfix_relay": {
            "domain": "example.org", "recipient": "me@example.org", "listen": "none",
            "relay": {"host": "127.0.0.1", "port": self.relay.port, "username": USER,
                      "oauth2": {"token_endpoint": self.endpoint.url,
                                 "client_id": self.endpoint.client_id,
                                 "client_secret": SECRET, "refresh_token": REFRESH,
                                 "ca_file": "/srv/oauth-ca.pem"}}}}
        path = self.sid.path("/srv/pillar/postfix_relay.sls")
        path.write_text(yaml.safe_dump(pillar))
        path.chmod(0o600)
        return self.salt_call("state.apply", "postfix_relay", *extra)

    def send(self):
        token = uuid.uuid4().hex
        self.sid.run("/usr/sbin/sendmail", "-i", "root", input=f"Subject: xo {token}\n\n{token}\n")
        return token

    def token_file(self):
        name = f"127.0.0.1-{self.relay.port}.json"
        return self.sid.path(f"/var/spool/postfix/etc/sasl-xoauth2/{name}")


@pytest.fixture(scope="module")
def host(sid, relay, endpoint):
    return Host(sid, relay, endpoint)


def wait_for(relay, token, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in list(relay.messages):
            if token in record["data"]:
                return record
        time.sleep(0.2)
    return None


def test_apply_installs_the_plugin_and_keeps_smtp_chrooted(host):
    # Debian's Postfix 3.11 no longer chroots smtp by default; a host that
    # keeps the chroot gets the plugin's files inside it.
    host.sid.run("postconf", "-F", "smtp/unix/chroot=y")
    code, data, res = host.apply("sync_mods=all")
    assert code == 0 and data, res.stdout[-3000:] + res.stderr[-3000:]
    assert all(v["result"] is True for v in data.values())
    assert host.sid.run("dpkg-query", "-W", "sasl-xoauth2").returncode == 0
    smtp = host.sid.run("postconf", "-M", "smtp/unix").stdout.split()
    assert smtp[4] == "y", smtp  # still chrooted
    st = host.token_file().stat()
    postfix_uid = int(host.sid.run("id", "-u", "postfix").stdout)
    assert (st.st_mode & 0o777, st.st_uid) == (0o600, postfix_uid)
    assert host.sid.run("postconf", "-h", "smtp_sasl_mechanism_filter").stdout.strip() == \
        "xoauth2"


def test_first_mail_refreshes_the_token_and_is_relayed(host):
    token = host.send()
    record = wait_for(host.relay, token)
    log = host.sid.path("/var/log/postfix.log").read_text(errors="replace")
    assert record, log[-3000:]
    assert record["auth_mechanism"] == "XOAUTH2" and record["tls"] is True
    assert host.endpoint.refreshes == 1
