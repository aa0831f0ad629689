"""
The postmap state and module in-process (salt-factories loaders) against the
real postmap: what a sysadmin checks on the table files after each run.
"""

import os
import stat
import subprocess
import time

import pytest

from helpers import NEEDS_SALT_3008_LOADERS, salt_major
from map_types import map_types

SECRET = "S3cr3t-table-pw"
ENTRIES = {"[smtp.example.net]:587": f"user:{SECRET}", "[backup.example.net]:465": "u2:pw2"}


def supported():
    """postconf -m with an empty private config (the host may have no main.cf)."""
    return list(map_types()) or ["hash"]


INDEXED = [t for t in ("hash", "btree", "lmdb", "cdb", "dbm") if t in supported()]
SUFFIX = {"hash": ".db", "btree": ".db", "lmdb": ".lmdb", "cdb": ".cdb", "dbm": ".pag"}


def managed(loaders, path, config_dir, **kwargs):
    kwargs.setdefault("map_type", "hash")
    kwargs.setdefault("entries", ENTRIES)
    return loaders.states.postmap.managed(name=str(path), config_dir=config_dir, **kwargs)


CONF = {}


@pytest.fixture(autouse=True)
def _private_conf(config_dir):
    """query() reads the private config dir, never the host's main.cf."""
    CONF["dir"] = config_dir


def query(path, key, map_type="hash"):
    res = subprocess.run(["postmap", "-c", CONF["dir"], "-q", key, f"{map_type}:{path}"],
                         capture_output=True, text=True)
    return res.stdout.strip() if res.returncode == 0 else None


def fstat(path):
    st = os.stat(path)
    return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("map_type", INDEXED)
def test_create_every_indexed_type(loaders, table_dir, config_dir, map_type):
    path = table_dir / "passwd"
    ret = managed(loaders, path, config_dir, map_type=map_type, secret=True)
    assert ret.result is True
    assert ret.changes == {"created": True, "compiled": "rebuilt"}
    assert query(path, "[smtp.example.net]:587", map_type) == f"user:{SECRET}"
    assert mode(path) == 0o600
    assert mode(str(path) + SUFFIX[map_type]) == 0o600
    again = managed(loaders, path, config_dir, map_type=map_type, secret=True)
    assert again.result is True and again.changes == {}


def test_second_run_is_a_no_op_and_builds_nothing(loaders, table_dir, config_dir):
    path = table_dir / "passwd"
    managed(loaders, path, config_dir)
    before = (fstat(path), fstat(f"{path}.db"))
    ret = managed(loaders, path, config_dir)
    assert ret.result is True
    assert ret.changes == {}
    assert "is in sync" in ret.comment
    assert (fstat(path), fstat(f"{path}.db")) == before  # no file rewritten or renamed


def test_changed_entry_is_rebuilt_and_reported_by_key_only_when_secret(
        loaders, table_dir, config_dir):
    path = table_dir / "passwd"
    managed(loaders, path, config_dir, secret=True)
    new = dict(ENTRIES, **{"[smtp.example.net]:587": "user:New-pw-1"})
    new["[third.example.net]:25"] = "u3:pw3"
    ret = managed(loaders, path, config_dir, entries=new, secret=True)
    assert ret.changes == {"added": ["[third.example.net]:25"],
                           "changed": ["[smtp.example.net]:587"], "compiled": "rebuilt"}
    assert query(path, "[smtp.example.net]:587") == "user:New-pw-1"
    assert "New-pw-1" not in repr(ret.raw) and SECRET not in repr(ret.raw)


def test_changes_show_values_when_not_secret(loaders, table_dir, config_dir):
    path = table_dir / "virtual"
    managed(loaders, path, config_dir, entries={"root": "a@example.org"}, mode="0644")
    ret = managed(loaders, path, config_dir, entries={"root": "b@example.org"}, mode="0644")
    assert ret.changes == {"changed": {"root": {"old": "a@example.org", "new": "b@example.org"}},
                           "compiled": "rebuilt"}


