"""
The beacon's judgement of Postfix's own log wording (Postfix 3.7's smtp
client strings), its secret scrubbing, its config check and its metrics
textfile, through Salt's loaders (postfix_watch as an execution module, the
beacon loaded by salt.loader.beacons as a minion loads it).
"""

import os
import pathlib
import time

import pytest
import salt.loader

REPO = pathlib.Path(__file__).resolve().parents[2]
HEAD = "Nov 28 02:40:01 pi postfix/smtp[4242]: 3F2A1C: to=<me@example.org>, "


def status_line(reply, relay="none", status="deferred"):
    return (f"{HEAD}relay={relay}, delay=31, delays=0.01/0/30/0, dsn=4.4.1, "
            f"status={status} ({reply})")


CONF = None  # a private config dir with a main.cf (the functional conftest's)


@pytest.fixture
def watch(loaders, config_dir):
    global CONF  # noqa: PLW0603 - interval() below reads it
    CONF = config_dir
    return loaders.modules.postfix_watch


@pytest.fixture
def beacons(minion_opts, loaders):
    opts = dict(minion_opts, beacons_dirs=[str(REPO / "_beacons")])
    return salt.loader.beacons(opts, loaders.modules)


CASES = [
    ("connect to smtp.example.net[192.0.2.1]:587: Connection timed out",
     "unreachable", "smtp.example.net[192.0.2.1]:587", "relay smtp.example.net[192.0.2.1]:587 "
     "is unreachable", "check relay:host and relay:port"),
    ("connect to 127.0.0.1[127.0.0.1]:2525: Connection refused", "unreachable",
     "127.0.0.1[127.0.0.1]:2525", "is unreachable", "firewalls allow it"),
    ("Host or domain name not found. Name service error for name=smtp.example.nett "
     "type=AAAA: Host not found", "unreachable", "smtp.example.nett",
     "the relay name smtp.example.nett does not resolve", "this host's DNS"),
    ("TLS is required, but was not offered by host 127.0.0.1[127.0.0.1]", "tls",
     "127.0.0.1[127.0.0.1]", "the relay offers no STARTTLS", "submission port with TLS"),
    ("Server certificate not verified", "tls", None, "the relay's certificate does not "
     "verify", "relay:ca_file"),
    ("SASL authentication failed; server smtp.office365.com[52.96.1.1] said: 535 5.7.139 "
     "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.",
     "credentials", "smtp.office365.com[52.96.1.1]", "the relay rejects the credentials",
     "relay:username / password"),
]


@pytest.mark.parametrize("reply, condition, relay, cause, fix", CASES,
                         ids=[c[1] + "-" + c[0][:20] for c in CASES])
def test_postfix_failures_are_named_with_the_relay(watch, reply, condition, relay, cause,
                                                   fix):
    found = watch.classify(status_line(reply))
    assert found["condition"] == condition and found["relay"] == relay, found
    said, told = watch.cause_fix(condition, found["reply"], found["relay"])
    assert cause in said and found["reply"] in said, said
    assert fix in told, told


def test_the_relay_field_names_the_relay_when_there_is_one(watch):
    line = status_line("SASL authentication failed; server 127.0.0.1[127.0.0.1] said: 535 "
                       "5.7.8 Authentication credentials invalid",
                       relay="127.0.0.1[127.0.0.1]:2525")
    assert watch.classify(line)["relay"] == "127.0.0.1[127.0.0.1]:2525"


def test_a_client_side_sasl_failure_with_xoauth2_is_the_token(watch):
    line = status_line("SASL authentication failed; cannot authenticate to server "
                       "smtp.office365.com[52.96.1.1]: generic failure")
    assert watch.classify(line)["condition"] == "credentials"
    assert watch.classify(line, xoauth2=True)["condition"] == "oauth2"


def test_deliveries_and_other_daemons_lines(watch):
    sent = status_line("250 2.0.0 OK: queued as 4F1", relay="relay.test[192.0.2.9]:587",
                       status="sent")
    assert watch.classify(sent) == {"sent": "relay.test[192.0.2.9]:587", "pid": "4242"}
    # smtpd's failures are clients of ours failing, not our relay refusing us
    assert watch.classify("Nov 28 02:40:01 pi postfix/smtpd[9]: warning: unknown[192.0.2.7]: "
                          "SASL LOGIN authentication failed: UGFzc3dvcmQ6") is None
    assert watch.classify("Nov 28 02:40:01 pi postfix/qmgr[7]: 3F2A1C: removed") is None


