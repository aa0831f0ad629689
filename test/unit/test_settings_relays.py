"""Several relays (issue 14): the Relay values, the main.cf and tables they
give, and the combinations one Postfix smtp transport cannot serve, refused
naming the pillar key (pure functions)."""

import copy

import pytest

from helpers import load_module

settings = load_module("_modules/postfix_relay_settings.py")
GRAINS = {"fqdn": "pi.example.org", "host": "pi"}
HOST = {"map_types": ["hash", "lmdb", "regexp"], "config_dir": "/etc/postfix",
        "ca_bundle": "/etc/ssl/certs/ca-certificates.crt", "has_syslog": True,
        "mail_version": "3.7.11"}
PRIMARY = {"host": "smtp.example.net", "username": "a", "password": "pa"}
BACKUP = {"host": "backup.example.com", "username": "b", "password": "pb"}
THIRD = {"host": "smtp.example.org", "port": 2525, "username": "c", "password": "pc",
         "tls": "verify"}
SHOP = {"host": "smtp.sendgrid.net", "username": "apikey", "password": "ks"}
BILLING = {"host": "email-smtp.eu-west-1.amazonaws.com", "port": 2587, "username": "ses",
           "password": "kb"}
OAUTH2 = {"token_endpoint": "https://login.example.com/t/oauth2/v2.0/token",
          "client_id": "app", "client_secret": "cs3cret", "refresh_token": "rt0ken"}


def pillar(**over):
    base = {"domain": "example.org", "recipient": "me@example.org", "relay": PRIMARY,
            "fallback_relays": [BACKUP, THIRD]}
    base.update(copy.deepcopy(over))
    return {k: v for k, v in base.items() if v is not None}


def run(host=HOST, **over):
    return settings.normalise(pillar(**over), GRAINS, host)


def refused(**over):
    with pytest.raises(settings.PillarError) as err:
        run(**over)
    return str(err.value)


def table(result, role):
    return next(t for t in result["tables"] if t["id"] == role)


def test_fallbacks_are_a_relayhost_list_with_one_account_each():
    result = run()
    cf = result["main_cf"]
    assert cf["relayhost"] == \
        "[smtp.example.net]:587, [backup.example.com]:587, [smtp.example.org]:2525"
    assert "smtp_fallback_relay" not in cf
    assert result["password_entries"] == {"[smtp.example.net]:587": "a:pa",
                                          "[backup.example.com]:587": "b:pb",
                                          "[smtp.example.org]:2525": "c:pc"}
    assert [r["key"] for r in result["relays"]] == \
        ["relay", "fallback_relays:0", "fallback_relays:1"]
    # each relay keeps its own TLS level through the policy table
    policy = table(result, "tls_policy")
    assert policy["present"] and cf["smtp_tls_policy_maps"] == policy["spec"]
    assert policy["entries"]["[smtp.example.org]:2525"] == "verify"
    assert policy["entries"]["[backup.example.com]:587"] == "encrypt"
    assert cf["smtp_tls_CAfile"] == HOST["ca_bundle"]


def test_postfix_before_3_5_gets_smtp_fallback_relay():
    cf = run(host={**HOST, "mail_version": "3.4.23"})["main_cf"]
    assert cf["relayhost"] == "[smtp.example.net]:587"
    assert cf["smtp_fallback_relay"] == "[backup.example.com]:587, [smtp.example.org]:2525"


def test_one_relay_writes_main_cf_as_before():
    result = run(fallback_relays=None)
    cf = result["main_cf"]
    assert cf["relayhost"] == "[smtp.example.net]:587"
    for name in ("smtp_tls_policy_maps", "sender_dependent_relayhost_maps",
                 "smtp_sender_dependent_authentication", "maximal_queue_lifetime"):
        assert name not in cf
    assert not table(result, "tls_policy")["present"]
    assert not table(result, "sender_relays")["present"]
    assert cf["masquerade_domains"] == "example.org" and cf["myorigin"] == "example.org"


def test_sender_relays_route_and_authenticate_by_sender():
    result = run(fallback_relays=None, sender_mode="local",
                 sender_relays={"@Shop.Example.org": SHOP, "Billing@example.org": BILLING})
    cf = result["main_cf"]
    assert cf["smtp_sender_dependent_authentication"] == "yes"
    senders = table(result, "sender_relays")
    assert cf["sender_dependent_relayhost_maps"] == senders["spec"]
    assert senders["entries"] == {"@shop.example.org": "[smtp.sendgrid.net]:587",
                                  "billing@example.org":
                                  "[email-smtp.eu-west-1.amazonaws.com]:2587"}
    assert result["password_entries"]["@shop.example.org"] == "apikey:ks"
    assert result["password_entries"]["billing@example.org"] == "ses:kb"
    # local senders only: myorigin tells them apart, nothing masqueraded
    assert cf["myorigin"] == "pi.example.org" and cf["masquerade_domains"] == ""
    assert cf["relayhost"] == "[smtp.example.net]:587"


