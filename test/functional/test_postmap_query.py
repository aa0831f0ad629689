"""postmap.query answers as `postmap -q` does, compiled table present or not."""

import os
import subprocess

import pytest

from map_types import indexed_types


def postmap_q(config_dir, key, spec):
    """Postfix's own answer: the value, or None when it finds none."""
    res = subprocess.run(["postmap", "-c", config_dir, "-q", key, spec],
                         capture_output=True, text=True, check=False)
    return res.stdout[:-1] if res.returncode == 0 else None


@pytest.mark.parametrize("map_type", indexed_types())
def test_query_agrees_with_postmap_before_and_after_compiling(loaders, config_dir, table_dir,
                                                              map_type):
    query = loaders.modules.postmap.query
    table = table_dir / "passwd"
    table.write_text("[smtp.example.net]:587 user:secret\n")
    spec = f"{map_type}:{table}"
    key = "[smtp.example.net]:587"
    never_compiled = query(str(table), key, map_type, config_dir)
    assert never_compiled is None and postmap_q(config_dir, key, spec) is None
    subprocess.run(["postmap", "-c", config_dir, spec], check=True)
    assert query(str(table), key, map_type, config_dir) == "user:secret" \
        == postmap_q(config_dir, key, spec)
    assert query(str(table), "other", map_type, config_dir) is None \
        and postmap_q(config_dir, "other", spec) is None
    # one of its compiled files gone (dbm has two): Postfix finds nothing
    for compiled in loaders.modules.postmap.compiled_files(str(table), map_type)[-1:]:
        os.unlink(compiled)
    assert query(str(table), key, map_type, config_dir) is None \
        and postmap_q(config_dir, key, spec) is None


@pytest.mark.parametrize("map_type, text", [("texthash", "k v\n"), ("regexp", "/^k$/ v\n")])
def test_text_types_have_no_compiled_file_and_are_asked(loaders, config_dir, table_dir,
                                                        map_type, text):
    table = table_dir / "passwd"
    table.write_text(text)
    spec = f"{map_type}:{table}"
    assert loaders.modules.postmap.query(str(table), "k", map_type, config_dir) == "v" \
        == postmap_q(config_dir, "k", spec)