def test_same_relay_by_name_and_port(watch):
    assert watch.same_relay("a.example[192.0.2.1]:587", "a.example[192.0.2.2]:587")
    assert not watch.same_relay("a.example[192.0.2.1]:587", "a.example[192.0.2.1]:465")
    assert watch.same_relay("a.example", "A.example[192.0.2.1]:587")  # resolver failure
    assert not watch.same_relay(None, "a.example[192.0.2.1]:587")
    assert watch.same_relay("[a.example]:587", "a.example[192.0.2.1]:587")  # a relayhost


def sent_line(relay, pid):
    return (f"Nov 28 02:40:09 pi postfix/smtp[{pid}]: 3F2A1D: to=<me@example.org>, "
            f"relay={relay}, delay=1, delays=0/0/0.5/0.5, dsn=2.0.0, status=sent (250 ok)")


def refused_line(pid, host="primary.example[192.0.2.1]:587", suspended=False):
    """Postfix 3.7's two wordings of one refused connection."""
    if suspended:
        return (f"Nov 28 02:40:08 pi postfix/smtp[{pid}]: 3F2A1E: to=<me@example.org>, "
                f"relay=none, delay=9, delays=9/0/0/0, dsn=4.4.1, status=deferred (delivery "
                f"temporarily suspended: connect to {host}: Connection refused)")
    return f"Nov 28 02:40:08 pi postfix/smtp[{pid}]: connect to {host}: Connection refused"


EMPTY = {"ok": True, "deferred": 0, "oldest_age": None, "reason": None,
         "queues": {"deferred": 0}}
LIMITS = {"deferred_max": 10, "age_max": 3600}
PRIMARY, SENDER = "[primary.example]:587", "[sender.example]:587"


def interval(watch, state, lines, facts=EMPTY, configured=(PRIMARY, SENDER)):
    """One interval's judgement; the events as (condition, relay name)."""
    before = {k: dict(v) for k, v in state.setdefault("active", {}).items()}
    seen = watch.observe(state, lines, 1795833000, configured=list(configured),
                         config_dir=CONF)
    watch.settle(state, facts, seen, LIMITS)
    return [(e.get("recovered", e["condition"]) + ("+" if "recovered" in e else ""),
             (e["relay"] or "").split("[")[0])
            for e in watch.changes(before, state["active"], facts, 1795833000, CONF)]


def test_a_failing_relay_stays_failing_until_mail_proves_otherwise(watch):
    state = {"active": {}}
    assert interval(watch, state, [refused_line(11)]) == [("unreachable", "primary.example")]
    # no mail since, nothing waits: nothing proves the relay works again
    assert interval(watch, state, []) == []
    # a fallback carries each mail after the primary failed
    fallback = [refused_line(12), sent_line("backup.example[192.0.2.2]:587", 12)]
    assert interval(watch, state, fallback) == []
    assert interval(watch, state, []) == []
    # the primary delivers again: cleared at once
    assert interval(watch, state, [sent_line("primary.example[192.0.2.1]:587", 13)]) == \
        [("unreachable+", "primary.example")]


def test_one_failure_in_either_wording_is_one_event(watch):
    """F2: "connect to X: Connection refused" and "delivery temporarily
    suspended: connect to X: ..." (and a timeout) are one condition."""
    state = {"active": {}}
    assert interval(watch, state, [refused_line(11)]) == [("unreachable", "primary.example")]
    assert interval(watch, state, [refused_line(12, suspended=True)]) == []
    timed_out = refused_line(13).replace("Connection refused", "Connection timed out")
    assert interval(watch, state, [timed_out, refused_line(14)]) == []
    held = state["active"]["unreachable@primary.example:587"]
    assert held["reply"].startswith("connect to primary.example"), held  # the latest reply


def test_two_failing_relays_are_two_conditions_that_stay_put(watch):
    """F3/F4: the primary and a sender relay both down: one event each, none
    while nothing changes, and a delivery through one clears only its own."""
    state = {"active": {}}
    both = [refused_line(11), refused_line(12, "sender.example[192.0.2.5]:587")]
    assert sorted(interval(watch, state, both)) == [("unreachable", "primary.example"),
                                                   ("unreachable", "sender.example")]
    for _ in range(3):
        assert interval(watch, state, [refused_line(13), refused_line(
            14, "sender.example[192.0.2.5]:587", suspended=True)]) == []
    assert interval(watch, state, [sent_line("sender.example[192.0.2.5]:587", 15)]) == \
        [("unreachable+", "sender.example")]
    assert interval(watch, state, [sent_line("sender.example[192.0.2.5]:587", 16)]) == []
    assert list(state["active"]) == ["unreachable@primary.example:587"]


