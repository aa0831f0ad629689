"""Pillar values judged as Postfix judges them (issue 12): the relay host as
the smtp client parses it, TLS levels that never send in clear, the password
table's type as the applied main.cf yields it, values YAML silently changes,
and the Salt environment the settings are read from."""

import datetime

import pytest

from helpers import load_module

settings = load_module("_modules/postfix_relay_settings.py")
GRAINS = {"fqdn": "pi.example.org", "host": "pi", "os_family": "Debian"}
HOST = {"map_types": ["hash", "lmdb", "regexp"], "config_dir": "/etc/postfix",
        "default_database_type": "hash",
        "ca_bundle": "/etc/ssl/certs/ca-certificates.crt", "has_syslog": True}
FPR = ":".join(["ab"] * 32)  # a sha256 fingerprint as Postfix prints it


def run(main_cf=None, facts=None, **relay):
    pillar = {"domain": "example.org", "recipient": "me@example.org",
              "relay": {"host": "smtp.example.net", "username": "user",
                        "password": "s3cret", **relay}}
    if main_cf is not None:
        pillar["main_cf"] = main_cf
    return settings.normalise(pillar, GRAINS, facts or HOST)


def refused(key, words, **kwargs):
    with pytest.raises(settings.PillarError) as err:
        run(**kwargs)
    message = str(err.value)
    assert message.startswith(f"pillar postfix_relay:{key}:"), message
    assert words in message, message
    assert "s3cret" not in message
    return message


# --- relay host (finding 10) -------------------------------------------------

@pytest.mark.parametrize("host, mx, relayhost", [
    ("smtp.example.net", False, "[smtp.example.net]:587"),
    ("smtp.example.net", True, "smtp.example.net:587"),
    ("SMTP.Example.NET.", False, "[smtp.example.net]:587"),
    ("[smtp.example.net]", False, "[smtp.example.net]:587"),
    ("mail_relay.example.net", False, "[mail_relay.example.net]:587"),
    ("_dmarc.example.net", True, "_dmarc.example.net:587"),
    ("123.example", False, "[123.example]:587"),
    ("192.0.2.1", False, "[192.0.2.1]:587"),
    # an address has no MX records: Postfix connects to it directly either way
    ("192.0.2.1", True, "[192.0.2.1]:587"),
    ("2001:db8::1", False, "[ipv6:2001:db8::1]:587"),
    ("2001:db8::1", True, "[ipv6:2001:db8::1]:587"),
    ("[2001:DB8:0::1]", False, "[ipv6:2001:db8::1]:587"),
    ("ipv6:2001:db8::1", False, "[ipv6:2001:db8::1]:587"),
    ("[ipv6:2001:db8::1]", True, "[ipv6:2001:db8::1]:587"),
    ("[IPv6:2001:db8::1]", False, "[ipv6:2001:db8::1]:587"),
    ("bücher.example", False, "[xn--bcher-kva.example]:587"),
    ("Bücher.Example", True, "xn--bcher-kva.example:587"),
])
def test_relay_hosts_postfix_accepts_are_written_as_postfix_reads_them(host, mx, relayhost):
    result = run(host=host, mx=mx)
    assert result["relayhost"] == relayhost
    assert result["main_cf"]["relayhost"] == relayhost
    assert list(result["password_entries"]) == [relayhost]


@pytest.mark.parametrize("host, words", [
    ("123", "all-numeric"),
    ("[123]", "all-numeric"),
    ("1.2.3", "all-numeric"),
    ("010.0.0.1", "leading zero"),
    ("fe80::1%eth0", "zone"),
    ("ipv6:fe80::1%eth0", "zone"),
    ("ipv6:192.0.2.1", "not an IPv6 address"),
    ("ipv6:smtp.example.net", "not an IPv6 address"),
    ("smtp.example.net:587", "relay:port"),
    ("-smtp.example.net", "hyphen"),
    ("smtp-.example.net", "hyphen"),
    ("smtp..example.net", "empty label"),
    ("a" * 64 + ".example.net", "63"),
    (".".join(["abcdefghi"] * 26), "255"),
    ("smtp.exa mple.net", "whitespace"),
    ("smtp.example.net/x", "not allowed in a host name"),
    ("[smtp.example.net", "not allowed in a host name"),
    ("ü-.example", "IDNA"),
])
def test_relay_hosts_postfix_refuses_are_refused_naming_the_key(host, words):
    refused("relay:host", words, host=host)


