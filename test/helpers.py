"""Shared test helpers: loading the formula's Salt modules as plain Python."""

import importlib.util
import pathlib

REPO = pathlib.Path(__file__).resolve().parent.parent


def load_module(relpath, name=None):
    """Import one of the formula's Salt modules by path (no Salt loader)."""
    path = REPO / relpath
    spec = importlib.util.spec_from_file_location(name or path.stem + "_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def salt_major():
    """The major release of the Salt running the tests (3008, 3007, 3006)."""
    import salt.version  # noqa: PLC0415 (only suites that have Salt call this)

    return salt.version.__saltstack_version__.major


# Older Salt's loaders keep the grains and file_roots a module first saw: a test
# that switches them mid-session (os_family, a second saltenv) can only judge
# the formula on 3008; the formula's code is the same on all three.
NEEDS_SALT_3008_LOADERS = (
    "the loaders of Salt < 3008 keep the grains and file_roots a module first saw")


def forwarded_logs(role):
    """Config for a Salt process salt-factories starts: forward only its
    warnings to pytest. By default it sends every DEBUG record over ZMQ, about
    4 % of a salt-call's CPU time; the process's own log file keeps DEBUG (the
    secret checks read it)."""
    return {f"pytest-{role}": {"log": {"level": "warning"}}}