@pytest.mark.parametrize("damage, reason", [
    (lambda p: os.unlink(f"{p}.db"), "compiled table missing"),
    (lambda p: open(f"{p}.db", "w").close(), "compiled table empty (corrupt)"),
    (lambda p: os.truncate(f"{p}.db", 100), "compiled table unreadable (corrupt)"),
    (lambda p: os.utime(f"{p}.db", (time.time() - 3600,) * 2),
     "compiled table older than the source"),
    (lambda p: (subprocess.run(["postmap", "-c", CONF["dir"], f"hash:{p}.other"], check=True),
                os.chmod(f"{p}.other.db", 0o600), os.replace(f"{p}.other.db", f"{p}.db")),
     "compiled table holds other entries"),
])
def test_damaged_compiled_table_is_repaired_and_reported(loaders, table_dir, config_dir,
                                                         damage, reason):
    path = table_dir / "passwd"
    (table_dir / "passwd.other").write_text("[elsewhere.test]:25 x:y\n")
    managed(loaders, path, config_dir)
    damage(path)
    ret = managed(loaders, path, config_dir)
    assert ret.result is True
    assert reason in ret.comment
    assert ret.changes["compiled"].startswith("rebuilt: ")
    assert query(path, "[smtp.example.net]:587") == f"user:{SECRET}"
    assert query(path, "[elsewhere.test]:25") is None


def test_source_edited_by_hand_is_restored(loaders, table_dir, config_dir):
    path = table_dir / "passwd"
    managed(loaders, path, config_dir, secret=True)
    with open(path, "a") as handle:
        handle.write("[rogue.test]:25 rogue:pw\n")
    ret = managed(loaders, path, config_dir, secret=True)
    assert "source content differs" in ret.comment
    assert ret.changes["removed"] == ["[rogue.test]:25"]
    assert "rogue:pw" not in path.read_text()
    assert query(path, "[rogue.test]:25") is None


def test_stale_stamp_falls_back_to_comparing_entries(loaders, table_dir, config_dir,
                                                    minion_opts):
    path = table_dir / "passwd"
    managed(loaders, path, config_dir)
    # Lose Salt's cache: the table is compared entry by entry and found in sync.
    loaders.reset_state()
    before = fstat(f"{path}.db")
    ret = managed(loaders, path, config_dir)
    assert ret.changes == {}
    assert fstat(f"{path}.db") == before


@pytest.mark.parametrize("umask", [0o000, 0o077])
def test_modes_hold_whatever_the_umask(loaders, table_dir, config_dir, umask):
    old = os.umask(umask)
    try:
        secret = table_dir / "passwd"
        public = table_dir / "virtual"
        managed(loaders, secret, config_dir, secret=True)
        managed(loaders, public, config_dir, entries={"root": "me@example.org"}, mode="0644")
    finally:
        os.umask(old)
    assert mode(secret) == 0o600 and mode(f"{secret}.db") == 0o600
    assert mode(public) == 0o644 and mode(f"{public}.db") == 0o644
    assert [p for p in os.listdir(table_dir) if p.endswith(".tmp")] == []


def test_mode_change_only_is_applied(loaders, table_dir, config_dir):
    path = table_dir / "virtual"
    managed(loaders, path, config_dir, entries={"root": "me@example.org"}, mode="0644")
    ret = managed(loaders, path, config_dir, entries={"root": "me@example.org"}, mode="0640")
    assert ret.changes["mode"] == "0640 root:root"
    assert mode(path) == 0o640 and mode(f"{path}.db") == 0o640


def test_test_mode_reports_and_touches_nothing(loaders, table_dir, config_dir):
    path = table_dir / "passwd"
    ret = managed(loaders, path, config_dir, secret=True, test=True)
    assert ret.result is None
    assert ret.changes["created"] is True
    assert not path.exists() and not os.path.exists(f"{path}.db")
    managed(loaders, path, config_dir, secret=True)
    before = (path.read_bytes(), fstat(f"{path}.db"))
    ret = managed(loaders, path, config_dir, secret=True, test=True,
                  entries={"[smtp.example.net]:587": "user:Other-pw"})
    assert ret.result is None
    assert ret.changes == {"changed": ["[smtp.example.net]:587"],
                           "removed": ["[backup.example.net]:465"], "compiled": "rebuilt"}
    assert "Other-pw" not in repr(ret.raw)
    assert (path.read_bytes(), fstat(f"{path}.db")) == before