def test_queue_lifetime_sets_both_lifetimes():
    for given, written in ((5, "5d"), ("12h", "12h"), ("0", "0d"), ("2W", "2w")):
        cf = run(queue_lifetime=given)["main_cf"]
        assert cf["maximal_queue_lifetime"] == cf["bounce_queue_lifetime"] == written


@pytest.mark.parametrize(("over", "key", "words"), [
    ({"sender_relays": {"@shop.example.org": SHOP}}, "sender_relays", "sender_mode: local"),
    ({"fallback_relays": [PRIMARY]}, "fallback_relays:0:host", "already relay"),
    ({"fallback_relays": [BACKUP, {**BACKUP, "username": "x"}]}, "fallback_relays:1:host",
     "already fallback_relays:0"),
    ({"fallback_relays": [{**BACKUP, "port": 465}]}, "fallback_relays:0:port",
     "cannot be mixed"),
    ({"fallback_relays": [BACKUP, {**THIRD, "port": "smtp"}]}, "fallback_relays:1:port",
     "not a port number"),
    ({"relay": {**PRIMARY, "mechanisms": ["login"]},
      "fallback_relays": [{**BACKUP, "mechanisms": ["plain"]}]},
     "fallback_relays:0:mechanisms", "once for all relays"),
    ({"fallback_relays": [{"host": "smtp.office365.com", "username": "u",
                           "oauth2": OAUTH2}]}, "fallback_relays:0:oauth2",
     "oauth2 relays and password relays"),
    ({"fallback_relays": [THIRD, {**BACKUP, "tls": "secure", "ca_file": "/etc/hostname"}]},
     "fallback_relays:1:ca_file", "one CA file"),
    ({"fallback_relays": [{**BACKUP, "password": None}]}, "fallback_relays:0:password",
     "is required"),
    ({"fallback_relays": {"host": "x.example.com"}}, "fallback_relays", "must be a list"),
    ({"fallback_relays": ["backup.example.com"]}, "fallback_relays:0", "must be a mapping"),
    ({"fallback_relays": [{**BACKUP, "tls": "may"}]}, "fallback_relays:0:tls", "in clear"),
    ({"fallback_relays": [{**BACKUP, "hots": "x"}]}, "fallback_relays:0:hots",
     "not a known key"),
    ({"sender_mode": "local", "sender_relays": {"shop.example.org": SHOP}},
     "sender_relays:shop.example.org", "neither an address"),
    ({"sender_mode": "local", "sender_relays": {"@shop.example.org": {**SHOP,
                                                                      "password": None}}},
     "sender_relays:@shop.example.org:password", "is required"),
    ({"sender_mode": "local", "sender_relays": {"a@x.example": SHOP, "A@X.example": SHOP}},
     "sender_relays:A@X.example", "same sender"),
    ({"sender_mode": "some"}, "sender_mode", "not one of"),
    ({"queue_lifetime": "5 days"}, "queue_lifetime", "not a time"),
    ({"queue_lifetime": True}, "queue_lifetime", "must be a time"),
])
def test_bad_relays_are_refused_naming_the_key(over, key, words):
    message = refused(**over)
    assert message.startswith(f"pillar postfix_relay:{key}: "), message
    assert words in message


def test_a_mechanism_filter_given_once_holds_for_every_relay():
    result = run(fallback_relays=[{**BACKUP, "mechanisms": "PLAIN"}])
    assert result["main_cf"]["smtp_sasl_mechanism_filter"] == "plain"
    assert [r["mechanisms"] for r in result["relays"]] == [["plain"]] * 2


def test_465_throughout_is_one_transport_in_wrappermode():
    result = run(relay={**PRIMARY, "port": 465},
                 fallback_relays=[{**BACKUP, "port": 465}])
    assert result["main_cf"]["smtp_tls_wrappermode"] == "yes"
    assert result["main_cf"]["relayhost"] == \
        "[smtp.example.net]:465, [backup.example.com]:465"


