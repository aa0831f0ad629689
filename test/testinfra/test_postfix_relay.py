"""
Testinfra checks of a host the formula was applied to, with the pillar file
named by $POSTFIX_RELAY_PILLAR (a kitchen suite's). The same file runs here
(`--hosts=local://`, from test/integration/test_kitchen_suites.py) and as the
kitchen verifier against each platform's container.
"""

import os
import pathlib

import pytest
import yaml

PILLAR_FILE = os.environ.get("POSTFIX_RELAY_PILLAR", "test/kitchen/pillar/default.sls")
P = yaml.safe_load(pathlib.Path(PILLAR_FILE).read_text())["postfix_relay"]
LOCAL = "local" in (P.get("recipient_mode", "all"), P.get("sender_mode", "all"))
RELAY = P["relay"]
PORT = RELAY.get("port", 587)
SUFFIX = {"hash": ".db", "btree": ".db", "lmdb": ".lmdb", "cdb": ".cdb"}
SASL_PLUGIN = {"debian": "libsasl2-modules", "ubuntu": "libsasl2-modules",
               "raspbian": "libsasl2-modules", "rocky": "cyrus-sasl-plain",
               "fedora": "cyrus-sasl-plain", "opensuse-leap": "cyrus-sasl-plain",
               "arch": "libsasl"}


def postconf(host, name):
    return host.run_expect([0], f"postconf -h {name}").stdout.strip()


def test_postfix_and_the_sasl_client_plugins_are_installed(host):
    assert host.package("postfix").is_installed
    plugin = SASL_PLUGIN.get(host.system_info.distribution)
    if plugin:
        assert host.package(plugin).is_installed


def test_postfix_runs(host):
    assert host.run("postfix status").rc == 0


@pytest.mark.parametrize("name, expected", [
    ("inet_interfaces", "loopback-only"),
    ("mydestination", ""),
    ("relayhost", f"[{RELAY['host']}]:{PORT}"),
    ("myhostname", P.get("hostname")),
    # local modes tell host-local addresses apart by the host name and pass
    # every other address unchanged (nothing masqueraded)
    ("myorigin", P.get("hostname") if LOCAL else P["domain"]),
    ("masquerade_domains", "" if LOCAL else P["domain"]),
    ("smtp_tls_security_level", RELAY.get("tls", "encrypt")),
    ("smtp_tls_wrappermode", "yes" if PORT == 465 else "no"),
    ("smtp_sasl_auth_enable", "yes"),
    ("smtp_sasl_tls_security_options", "noanonymous"),
    ("sender_canonical_maps", "regexp:/etc/postfix/postfix_relay_sender"),
    ("smtp_sasl_mechanism_filter", ", ".join(RELAY.get("mechanisms", []))),
])
def test_main_cf_says_what_the_pillar_says(host, name, expected):
    assert postconf(host, name) == expected


def test_recipients_rewritten_as_the_mode_says(host):
    maps = postconf(host, "recipient_canonical_maps")
    if P.get("recipient_mode", "all") == "all":
        assert maps == f"static:{P['recipient']}"
    else:
        assert maps.startswith("regexp:")
        # cleanup qualifies "root" with myorigin (this host's name) before the lookup
        local = f"root@{P['hostname']}"
        assert host.run(f"postmap -q {local} {maps}").stdout.strip() == P["recipient"]
        assert host.run(f"postmap -q someone@elsewhere.test {maps}").rc != 0


def test_reply_to_rule_only_when_asked(host):
    checks = postconf(host, "smtp_header_checks")
    assert bool(checks) == bool(P.get("reply_to"))


def test_password_table_root_only_compiled_and_current(host):
    table = host.file("/etc/postfix/sasl/passwd")
    assert table.mode == 0o600 and table.user == "root"
    kind = postconf(host, "default_database_type")
    compiled = host.file("/etc/postfix/sasl/passwd" + SUFFIX.get(kind, ".db"))
    assert compiled.exists and compiled.mode == 0o600 and compiled.user == "root"
    key = f"[{RELAY['host']}]:{PORT}"
    value = host.run(f"postmap -q '{key}' {kind}:/etc/postfix/sasl/passwd").stdout.strip()
    assert value == f"{RELAY['username']}:{RELAY['password']}"
    assert not host.file("/etc/postfix/main.cf").contains(RELAY["password"])


def test_smtp_listener_as_the_pillar_says(host):
    listener = host.run("postconf -M smtp/inet").stdout.strip()
    assert bool(listener) == (P.get("listen", "loopback") == "loopback")


def test_mailname_names_the_domain(host):
    if host.system_info.distribution in ("debian", "ubuntu", "raspbian"):
        assert host.file("/etc/mailname").content_string.strip() == P["domain"]
