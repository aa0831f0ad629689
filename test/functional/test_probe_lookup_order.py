"""
probe looks tables up in Postfix's own order (issue 14 review, findings 3-5),
against tables built and queried by the real postmap in a private config dir:

- smtp_tls_policy_maps (Postfix's smtp_tls_policy.c, tls_policy_lookup: "Only
  one lookup with [nexthop]:port, [nexthop] or nexthop:port"; a bare domain
  is retried with its parents ".example.com" while nothing is found);
- smtp_sasl_password_maps with several tables: every table for one key before
  the next key (maps_find), keys in the order smtp_sasl_passwd_lookup tries
  them: the sender address, without its extension, @domain, host, next hop;
- recipient_delimiter in the sender lookups of sender_dependent_relayhost_maps.
"""

import subprocess

import pytest

POLICY = """\
relay.test            may
.example.com          encrypt
[smtp.example.net]    secure
smtp.example.net:587  verify
"""


def table(table_dir, config_dir, name, text):
    path = table_dir / name
    path.write_text(text)
    subprocess.run(["postmap", "-c", config_dir, f"hash:{path}"], check=True)
    return f"hash:{path}"


@pytest.mark.parametrize("nexthop, mx, level, key", [
    # with a port Postfix looks up only "relay.test:587": the domain's own
    # entry ("relay.test may") does not apply, the global level does
    ("relay.test:587", True, None, None),
    ("relay.test", True, "may", "relay.test"),
    # a bare domain walks up its parents
    ("mail.eu.example.com", True, "encrypt", ".example.com"),
    ("example.com", True, None, None),
    # brackets: the next hop as written, no parent
    ("[mail.example.com]:587", False, None, None),
    ("[smtp.example.net]", False, "secure", "[smtp.example.net]"),
    ("smtp.example.net:587", True, "verify", "smtp.example.net:587"),
])
def test_tls_policy_is_looked_up_with_postfix_keys(loaders, table_dir, config_dir,
                                                   nexthop, mx, level, key):
    maps = table(table_dir, config_dir, "tls_policy", POLICY)
    found = loaders.modules.postfix_probe.tls_policy(nexthop, mx, maps, config_dir)
    assert (found and (found["level"], found["key"])) == ((level, key) if level else None)


def test_each_key_is_asked_of_every_password_table_first(loaders, table_dir, config_dir):
    """The host name is tried before the next hop in every table: the second
    table's host entry wins over the first table's next-hop entry."""
    first = table(table_dir, config_dir, "passwd1", "[smtp.example.net]:587 hop:pw-hop\n")
    second = table(table_dir, config_dir, "passwd2", "smtp.example.net host:pw-host\n")
    conf = {"smtp_sasl_password_maps": f"{first}, {second}"}
    relay = {"key": "relay", "role": "primary", "sender": None, "host": "smtp.example.net",
             "nexthop": "[smtp.example.net]:587"}
    found = loaders.modules.postfix_probe_auth.lookup(relay, conf, config_dir)
    assert (found["key"], found["username"]) == ("smtp.example.net", "host")
    assert found["keys_tried"] == ["smtp.example.net"]
    assert "pw-" not in repr(found)


@pytest.mark.parametrize("address, delimiter, keys", [
    ("billing+june@example.org", "+", ["billing+june@example.org", "billing@example.org",
                                       "@example.org"]),
    # several delimiter characters: cut at the first of any of them
    ("billing-x+june@example.org", "+-", ["billing-x+june@example.org", "billing@example.org",
                                          "@example.org"]),
    ("billing+june@example.org", "", ["billing+june@example.org", "@example.org"]),
    ("Billing@Example.ORG", "+", ["billing@example.org", "@example.org"]),
    ("@example.org", "+", ["@example.org"]),
])
def test_address_keys_follow_mail_addr_find(loaders, address, delimiter, keys):
    assert loaders.modules.postfix_probe_auth.address_keys(address, delimiter) == keys


def test_sender_relay_password_found_without_the_extension(loaders, table_dir, config_dir):
    """smtp_sender_dependent_authentication: billing+june@ uses billing@'s
    entry before the host's and the next hop's."""
    passwd = table(table_dir, config_dir, "passwd",
                   "billing@example.org bill:pw-bill\n[smtp.example.net]:587 main:pw-main\n")
    relay = {"key": "x", "role": "sender", "sender": "billing+june@example.org",
             "host": "smtp.example.net", "nexthop": "[smtp.example.net]:587"}
    conf = {"smtp_sasl_password_maps": passwd, "recipient_delimiter": "+"}
    found = loaders.modules.postfix_probe_auth.lookup(relay, conf, config_dir)
    assert found["keys_tried"] == ["billing+june@example.org", "billing@example.org"]
    assert found["username"] == "bill"


RELAYS = [
    {"key": "relay", "role": "primary", "sender": None},
    {"key": "sender_relays:billing@example.org", "role": "sender",
     "sender": "billing@example.org"},
]


@pytest.mark.parametrize("sender, delimiter, keys", [
    ("billing+june@example.org", "+", ["sender_relays:billing@example.org"]),
    ("billing+june@example.org", "", ["relay"]),  # no delimiter: no such sender
    ("billing@example.org", "+", ["sender_relays:billing@example.org"]),
])
def test_expected_relay_strips_the_extension(loaders, sender, delimiter, keys):
    expected = loaders.modules.postfix_relay.expected_relays(RELAYS, sender, delimiter)
    assert [e["key"] for e in expected] == keys