def test_a_numeric_host_is_refused_even_unquoted():
    refused("relay:host", "all-numeric", host=123)


# --- TLS levels (finding 11) -------------------------------------------------

def test_tls_level_is_case_insensitive():
    assert run(tls="ENCRYPT")["main_cf"]["smtp_tls_security_level"] == "encrypt"
    assert run(tls="Secure")["main_cf"]["smtp_tls_security_level"] == "secure"


def test_fingerprint_level_with_a_password_pins_the_certificate():
    other = ":".join(["0F"] * 32)
    cf = run(tls="fingerprint", fingerprints=[FPR, other.replace(":", "")])["main_cf"]
    assert cf["smtp_tls_security_level"] == "fingerprint"
    assert cf["smtp_tls_fingerprint_digest"] == "sha256"
    # written as Postfix prints them (lower-case pairs with colons)
    assert cf["smtp_tls_fingerprint_cert_match"] == f"{FPR}, {other.lower()}"
    assert "smtp_tls_CAfile" not in cf


def test_fingerprint_digest_follows_main_cf():
    sha1 = ":".join(["12"] * 20)
    cf = run(tls="fingerprint", fingerprints=[sha1],
             main_cf={"smtp_tls_fingerprint_digest": "sha1"})["main_cf"]
    assert cf["smtp_tls_fingerprint_digest"] == "sha1"
    assert cf["smtp_tls_fingerprint_cert_match"] == sha1


def test_dane_only_with_a_password_turns_on_dnssec_lookups():
    cf = run(tls="dane-only")["main_cf"]
    assert cf["smtp_tls_security_level"] == "dane-only"
    # without dnssec lookups Postfix defers every message at dane-only
    assert cf["smtp_dns_support_level"] == "dnssec"


@pytest.mark.parametrize("kwargs, key, words", [
    ({"tls": "fingerprint"}, "relay:fingerprints", "required with relay:tls fingerprint"),
    ({"tls": "fingerprint", "fingerprints": []}, "relay:fingerprints", "required"),
    ({"tls": "fingerprint", "fingerprints": FPR}, "relay:fingerprints", "must be a list"),
    ({"tls": "fingerprint", "fingerprints": ["ab:cd"]}, "relay:fingerprints:0",
     "32 bytes"),
    ({"tls": "fingerprint", "fingerprints": [FPR[:-1] + "g"]}, "relay:fingerprints:0",
     "hexadecimal"),
    ({"tls": "fingerprint", "fingerprints": [FPR], "main_cf":
      {"smtp_tls_fingerprint_digest": "sha1"}}, "relay:fingerprints:0", "20 bytes"),
    ({"tls": "fingerprint", "fingerprints": [FPR], "main_cf":
      {"smtp_tls_fingerprint_digest": "whirlpool"}}, "main_cf:smtp_tls_fingerprint_digest",
     "not a digest"),
    ({"tls": "encrypt", "fingerprints": [FPR]}, "relay:fingerprints",
     "only applies with relay:tls fingerprint"),
    ({"tls": "dane"}, "relay:tls", "falls back to 'may'"),
    ({"tls": "dane-only", "main_cf": {"smtp_dns_support_level": "enabled"}},
     "main_cf:smtp_dns_support_level", "dnssec"),
    ({"main_cf": {"smtp_tls_security_level": "dane"}}, "main_cf:smtp_tls_security_level",
     "in clear"),
])
def test_tls_refusals_name_the_key(kwargs, key, words):
    refused(key, words, **kwargs)


def test_may_and_none_stay_refused_with_a_password():
    refused("relay:tls", "in clear", tls="may")
    refused("relay:tls", "in clear", tls="none")


def test_dane_without_a_password_is_allowed():
    result = run(tls="dane", username=None, password=None)
    assert result["main_cf"]["smtp_tls_security_level"] == "dane"
    assert result["main_cf"]["smtp_dns_support_level"] == "dnssec"


# --- values YAML changes silently (finding 12) -------------------------------