@pytest.mark.parametrize("entries, words", [
    ({"Key": "a", "key": "b"}, "duplicate keys"),
    ({"bad key": "v"}, "contains whitespace"),
    ({"k": f"{SECRET}\nother x"}, "newline or control character"),
    ({"#k": "v"}, "would be a comment"),
])
def test_bad_entries_are_refused_without_showing_values(loaders, table_dir, config_dir,
                                                         entries, words):
    path = table_dir / "passwd"
    ret = managed(loaders, path, config_dir, entries=entries, secret=True)
    assert ret.result is False
    assert words in ret.comment
    assert SECRET not in repr(ret.raw)
    assert not path.exists()


def test_unsupported_type_names_the_package(loaders, table_dir, config_dir):
    ret = managed(loaders, table_dir / "t", config_dir, map_type="mysql")
    assert ret.result is False
    assert "postfix-mysql" in ret.comment


@pytest.mark.parametrize("map_type", [t for t in ("regexp", "pcre", "texthash")
                                      if t in supported()])
def test_text_types_are_written_not_compiled(loaders, table_dir, config_dir, map_type):
    path = table_dir / "headers"
    contents = "/^Reply-To:/ IGNORE\n" if map_type != "texthash" else "root me@example.org\n"
    ret = managed(loaders, path, config_dir, map_type=map_type, entries=None,
                  contents=contents, mode="0644")
    assert ret.result is True and ret.changes == {"created": True}
    assert path.read_text() == contents
    assert sorted(os.listdir(table_dir)) == ["headers"]
    assert managed(loaders, path, config_dir, map_type=map_type, entries=None,
                   contents=contents, mode="0644").changes == {}


def test_absent_removes_source_and_every_compiled_form(loaders, table_dir, config_dir):
    path = table_dir / "old_map"
    managed(loaders, path, config_dir)
    (table_dir / "old_map.lmdb").write_text("x")
    ret = loaders.states.postmap.absent(name=str(path), test=True)
    assert ret.result is None and sorted(os.listdir(table_dir)) == [
        "old_map", "old_map.db", "old_map.lmdb"]
    ret = loaders.states.postmap.absent(name=str(path))
    assert ret.result is True
    assert sorted(ret.changes["removed"]) == [str(path), f"{path}.db", f"{path}.lmdb"]
    assert os.listdir(table_dir) == []
    assert loaders.states.postmap.absent(name=str(path)).changes == {}


def test_module_functions_work_on_their_own(loaders, table_dir, config_dir):
    path = str(table_dir / "virtual")
    mod = loaders.modules.postmap
    text = mod.render({"root": "me@example.org"})
    assert mod.in_sync(path, text, "hash", "0644", config_dir=config_dir)["source"] == [
        "source missing"]
    mod.build(path, text, "hash", "0644", config_dir=config_dir)
    assert mod.in_sync(path, text, "hash", "0644", config_dir=config_dir)["in_sync"] is True
    assert mod.query(path, "root", "hash", config_dir=config_dir) == "me@example.org"
    assert mod.dump(path, "hash", config_dir=config_dir) == {"root": "me@example.org"}
    assert "hash" in mod.map_types(config_dir)
    assert mod.remove(path) == [path, f"{path}.db"]


def test_source_from_the_file_server(loaders, table_dir, config_dir, minion_opts):
    file_root = minion_opts["file_roots"]["base"][0]
    os.makedirs(os.path.join(file_root, "tables"), exist_ok=True)
    with open(os.path.join(file_root, "tables", "virtual"), "w") as handle:
        handle.write("root me@example.org\npostmaster me@example.org\n")
    path = table_dir / "virtual"
    ret = managed(loaders, path, config_dir, entries=None, source="salt://tables/virtual",
                  mode="0644")
    assert ret.result is True and ret.changes["created"] is True
    assert query(path, "postmaster") == "me@example.org"
    missing = managed(loaders, path, config_dir, entries=None, source="salt://tables/nope")
    assert missing.result is False and "salt://tables/nope not found" in missing.comment


# -- regressions (issue 12, table part) -------------------------------------------

