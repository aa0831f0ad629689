"""
postmap keeps postconf's answers (table types, default_database_type, how keys
fold) on disk between runs, keyed by the files they depend on: a no-op apply
spawns no postconf, and any change to main.cf, the dynamic map list or the
binary is asked again. A `postconf` first in PATH counts the real one's runs.
"""

import os
import shutil
import stat

import pytest


@pytest.fixture
def counted_postconf(tmp_path, monkeypatch):
    """The real postconf behind a wrapper that logs each run; returns the count."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "postconf.log"
    wrapper = bin_dir / "postconf"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec /usr/sbin/postconf "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return lambda: len(log.read_text().splitlines()) if log.exists() else 0


@pytest.fixture
def conf(tmp_path):
    path = tmp_path / "conf"
    path.mkdir()
    (path / "main.cf").write_text("compatibility_level = 3.6\nsmtputf8_enable = yes\n")
    old = path.stat().st_mtime - 60  # Postfix does not wait for an old main.cf
    os.utime(path / "main.cf", (old, old))
    return str(path)


def answers(loaders, conf):
    mod = loaders.modules
    return (mod["postmap.map_types"](conf), mod["postmap.default_type"](conf),
            mod["postmap.folds_utf8"](conf))


def new_salt_call(loaders):
    """What a new salt-call starts with: no __context__, the minion's cachedir
    as the last run left it (reset_state would empty the cachedir too)."""
    loaders.context.clear()


def test_a_second_run_spawns_no_postconf(loaders, conf, counted_postconf):
    first = answers(loaders, conf)
    assert "hash" in first[0] and first[2] is True
    asked = counted_postconf()
    assert asked >= 1  # the wrapper is the postconf postmap runs
    new_salt_call(loaders)
    assert answers(loaders, conf) == first
    assert counted_postconf() == asked


def test_main_cf_copied_with_its_mtime_is_asked_again(loaders, conf, counted_postconf):
    """cp -p of another main.cf of the same size keeps inode, size and mtime:
    the answer follows the new content all the same."""
    assert answers(loaders, conf)[2] is True
    main_cf = os.path.join(conf, "main.cf")
    before = os.stat(main_cf)
    with open(main_cf, "r+", encoding="utf-8") as handle:  # in place: same inode
        text = handle.read().replace("smtputf8_enable = yes", "smtputf8_enable = no ")
        handle.seek(0)
        handle.write(text)
    os.utime(main_cf, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(main_cf)
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == \
        (before.st_ino, before.st_size, before.st_mtime_ns)
    new_salt_call(loaders)
    asked = counted_postconf()
    assert loaders.modules["postmap.folds_utf8"](conf) is False
    assert counted_postconf() == asked + 1


def test_default_type_follows_main_cf(loaders, conf):
    assert loaders.modules["postmap.default_type"](conf) in ("hash", "lmdb", "cdb")
    main_cf = os.path.join(conf, "main.cf")
    with open(main_cf, "a", encoding="utf-8") as handle:
        handle.write("default_database_type = cdb\n")
    old = os.stat(main_cf).st_mtime - 60
    os.utime(main_cf, (old, old))
    new_salt_call(loaders)
    assert loaders.modules["postmap.default_type"](conf) == "cdb"


def test_the_answers_file_is_root_only(loaders, conf, minion_opts):
    answers(loaders, conf)
    path = os.path.join(minion_opts["cachedir"], "postmap", "postconf.json")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700


@pytest.fixture
def machine_maps():
    """/etc/postfix/dynamicmaps.cf, restored afterwards: only in a test host
    (scripts/test-host: a private /etc/postfix), never the machine's."""
    if not os.environ.get("TEST_HOST_MACHINE_NET"):
        pytest.skip("edits /etc/postfix/dynamicmaps.cf: runs in a test host (./run-tests)")
    path = "/etc/postfix/dynamicmaps.cf"
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    try:
        yield path, text
    finally:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)


def test_a_table_type_added_to_etc_postfix_counts_for_any_config_dir(loaders, conf,
                                                                     machine_maps):
    """postconf -c DIR reads /etc/postfix/dynamicmaps.cf whatever DIR is (the
    postfix-lmdb package adds its line there): both caches follow it."""
    path, text = machine_maps
    assert "\nlmdb" in "\n" + text
    without = "".join(line for line in text.splitlines(True) if not line.startswith("lmdb"))
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(without)
    mod = loaders.modules
    assert "lmdb" not in mod["postfix_facts.facts"](conf)["map_types"]
    assert "lmdb" not in mod["postmap.map_types"](conf)
    with open(path, "w", encoding="utf-8") as handle:  # the package installed again
        handle.write(text)
    new_salt_call(loaders)
    assert "lmdb" in mod["postfix_facts.facts"](conf)["map_types"]
    assert "lmdb" in mod["postmap.map_types"](conf)


def test_a_dry_run_writes_neither_cache(loaders, conf, minion_opts, tmp_path):
    """test=True: the states that ask Postfix (a table, main.cf) answer, and
    neither answer cache is written."""
    caches = [os.path.join(minion_opts["cachedir"], "postfix_relay", "facts.json"),
              os.path.join(minion_opts["cachedir"], "postmap", "postconf.json")]
    for path in caches:  # what earlier tests left
        if os.path.exists(path):
            os.unlink(path)
    new_salt_call(loaders)
    table = tmp_path / "table"
    ret = loaders.states.postmap.managed(name=str(table), entries={"a": "b"}, map_type="hash",
                                         config_dir=conf, test=True)
    assert ret.result is None and not table.exists(), ret.comment
    master_cf = next(p for p in ("/etc/postfix/master.cf", "/usr/share/postfix/master.cf.dist")
                     if os.path.exists(p))
    shutil.copy(master_cf, os.path.join(conf, "master.cf"))
    queue = tmp_path / "queue"
    queue.mkdir()
    ret = loaders.states.postfix_control.main_cf(
        name=os.path.join(conf, "main.cf"), config_dir=conf, test=True,
        params={"relayhost": "[smtp.example.net]:587", "queue_directory": str(queue),
                "data_directory": str(tmp_path / "data")})
    assert ret.result is None, ret.comment
    assert [path for path in caches if os.path.exists(path)] == []