def test_a_relay_no_longer_used_clears_once_nothing_waits(watch):
    state = {"active": {}}
    interval(watch, state, [refused_line(11, "old.example[192.0.2.9]:587")])
    # mail goes out through another relay (the pillar changed: old.example is
    # no longer configured), but mail still waits: stays
    waiting = dict(EMPTY, deferred=2, queues={"deferred": 2})
    other = [sent_line("primary.example[192.0.2.1]:587", 14)]
    assert interval(watch, state, other, waiting) == []
    assert interval(watch, state, [], EMPTY) == [("unreachable+", "old.example")]


def test_credentials_fingerprint_is_the_smtp_code_not_the_words(watch):
    state = {"active": {}}
    said = "SASL authentication failed; server primary.example[192.0.2.1] said: 535 5.7.8 {}"
    line = status_line(said.format("Error: authentication failed: x [s1]"),
                       relay="primary.example[192.0.2.1]:587")
    assert interval(watch, state, [line]) == [("credentials", "primary.example")]
    assert interval(watch, state, [line.replace("x [s1]", "UGFzc3dvcmQ6 y")]) == []
    assert interval(watch, state, [line.replace("5.7.8", "5.7.139")]) == \
        [("credentials", "primary.example")]


def test_oauth2_notes_are_per_relay_and_need_no_clock(watch):
    """F5: one relay's ok note clears only its own failure; a note older than
    another's (a clock stepped back) still counts; the keep-alive's note and
    the plugin's log line for one revoked token are one condition."""
    office, google = "[smtp.office365.com]:587", "[smtp.gmail.com]:587"
    state = {"active": {}}

    def notes(**relays):
        return sorted(watch.oauth2_notes(state, relays, 1795833000))
    bad = {"ok": False, "error": "invalid_grant: AADSTS700082", "error_code": "invalid_grant"}
    assert notes(**{office: dict(bad, at=1000)}) == ["oauth2@smtp.office365.com:587"]
    fingerprint = state["active"]["oauth2@smtp.office365.com:587"]["fingerprint"]
    # google's ok note is newer: office's failure stays
    assert notes(**{office: dict(bad, at=1000), google: {"ok": True, "at": 2000}}) == []
    assert list(state["active"]) == ["oauth2@smtp.office365.com:587"]
    # google fails with a clock stepped back (at 500 < every earlier note)
    assert notes(**{office: dict(bad, at=1000), google: dict(bad, at=500)}) == \
        ["oauth2@smtp.gmail.com:587"]
    # Postfix's own line for office's token: same condition, same fingerprint
    generic = status_line("SASL authentication failed; cannot authenticate to server "
                          "smtp.office365.com[52.96.1.1]: generic failure",
                          relay="smtp.office365.com[52.96.1.1]:587")
    state["active"]["oauth2@smtp.office365.com:587"]["reply"] = "x"
    watch.observe(state, [generic.replace("SASL", "xoauth2 SASL").replace(
        "generic failure", "xoauth2 plugin error")], 1795833100, configured=[office],
        config_dir=CONF)
    assert state["active"]["oauth2@smtp.office365.com:587"]["fingerprint"] == fingerprint
    # office's token works again: only office's cleared
    assert notes(**{office: {"ok": True, "at": 3000}, google: dict(bad, at=500)}) == []
    assert list(state["active"]) == ["oauth2@smtp.gmail.com:587"]


def test_deferred_fingerprint_is_no_free_text(watch):
    state = {"active": {}}
    many = dict(EMPTY, deferred=20, queues={"deferred": 20},
                reason="host mx.example[192.0.2.7] said: 451 4.3.0 Try again (id 1)")
    assert interval(watch, state, [], many) == [("deferred", "mx.example")]
    assert interval(watch, state, [], dict(many, reason=many["reason"].replace(
        "(id 1)", "(queue 77 busy)"))) == []


SECRETS = [
    ('{"access_token":"eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln",'
     '"error":"invalid_grant"}', "eyJ0eXAi", "invalid_grant"),
    ("refresh_token=1//0gAbCdEfGhIjKl-MnOp&grant_type=refresh_token", "1//0gAbC",
     "grant_type"),
    ("user=alerts@example.org\x01auth=Bearer ya29.a0AfH6SMBxyz\x01\x01", "ya29", "alerts"),
    ("535 5.7.3 Authentication unsuccessful [ZRAP278CA0011.CHEP278.PROD.OUTLOOK.COM "
     "2026-11-28T02:40:01.000Z 08DD0F9A1B2C3D4E]", None, "535 5.7.3 Authentication "
     "unsuccessful"),
    ("password: Tst-pw-7f3k9Q", "Tst-pw-7f3k9Q", "password"),
    ("AADSTS700082: The refresh token has expired due to inactivity", None, "AADSTS700082"),
]


