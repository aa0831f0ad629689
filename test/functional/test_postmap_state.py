"""
The postmap state and module in-process (salt-factories loaders) against the
real postmap: what a sysadmin checks on the table files after each run.
"""

import os
import stat
import subprocess
import time

import pytest

SECRET = "S3cr3t-table-pw"
ENTRIES = {"[smtp.example.net]:587": f"user:{SECRET}", "[backup.example.net]:465": "u2:pw2"}


def supported():
    out = subprocess.run(["postconf", "-m"], capture_output=True, text=True).stdout.split()
    return out or ["hash"]


INDEXED = [t for t in ("hash", "btree", "lmdb", "cdb", "dbm") if t in supported()]
SUFFIX = {"hash": ".db", "btree": ".db", "lmdb": ".lmdb", "cdb": ".cdb", "dbm": ".pag"}


def managed(loaders, path, config_dir, **kwargs):
    kwargs.setdefault("map_type", "hash")
    kwargs.setdefault("entries", ENTRIES)
    return loaders.states.postmap.managed(name=str(path), config_dir=config_dir, **kwargs)


def query(path, key, map_type="hash"):
    res = subprocess.run(["postmap", "-q", key, f"{map_type}:{path}"],
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
    (lambda p: (subprocess.run(["postmap", f"hash:{p}.other"], check=True),
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