def test_one_next_hop_with_two_tls_policies_is_refused():
    message = refused(fallback_relays=None, sender_mode="local",
                      sender_relays={"@shop.example.org": {**PRIMARY, "tls": "verify"}})
    assert message.startswith("pillar postfix_relay:sender_relays:@shop.example.org:tls: ")


def test_each_oauth2_relay_has_its_own_token_file_and_ca():
    one = {"host": "smtp.office365.com", "username": "u@example.org", "oauth2": OAUTH2}
    two = {"host": "smtp.gmail.com", "username": "v@example.org", "oauth2": OAUTH2}
    result = run(relay=one, fallback_relays=[two],
                 host={**HOST, "smtp_chroot_dir": "/var/spool/postfix"})
    tokens = result["oauth2_relays"]
    assert [t["token"] for t in tokens] == [
        "/var/spool/postfix/etc/sasl-xoauth2/smtp.office365.com-587.json",
        "/var/spool/postfix/etc/sasl-xoauth2/smtp.gmail.com-587.json"]
    assert tokens[0]["ca"] == "/var/spool/postfix/etc/sasl-xoauth2/ca.pem"  # as before
    assert tokens[1]["ca"] == "/var/spool/postfix/etc/sasl-xoauth2/smtp.gmail.com-587.ca.pem"
    assert result["password_entries"]["[smtp.gmail.com]:587"] == \
        "v@example.org:/etc/sasl-xoauth2/smtp.gmail.com-587.json"


def test_redact_masks_every_relays_secrets():
    one = {"host": "smtp.office365.com", "username": "u@example.org", "oauth2": OAUTH2}
    shown = [settings.redact(run(sender_mode="local", sender_relays={"@shop.example.org": SHOP})),
             settings.redact(run(relay=one, fallback_relays=[{**one, "host": "smtp.gmail.com"}]))]
    text = repr(shown)
    for secret in ("pa", "pb", "pc", "ks", "cs3cret", "rt0ken"):
        assert f"'{secret}'" not in text and f":{secret}'" not in text, secret
    assert "'********'" in text


def test_beacon_settings_take_defaults_and_durations():
    assert run()["beacon"] is None
    assert run(beacon={})["beacon"] == {"interval": 60, "deferred_max": 10, "age_max": 3600,
                                         "metrics_textfile": None}
    got = run(beacon={"interval": "30", "deferred_max": 0, "age_max": "2h"},
              metrics_textfile="/var/lib/node_exporter/postfix_relay.prom")["beacon"]
    assert got == {"interval": 30, "deferred_max": 0, "age_max": 7200,
                   "metrics_textfile": "/var/lib/node_exporter/postfix_relay.prom"}


@pytest.mark.parametrize(("over", "key"), [
    ({"beacon": {"interval": 5}}, "beacon:interval"),
    ({"beacon": {"age_max": "1 hour"}}, "beacon:age_max"),
    ({"beacon": {"deferred_max": -1}}, "beacon:deferred_max"),
    ({"beacon": {"intervall": 60}}, "beacon:intervall"),
    ({"beacon": [60]}, "beacon"),
    ({"beacon": {}, "metrics_textfile": "/var/lib/x.txt"}, "metrics_textfile"),
    ({"metrics_textfile": "/var/lib/x.prom"}, "metrics_textfile"),
    ({"relay": {"host": "smtp.office365.com", "username": "u",
                "oauth2": {**OAUTH2, "keepalive_days": "often"}}, "fallback_relays": None},
     "relay:oauth2:keepalive_days"),
])
def test_bad_beacon_settings_are_refused_naming_the_key(over, key):
    assert refused(**over).startswith(f"pillar postfix_relay:{key}: ")


def test_oauth2_keepalive_defaults_to_14_days_and_can_be_off():
    one = {"host": "smtp.office365.com", "username": "u", "oauth2": OAUTH2}
    assert run(relay=one, fallback_relays=None)["relays"][0]["oauth2"]["keepalive_days"] == 14
    off = {**one, "oauth2": {**OAUTH2, "keepalive_days": False}}
    assert run(relay=off, fallback_relays=None)["relays"][0]["oauth2"]["keepalive_days"] == 0


# -- found by the hostile read (each failed before its fix)

