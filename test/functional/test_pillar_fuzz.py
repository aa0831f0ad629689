"""
Property: any pillar either becomes a main.cf that `postfix check` accepts and
that says exactly what was given (nothing injected, nothing lost), or is refused
with an error naming its key, the live main.cf untouched. Hypothesis generates
the pillars; the real postconf/postfix judge them, in a private config dir.
"""

import os
import pathlib
import shutil
import subprocess

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from salt.exceptions import SaltInvocationError

PARAMS = ["smtpd_banner", "smtp_helo_name", "message_size_limit", "default_process_limit",
          "delay_warning_time", "smtp_tls_security_level", "smtp_tls_mandatory_protocols",
          "bounce_notice_recipient", "debug_peer_list", "myhostname", "relayhost"]
NASTY = ["a\nb", "x = y", "inet_interfaces = all", "$myhostname", "${oops", "$", "=",
         "pi.exämple.org", "a" * 300, " lead", "trail ", "nul\x00", "tab\there", "",
         "[evil.test]:25", "user:pw", "me@@example.org", "-bad.example.org", "🙂"]
KNOWN_TOP = {"domain", "hostname", "sender", "recipient", "recipient_mode", "reply_to",
             "listen", "relay", "main_cf", "log_file", "password_map"}

# Upstream's main.cf for a new install, as the postfix package ships it.
MAIN_CF_DIST = "/usr/share/postfix/main.cf.dist"

label = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?\Z")
# Postfix takes no all-numeric host name (valid_hostname()): one letter at least.
dns = st.builds(".".join, st.lists(label, min_size=1, max_size=4)).filter(
    lambda name: not name.replace(".", "").isdigit())
nasty = st.sampled_from(NASTY) | st.text(max_size=30) | st.integers(-5, 70000) | st.none()
local = st.from_regex(r"\A[A-Za-z0-9!#%&'*+/=?^_`|~-]{1,12}\Z")
address = st.builds(lambda part, d: f"{part}@{d}", local, dns)
value = (nasty | st.booleans() | st.lists(nasty, max_size=3) | st.text(max_size=2000)
         | st.sampled_from(["$myhostname", "${myhostname}", "10240000", "yes", "5d"]))
plain = st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=60)
# main_cf extras: known names with printable values half the time, anything otherwise.
extras = (st.dictionaries(st.sampled_from(PARAMS), plain | st.sampled_from(
              ["$myhostname", "${myhostname}", "10240000", "yes", "5d"]), max_size=3)
          | st.dictionaries(st.sampled_from(PARAMS) | nasty, value, max_size=3))
# Fields that may be given a bad value (one per example, or none).
FIELDS = ["domain", "hostname", "sender", "recipient", "reply_to", "recipient_mode",
          "listen", "relay:host", "relay:port", "relay:username", "relay:password",
          "relay:tls", "relay:mechanisms", "relay:ca_file", "log_file", "password_map"]


@st.composite
def pillars(draw):
    """(pillar, field): a valid pillar, its main_cf extras freely drawn, and at
    most one other field (field, or None) replaced by a hostile value."""
    relay = draw(st.fixed_dictionaries(
        {"host": dns | st.sampled_from(["127.0.0.1", "[::1]", "2001:db8::1"])},
        optional={"port": st.integers(1, 65535),
                  "tls": st.sampled_from(["encrypt", "verify", "secure"]),
                  "mechanisms": st.lists(st.sampled_from(["plain", "login"]), max_size=2)}))
    if draw(st.booleans()):
        # The formula refuses a password with whitespace at either end (a paste error).
        relay.update(username=draw(local), password=draw(st.text(
            st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=40).filter(
                lambda text: text == text.strip())))
    else:
        relay.pop("mechanisms", None)
    pillar = draw(st.fixed_dictionaries(
        {"domain": dns, "recipient": address},
        optional={"hostname": dns, "sender": local, "reply_to": address,
                  "recipient_mode": st.sampled_from(["all", "local"]),
                  "listen": st.sampled_from(["loopback", "none"]),
                  "main_cf": extras}))
    pillar["relay"] = relay
    # Half the pillars keep every field valid: those must be accepted unless an
    # extra is refused, and only accepted ones reach main.cf and `postfix check`.
    field = draw(st.one_of(st.none(), st.sampled_from(FIELDS)))
    if field:
        where, _, key = field.rpartition(":")
        (pillar["relay"] if where else pillar)[key] = draw(nasty)
    return pillar, field


def named_key(message):
    """The key path an error names: "relay:host" of "pillar postfix_relay:relay:host: ..."."""
    assert message.startswith("pillar postfix_relay:"), message
    return message[len("pillar postfix_relay:"):].split(": ", 1)[0]


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    conf = tmp_path_factory.mktemp("fuzz-conf")
    # The package's pristine master.cf: the host's own may be mid-test elsewhere.
    shutil.copy("/usr/share/postfix/master.cf.dist", conf / "master.cf")
    (conf / "main.cf").write_text("compatibility_level = 3.6\n")
    return conf


def new_install_level():
    """The compatibility_level Postfix itself writes into a new install's main.cf
    (its main.cf.dist), read here apart from the formula's own derivation."""
    for line in pathlib.Path(MAIN_CF_DIST).read_text().splitlines():
        name, _, value = line.partition("=")
        if name.strip() == "compatibility_level":
            return value.strip()
    raise AssertionError(f"{MAIN_CF_DIST} sets no compatibility_level")


def postconf_n(conf):
    out = subprocess.run(["postconf", "-c", str(conf), "-n"], capture_output=True,
                         text=True, check=True).stdout
    params = dict(line.split(" = ", 1) if " = " in line else (line.rstrip(" ="), "")
                  for line in out.splitlines())
    params.pop("config_directory", None)
    return params


LEVEL = new_install_level()


@settings(max_examples=35, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(drawn=pillars())
def test_pillar_is_written_exactly_or_refused_naming_its_key(loaders, fuzz_dir, drawn):
    pillar, field = drawn
    live = fuzz_dir / "main.cf"
    before = live.read_bytes()
    try:
        got = loaders.modules.postfix_relay_settings.get(
            pillar=pillar, lookup={"config_dir": str(fuzz_dir)}, show_secrets=True, check=True)
    except SaltInvocationError as exc:
        message = str(exc)
        key = named_key(message)
        assert key.split(":")[0] in KNOWN_TOP, message
        # Only the hostile field (or its relay section) or a main_cf extra is the reason.
        assert key.split(":")[0] in {(field or "main_cf").split(":")[0], "main_cf"}, \
            (field, message)
        assert live.read_bytes() == before
        event("refused: " + key.split(":")[0])
        return
    event("accepted")
    ret = loaders.states.postfix_control.main_cf(
        name=str(live), params=got["main_cf"], config_dir=str(fuzz_dir))
    assert ret.result is True, ret.comment
    assert subprocess.run(["postfix", "-c", str(fuzz_dir), "check"]).returncode == 0
    written = postconf_n(fuzz_dir)
    expected = {k: str(v) for k, v in got["main_cf"].items()}
    expected.setdefault("compatibility_level", LEVEL)
    assert written == expected  # no parameter injected, none lost
    assert written["mydomain"] == pillar["domain"].lower().rstrip(".")
    for name, given_value in (pillar.get("main_cf") or {}).items():
        if isinstance(given_value, str):
            assert written[name] == given_value.strip()
    assert os.stat(live).st_mode & 0o777 == 0o644
