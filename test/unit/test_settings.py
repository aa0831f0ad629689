"""Pillar validation and the main.cf values derived from it (pure functions)."""

import pytest

from helpers import load_module

settings = load_module("_modules/postfix_relay_settings.py")
GRAINS = {"fqdn": "pi.example.org", "host": "pi", "os_family": "Debian"}
HOST = {"map_types": ["hash", "lmdb", "regexp"], "config_dir": "/etc/postfix",
        "ca_bundle": "/etc/ssl/certs/ca-certificates.crt", "has_syslog": True}


def pillar(**over):
    base = {
        "domain": "example.org",
        "recipient": "me@example.org",
        "reply_to": "me@example.org",
        "relay": {"host": "smtp.example.net", "port": 587,
                  "username": "user", "password": "s3cret pass"},
    }
    for key, value in over.items():
        if key.startswith("relay_"):
            base["relay"][key[6:]] = value
        else:
            base[key] = value
    return base


def table(result, role):
    """The settings' table with id role (the SLS files loop over the list)."""
    return next(t for t in result["tables"] if t["id"] == role)


def run(**over):
    return settings.normalise(pillar(**over), GRAINS, HOST)


OAUTH2 = {"token_endpoint": "https://login.microsoftonline.com/t/oauth2/v2.0/token",
          "client_id": "app-id", "client_secret": "app-s3cret", "refresh_token": "r3fresh"}


def test_oauth2_relay_uses_xoauth2_and_the_token_file():
    result = run(relay_host="smtp.office365.com", relay_password=None, relay_oauth2=OAUTH2)
    assert result["main_cf"]["smtp_sasl_mechanism_filter"] == "xoauth2"
    path = "/etc/sasl-xoauth2/smtp.office365.com-587.json"
    assert result["password_entries"] == {"[smtp.office365.com]:587": f"user:{path}"}
    assert result["oauth2_token_path"] == path
    # the plugin's config carries no secret: those are in the 0600 token file
    assert "s3cret" not in result["xoauth2_conf"] and "r3fresh" not in result["xoauth2_conf"]
    shown = settings.redact(result)
    assert "app-s3cret" not in str(shown) and "r3fresh" not in str(shown)


def test_original_setup_is_expressed_with_modern_values():
    result = run()
    cf = result["main_cf"]
    assert cf["inet_interfaces"] == "loopback-only"
    assert cf["mydestination"] == ""
    assert cf["myhostname"] == "pi.example.org"
    assert cf["myorigin"] == "example.org"
    assert cf["masquerade_domains"] == "example.org"
    assert cf["relayhost"] == "[smtp.example.net]:587"
    assert cf["recipient_canonical_maps"] == "static:me@example.org"
    assert cf["sender_canonical_maps"] == "regexp:/etc/postfix/postfix_relay_sender"
    assert table(result, "sender")["contents"].endswith(" pi@example.org\n")
    assert cf["smtp_tls_security_level"] == "encrypt"
    assert cf["smtp_sasl_password_maps"] == "${default_database_type}:/etc/postfix/sasl/passwd"
    assert cf["smtp_sasl_tls_security_options"] == "noanonymous"
    assert "smtp_use_tls" not in cf
    assert "smtp_sender_dependent_authentication" not in cf
    assert result["password_entries"] == {"[smtp.example.net]:587": "user:s3cret pass"}
    assert table(result, "reply_to")["contents"].count("PREPEND Reply-To: me@example.org") == 1


def test_port_465_turns_on_wrappermode():
    cf = run(relay_port=465)["main_cf"]
    assert cf["smtp_tls_wrappermode"] == "yes"
    assert cf["relayhost"] == "[smtp.example.net]:465"


def test_hostname_defaults_to_fqdn_or_host_in_domain():
    assert run()["hostname"] == "pi.example.org"
    short = settings.normalise(pillar(), {"fqdn": "vm", "host": "vm"}, HOST)
    assert short["hostname"] == "vm.example.org"
    assert short["sender"] == "vm@example.org"
    assert run(sender="alerts")["sender"] == "alerts@example.org"


def test_local_mode_rewrites_only_host_local_recipients():
    result = run(recipient_mode="local")
    assert result["main_cf"]["recipient_canonical_maps"] == \
        "regexp:/etc/postfix/recipient_canonical"
    assert result["main_cf"]["myorigin"] == "pi.example.org"
    assert "pi\\.example\\.org" in table(result, "recipients")["contents"]


def test_no_password_no_sasl_and_opportunistic_tls():
    result = run(relay_username=None, relay_password=None)
    assert not result["sasl"]
    assert "smtp_sasl_auth_enable" not in result["main_cf"]
    assert result["main_cf"]["smtp_tls_security_level"] == "may"


