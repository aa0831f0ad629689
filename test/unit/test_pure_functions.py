"""Pure functions of the modules: relayhost syntax, log following, table text,
and libsasl2's own mechanism choice (the real library, no Postfix needed)."""

import pytest
from salt.exceptions import SaltInvocationError

from helpers import load_module

relay_mod = load_module("_modules/postfix_relay.py")
log_mod = load_module("_modules/postfix_log.py")
tls_mod = load_module("_utils/postfix_tls.py")
postmap = load_module("_modules/postmap.py")
sasl = load_module("_modules/postfix_sasl.py")


@pytest.mark.parametrize("value, host, port, mx", [
    ("[smtp.example.net]:587", "smtp.example.net", 587, False),
    ("[smtp.example.net]", "smtp.example.net", 25, False),
    ("smtp.example.net:465", "smtp.example.net", 465, True),
    ("[ipv6:2001:db8::1]:587", "2001:db8::1", 587, False),
    ("[smtp.example.net]:submission", "smtp.example.net", 587, False),
])
def test_relayhost_is_read_as_postfix_reads_it(value, host, port, mx):
    parsed = relay_mod.parse_relayhost(value)
    assert (parsed["host"], parsed["port"], parsed["mx"], parsed["dest"]) == \
        (host, port, mx, value)


LOG = """\
Nov 24 21:58:35 pi postfix/pickup[10]: 4AB12C: uid=0 from=<root>
Nov 24 21:58:35 pi postfix/cleanup[11]: 4AB12C: message-id=<postfix-relay-verify.t1@pi>
Nov 24 21:58:35 pi postfix/qmgr[12]: 4AB12C: from=<pi@example.org>, size=400, nrcpt=1 (queue active)
Nov 24 21:58:35 pi postfix/smtp[13]: 4AB12C: to=<me@example.org>, orig_to=<root>, \
relay=127.0.0.1[127.0.0.1]:2525, delay=0.15, delays=0.01/0.01/0.1/0.03, dsn=2.0.0, \
status=sent (250 2.0.0 OK: queued)
"""


def test_log_is_followed_by_message_id():
    found = log_mod.parse(LOG.splitlines(), "<postfix-relay-verify.t1@pi>")
    assert found == {"queue_id": "4AB12C", "sender": "pi@example.org",
                     "recipient": "me@example.org", "orig_recipient": "root",
                     "relay": "127.0.0.1[127.0.0.1]:2525", "delay": 0.15,
                     "delays": "0.01/0.01/0.1/0.03", "dsn": "2.0.0", "status": "sent",
                     "reply": "250 2.0.0 OK: queued"}
    assert log_mod.parse(LOG.splitlines(), "<other@pi>") == {}


def test_log_of_postfix_3_11_with_tls_field_is_followed():
    # Postfix 3.11 (Debian unstable) logs tls=... between delays= and dsn=
    line = LOG.splitlines()[3].replace(", dsn=", ", tls=encrypt, dsn=")
    found = log_mod.parse(LOG.splitlines()[:3] + [line], "<postfix-relay-verify.t1@pi>")
    assert (found["status"], found["dsn"], found["delays"]) == \
        ("sent", "2.0.0", "0.01/0.01/0.1/0.03")


def test_table_text_round_trips_and_folds_keys():
    text = postmap.render({"[Smtp.Example.net]:587": "user:pw with space", "root": "me"})
    assert text == "[Smtp.Example.net]:587 user:pw with space\nroot me\n"
    assert postmap.parse(text + "# comment\n\nlong first\n  second\n") == [
        ("[Smtp.Example.net]:587", "user:pw with space"), ("root", "me"),
        ("long", "first  second")]  # as `postmap -q` reads it: newline dropped
    assert postmap.entry_changes([("a", "1"), ("b", "2")], [("A", "9"), ("c", "3")], True) == \
        {"added": ["c"], "removed": ["b"], "changed": ["a"]}


@pytest.mark.parametrize("entries", [{"a b": "1"}, {"a": "1\n2"}, {"A": "1", "a": "2"}, {"": "x"}])
def test_table_lines_cannot_be_injected(entries):
    with pytest.raises(SaltInvocationError):
        postmap.render(entries)