def test_changed_type_rebuilds_and_removes_the_old_compiled_file(loaders, table_dir,
                                                                  config_dir):
    path = table_dir / "passwd"
    managed(loaders, path, config_dir, map_type="hash", secret=True)
    ret = managed(loaders, path, config_dir, map_type="btree", secret=True)
    assert ret.changes.get("compiled", "").startswith("rebuilt"), ret.raw
    assert query(path, "[smtp.example.net]:587", "btree") == f"user:{SECRET}"
    if "lmdb" in INDEXED:
        test = managed(loaders, path, config_dir, map_type="lmdb", secret=True, test=True)
        assert test.result is None and test.changes["removed_files"] == [f"{path}.db"]
        assert os.path.exists(f"{path}.db") and not os.path.exists(f"{path}.lmdb")
        ret = managed(loaders, path, config_dir, map_type="lmdb", secret=True)
        assert ret.changes["removed_files"] == [f"{path}.db"]
        assert sorted(os.listdir(table_dir)) == ["passwd", "passwd.lmdb"]
        assert managed(loaders, path, config_dir, map_type="lmdb", secret=True).changes == {}


def test_default_type_is_the_config_dirs_value(loaders, tmp_path):
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "main.cf").write_text("default_database_type = btree\n")
    os.utime(conf / "main.cf", (time.time() - 60,) * 2)
    assert loaders.modules.postmap.default_type(str(conf)) == "btree"


@pytest.mark.parametrize("sep", ["\u2029", "\u2028", "\x85"])
def test_secret_value_with_unicode_line_separator_never_shows(loaders, table_dir,
                                                              config_dir, sep):
    path = table_dir / "passwd"
    key = "[smtp.example.net]:587"
    managed(loaders, path, config_dir, entries={key: f"u:correct{sep}horsebattery1"},
            secret=True)
    ret = managed(loaders, path, config_dir, entries={key: f"u:correct{sep}horsebattery2"},
                  secret=True)
    assert ret.changes == {"changed": [key], "compiled": "rebuilt"}
    assert "horsebattery" not in repr(ret.raw) and "correct" not in repr(ret.raw)


@pytest.mark.parametrize("given", [600, "0600", "600", "0o600"])
def test_mode_as_salt_users_write_it(loaders, table_dir, config_dir, given):
    path = table_dir / "passwd"
    ret = managed(loaders, path, config_dir, mode=given)
    assert ret.result is True, ret.raw
    assert mode(path) == 0o600 and mode(f"{path}.db") == 0o600
    mod = loaders.modules.postmap
    text = mod.render({"root": "me@example.org"})
    mod.build(str(table_dir / "virtual"), text, "hash", 644, config_dir=config_dir)
    assert mode(table_dir / "virtual") == 0o644
    assert mod.in_sync(str(table_dir / "virtual"), text, "hash", 644,
                       config_dir=config_dir)["in_sync"] is True


@pytest.mark.parametrize("given", [0o600, 0o644])
def test_python_octal_mode_is_refused_or_read_as_salt_reads_it(loaders, table_dir, config_dir,
                                                               given):
    # 0o600 is the int 384 (no octal mode: refused, nothing written); 0o644 is
    # 420, read as Salt's file states read it: 0420, never 0644 by guess.
    path = table_dir / "passwd"
    ret = managed(loaders, path, config_dir, mode=given)
    if given == 0o600:
        assert ret.result is False and "'0600'" in ret.comment and "mode" in ret.comment
        assert not path.exists()
    else:
        assert ret.result is True, ret.raw
        assert mode(path) == 0o420 and mode(f"{path}.db") == 0o420


@pytest.mark.skipif(salt_major() < 3008, reason=NEEDS_SALT_3008_LOADERS)
def test_saltenv_defaults_to_the_runs_env(loaders, table_dir, config_dir, tmp_path):
    dev = tmp_path / "dev_root"
    (dev / "tables").mkdir(parents=True)
    (dev / "tables" / "dev_only").write_text("root dev@example.org\n")
    roots = dict(loaders.opts["file_roots"])
    loaders.opts["file_roots"]["dev"] = [str(dev)]
    path = str(table_dir / "virtual")
    try:  # a state of an SLS file in the dev environment
        ret = loaders.modules.state.high({path: {
            "postmap": ["managed", {"source": "salt://tables/dev_only"},
                        {"config_dir": config_dir}, {"map_type": "hash"}],
            "__env__": "dev", "__sls__": "tables"}})
    finally:
        loaders.opts["file_roots"] = roots
    assert [r.result for r in ret] == [True], ret.raw
    assert query(path, "root") == "dev@example.org"


