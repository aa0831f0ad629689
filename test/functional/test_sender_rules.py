"""
The sender rules as Postfix reads them (postmap -q on the regexp table the
formula writes): every sender becomes the host's address, except the null
sender of a bounce, which must stay null (a rewritten bounce that the relay
refuses bounces again, in a loop: test_edge_cases.py shows it end to end).
"""

import subprocess

import pytest

from helpers import load_module

settings = load_module("_modules/postfix_relay_settings.py")


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    path = tmp_path_factory.mktemp("sender") / "sender_canonical"
    path.write_text(settings.sender_rules("pi@example.org"))
    return path


def lookup(table, config_dir, key):
    res = subprocess.run(["postmap", "-c", config_dir, "-q", key, f"regexp:{table}"],
                         capture_output=True, text=True, check=False)
    assert res.returncode in (0, 1), res.stderr
    return res.stdout.strip() if res.returncode == 0 else None


@pytest.mark.parametrize("sender", ["root@pi.example.org", "root", "cron-user@localhost",
                                    "app@shop.example.org", "MAILER-DAEMON@pi.example.org"])
def test_every_sender_becomes_the_hosts_address(table, config_dir, sender):
    assert lookup(table, config_dir, sender) == "pi@example.org"


@pytest.mark.parametrize("null_sender", ["", '""@example.org', '""@pi.example.org',
                                         "double-bounce@pi.example.org"])
def test_a_bounce_keeps_its_null_sender(table, config_dir, null_sender):
    assert lookup(table, config_dir, null_sender) is None


@pytest.fixture(scope="module")
def local_table(tmp_path_factory):
    """sender_mode local: myorigin is the host name, so Postfix hands the
    lookup domainless senders as <name>@pi.example.org."""
    path = tmp_path_factory.mktemp("sender-local") / "sender_canonical"
    path.write_text(settings.sender_rules("pi@example.org", "local", "pi.example.org"))
    return path


@pytest.mark.parametrize("sender", ["root@pi.example.org", "cron-user@PI.Example.org",
                                    "www-data@localhost", "x@localhost.localdomain"])
def test_local_mode_rewrites_host_local_senders(local_table, config_dir, sender):
    assert lookup(local_table, config_dir, sender) == "pi@example.org"


@pytest.mark.parametrize("sender", ["billing@example.org", "orders@shop.example.org",
                                    "root@pi.example.org.evil.example", "pi.example.org@x.org",
                                    "", '""@pi.example.org', "double-bounce@pi.example.org",
                                    "app@notpi.example.org"])
def test_local_mode_leaves_other_senders_and_bounces_alone(local_table, config_dir, sender):
    assert lookup(local_table, config_dir, sender) is None