def test_redaction_masks_secrets_and_passwords_alone():
    assert postmap.redact("u:secret1 and secret1", ["u:secret1"]) == "******** and ********"


@pytest.mark.parametrize("offered, options, mech_filter, chosen, words", [
    (["PLAIN", "LOGIN"], "noanonymous", "", "PLAIN", None),
    (["CRAM-MD5", "PLAIN"], "noanonymous", "", "CRAM-MD5", None),
    (["LOGIN"], "noanonymous", "", "LOGIN", None),
    ([], "noanonymous", "", None, "offers no AUTH"),
    (["PLAIN", "LOGIN"], "noanonymous, noplaintext", "", None, "noplaintext"),
    (["PLAIN", "LOGIN"], "noanonymous", "cram-md5", None, "mechanism filter"),
    (["XOAUTH2"], "noanonymous", "", None, "no SASL client plugin"),
])
def test_libsasl2_chooses_as_it_does_for_postfix(offered, options, mech_filter, chosen, words):
    result = sasl.negotiate(offered, mech_filter, security_options="noanonymous, noplaintext",
                            tls=True, tls_security_options=options)
    assert result["chosen"] == chosen
    if words:
        assert words in result["reason"]


def test_plain_outside_tls_follows_the_non_tls_options():
    assert sasl.negotiate(["PLAIN"], "", "noanonymous, noplaintext", tls=False)["chosen"] is None
    assert "PLAIN" in sasl.plugins()


@pytest.mark.parametrize("name, host, dot_nexthop, match", [
    ("smtp.example.net", "smtp.example.net", False, True),
    ("SMTP.Example.NET.", "smtp.example.net", False, True),
    ("*.example.net", "smtp.example.net", False, True),
    ("*.example.net", "a.smtp.example.net", False, False),
    ("*.example.net", "example.net", False, False),
    ("mx1.example.net", "example.net", True, True),
    ("mx1.example.net", "example.net", False, False),
    ("other.example.net", "smtp.example.net", True, False),
])
def test_certificate_names_match_as_postfix_matches_them(name, host, dot_nexthop, match):
    assert tls_mod.name_matches(name, host, dot_nexthop) is match


def test_main_cf_text_does_not_depend_on_parameter_order():
    """The SLS hands the parameters over sorted; the render-time check builds
    them in Python's order: both must give the same text, or a no-op apply
    would check (and could rewrite) main.cf every time."""
    maincf = load_module("_modules/postfix_maincf.py")
    params = {"relayhost": "[a.example]:587", "compatibility_level": "3.6", "alias_maps": ""}
    text = maincf.render_main_cf(params)
    assert text == maincf.render_main_cf(dict(reversed(list(params.items()))))
    assert text.splitlines()[2:] == ["compatibility_level = 3.6", "alias_maps =",
                                     "relayhost = [a.example]:587"]


@pytest.mark.parametrize("release, level", [
    ("3.7.11", "3.7"), ("3.10.13", "3.10"), ("3.6.0", "3.6"), ("3.5.25", "2"),
    ("2.11.3", "1"), ("unknown", "2"),
])
def test_compatibility_level_is_the_releases_own(release, level):
    facts = load_module("_modules/postfix_facts.py")
    assert facts.compatibility_level(release) == level


@pytest.mark.parametrize("given, expected", [
    (600, 0o600),      # YAML's unquoted 0600 (and 600): the digits are the mode
    (644, 0o644),
    ("0600", 0o600),
    ("600", 0o600),
    ("0o600", 0o600),
    # A Python octal int is not a YAML/CLI mode: 0o640 is the int 416, read
    # like Salt's file states read it, as the digits it prints: 0416.
    (0o640, 0o416),
])
def test_mode_is_read_as_salt_file_states_read_it(given, expected):
    assert postmap.normalize_mode(given) == expected


@pytest.mark.parametrize("given", [0o600, 384, 1999, "0800", 77777, "17777"])
def test_mode_with_non_octal_digits_or_out_of_range_is_refused(given):
    # 0o600 is the int 384: its digits are no octal mode; taking 384 as the
    # value made 0o640 (416) mean 0o640 but 0o644 (420) mean 0420.
    with pytest.raises(SaltInvocationError) as err:
        postmap.normalize_mode(given)
    assert "mode" in str(err.value) and "'0600'" in str(err.value)
