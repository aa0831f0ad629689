"""
OAuth2 relays (Microsoft 365, Gmail) through sasl-xoauth2 on a real Postfix
3.11 with smtp chrooted: tokens refreshed when they expire, a refreshed token
file kept across applies, a revoked refresh token leaves mail queued and
probe names it, and no token or secret anywhere but the token file. The tests
run in order on one host (a Debian unstable tree).
"""

import json
import os
import pathlib
import shutil
import socket
import stat
import threading
import time
import uuid

import pytest

from oauth2_endpoint import TokenEndpoint
from relay import Relay, make_certs

USER = "alerts@example.org"
REFRESH = "Refresh-tok-5tq8w-never-logged"
REFRESH2 = "Refresh-tok-second-7hq2m-never-logged"
SECRET = "Client-secret-9zk3p-never-logged"
TTL = 20  # seconds an access token is valid


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory):
    with TokenEndpoint(REFRESH, ttl=TTL, user=USER,
                       cert_dir=str(tmp_path_factory.mktemp("oauth-ca"))) as server:
        yield server


@pytest.fixture(scope="module")
def relay(tmp_path_factory, endpoint):
    with Relay(tls="starttls", mechanisms=("XOAUTH2",), xoauth2_check=endpoint.valid,
               cert_dir=str(tmp_path_factory.mktemp("xo-relay"))) as server:
        yield server


class Syslog:
    """/dev/log inside smtp's chroot: the plugin would report failures through
    syslog(3), not Postfix's log."""

    def __init__(self, paths):
        self.lines, self.socks = [], []
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists() or path.is_symlink():
                path.unlink()
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.bind(str(path))
            path.chmod(0o666)
            self.socks.append(sock)
            threading.Thread(target=self._read, args=(sock,), daemon=True).start()

    def _read(self, sock):
        while True:
            try:
                self.lines.append(sock.recv(65536).decode(errors="replace"))
            except OSError:
                return

    def close(self):
        for sock in self.socks:
            sock.close()


class Host:
    def __init__(self, sid, relay, endpoint):
        self.sid, self.relay, self.endpoint = sid, relay, endpoint
        self.outputs = []
        self.refresh_token = REFRESH
        self.username = USER
        self.endpoint_url = endpoint.url
        shutil.copy(endpoint.ca_file, sid.path("/srv/oauth-ca.pem"))

    def salt_call(self, *args):
        code, data, res = self.sid.salt_call(*args, timeout=900)
        self.outputs.append(res.stdout + res.stderr)
        return code, data, res

    def apply(self, *extra):
        pillar = {"postfix_relay": {
            "domain": "example.org", "recipient": "me@example.org", "listen": "none",
            "relay": {"host": "127.0.0.1", "port": self.relay.port, "username": self.username,
                      "oauth2": {"token_endpoint": self.endpoint_url,
                                 "client_id": self.endpoint.client_id,
                                 "client_secret": SECRET,
                                 "refresh_token": self.refresh_token,
                                 "ca_file": "/srv/oauth-ca.pem"}}}}
        self.sid.write_pillar(pillar)
        code, data, res = self.salt_call("state.apply", "postfix_relay", *extra)
        assert code == 0 and data, res.stdout[-3000:] + res.stderr[-3000:]
        assert all(v["result"] is True for v in data.values())
        return data

    def probe(self):
        code, data, res = self.salt_call("postfix_relay.probe")
        assert data is not None, res.stdout[-3000:] + res.stderr[-3000:]
        return data

    def send(self):
        token = uuid.uuid4().hex
        self.sid.run("/usr/sbin/sendmail", "-i", "root", input=f"Subject: xo {token}\n\n{token}\n")
        return token

    def token_file(self):
        name = f"127.0.0.1-{self.relay.port}.json"
        return self.sid.path(f"/var/spool/postfix/etc/sasl-xoauth2/{name}")

    def token(self):
        return json.loads(self.token_file().read_text())

    def log(self):
        return self.sid.path("/var/log/postfix.log").read_text(errors="replace")

    def queue(self):
        out = self.sid.run("postqueue", "-j").stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def host(sid, relay, endpoint):
    machine = Host(sid, relay, endpoint)
    machine.syslog = Syslog([sid.path("/var/spool/postfix/dev/log")])
    yield machine
    machine.syslog.close()


