"""
A table's type changes (hash to lmdb, say) while main.cf still names the old
type: the old compiled file must keep answering until main.cf names the new
one, then go (it may hold old passwords). The real postmap, a private config.
"""

import os
import subprocess

import pytest
from map_types import map_types

SECRET = "S3cr3t-type-change-pw"
ENTRIES = {"[smtp.example.net]:587": f"user:{SECRET}"}
SUFFIX = {"hash": ".db", "btree": ".db", "lmdb": ".lmdb", "cdb": ".cdb", "dbm": ".pag"}


def supported():
    return list(map_types())


# the new type: another compiled file than hash's .db
NEW = next((t for t in ("lmdb", "cdb", "dbm") if t in supported()), None)
pytestmark = pytest.mark.skipif(NEW is None, reason="no second indexed type installed")


def lookup(config_dir, path, map_type):
    """What an smtp process started now finds (postmap -q, as Postfix looks up)."""
    res = subprocess.run(["postmap", "-c", config_dir, "-q", "[smtp.example.net]:587",
                          f"{map_type}:{path}"], capture_output=True, text=True, check=False)
    return res.stdout.strip() if res.returncode == 0 else None


def test_old_type_answers_until_pruned(loaders, table_dir, config_dir):
    path = table_dir / "passwd"
    states = loaders.states.postmap
    assert states.managed(name=str(path), entries=ENTRIES, map_type="hash", secret=True,
                          config_dir=config_dir).result is True
    # The table state of the formula: the new type, the old kept for main.cf.
    ret = states.managed(name=str(path), entries=ENTRIES, map_type=NEW, secret=True,
                         config_dir=config_dir, prune_other_types=False)
    assert ret.result is True, ret.comment
    assert "removed_files" not in ret.changes and ret.changes["compiled"].startswith("rebuilt")
    assert os.path.exists(f"{path}.db")
    assert lookup(config_dir, path, "hash") == f"user:{SECRET}"  # the live main.cf's type
    assert lookup(config_dir, path, NEW) == f"user:{SECRET}"
    again = states.managed(name=str(path), entries=ENTRIES, map_type=NEW, secret=True,
                           config_dir=config_dir, prune_other_types=False)
    assert (again.result, again.changes) == (True, {}), again.comment
    # After main.cf names the new type: a dry run reports, the real run removes.
    dry = states.other_types_absent(name=str(path), map_type=NEW, config_dir=config_dir,
                                    test=True)
    assert (dry.result, dry.changes) == (None, {"removed_files": [f"{path}.db"]}), dry.comment
    assert os.path.exists(f"{path}.db")
    ret = states.other_types_absent(name=str(path), map_type=NEW, config_dir=config_dir)
    assert (ret.result, ret.changes) == (True, {"removed_files": [f"{path}.db"]}), ret.comment
    assert not os.path.exists(f"{path}.db")
    assert lookup(config_dir, path, NEW) == f"user:{SECRET}"
    assert os.path.exists(f"{path}{SUFFIX[NEW]}") and path.exists()
    again = states.other_types_absent(name=str(path), map_type=NEW, config_dir=config_dir)
    assert (again.result, again.changes) == (True, {}), again.comment


def test_standalone_managed_still_removes_other_types(loaders, table_dir, config_dir):
    """The default for a table used alone: no old compiled file (old passwords) left."""
    path = table_dir / "passwd"
    states = loaders.states.postmap
    states.managed(name=str(path), entries=ENTRIES, map_type="hash", config_dir=config_dir)
    ret = states.managed(name=str(path), entries=ENTRIES, map_type=NEW, config_dir=config_dir)
    assert ret.result is True and ret.changes["removed_files"] == [f"{path}.db"]
    assert not os.path.exists(f"{path}.db")
