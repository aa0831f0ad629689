"""
probe's diagnosis of a password table without the relay's key reads the table
as this Postfix does: with smtputf8_enable = no, keys differing only in a
non-ASCII letter's case are two entries (Postfix folds ASCII only), and both
are shown as near matches. Real postmap, a private config dir.
"""

import os
import subprocess
import time

from helpers import load_module


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
    relay = load_module("_modules/postfix_relay.py")
    relay.__salt__ = loaders.modules  # the real postmap and postfix_* modules
    conf_values = {"relayhost": "[relé.example]:2525",
                   "smtp_sasl_password_maps": f"hash:{table}"}
    result = {"credentials": {"key": None}}
    relay._table_problems(result, conf_values, str(conf))  # pylint: disable=protected-access
    cause, = (d["cause"] for d in result["diagnosis"])
    assert "found [relé.example]:587, [relÉ.example]:587" in cause
    assert "pw1" not in repr(result) and "pw2" not in repr(result)