def token_state(data):
    return next(v for k, v in data.items() if "xoauth2-token" in k)


def test_apply_installs_the_plugin_and_keeps_smtp_chrooted(host):
    # Debian's Postfix 3.11 no longer chroots smtp by default; a host that
    # keeps the chroot gets the plugin's files inside it.
    host.sid.run("postconf", "-F", "smtp/unix/chroot=y")
    # a token file left from a relay this host no longer uses (refresh token in it)
    old = host.sid.path("/var/spool/postfix/etc/sasl-xoauth2/smtp.gmail.com-587.json")
    old.parent.mkdir(parents=True, exist_ok=True)
    old.write_text(json.dumps({"refresh_token": "old"}))
    data = host.apply("sync_mods=all")
    assert "smtp.gmail.com-587.json" in token_state(data)["changes"]["removed"]
    assert not old.exists()
    assert host.sid.run("dpkg-query", "-W", "sasl-xoauth2").returncode == 0
    smtp = host.sid.run("postconf", "-M", "smtp/unix").stdout.split()
    assert smtp[4] == "y", smtp  # still chrooted
    postfix_uid = int(host.sid.run("id", "-u", "postfix").stdout)
    st = host.token_file().stat()
    assert (st.st_mode & 0o777, st.st_uid) == (0o600, postfix_uid)
    assert host.token()["refresh_token"] == REFRESH and "access_token" not in host.token()
    chroot_etc = host.sid.path("/var/spool/postfix/etc")
    assert (chroot_etc / "sasl-xoauth2/ca.pem").read_bytes() == \
        host.sid.path("/srv/oauth-ca.pem").read_bytes()
    for conf in (chroot_etc / "sasl-xoauth2.conf", host.sid.path("/etc/sasl-xoauth2.conf")):
        assert json.loads(conf.read_text())["token_endpoint"] == host.endpoint.url
        assert SECRET not in conf.read_text()
    assert host.sid.run("postconf", "-h", "smtp_sasl_mechanism_filter").stdout.strip() == \
        "xoauth2"
    maps = host.sid.run("postconf", "-hx", "smtp_sasl_password_maps").stdout.strip()
    table = host.sid.run("postmap", "-q", f"[127.0.0.1]:{host.relay.port}", maps).stdout.strip()
    assert table == f"{USER}:/etc/sasl-xoauth2/127.0.0.1-{host.relay.port}.json"


def test_first_mail_refreshes_the_token_and_is_relayed(host):
    token = host.send()
    record = host.relay.find(token)
    assert record, host.log()[-3000:]
    assert record["auth_mechanism"] == "XOAUTH2" and record["tls"] is True
    assert host.endpoint.refreshes == 1
    # the plugin, in the chrooted smtp process, stored the access token
    stored = host.token()
    assert host.endpoint.valid(USER, stored["access_token"])
    assert host.token_file().stat().st_mode & 0o777 == 0o600


def let_access_tokens_expire(host):
    """TTL seconds pass at once, on both sides: the endpoint's clock moves
    (every access token it issued has run out) and the expiry in the token
    file, which the plugin reads at each AUTH, is in the past."""
    host.endpoint.advance(TTL + 1)
    path = host.token_file()
    stored = json.loads(path.read_text())
    stored["expiry"] = str(int(time.time()) - 1)  # (the plugin writes it as a string)
    path.write_text(json.dumps(stored))  # in place: owner and mode kept


def test_token_is_reused_then_refreshed_once_expired(host):
    first = host.token()["access_token"]
    assert host.relay.find(host.send())
    assert host.endpoint.refreshes == 1  # still valid: no new refresh
    let_access_tokens_expire(host)
    assert not host.endpoint.valid(USER, first)
    assert host.relay.find(host.send()), host.log()[-3000:]
    assert host.endpoint.refreshes == 2
    assert host.token()["access_token"] != first


def test_reapply_keeps_the_refreshed_token_file(host):
    before = host.token_file().read_text()
    assert "access_token" in before
    data = host.apply("--log-level=debug")  # its log is scanned for secrets too
    assert "[DEBUG   ]" in host.outputs[-1]
    assert token_state(data)["changes"] == {}
    assert host.token_file().read_text() == before