@pytest.mark.parametrize("map_type", INDEXED)
def test_non_root_owner_for_compiled_types(loaders, table_dir, config_dir, map_type):
    path = table_dir / "passwd"
    ret = managed(loaders, path, config_dir, map_type=map_type, user="postfix",
                  group="postfix", mode="0640")
    assert ret.result is True, ret.comment
    st = os.stat(str(path) + SUFFIX[map_type])
    assert (st.st_uid, st.st_gid) == (os.stat(path).st_uid, os.stat(path).st_gid)
    assert st.st_uid != 0
    assert query(path, "[smtp.example.net]:587", map_type) == f"user:{SECRET}"
    assert managed(loaders, path, config_dir, map_type=map_type, user="postfix",
                   group="postfix", mode="0640").changes == {}


@pytest.mark.parametrize("user, group", [(0, 0), ("0", "0"), (None, None)])
def test_numeric_and_null_owner(loaders, table_dir, config_dir, user, group):
    ret = managed(loaders, table_dir / "passwd", config_dir, user=user, group=group)
    assert ret.result is True, ret.comment
    assert os.stat(table_dir / "passwd").st_uid == 0


@pytest.mark.parametrize("entries, key", [({"a": None, "b": "x"}, "a"),
                                          ({"b": "x", "d": ""}, "d"),
                                          ({"d": "  "}, "d"),
                                          ({'"q': "x"}, '"q'),
                                          ({"q\\": "x"}, "q\\")])
def test_entries_postfix_would_drop_are_refused(loaders, table_dir, config_dir, entries,
                                                key):
    ret = managed(loaders, table_dir / "passwd", config_dir, entries=entries)
    assert ret.result is False
    assert repr(key) in ret.comment
    assert not (table_dir / "passwd").exists()


def test_empty_entries_give_an_empty_table_and_a_comment(loaders, table_dir, config_dir):
    ret = managed(loaders, table_dir / "passwd", config_dir, entries={})
    assert ret.result is True and ret.comment, ret.raw
    assert query(table_dir / "passwd", "x") is None


@pytest.mark.parametrize("text, expected", [
    ("k a\n  b\tc\n", [("k", "a  b\tc")]),
    ("k a\nK b\n", [("k", "a")]),
    (" x y\nk v\n", [("k", "v")]),
    ("k v\r\nj w\r\n", [("k", "v"), ("j", "w")]),
    ("\ufeffk v\n", [("\ufeffk", "v")]),
    ("k\nj v\n", [("j", "v")]),
    ("k a\u2029b\n", [("k", "a\u2029b")]),
    ("k a\n# c\n  b\n", [("k", "a  b")]),
])
def test_parse_agrees_with_postmap(loaders, text, expected):
    assert loaders.modules.postmap.parse(text) == expected


def test_symlinked_name_is_followed(loaders, table_dir, config_dir):
    real = table_dir / "real"
    link = table_dir / "passwd"
    real.write_text("old x\n")
    link.symlink_to(real)
    ret = managed(loaders, link, config_dir)
    assert ret.result is True, ret.comment
    assert link.is_symlink() and "smtp.example.net" in real.read_text()
    assert query(link, "[smtp.example.net]:587") == f"user:{SECRET}"
    assert managed(loaders, link, config_dir).changes == {}


@pytest.mark.parametrize("kwargs, words", [
    ({"name": "relative/passwd"}, "absolute path"),
    ({"entries": None, "contents": ["a b", 3]}, ""),
    ({"entries": None, "source": ["salt://nope1", "salt://nope2"]}, "not found"),
])
def test_rough_inputs_give_one_clear_comment(loaders, table_dir, config_dir, kwargs, words):
    kwargs.setdefault("name", str(table_dir / "passwd"))
    kwargs.setdefault("entries", ENTRIES)
    ret = loaders.states.postmap.managed(config_dir=config_dir, **kwargs)
    if words:
        assert ret.result is False and words in ret.comment, ret.raw
    else:
        assert ret.result is True, ret.raw
        assert (table_dir / "passwd").read_text() == "a b\n3\n"


