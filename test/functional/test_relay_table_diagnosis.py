"""
probe's diagnosis of a password table without the relay's key reads the table
as this Postfix does: with smtputf8_enable = no, keys differing only in a
non-ASCII letter's case are two entries (Postfix folds ASCII only), and both
are shown as near matches. Real postmap, a private config dir.
"""

import os
import subprocess
import time


def test_near_keys_are_listed_as_postfix_stores_them(loaders, tmp_path):
    conf = tmp_path / "conf"
    conf.mkdir()
    table = tmp_path / "passwd"
    (conf / "main.cf").write_text("compatibility_level = 3.6\nsmtputf8_enable = no\n"
                                  f"smtp_sasl_password_maps = hash:{table}\n")
    old = time.time() - 60
    os.utime(conf / "main.cf", (old, old))
    table.write_text("[relé.example]:587 a:pw1\n[relÉ.example]:587 b:pw2\n")
    subprocess.run(["postmap", "-c", str(conf), f"hash:{table}"], check=True)
    # Postfix holds both keys (ASCII folding): each answers its own value.
    for key, value in (("[relé.example]:587", "a:pw1"), ("[relÉ.example]:587", "b:pw2")):
        res = subprocess.run(["postmap", "-c", str(conf), "-q", key, f"hash:{table}"],
                             capture_output=True, text=True, check=False)
        assert res.stdout.strip() == value
    auth = loaders.modules.postfix_probe_auth  # with the real postmap module
    conf_values = {"smtp_sasl_password_maps": f"hash:{table}"}
    relay = {"key": "relay", "role": "primary", "sender": None, "host": "relé.example",
             "nexthop": "[relé.example]:2525"}
    assert auth.lookup(relay, conf_values, str(conf))["key"] is None
    result = {}
    auth.near_keys(result, relay, conf_values, str(conf))
    cause, = (d["cause"] for d in result["diagnosis"])
    assert "found [relé.example]:587, [relÉ.example]:587" in cause
    assert "pw1" not in repr(result) and "pw2" not in repr(result)


def test_a_sender_relay_is_looked_up_by_its_sender_pattern_first(loaders, tmp_path):
    """With smtp_sender_dependent_authentication Postfix searches the sender
    first: a sender relay's credentials are found under its pattern even
    when its host has an entry of its own; the primary's under its host,
    then its next hop."""
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "main.cf").write_text("compatibility_level = 3.6\n")
    old = time.time() - 60
    os.utime(conf / "main.cf", (old, old))
    table = tmp_path / "passwd"
    table.write_text("@shop.example.org shop:pw-shop\n[smtp.example.net]:587 main:pw-main\n")
    subprocess.run(["postmap", "-c", str(conf), f"hash:{table}"], check=True)
    auth = loaders.modules.postfix_probe_auth
    conf_values = {"smtp_sasl_password_maps": f"hash:{table}"}
    sender = {"key": "sender_relays:@shop.example.org", "role": "sender",
              "sender": "@shop.example.org", "host": "smtp.example.net",
              "nexthop": "[smtp.example.net]:587"}
    found = auth.lookup(sender, conf_values, str(conf))
    assert found["keys_tried"] == ["@shop.example.org"]
    assert (found["key"], found["username"]) == ("@shop.example.org", "shop")
    primary = dict(sender, key="relay", role="primary", sender=None)
    found = auth.lookup(primary, conf_values, str(conf))
    assert found["keys_tried"] == ["smtp.example.net", "[smtp.example.net]:587"]
    assert (found["key"], found["username"]) == ("[smtp.example.net]:587", "main")
    assert "pw-" not in repr(found)