def test_probe_reports_xoauth2_and_the_accepted_refresh_token(host):
    refreshes = host.endpoint.refreshes
    result = host.probe()
    assert result["ok"] is True, result.get("diagnosis")
    assert result["negotiated_mechanism"] == "XOAUTH2"
    assert result["negotiation"]["with_plugin"] == ["XOAUTH2"]
    code, plugins, res = host.salt_call("postfix_sasl.plugins")
    assert "XOAUTH2" in plugins, res.stdout[-2000:]
    assert result["oauth2"]["answered"] is True
    assert result["oauth2"]["refresh_token_accepted"] is True
    assert result["credentials"]["accepted"] is True
    assert host.endpoint.refreshes == refreshes + 1
    # the probe stored what it got, as the plugin would: the next mail uses it
    assert host.endpoint.valid(USER, host.token()["access_token"])
    assert host.relay.find(host.send())
    assert host.endpoint.refreshes == refreshes + 1


def test_verify_works_unchanged(host):
    code, data, res = host.salt_call("postfix_relay.verify")
    assert code == 0 and data["status"] == "sent", res.stdout[-3000:]


@pytest.mark.parametrize("reply, challenge, named", [
    ("535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the "
     "Tenant.", False, "SMTP AUTH turned off"),
    ("535 5.7.3 Authentication unsuccessful", False, "refuses the token"),
    # Gmail answers a refused token with a JSON challenge first, then 535 5.7.8
    ("535 5.7.8 Username and Password not accepted.", True, "rejects the XOAUTH2 login"),
])
def test_probe_names_the_relays_rejection(host, reply, challenge, named):
    relay, check = host.relay, host.relay.xoauth2_check
    relay.xoauth2_check, relay.xoauth2_reject = (lambda user, token: False), reply
    relay.xoauth2_challenge = challenge
    try:
        result = host.probe()
    finally:
        relay.xoauth2_check, relay.xoauth2_reject, relay.xoauth2_challenge = check, None, False
    assert result["ok"] is False
    causes = [d["cause"] for d in result["diagnosis"]]
    assert any(named in c and reply.split()[1] in c for c in causes), causes


def test_access_token_refused_gmail_style_is_refreshed_and_mail_follows(host):
    # The provider drops its access tokens before they expire and answers the
    # next AUTH with a JSON 400 challenge: the plugin refreshes on it, that
    # attempt fails as transient (mail deferred), the retry uses the new token.
    host.endpoint.issued.clear()
    host.relay.xoauth2_challenge = True
    refreshes = host.endpoint.refreshes
    try:
        token = host.send()
        waiting = wait_deferred(host)
        assert waiting, host.log()[-3000:]
        assert host.endpoint.refreshes == refreshes + 1
        host.sid.run("postqueue", "-f")
        record = host.relay.find(token)
    finally:
        host.relay.xoauth2_challenge = False
    assert record, host.log()[-3000:]
    assert host.endpoint.refreshes == refreshes + 1  # the retry used the stored token
    assert "status=bounced" not in host.log()


