"""
Functional fixtures: Salt's loaders (pytest-salt-factories) with the formula's
own modules and states, run in-process against the real postmap/postconf.
"""

import os
import pathlib
import time

import pytest
import salt.config
from saltfactories.utils.functional import Loaders

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def minion_opts(tmp_path_factory):
    root = tmp_path_factory.mktemp("functional-minion")
    file_root = root / "file_root"
    file_root.mkdir()
    for name in ("postfix_relay", "_modules", "_states", "_utils"):
        (file_root / name).symlink_to(REPO / name)
    opts = salt.config.minion_config(None)
    opts.update({
        "id": "functional",
        "file_client": "local",
        "file_roots": {"base": [str(file_root)]},
        "pillar_roots": {"base": [str(root / "pillar")]},
        "cachedir": str(root / "cache"),
        "extension_modules": str(root / "extmods"),
        "pki_dir": str(root / "pki"),
        "sock_dir": str(root / "sock"),
        "log_file": str(root / "minion.log"),
        # As salt-call sets it (the name it was started as): with a pillar,
        # state.single then starts from the loaded one, as under salt-call,
        # instead of compiling it again for every call (a third of the CPU of
        # these tests).
        "__cli": "salt-call",
    })
    pillar = root / "pillar"
    pillar.mkdir()
    (pillar / "top.sls").write_text("base:\n  '*':\n    - minion\n")
    # An empty pillar counts as none: a minion running the formula has one.
    (pillar / "minion.sls").write_text("functional_tests: true\n")
    return opts


@pytest.fixture(scope="session")
def loaders(minion_opts):
    return Loaders(minion_opts)


@pytest.fixture(autouse=True)
def reset_loaders_state(loaders):
    try:
        yield
    finally:
        loaders.reset_state()


@pytest.fixture(scope="session")
def config_dir(tmp_path_factory):
    """A private Postfix config dir, so these tests never read the host's main.cf."""
    conf = tmp_path_factory.mktemp("postfix-conf")
    (conf / "main.cf").write_text("compatibility_level = 3.6\n")
    old = time.time() - 60  # an old main.cf: Postfix commands don't wait for it
    os.utime(conf / "main.cf", (old, old))
    return str(conf)


@pytest.fixture
def table_dir(tmp_path):
    path = tmp_path / "tables"
    path.mkdir()
    os.chmod(path, 0o755)
    return path