@pytest.mark.parametrize("field", ["password", "username"])
@pytest.mark.parametrize("value", [123, 750, 1.5, True, datetime.date(2024, 1, 2)])
def test_unquoted_credentials_are_refused(field, value):
    message = refused(f"relay:{field}", "quote it", **{field: value})
    if field == "password":  # the value itself is the secret
        assert str(value) not in message


@pytest.mark.parametrize("field", ["client_id", "client_secret", "refresh_token"])
def test_unquoted_oauth2_values_are_refused(field):
    oauth2 = {"token_endpoint": "https://login.example/token", "client_id": "app",
              "client_secret": "s3cret", "refresh_token": "r3fresh", field: 1234}
    refused(f"relay:oauth2:{field}", "quote it", password=None, oauth2=oauth2)


@pytest.mark.parametrize("password", ["pass\u2028word", "pass\u2029word", "pass\x85word"])
def test_unicode_line_separators_in_a_password_are_kept(password):
    # Postfix tables split on "\n" only: these are ordinary characters there
    entries = run(password=password)["password_entries"]
    assert entries == {"[smtp.example.net]:587": f"user:{password}"}


# --- the password table's type (finding 2) -----------------------------------

def test_table_type_follows_main_cf_default_database_type():
    result = run(main_cf={"default_database_type": "lmdb"})
    assert result["map_type"] == "lmdb"
    assert result["main_cf"]["smtp_sasl_password_maps"] == "lmdb:/etc/postfix/sasl/passwd"


def test_password_map_type_wins_over_default_database_type():
    pillar = {"domain": "example.org", "recipient": "me@example.org",
              "password_map": {"type": "hash"}, "main_cf": {"default_database_type": "lmdb"},
              "relay": {"host": "smtp.example.net", "username": "u", "password": "p"}}
    result = settings.normalise(pillar, GRAINS, HOST)
    assert result["map_type"] == "hash"
    assert result["main_cf"]["smtp_sasl_password_maps"] == "hash:/etc/postfix/sasl/passwd"


def test_without_either_the_table_gets_postfix_own_default():
    result = run()
    assert result["map_type"] == "hash"  # postconf -d, not the live main.cf
    assert result["main_cf"]["smtp_sasl_password_maps"] == \
        "${default_database_type}:/etc/postfix/sasl/passwd"
    unknown = {**HOST, "default_database_type": None, "map_types": []}
    assert run(facts=unknown)["map_type"] is None  # Postfix not installed yet


def test_default_database_type_with_macros_is_expanded_by_the_host():
    seen = []

    def expand(params, name):
        seen.append((params["default_database_type"], name))
        return "lmdb"
    result = run(main_cf={"default_database_type": "${{$compatibility_level} <level "
                          "{3.11} ? {lmdb} : {cdb}}"}, facts={**HOST, "expand": expand})
    assert result["map_type"] == "lmdb"
    assert seen and seen[0][1] == "default_database_type"


@pytest.mark.parametrize("main_cf, host, words", [
    ({"default_database_type": "cdb"}, HOST, "not supported by this Postfix"),
    ({"default_database_type": "LMDB"}, HOST, "not supported by this Postfix"),
    ({"default_database_type": "$my_type"}, HOST, "Postfix"),
])
def test_unusable_default_database_type_is_refused(main_cf, host, words):
    refused("main_cf:default_database_type", words, main_cf=main_cf, facts=host)


# --- saltenv (finding 6) -----------------------------------------------------

class FakeSalt:
    """The Salt globals lookup() reads, recording the saltenv it asks for."""

    def __init__(self, module, opts_env=None, state_env=None):
        self.asked = []
        module.__context__ = {}
        module.__opts__ = {"saltenv": opts_env}
        module.__grains__ = GRAINS
        module.__pillar__ = {"postfix_relay": {
            "domain": "example.org", "recipient": "me@example.org",
            "relay": {"host": "smtp.example.net", "username": "u", "password": "p"}}}
        module.__salt__ = {"cp.get_file_str": self.get_file_str,
                           "postfix_facts.facts": self.facts,
                           "postfix_master.smtp_chroot_dir": lambda *a: ""}
        if state_env is None:
            module.__dict__.pop("__env__", None)
        else:
            module.__env__ = state_env

    def get_file_str(self, path, saltenv="base"):
        self.asked.append(saltenv)
        if path.endswith("defaults.yaml"):
            return f"lookup:\n  config_dir: /etc/postfix\n  marker: {saltenv}\n"
        return ""

    @staticmethod
    def facts(config_dir):
        return {"map_types": ["hash"], "default_database_type": "hash"}


