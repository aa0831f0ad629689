"""pillar.example is a pillar the formula takes: what it documents is valid
together (a key documented but refused, or two examples that contradict each
other, fail here)."""

import pathlib

import yaml

from helpers import REPO, load_module

settings = load_module("_modules/postfix_relay_settings.py")
HOST = {"map_types": ["hash", "lmdb", "regexp"], "config_dir": "/etc/postfix",
        "ca_bundle": "/etc/ssl/certs/ca-certificates.crt", "has_syslog": True,
        "mail_version": "3.7.11"}


def test_pillar_example_is_taken_as_written():
    text = pathlib.Path(REPO, "pillar.example").read_text(encoding="utf-8")
    pillar = yaml.safe_load(text)["postfix_relay"]
    pillar.pop("lookup")  # the os_family map, read by map.jinja, not validated here
    result = settings.normalise(pillar, {"fqdn": "pi.example.org", "host": "pi"}, HOST)
    documented = {line.split(":")[0].strip().lstrip("# ") for line in text.splitlines()
                  if line.startswith(("  ", "  # ")) and not line.startswith("    ")
                  and ":" in line}
    # every top-level key the formula knows is documented, used or commented
    assert settings.KNOWN_KEYS - documented == set()
    assert result["main_cf"]["relayhost"].startswith("[smtp.example.net]:587, ")