@pytest.mark.parametrize("text, secret, kept", SECRETS, ids=[s[2][:12] for s in SECRETS])
def test_scrub_drops_what_looks_secret_and_keeps_the_words(watch, text, secret, kept):
    clean = watch.scrub(text)
    if secret:
        assert secret not in clean, clean
    assert kept in clean, clean


@pytest.mark.parametrize("config, message", [
    ([{"interval": 60}, {"deferred_max": 0}, {"age_max": 600}], "Valid"),
    ([{"metrics_textfile": "/var/lib/node-exporter/postfix_relay.prom"}], "Valid"),
    ({"deferred_max": 1}, "must be a list"),
    ([{"deferred_max": -1}], "deferred_max must be a whole number"),
    ([{"deferred_max": "10"}], "deferred_max must be a whole number"),
    ([{"age_max": 0}], "age_max must be seconds"),
    ([{"metrics_textfile": "postfix.prom"}], "metrics_textfile must be an absolute path"),
    ([{"metrics_textfile": "/tmp/postfix.txt"}], "metrics_textfile must be an absolute path"),
    ([{"deferred": 1}], "unknown key deferred"),
    ([{"config_dir": "/etc/postfix-out"}], "Valid"),
    ([{"config_dir": "postfix-out"}], "config_dir must be an absolute path"),
])
def test_validate_as_salt_calls_it(beacons, config, message):
    ok, said = beacons["postfix_relay.validate"](config)
    assert ok is (message == "Valid") and message in said, said


def test_metrics_textfile_names_every_gauge(watch, tmp_path):
    facts = {"queues": {"active": 1, "deferred": 3, "hold": 0, "incoming": 0, "maildrop": 0},
             "deferred": 3, "oldest_age": 125, "ok": True, "reason": None}
    state = {"active": {"unreachable": {}}, "last_sent": 1795830000.5, "checked": 1795833000}
    path = tmp_path / "textfiles" / "postfix_relay.prom"
    watch.write_metrics(str(path), facts, state)
    text = path.read_text()
    for line in ('postfix_relay_queue_messages{queue="deferred"} 3',
                 'postfix_relay_queue_messages{queue="active"} 1',
                 "postfix_relay_oldest_deferred_seconds 125",
                 "postfix_relay_last_sent_timestamp_seconds 1795830000",
                 'postfix_relay_condition{condition="unreachable"} 1',
                 'postfix_relay_condition{condition="credentials"} 0',
                 "postfix_relay_beacon_checked_timestamp_seconds 1795833000"):
        assert line + "\n" in text, text
    assert [p.name for p in path.parent.iterdir()] == ["postfix_relay.prom"]  # no temp left


def test_the_login_is_read_from_the_beacons_config_dir(watch, tmp_path):
    """A Postfix whose main.cf filters SASL mechanisms to XOAUTH2: its
    generic 'cannot authenticate' is the token, read from that config dir."""
    conf = tmp_path / "xoauth2-conf"
    conf.mkdir()
    (conf / "main.cf").write_text("smtp_sasl_mechanism_filter = xoauth2\n")
    old = time.time() - 60
    os.utime(conf / "main.cf", (old, old))
    line = status_line("SASL authentication failed; cannot authenticate to server "
                       "smtp.office365.com[52.96.1.1]: generic failure",
                       relay="smtp.office365.com[52.96.1.1]:587")
    for where, condition in ((str(conf), "oauth2"), (CONF, "credentials")):
        state = {"active": {}}
        watch.observe(state, [line], 1795833000, configured=["[smtp.office365.com]:587"],
                      config_dir=where)
        assert list(state["active"]) == [f"{condition}@smtp.office365.com:587"]


def test_the_beacon_watches_its_config_dir(beacons, minion_opts, tmp_path):
    """A beacon configured for another Postfix follows that Postfix's log
    (its main.cf's maillog_file), not /etc/postfix's."""
    conf, log = tmp_path / "other", tmp_path / "other-mail.log"
    conf.mkdir()
    log.write_text("")
    (conf / "main.cf").write_text(f"maillog_file = {log}\n")
    old = time.time() - 60
    os.utime(conf / "main.cf", (old, old))
    state = pathlib.Path(minion_opts["cachedir"]) / "postfix_relay" / "beacon.json"
    state.unlink(missing_ok=True)  # a fresh beacon: it starts at the log's end
    config = [{"config_dir": str(conf)}]
    assert beacons["postfix_relay.beacon"](config) == []
    with open(log, "a", encoding="utf-8") as handle:
        handle.write(refused_line(21, host="smtp.example.net[192.0.2.9]:587") + "\n")
    events = beacons["postfix_relay.beacon"](config)
    assert [(e["condition"], e["relay"]) for e in events] == \
        [("unreachable", "smtp.example.net[192.0.2.9]:587")]