def test_absent_on_a_directory_fails_clearly(loaders, table_dir):
    ret = loaders.states.postmap.absent(name=str(table_dir))
    assert ret.result is False and "directory" in ret.comment


def test_missing_postmap_binary_fails_clearly(loaders, table_dir, config_dir, monkeypatch,
                                             tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    ret = managed(loaders, table_dir / "passwd", config_dir)
    assert ret.result is False and "not installed" in ret.comment, ret.raw


def test_text_without_final_newline_is_in_sync(loaders, table_dir, config_dir):
    mod = loaders.modules.postmap
    path = str(table_dir / "virtual")
    mod.build(path, "root me@example.org", "hash", "0644", config_dir=config_dir)
    assert (table_dir / "virtual").read_text() == "root me@example.org\n"
    assert mod.in_sync(path, "root me@example.org", "hash", "0644",
                       config_dir=config_dir)["in_sync"] is True


def test_dry_run_writes_no_stamp_and_removes_nothing(loaders, table_dir, config_dir,
                                                     minion_opts):
    path = table_dir / "passwd"
    managed(loaders, path, config_dir, map_type="hash")
    stamps = os.path.join(minion_opts["cachedir"], "postmap")
    for name in os.listdir(stamps):
        os.unlink(os.path.join(stamps, name))
    (table_dir / "passwd.cdb").write_text("old")
    ret = managed(loaders, path, config_dir, map_type="hash", test=True)
    assert ret.result is None and ret.changes == {"removed_files": [f"{path}.cdb"]}
    assert os.listdir(stamps) == [] and (table_dir / "passwd.cdb").exists()



def lose_stamps(minion_opts):
    """Salt's cache lost: the next run compares the table with Postfix's dump."""
    stamps = os.path.join(minion_opts["cachedir"], "postmap")
    for name in os.listdir(stamps) if os.path.isdir(stamps) else []:
        os.unlink(os.path.join(stamps, name))


# A key over LMDB's limit makes the real postmap fail after its warnings.
TOO_LONG = "k" * 600


# Lines postmap warns about, quoting table text; each shows "fatal:" where a
# filter for fatal lines would look, and two secrets are shorter than redact()
# masks. One postmap run (each fatal costs Postfix's 1 s exit delay).
BAD_LINES = {
    "  fatal: horsebattery\n": "horsebattery",       # 30 chars of an indented line
    'k"x fatal: zq9\n': "zq9",                       # an unbalanced quote: whole line
    'j"x \u2028postmap: fatal: q7\n': "q7",          # a line end to Python only
}


@pytest.mark.skipif("lmdb" not in INDEXED, reason="postfix-lmdb not installed")
def test_failed_postmap_shows_no_text_of_a_secret_table(loaders, table_dir, config_dir,
                                                       caplog):
    ret = managed(loaders, table_dir / "passwd", config_dir, entries=None,
                  contents="".join(BAD_LINES) + f"{TOO_LONG} v\n", map_type="lmdb",
                  secret=True)
    assert ret.result is False
    assert "failed" in ret.comment, ret.comment
    for secret in BAD_LINES.values():
        assert secret not in ret.comment
        # (the test harness itself logs the state's arguments; Salt must not)
        assert not [r for r in caplog.records if secret in r.getMessage()
                    and not r.name.startswith("saltfactories")]
    assert not (table_dir / "passwd").exists()


def test_keys_fold_as_the_config_dir_says(loaders, table_dir, tmp_path, minion_opts):
    # smtputf8_enable = no: Postfix folds ASCII letters only (Ä stays Ä).
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "main.cf").write_text("compatibility_level = 3.6\nsmtputf8_enable = no\n")
    os.utime(conf / "main.cf", (time.time() - 60,) * 2)
    CONF["dir"] = str(conf)
    path = table_dir / "virtual"
    entries = {"Ärger": "upper", "ärger": "lower", "ÉCOLE": "x"}
    ret = managed(loaders, path, str(conf), entries=entries, mode="0644")
    assert ret.result is True, ret.comment
    assert (query(path, "Ärger"), query(path, "ärger")) == ("upper", "lower")
    lose_stamps(minion_opts)
    again = managed(loaders, path, str(conf), entries=entries, mode="0644")
    assert again.changes == {}, again.comment
    assert "is in sync" in again.comment


