"""
Differential property tests: the formula's view of a table (``postmap.parse``,
``postmap.render``) against Postfix's own (``postmap -s`` on what the real
postmap built, ``postmap -q`` for cdb), on hypothesis-generated table texts and
entry mappings; and no fragment of a secret value in any return.
"""

import os
import subprocess

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from map_types import map_types
from salt.exceptions import SaltInvocationError

SPACE = " \t\v\f\r"
# Secret values are built from these characters only; keys, paths and the
# formula's messages never hold one, so any of them in a return is a leak.
SECRET_CHARS = "%&=~^$|ЖЯλ€"
# Characters other tools take for line ends or spaces, but Postfix does not.
ODD = ["\u2029", "\u2028", "\x85", "\x0c", "\x0b", "\x1c", "\x1d", "\x1e", "\r", "\ufeff"]
KEY_CHARS = "abcXYZ09.:@[]_-ßΣςéİ"

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


TYPES = list(map_types())
# How postmap stores keys with smtputf8 on (the private config_dir's default):
# full Unicode case folding (ICU), which str.casefold implements.
fold = str.casefold
DUMPABLE = [t for t in ("hash", "btree", "lmdb", "dbm", "sdbm") if t in TYPES]
CDB = "cdb" in TYPES

keys = st.text(KEY_CHARS, min_size=1, max_size=8)
secret_piece = st.text(SECRET_CHARS, min_size=1, max_size=6)
secret_value = st.one_of(
    st.lists(st.one_of(secret_piece, st.sampled_from(ODD + [" ", "\t", '"', "\\"])),
             min_size=1, max_size=8).map("".join),
    secret_piece.map(lambda p: (p * 1000)[:1000]))  # 1,000-char values
space = st.text(" \t", min_size=1, max_size=3)
line = st.one_of(
    st.tuples(keys, space, secret_value).map("".join),             # key value
    st.tuples(st.sampled_from(["", " ", "\t"]), st.just("#"),
              secret_value).map("".join),                          # comment
    st.sampled_from(["", " ", "\t", "\r", " \t "]),                 # blank
    st.tuples(space, secret_value).map("".join),                    # continuation
    keys,                                                           # key, no value
    st.tuples(keys, space, st.sampled_from(['"', 'x"y', "\\"]),
              secret_value).map("".join),                           # quotes, escapes
    st.tuples(st.just('"'), keys, space, keys, st.just('"'), keys, space,
              secret_value).map("".join),                           # "a b"c value
    st.tuples(keys, st.just("\\"), space, keys, space,
              secret_value).map("".join),                           # a\ b value
)
table_text = st.tuples(
    st.lists(line, max_size=12), st.sampled_from(["\n", "\r\n"]), st.booleans(),
    st.booleans(),
).map(lambda t: ("\ufeff" if t[2] else "") + t[1].join(t[0]) + (t[1] if t[3] else ""))


def postfix_view(conf, path, text, map_type):
    """What Postfix's postmap stores for text, as the set of the lines
    ``postmap -s`` prints (folded key, tab, value): a quoted key may hold a
    tab, so the lines are compared whole, never split here."""
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    subprocess.run(["postmap", "-c", conf, f"{map_type}:{path}"], check=True,
                   capture_output=True)
    out = subprocess.run(["postmap", "-c", conf, "-s", f"{map_type}:{path}"], check=True,
                         capture_output=True).stdout.decode()
    return set(out.split("\n")[:-1])


def as_lines(entries):
    return {f"{k}\t{v}" for k, v in entries.items()}


def cdb_lookup(conf, path, key):
    res = subprocess.run(["postmap", "-c", conf, "-q", key, f"cdb:{path}"],
                         capture_output=True)
    return res.stdout.decode()[:-1] if res.returncode == 0 else None


def assert_no_secret(ret):
    shown = repr(ret.changes) + ret.comment
    leaked = sorted({c for c in shown if c in SECRET_CHARS})
    assert not leaked, f"secret characters {leaked} in the return: {ret.raw}"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("differential")


