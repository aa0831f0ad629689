"""
Which relay verify expects a mail to go through, as Postfix's
sender_dependent_relayhost_maps picks it (the exact address first, then its
@domain, else relayhost and its fallbacks), and the relay= field of a
delivery line read back into the relay it names (IPv6 included).
"""

import pytest

RELAYS = [
    {"key": "relay", "role": "primary", "sender": None},
    {"key": "fallback_relays:0", "role": "fallback", "sender": None},
    {"key": "sender_relays:@example.org", "role": "sender", "sender": "@example.org"},
    {"key": "sender_relays:billing@example.org", "role": "sender",
     "sender": "billing@example.org"},
]


@pytest.mark.parametrize("sender, keys", [
    ("billing@example.org", ["sender_relays:billing@example.org"]),
    ("Billing@Example.ORG", ["sender_relays:billing@example.org"]),  # lookups fold case
    ("shop@example.org", ["sender_relays:@example.org"]),
    ("billing@sub.example.org", ["relay", "fallback_relays:0"]),  # no parent-domain match
    ("pi@other.example", ["relay", "fallback_relays:0"]),
    ("", ["relay", "fallback_relays:0"]),  # the null sender (bounces)
])
def test_expected_relay_is_the_one_postfix_picks_for_the_sender(loaders, sender, keys):
    expected = loaders.modules.postfix_relay.expected_relays(RELAYS, sender)
    assert [e["key"] for e in expected] == keys


@pytest.mark.parametrize("field, parsed", [
    ("smtp.example.net[192.0.2.1]:587", ("smtp.example.net", "192.0.2.1", 587)),
    ("::1[::1]:2525", ("::1", "::1", 2525)),
    ("localhost[127.0.0.1]:465", ("localhost", "127.0.0.1", 465)),
    ("none", None),
    ("local", None),
])
def test_relay_field_names_host_address_and_port(loaders, field, parsed):
    got = loaders.modules.postfix_log.relay_field(field)
    assert (got and (got["name"], got["address"], got["port"])) == parsed