def wait_deferred(host, timeout=60):
    """The deferred messages, once there are any (SASL failure reasons)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        waiting = [m for m in host.queue() if m["queue_name"] == "deferred"]
        if waiting:
            return waiting
        time.sleep(0.5)
    return []


def test_token_file_not_writable_by_smtp_is_named_and_fixed_by_apply(host):
    os.chown(host.token_file(), 0, 0)
    result = host.probe()
    assert any("not writable by postfix" in d["cause"] for d in result["diagnosis"]), result
    data = host.apply()
    assert token_state(data)["changes"] == {"user": "postfix"}
    assert host.probe()["ok"] is True


def test_damaged_token_file_is_named_and_rewritten_by_apply(host):
    host.token_file().write_text('{"refresh_token": "Refr')  # cut short (disk full)
    result = host.probe()
    assert any("cannot be read" in d["cause"] for d in result["diagnosis"]), result
    data = host.apply()
    assert token_state(data)["changes"]["token_file"]
    assert host.probe()["ok"] is True


def test_untrusted_token_endpoint_certificate_is_named(host, tmp_path):
    ca = host.token_file().parent / "ca.pem"
    other = make_certs(str(tmp_path), "other.test")["ca"]
    shutil.copy(other, ca)
    result = host.probe()
    assert any("not trusted by /etc/sasl-xoauth2/ca.pem" in d["cause"]
               for d in result["diagnosis"]), result
    host.apply()  # puts the configured CA back
    assert host.probe()["ok"] is True


def test_unreachable_token_endpoint_is_named(host):
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        host.endpoint_url = f"https://127.0.0.1:{closed.getsockname()[1]}/token"
    try:
        data = host.apply()
        assert token_state(data)["changes"]  # new endpoint: the file is rewritten
        result = host.probe()
        assert any("token endpoint is unreachable" in d["cause"] and "refused" in d["cause"]
                   for d in result["diagnosis"]), result
    finally:
        host.endpoint_url = host.endpoint.url
        host.apply()
    assert host.probe()["ok"] is True


def test_revoked_refresh_token_defers_mail_and_probe_names_it(host):
    host.endpoint.revoke()
    # access tokens issued before stay valid until they run out
    let_access_tokens_expire(host)
    token = host.send()
    waiting = wait_deferred(host)
    assert waiting, host.log()[-3000:]
    assert not host.relay.find(token, timeout=1)
    assert "status=bounced" not in host.log()
    reasons = " ".join(r.get("delay_reason", "") for m in waiting for r in m["recipients"])
    assert "SASL authentication failed" in reasons, reasons
    result = host.probe()
    assert any("rejects the refresh token (invalid_grant" in d["cause"]
               for d in result["diagnosis"]), result
    # the admin gets a new refresh token and applies it: the mail goes out
    host.endpoint.reissue(REFRESH2)
    host.refresh_token = REFRESH2
    data = host.apply()
    assert token_state(data)["changes"]
    assert host.token()["refresh_token"] == REFRESH2
    assert host.relay.find(token), host.log()[-3000:]


def test_no_token_or_secret_anywhere_but_the_token_file(host):
    secrets = [REFRESH, REFRESH2, SECRET, *host.endpoint.issued]
    for output in host.outputs:
        leaked = [s for s in secrets if s in output]
        assert not leaked, f"in a salt-call output: {leaked}"
    pillar = host.sid.path("/srv/pillar/postfix_relay.sls")
    allowed = {host.token_file(), pillar}
    found = {}
    for top in ("/etc", "/var", "/srv", "/root", "/tmp", "/opt/salt/etc"):
        for dirpath, _dirs, files in os.walk(host.sid.path(top)):
            for name in files:
                path = pathlib.Path(dirpath, name)
                try:
                    if not stat.S_ISREG(path.lstat().st_mode):
                        continue
                    data = path.read_bytes()
                except OSError:
                    continue
                hits = [s for s in secrets if s.encode() in data]
                if hits:
                    found[path] = hits
    assert set(found) <= allowed, {str(p): h for p, h in found.items() if p not in allowed}
    for path in found:
        assert path.stat().st_mode & 0o077 == 0, path
    # The plugin's failure line can hold the endpoint's answer, access token
    # included (0.27, after a refresh on a 400 challenge): the formula turns its
    # syslog off. The socket in smtp's chroot works (a line sent through it
    # arrives) and received nothing from the plugin through all failures above.
    host.sid.run("logger", "-u", "/var/spool/postfix/dev/log", "postfix-relay-syslog-check")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not host.syslog.lines:
        time.sleep(0.1)
    assert [line for line in host.syslog.lines if "sasl-xoauth2" in line] == []
    assert any("postfix-relay-syslog-check" in line for line in host.syslog.lines)


def test_clean_removes_the_token_files_and_the_plugin_config(host):
    code, data, res = host.salt_call("state.apply", "postfix_relay.clean")
    assert code == 0, res.stdout[-3000:] + res.stderr[-3000:]
    for gone in ("/var/spool/postfix/etc/sasl-xoauth2", "/var/spool/postfix/etc/sasl-xoauth2.conf",
                 "/etc/sasl-xoauth2.conf"):
        assert not host.sid.path(gone).exists(), gone