@pytest.mark.parametrize("opts_env, state_env, given, used", [
    (None, None, None, "base"),
    ("dev", None, None, "dev"),
    (None, "prod", None, "prod"),
    ("dev", "prod", None, "prod"),
    ("dev", "prod", "qa", "qa"),
])
def test_lookup_reads_the_runs_environment(opts_env, state_env, given, used):
    fake = FakeSalt(settings, opts_env, state_env)
    assert settings.lookup(saltenv=given)["marker"] == used
    assert set(fake.asked) == {used}


def test_lookup_is_cached_per_environment():
    fake = FakeSalt(settings)
    assert settings.lookup("dev")["marker"] == "dev"
    assert settings.lookup("prod")["marker"] == "prod"
    settings.lookup("dev")
    assert fake.asked.count("dev") == 2 and fake.asked.count("prod") == 2  # 2 files each


def test_state_functions_read_the_states_environment():
    fake = FakeSalt(settings, opts_env=None, state_env="prod")
    assert settings.password_entries() == {"[smtp.example.net]:587": "u:p"}
    assert set(fake.asked) == {"prod"}
    fake = FakeSalt(settings)
    settings.password_entries(saltenv="qa")
    assert set(fake.asked) == {"qa"}


def test_main_cf_parameter_names_with_capitals_are_postfix_names():
    # smtp_tls_CAfile, smtp_tls_CApath: Postfix's names are not all lower case
    cf = run(main_cf={"smtp_tls_CAfile": "/etc/ssl/relay-ca.pem"})["main_cf"]
    assert cf["smtp_tls_CAfile"] == "/etc/ssl/relay-ca.pem"


def test_a_build_default_with_macros_is_expanded_or_left_to_postfix():
    macro = "${{$compatibility_level} <level {3.11} ? {hash} : {cdb}}"
    facts = {**HOST, "default_database_type": macro}
    assert run(facts=facts)["map_type"] is None  # main.cf: ${default_database_type}
    assert run(facts={**facts, "expand": lambda params, name: "hash"})["map_type"] == "hash"


# -- found by a hostile review ---------------------------------------------------

@pytest.mark.parametrize("table_type", ["regexp", "pcre", "static", "proxy", "cidr"])
def test_password_table_types_that_cannot_hold_key_value_lines_are_refused(table_type):
    host = dict(HOST, map_types=HOST["map_types"] + [table_type])
    pillar = {"domain": "example.org", "recipient": "me@example.org",
              "relay": {"host": "smtp.example.net", "username": "user", "password": "s3cret"},
              "password_map": {"type": table_type}}
    with pytest.raises(settings.PillarError, match=r"password_map:type: .*cannot hold"):
        settings.normalise(pillar, GRAINS, host)
    refused("main_cf:default_database_type", "cannot hold",
            main_cf={"default_database_type": table_type}, facts=host)


def test_main_cf_levels_are_read_in_any_case_as_postfix_does():
    assert run(main_cf={"smtp_tls_security_level": "ENCRYPT"})["main_cf"][
        "smtp_tls_security_level"] == "ENCRYPT"
    assert run(main_cf={"smtp_dns_support_level": "DNSSEC"}, tls="dane-only")["main_cf"][
        "smtp_dns_support_level"] == "DNSSEC"


@pytest.mark.parametrize("host, words", [
    ("256.1.1.1", "each part is 0 to 255"),
    ("1.2.3.999", "each part is 0 to 255"),
    ("010.1.1.1", "leading zero"),
    ("[2001:db8::1]:587", "give the port in relay:port"),
    ("[::1]:25", "give the port in relay:port"),
])
def test_relay_host_refusals_say_what_is_wrong(host, words):
    refused("relay:host", words, host=host)


def test_mx_with_a_bracketed_host_is_refused():
    refused("relay:mx", "brackets", host="[smtp.example.net]", mx=True)


def test_the_formulas_sender_table_is_its_own_not_an_admins_sender_canonical():
    tables = settings.table_paths("/etc/postfix")
    assert tables["sender"] == "/etc/postfix/postfix_relay_sender"
    assert "/etc/postfix/sender_canonical" not in tables.values()