@SETTINGS
@given(text=table_text)
def test_parse_agrees_with_postmap(loaders, config_dir, workdir, text):
    mod = loaders.modules.postmap
    ours = {fold(k): v for k, v in mod.parse(text)}
    path = str(workdir / "table")
    for map_type in DUMPABLE:
        assert postfix_view(config_dir, path, text, map_type) == as_lines(ours), map_type
        assert mod.dump(path, map_type, config_dir) == ours, map_type
    if CDB:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
        subprocess.run(["postmap", "-c", config_dir, f"cdb:{path}"], check=True,
                       capture_output=True)
        firsts = {ln.split(None, 1)[0] for ln in text.split("\n") if ln.split()
                  and '"' not in ln}  # (a quoted key's first word is no key)
        for key in (set(ours) | {fold(k) for k in firsts}) - {"-"}:  # -: stdin
            assert cdb_lookup(config_dir, path, key) == ours.get(key), key
        assert mod.dump(path, "cdb", config_dir) == ours  # read without postmap -s


# Values render() takes (no control character), and anything a pillar may hold.
good_value = st.lists(st.one_of(secret_piece, st.sampled_from(
    ["\u2029", "\u2028", "\x85", "\ufeff", " ", '"', "\\"])), min_size=1,
    max_size=6).map("".join).filter(lambda v: v.strip(SPACE))
any_key = st.text(KEY_CHARS + ' "\\#\t', min_size=0, max_size=6)
any_value = st.one_of(st.none(), st.sampled_from(["", "  "]), secret_value)
entry_dicts = st.one_of(st.dictionaries(keys, good_value, max_size=6),
                        st.dictionaries(st.one_of(keys, any_key),
                                        st.one_of(good_value, any_value), max_size=6))


@SETTINGS
@given(entries=entry_dicts)
def test_entries_are_stored_as_declared_or_refused_by_key(loaders, config_dir, workdir,
                                                          entries):
    mod = loaders.modules.postmap
    try:
        text = mod.render(entries)
    except SaltInvocationError as exc:
        event("refused")
        message = str(exc)
        assert not {c for c in message if c in SECRET_CHARS}, message
        assert "entries" in message and ("key" in message or "value" in message)
        return
    event("stored")
    expected = {fold(k): v.strip(SPACE) for k, v in entries.items()}
    assert {fold(k): v for k, v in mod.parse(text)} == expected
    for map_type in DUMPABLE[:1]:
        assert postfix_view(config_dir, str(workdir / "entries"), text,
                            map_type) == as_lines(expected)


@settings(max_examples=10, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(first=table_text, second=table_text,
       entries=st.lists(st.tuples(keys, secret_value), max_size=4),
       changed=st.lists(secret_value, min_size=4, max_size=4))
def test_a_secret_table_never_shows_a_value(loaders, config_dir, workdir, first, second,
                                            entries, changed):
    path = str(workdir / "secret")
    mod = loaders.modules.postmap
    with_keys = {}
    for key, value in entries:
        with_keys.setdefault(key, value)
    for contents in (first, second):
        ret = loaders.states.postmap.managed(name=path, contents=contents, map_type="hash",
                                             secret=True, config_dir=config_dir)
        assert ret.result is True, ret.comment
        assert_no_secret(ret)
    try:
        mod.render(with_keys)
    except SaltInvocationError:
        return
    for values in (list(with_keys.values()), changed):
        new = dict(zip(with_keys, values))
        ret = loaders.states.postmap.managed(name=path, entries=new, map_type="hash",
                                             secret=True, config_dir=config_dir)
        assert_no_secret(ret)
    mod.remove(path)


@pytest.fixture(scope="module")
def ascii_conf(tmp_path_factory):
    """A config dir with smtputf8_enable = no: Postfix folds ASCII only."""
    conf = tmp_path_factory.mktemp("conf-ascii")
    (conf / "main.cf").write_text("compatibility_level = 3.6\nsmtputf8_enable = no\n")
    os.utime(conf / "main.cf", (0, 0))  # old: Postfix commands don't wait for it
    return str(conf)


def ascii_fold(key):
    return "".join(c.lower() if "A" <= c <= "Z" else c for c in key)


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(text=table_text)
def test_parse_agrees_with_postmap_without_smtputf8(loaders, ascii_conf, workdir, text):
    mod = loaders.modules.postmap
    assert mod.folds_utf8(ascii_conf) is False
    ours = {ascii_fold(k): v for k, v in mod.parse(text, utf8=False)}
    path = str(workdir / "ascii")
    assert postfix_view(ascii_conf, path, text, "hash") == as_lines(ours)
    assert mod.dump(path, "hash", ascii_conf) == ours