def test_verify_uses_the_os_ca_bundle():
    cf = run(relay_tls="secure")["main_cf"]
    assert cf["smtp_tls_CAfile"] == "/etc/ssl/certs/ca-certificates.crt"


def test_extra_main_cf_params_are_printed_and_override():
    cf = run(main_cf={"smtputf8_enable": False, "mynetworks": ["127.0.0.0/8"],
                      "message_size_limit": 1024})["main_cf"]
    assert cf["smtputf8_enable"] == "no"
    assert cf["mynetworks"] == "127.0.0.0/8"
    assert cf["message_size_limit"] == "1024"


def test_explicit_map_type_is_checked_against_postconf_m():
    assert run(password_map={"type": "lmdb"})["main_cf"]["smtp_sasl_password_maps"] == \
        "lmdb:/etc/postfix/sasl/passwd"
    with pytest.raises(settings.PillarError, match=r"postfix_relay:password_map:type: 'cdb'"):
        run(password_map={"type": "cdb"})


@pytest.mark.parametrize("over, key, words", [
    ({"domain": None}, "domain", "is required"),
    ({"recipient": None}, "recipient", "is required"),
    ({"recipient": "me"}, "recipient", "not an e-mail address"),
    ({"recipient": "me@exa mple.org"}, "recipient", "whitespace"),
    ({"recipient": "me@example.org\nrelayhost = evil"}, "recipient", "newline"),
    ({"reply_to": "a$b@example.org"}, "reply_to", "local part"),
    ({"domain": "exa_mple.org"}, "domain", "not a valid host or domain name"),
    ({"hostname": "pi.example.org\n"}, "hostname", "newline"),
    ({"relay_port": 70000}, "relay:port", "out of range"),
    ({"relay_port": "abc"}, "relay:port", "not a port number"),
    ({"relay_host": None}, "relay:host", "is required"),
    ({"relay_host": "smtp.example.net\nfoo"}, "relay:host", "newline"),
    ({"relay_tls": "none"}, "relay:tls", "in clear"),
    ({"relay_tls": "may"}, "relay:tls", "in clear"),
    ({"relay_tls": "bogus"}, "relay:tls", "not one of"),
    ({"relay_password": None}, "relay:password", "is required"),
    ({"relay_password": "pa\nss"}, "relay:password", "newline"),
    ({"relay_username": "us:er"}, "relay:username", "must not contain ':'"),
    ({"relay_ca_file": "/nonexistent/ca.pem"}, "relay:ca_file", "does not exist"),
    ({"relay_mechanisms": ["plain", "lo gin"]}, "relay:mechanisms:1", "whitespace"),
    ({"recipient_mode": "some"}, "recipient_mode", "not one of"),
    ({"listen": "all"}, "listen", "not one of"),
    ({"main_cf": {"relayhost=x": "y"}}, "main_cf:relayhost=x", "not a main.cf parameter"),
    ({"main_cf": {"smtpd_banner": "a\nb = c"}}, "main_cf:smtpd_banner", "newline"),
    ({"main_cf": {"debug_peer_list": "smtp.example.net"}}, "main_cf:debug_peer_list",
     "in clear"),
    ({"main_cf": {"smtp_tls_security_level": "may"}}, "main_cf:smtp_tls_security_level",
     "in clear"),
    ({"relay_oauth2": OAUTH2}, "relay:password", "either relay:password or relay:oauth2"),
    ({"relay_password": None, "relay_username": None, "relay_oauth2": OAUTH2},
     "relay:username", "required with relay:oauth2"),
    ({"relay_password": None, "relay_oauth2": {**OAUTH2, "refresh_token": None}},
     "relay:oauth2:refresh_token", "is required"),
    ({"relay_password": None, "relay_oauth2": {**OAUTH2, "token_endpoint": "http://x/t"}},
     "relay:oauth2:token_endpoint", "not an https:// URL"),
    ({"relay_password": None, "relay_oauth2": {**OAUTH2, "scope": "x"}},
     "relay:oauth2:scope", "not a known key"),
    ({"relay_password": None, "relay_oauth2": "r3fresh"}, "relay:oauth2", "must be a mapping"),
    ({"relay_password": None, "relay_oauth2": OAUTH2, "relay_mechanisms": ["plain"]},
     "relay:mechanisms", "must be empty or [xoauth2]"),
    ({"colour": "blue"}, "colour", "not a known key"),
    ({"relay_prot": 25}, "relay:prot", "not a known key"),
])
def test_bad_pillar_names_the_key(over, key, words):
    with pytest.raises(settings.PillarError) as err:
        run(**over)
    message = str(err.value)
    assert message.startswith(f"pillar postfix_relay:{key}:"), message
    assert words in message
    assert "s3cret" not in message and "r3fresh" not in message


def test_missing_pillar_is_explained():
    with pytest.raises(settings.PillarError, match="set at least domain"):
        settings.normalise(None, GRAINS, HOST)
