"""
Type, mode, owner and entries are all part of "in sync": through the real
state, a second apply that changes one of them repairs exactly that (changes
non-empty iff something differed), a third is a no-op, and Postfix reads the
result with the declared type, mode and owner.
"""

import glob
import grp
import os
import pwd
import shutil
import stat
import subprocess

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from map_types import indexed_types


TYPES = indexed_types()
SUFFIXES = {"hash": [".db"], "btree": [".db"], "lmdb": [".lmdb"], "cdb": [".cdb"],
            "dbm": [".dir", ".pag"]}
OWNERS = [o for o in (("root", "root"), ("postfix", "postfix"), ("nobody", "nogroup"))
          if all(_ for _ in (o[0] in {p.pw_name for p in pwd.getpwall()},
                             o[1] in {g.gr_name for g in grp.getgrall()}))]
MODES = ["0600", "0640", "0644"]

config = st.fixed_dictionaries({
    "map_type": st.sampled_from(TYPES),
    "mode": st.sampled_from(MODES),
    "owner": st.sampled_from(OWNERS),
    "entries": st.dictionaries(st.sampled_from(["a", "B", "[smtp.example.net]:587"]),
                               st.sampled_from(["x", "user:pw", "v v"]), min_size=1),
})


def apply(loaders, path, config_dir, conf):
    user, group = conf["owner"]
    return loaders.states.postmap.managed(
        name=path, entries=conf["entries"], map_type=conf["map_type"], mode=conf["mode"],
        user=user, group=group, secret=True, config_dir=config_dir)


def lookup(config_dir, path, map_type, key):
    res = subprocess.run(["postmap", "-c", config_dir, "-q", key, f"{map_type}:{path}"],
                         capture_output=True, text=True)
    return res.stdout[:-1] if res.returncode == 0 else None


def check_on_disk(config_dir, path, conf):
    uid, gid = pwd.getpwnam(conf["owner"][0]).pw_uid, grp.getgrnam(conf["owner"][1]).gr_gid
    files = [path] + [path + s for s in SUFFIXES[conf["map_type"]]]
    for name in files:
        st_ = os.stat(name)
        assert (stat.S_IMODE(st_.st_mode), st_.st_uid, st_.st_gid) == (
            int(conf["mode"], 8), uid, gid), name
    assert sorted(glob.glob(path + "*")) == sorted(files)  # no other type's file left
    for key, value in conf["entries"].items():
        assert lookup(config_dir, path, conf["map_type"], key) == value, key


@settings(max_examples=15, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(first=config, what=st.sampled_from(["nothing", "map_type", "mode", "owner",
                                           "entries"]),
       second=config, forget_stamp=st.booleans())
def test_second_apply_repairs_exactly_what_changed(loaders, config_dir, minion_opts,
                                                   tmp_path_factory, first, what, second,
                                                   forget_stamp):
    path = str(tmp_path_factory.mktemp("sync") / "table")
    changed = dict(first, **({what: second[what]} if what != "nothing" else {}))
    assert apply(loaders, path, config_dir, first).result is True
    if forget_stamp:  # a fresh minion cache: compared with postmap -s instead
        shutil.rmtree(os.path.join(minion_opts["cachedir"], "postmap"), ignore_errors=True)
    ret = apply(loaders, path, config_dir, changed)
    assert ret.result is True, ret.comment
    differs = changed != first
    assert bool(ret.changes) == differs, (what, ret.changes, ret.comment)
    if changed["map_type"] != first["map_type"]:
        assert "compiled" in ret.changes, ret.changes
    again = apply(loaders, path, config_dir, changed)
    assert again.result is True and again.changes == {}, again.comment
    check_on_disk(config_dir, path, changed)
