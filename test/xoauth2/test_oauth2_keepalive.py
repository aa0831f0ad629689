"""
OAuth2 refresh tokens that do not die of silence (issue 15, part 2), with the
real sasl-xoauth2 plugin on a Debian unstable tree: a token endpoint that
revokes a refresh token left unused (Microsoft's AADSTS700082, Google's "Token
has been expired or revoked"), its clock moved forward instead of waiting.
The keep-alive job the formula installs (a cron.d line running salt-call
--local) is run as cron would run it. The tests run in order on one host.
"""

import json
import os
import time
import uuid

import pytest

from oauth2_endpoint import TokenEndpoint
from relay import Relay

USER = "pi@example.org"
REFRESH = "Refresh-keepalive-4kq9-never-logged"
REFRESH2 = "Refresh-keepalive-second-8mz1-never-logged"
SECRET = "Client-secret-keepalive-2hv7-never-logged"
DAY = 86400
KEEPALIVE_DAYS = 2  # pillar relay:oauth2:keepalive_days
IDLE_LIMIT = 3 * DAY  # the provider's (Microsoft: 90 days), scaled like keepalive_days
CRON_FILE = "/etc/cron.d/postfix_relay_oauth2_keepalive"
CACHE = "/var/cache/salt/minion/postfix_relay"


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory):
    with TokenEndpoint(REFRESH, ttl=20, user=USER, idle_limit=IDLE_LIMIT,
                       cert_dir=str(tmp_path_factory.mktemp("ka-ca"))) as server:
        yield server


@pytest.fixture(scope="module")
def relay(tmp_path_factory, endpoint):
    with Relay(tls="starttls", mechanisms=("XOAUTH2",), xoauth2_check=endpoint.valid,
               cert_dir=str(tmp_path_factory.mktemp("ka-relay"))) as server:
        yield server


