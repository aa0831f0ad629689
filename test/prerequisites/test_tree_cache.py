"""
The Debian trees' cache key: a tree is reused only when it was made from the
same suite, packages, Python, pinned Salt and preparation step.
"""

import pathlib

import debian_chroot
from debian_chroot import tree_key


def prepare_a(chroot):
    chroot.run("true")


def prepare_b(chroot):
    chroot.run("false")


def test_same_inputs_same_tree_in_any_package_order():
    assert tree_key("trixie", "python3", ["a", "b"]) == tree_key("trixie", "python3", ["b", "a"])


def test_each_input_makes_another_tree():
    base = tree_key("trixie", "python3", ["a"], prepare_a)
    assert base.startswith("trixie-")
    others = {tree_key("sid", "python3", ["a"], prepare_a),
              tree_key("trixie", "python3.13", ["a"], prepare_a),
              tree_key("trixie", "python3", ["a", "c"], prepare_a),
              tree_key("trixie", "python3", ["a"], prepare_b),
              tree_key("trixie", "python3", ["a"])}
    assert base not in others and len(others) == 5


def test_another_salt_pin_makes_another_tree(tmp_path, monkeypatch):
    before = tree_key("trixie", "python3", [])
    repo = tmp_path / "repo"
    repo.mkdir()
    text = (debian_chroot.REPO / "requirements.txt").read_text()
    (repo / "requirements.txt").write_text(text.replace("salt==", "salt==0.0.0+other#"))
    monkeypatch.setattr(debian_chroot, "REPO", pathlib.Path(repo))
    assert tree_key("trixie", "python3", []) != before


def test_an_edited_preparation_makes_a_tree_of_the_same_kind():
    """Same suite, packages and preparation step, its code edited: another
    tree, which replaces the old one (prune() removes older trees of a kind)."""
    def edited(chroot):
        chroot.run("true", "edited")
    edited.__name__ = prepare_a.__name__
    old, new = (tree_key("sid", "python3", ["a"], p) for p in (prepare_a, edited))
    assert old != new and old.rsplit("-", 1)[0] == new.rsplit("-", 1)[0]
    assert tree_key("sid", "python3", ["a"], prepare_b).rsplit("-", 1)[0] \
        != old.rsplit("-", 1)[0]