def test_main_cf_may_not_undo_what_several_relays_are_made_of():
    for name in ("smtp_tls_policy_maps", "sender_dependent_relayhost_maps",
                 "smtp_sasl_password_maps", "relayhost"):
        message = refused(main_cf={name: "texthash:/etc/postfix/admin_table"})
        assert message.startswith(f"pillar postfix_relay:main_cf:{name}: "), message
    # one relay: main_cf overrides as before
    cf = run(fallback_relays=None, main_cf={"smtp_tls_policy_maps": "texthash:/x"})["main_cf"]
    assert cf["smtp_tls_policy_maps"] == "texthash:/x"


def test_a_pinned_fallback_gets_the_digest_it_was_checked_for():
    """Postfix before 3.6 (compatibility_level < 3.6) defaults to md5."""
    pin = "AB" * 32
    cf = run(fallback_relays=[{**BACKUP, "tls": "fingerprint", "fingerprints": [pin]}])["main_cf"]
    assert cf["smtp_tls_fingerprint_digest"] == "sha256"
    assert "smtp_tls_fingerprint_cert_match" not in cf  # the fallback's is in the policy


def test_the_ca_file_is_the_verifying_relays():
    cf = run(relay={**PRIMARY, "ca_file": "/etc/hostname"},
             fallback_relays=[{**THIRD, "ca_file": "/etc/ssl/certs/ca-certificates.crt"}]
             )["main_cf"]
    assert cf["smtp_tls_CAfile"] == "/etc/ssl/certs/ca-certificates.crt"


def test_sender_relays_with_fallbacks_refused_before_postfix_3_5():
    message = refused(host={**HOST, "mail_version": "3.4.14"}, sender_mode="local",
                      sender_relays={"@shop.example.org": SHOP})
    assert message.startswith("pillar postfix_relay:sender_relays: "), message
    assert "smtp_fallback_relay" in message
    run(host={**HOST, "mail_version": "3.4.14"}, fallback_relays=None, sender_mode="local",
        sender_relays={"@shop.example.org": SHOP})  # no fallbacks: fine


@pytest.mark.parametrize("pattern", ["@example.org", "pi@example.org", "PI@Example.org"])
def test_a_sender_relay_may_not_catch_the_hosts_own_mail(pattern):
    message = refused(sender_mode="local", sender_relays={pattern: SHOP})
    assert message.startswith(f"pillar postfix_relay:sender_relays:{pattern}: matches "), \
        message


def test_a_sender_relay_without_account_on_a_relay_with_one_is_refused():
    message = refused(sender_mode="local", sender_relays={
        "@shop.example.org": {"host": "smtp.example.net", "tls": "encrypt"}})
    assert message.startswith("pillar postfix_relay:sender_relays:@shop.example.org:username:")


def test_same_relay_with_other_fingerprints_names_fingerprints():
    pin = {"tls": "fingerprint", "fingerprints": ["AB" * 32]}
    message = refused(relay={**PRIMARY, **pin}, fallback_relays=None, sender_mode="local",
                      sender_relays={"@shop.example.org": {**PRIMARY, **pin,
                                                           "fingerprints": ["CD" * 32]}})
    assert message.startswith(
        "pillar postfix_relay:sender_relays:@shop.example.org:fingerprints: "), message


def test_clean_removes_every_table_under_configs_state_ids():
    ids = {t["state_id"]: t["path"] for t in settings.clean_tables("/etc/postfix")}
    assert ids["password-table"] == "/etc/postfix/sasl/passwd"
    assert set(ids) == set(settings.STATE_IDS.values())


def test_no_oauth2_relay_left_removes_the_plugins_files():
    result = run(host={**HOST, "smtp_chroot_dir": "/var/spool/postfix"})
    assert "/var/spool/postfix/etc/sasl-xoauth2" in result["xoauth2_leftovers"]
    one = {"host": "smtp.office365.com", "username": "u", "oauth2": OAUTH2}
    assert run(relay=one, fallback_relays=None)["xoauth2_leftovers"] == []


def test_a_sender_relay_without_account_under_a_domain_pattern_with_one_is_refused():
    """Postfix looks the sender up as billing@..., then @shop...: the domain's
    account would go to billing's relay (found by the hostile read)."""
    message = refused(fallback_relays=None, sender_mode="local", sender_relays={
        "@shop.example.org": SHOP,
        "billing@shop.example.org": {"host": "billing.example.net", "tls": "encrypt"}})
    assert message.startswith(
        "pillar postfix_relay:sender_relays:billing@shop.example.org:username: is missing"), \
        message
    assert "sender_relays:@shop.example.org's account" in message
    run(fallback_relays=None, sender_mode="local", sender_relays={  # its own account: fine
        "@shop.example.org": SHOP, "billing@shop.example.org": {**BILLING}})