class Pi:
    """A standalone host driven by salt-call --local, sending little mail."""

    def __init__(self, sid, relay, endpoint):
        self.sid, self.relay, self.endpoint = sid, relay, endpoint
        self.outputs, self.refresh_token, self.rotated = [], REFRESH, []
        sid.path("/srv/oauth-ca.pem").write_bytes(open(endpoint.ca_file, "rb").read())

    def salt_call(self, *args):
        code, data, res = self.sid.salt_call(*args, timeout=900)
        self.outputs.append(res.stdout + res.stderr)
        return code, data, res

    def pillar(self, oauth2=True):
        relay = {"host": "127.0.0.1", "port": self.relay.port, "username": USER}
        if oauth2:
            relay["oauth2"] = {"token_endpoint": self.endpoint.url,
                               "client_id": self.endpoint.client_id, "client_secret": SECRET,
                               "refresh_token": self.refresh_token,
                               "ca_file": "/srv/oauth-ca.pem",
                               "keepalive_days": KEEPALIVE_DAYS}
        else:
            relay["password"] = "Password-keepalive-never-logged"
        return {"postfix_relay": {"domain": "example.org", "recipient": "me@example.org",
                                  "listen": "none", "relay": relay}}

    def apply(self, *extra, oauth2=True):
        self.sid.write_pillar(self.pillar(oauth2))
        # the lead includes oauth2_keepalive from the formula; named here until then
        code, data, res = self.salt_call(
            "state.apply", "postfix_relay,postfix_relay.oauth2_keepalive", *extra)
        assert code == 0 and data, res.stdout[-3000:] + res.stderr[-3000:]
        failed = {k: v["comment"] for k, v in data.items() if v["result"] is not True}
        assert not failed, failed
        return data

    def cron_command(self):
        """The command of the installed cron.d line (after the user field)."""
        lines = [line for line in self.sid.path(CRON_FILE).read_text().splitlines()
                 if line and not line.startswith("#") and "=" not in line.split()[0]]
        assert len(lines) == 1, lines
        fields = lines[0].split(None, 6)
        assert fields[5] == "root", lines[0]
        return fields[6]

    def run_job(self):
        """The job as cron runs it: /bin/sh, cron's PATH, no terminal."""
        res = self.sid.run("sh", "-c", self.cron_command(), check=False)
        self.outputs.append(res.stdout + res.stderr)
        return res

    def token_file(self):
        return self.sid.path(f"/var/spool/postfix/etc/sasl-xoauth2/127.0.0.1-"
                             f"{self.relay.port}.json")

    def token(self):
        return json.loads(self.token_file().read_text())

    def silence(self, seconds):
        """Time passes with no mail: for the provider (its clock) and for the
        token file (refreshed that long ago, its access token expired)."""
        self.endpoint.advance(seconds)
        path = self.token_file()
        data = json.loads(path.read_text())
        if "expiry" in data:
            data["expiry"] = type(data["expiry"])(int(data["expiry"]) - int(seconds))
        with open(path, "w") as handle:  # same file: owner and mode kept
            json.dump(data, handle)
        then = path.stat().st_mtime - seconds
        os.utime(path, (then, then))

    def status(self):
        return json.loads(self.sid.path(f"{CACHE}/oauth2_keepalive.json").read_text())

    def send(self):
        token = uuid.uuid4().hex
        self.sid.run("/usr/sbin/sendmail", "-i", "root", input=f"Subject: ka {token}\n\n{token}\n")
        return token

    def deferred(self, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.sid.run("postqueue", "-j").stdout
            waiting = [json.loads(line) for line in out.splitlines() if line.strip()]
            waiting = [m for m in waiting if m["queue_name"] == "deferred"]
            if waiting:
                return waiting
            time.sleep(0.5)
        return []

    def log(self):
        return self.sid.path("/var/log/postfix.log").read_text(errors="replace")


@pytest.fixture(scope="module")
def pi(sid, relay, endpoint):
    return Pi(sid, relay, endpoint)


def test_apply_installs_the_daily_keepalive_job(pi):
    # smtp chrooted (as Debian's Postfix had it until 3.9): the keep-alive
    # finds the token file and CA bundle inside the chroot, as the plugin does
    pi.sid.run("postconf", "-F", "smtp/unix/chroot=y")
    data = pi.apply("sync_mods=all")
    job = pi.sid.path(CRON_FILE)
    st = job.stat()
    assert (st.st_mode & 0o777, st.st_uid) == (0o644, 0)
    command = pi.cron_command()
    salt_call = command.split("$(", 1)[1].split()[0]
    # an absolute path: cron's PATH does not have this host's /opt/salt/bin
    assert salt_call == "/opt/salt/bin/salt-call", command
    assert " --local " in command and "postfix_xoauth2.keepalive" in command
    minute, hour = (int(f) for f in job.read_text().splitlines()[-1].split()[:2])
    assert 0 <= minute < 60 and 0 <= hour < 24
    # no cron daemon in this tree: the apply says how the job would run
    notes = [v["comment"] for k, v in data.items() if "needs-cron" in k]
    assert notes and "no cron daemon" in notes[0], notes
    plan = pi.sid.path(f"{CACHE}/oauth2_keepalive_relays.json")
    assert plan.stat().st_mode & 0o777 == 0o600
    assert json.loads(plan.read_text())[0]["keepalive_days"] == KEEPALIVE_DAYS
    # the first mail: the plugin refreshes and the relay takes it
    assert pi.relay.find(pi.send()), pi.log()[-3000:]
    assert pi.endpoint.refreshes == 1


def test_a_fresh_token_is_left_alone(pi):
    res = pi.run_job()
    assert (res.returncode, res.stdout, res.stderr) == (0, "", "")
    assert pi.endpoint.refreshes == 1
    name = pi.token_file().name
    assert pi.status()[name]["ok"] is True and pi.status()[name]["outcome"] == "fresh"


def test_with_the_keepalive_the_token_survives_silence_and_mail_goes_out(pi):
    pi.endpoint.rotate = True  # Microsoft hands out a new refresh token each time
    pillar = pi.sid.path("/srv/pillar")
    try:
        for local_pillar in (True, False):  # 5 days of silence in all: past the provider's 3
            pi.silence(2.5 * DAY)
            before = pi.token()["refresh_token"]
            if not local_pillar:
                # a minion whose pillar lives on its master: salt-call --local
                # sees none; the job uses the relays the last apply saved
                pillar.rename(pillar.with_name("pillar.on-master"))
            try:
                res = pi.run_job()
            finally:
                if not local_pillar:
                    pillar.with_name("pillar.on-master").rename(pillar)
            assert (res.returncode, res.stdout) == (0, ""), res.stderr[-2000:]
            stored = pi.token()["refresh_token"]
            # the rotated refresh token is stored (only it works from now on)
            assert stored != before and stored == pi.endpoint.refresh_token
            pi.rotated.append(stored)
    finally:
        pi.endpoint.rotate = False
    assert pi.endpoint.refreshes == 3
    postfix_uid = int(pi.sid.run("id", "-u", "postfix").stdout)
    st = pi.token_file().stat()
    assert (st.st_mode & 0o777, st.st_uid) == (0o600, postfix_uid)
    entry = pi.status()[pi.token_file().name]
    assert (entry["ok"], entry["outcome"], entry["error"]) == (True, "refreshed", None)
    assert pi.relay.find(pi.send()), pi.log()[-3000:]
    pi.refresh_token = pi.endpoint.refresh_token  # what the file now holds


def test_without_it_the_token_dies_mail_waits_and_the_cause_is_named(pi):
    pi.silence(4 * DAY)  # no keep-alive run: the provider's 3 days pass
    token = pi.send()
    waiting = pi.deferred()
    assert waiting, pi.log()[-3000:]
    assert not pi.relay.find(token, timeout=1)
    assert "status=bounced" not in pi.log()
    result = pi.salt_call("postfix_relay.probe")[1]
    assert result["ok"] is False
    named = [d for d in result["diagnosis"] if "AADSTS700082" in d["cause"]]
    assert named and "not used for 90 days" in named[0]["cause"], result["diagnosis"]
    assert "keepalive_days" in named[0]["fix"] and "new refresh token" in named[0]["fix"]
    # the job fails, says so (cron mails its output) and keeps the old token
    before = pi.token_file().read_bytes()
    res = pi.run_job()
    assert "AADSTS700082" in res.stdout, res.stdout + res.stderr
    code, data, _res = pi.salt_call("postfix_xoauth2.keepalive")
    assert code == 1 and data[pi.token_file().name]["outcome"] == "failed"
    assert pi.token_file().read_bytes() == before
    entry = pi.status()[pi.token_file().name]
    assert entry["ok"] is False and entry["error"].startswith("invalid_grant: AADSTS700082")
    assert entry["relay"] == f"[127.0.0.1]:{pi.relay.port}" and entry["key"] == "relay"
    assert abs(entry["time"] - time.time()) < 120
    assert pi.sid.path(f"{CACHE}/oauth2_keepalive.json").stat().st_mode & 0o777 == 0o600
    # the beacon's next interval raises oauth2 with the provider's error
    code, events, res = pi.salt_call("postfix_watch.interval",
                                     '{"deferred_max": 10, "age_max": 3600}',
                                     "path=/root/postfix_watch.json")  # not the beacon's
    raised = [e for e in events or [] if e["condition"] == "oauth2"]
    assert raised and "AADSTS700082" in raised[0]["reply"], res.stdout[-3000:]


def test_google_expired_or_revoked_is_named_with_the_fix(pi):
    pi.endpoint.style = "google"
    code, data, _res = pi.salt_call("postfix_xoauth2.keepalive", "max_age=0")
    assert code == 1
    assert "Token has been expired or revoked" in data[pi.token_file().name]["error"]
    result = pi.salt_call("postfix_relay.probe")[1]
    named = [d for d in result["diagnosis"] if "expired or revoked" in d["cause"]]
    assert named and "keepalive_days" in named[0]["fix"], result["diagnosis"]
    # a Testing app's tokens expire after 7 days whatever the keep-alive does
    assert '"Testing"' in named[0]["cause"] and "In production" in named[0]["fix"]


def test_a_new_refresh_token_applied_clears_the_failure(pi):
    pi.endpoint.reissue(REFRESH2)
    pi.refresh_token = REFRESH2
    pi.apply()
    pi.sid.run("postqueue", "-f")
    assert pi.relay.find(pi.send()), pi.log()[-3000:]
    res = pi.run_job()
    assert (res.returncode, res.stdout) == (0, "")
    assert pi.status()[pi.token_file().name]["ok"] is True


def test_no_token_or_secret_in_outputs_or_the_keepalive_files(pi):
    secrets = [REFRESH, REFRESH2, SECRET, *pi.rotated, *pi.endpoint.issued]
    for output in pi.outputs:
        assert not [s for s in secrets if s in output], output[-2000:]
    for name in ("oauth2_keepalive.json", "oauth2_keepalive_relays.json"):
        text = pi.sid.path(f"{CACHE}/{name}").read_text()
        assert not [s for s in secrets if s in text], name
    assert not [s for s in secrets if s in pi.sid.path(CRON_FILE).read_text()]


def test_apply_without_oauth2_removes_the_job(pi):
    pi.apply(oauth2=False)
    assert not pi.sid.path(CRON_FILE).exists()
    assert not pi.sid.path(f"{CACHE}/oauth2_keepalive_relays.json").exists()