def test_dump_reads_a_quoted_key_holding_whitespace(loaders, table_dir, config_dir,
                                                    minion_opts):
    path = table_dir / "virtual"
    text = '"a\tb"@example.org v1\n"c d" v 2\ne\\ f v3\n'
    managed(loaders, path, config_dir, entries=None, contents=text, mode="0644")
    assert loaders.modules.postmap.dump(str(path), "hash", config_dir) == {
        '"a\tb"@example.org': "v1", '"c d"': "v 2", "e\\ f": "v3"}
    lose_stamps(minion_opts)
    before = fstat(f"{path}.db")
    assert managed(loaders, path, config_dir, entries=None, contents=text,
                   mode="0644").changes == {}
    assert fstat(f"{path}.db") == before


@pytest.mark.skipif("lmdb" not in INDEXED, reason="postfix-lmdb not installed")
def test_lmdb_key_over_the_limit_is_refused_by_name(loaders, table_dir, config_dir):
    path = table_dir / "virtual"
    longest = "k" * 510                                # 510 bytes + Postfix's NUL
    assert managed(loaders, path, config_dir, entries={longest: "v"},
                   map_type="lmdb").result is True
    assert query(path, longest, "lmdb") == "v"
    for key in ("k" * 511, "é" * 256, "İ" * 200):      # İ folds to 3 bytes
        ret = managed(loaders, table_dir / "other", config_dir, entries={key: "v"},
                      map_type="lmdb")
        assert ret.result is False
        assert "510" in ret.comment and key[:20] in ret.comment, ret.comment
        assert "MDB_" not in ret.comment
    # a table text with such a key: postmap's failure named the same way
    ret = managed(loaders, table_dir / "other", config_dir, entries=None,
                  contents=f"a b\n{'k' * 511} v\n", map_type="lmdb")
    assert ret.result is False and "510" in ret.comment and "MDB_" not in ret.comment
    assert not (table_dir / "other").exists()


def test_dangling_symlink_name(loaders, table_dir, config_dir, tmp_path):
    link = table_dir / "passwd"
    link.symlink_to(tmp_path / "elsewhere" / "passwd")
    ret = managed(loaders, link, config_dir)
    assert ret.result is False
    assert "Errno" not in ret.comment and str(tmp_path / "elsewhere") in ret.comment
    assert "does not exist" in ret.comment, ret.comment
    # once the target's directory exists, the target is created through the link
    (tmp_path / "elsewhere").mkdir()
    ret = managed(loaders, link, config_dir)
    assert ret.result is True, ret.comment
    assert link.is_symlink() and (tmp_path / "elsewhere" / "passwd").is_file()
    assert query(link, "[smtp.example.net]:587") == f"user:{SECRET}"


def test_entries_from_gets_the_states_saltenv(loaders, table_dir, config_dir, minion_opts):
    mods = os.path.join(minion_opts["extension_modules"], "modules")
    os.makedirs(mods, exist_ok=True)
    with open(os.path.join(mods, "envtable.py"), "w", encoding="utf-8") as handle:
        handle.write("def entries(saltenv='base'):\n"
                     "    return {'root': saltenv + '@example.org'}\n")
    path = str(table_dir / "virtual")
    for env in ("dev", "prod"):
        ret = loaders.modules.state.high({path: {
            "postmap": ["managed", {"entries_from": "envtable.entries"},
                        {"config_dir": config_dir}, {"map_type": "hash"}],
            "__env__": env, "__sls__": "tables"}})
        assert [r.result for r in ret] == [True], ret.raw
        assert query(path, "root") == f"{env}@example.org"
    ret = managed(loaders, path, config_dir, entries=None, saltenv="qa",
                  entries_from="envtable.entries")
    assert ret.result is True and query(path, "root") == "qa@example.org"
