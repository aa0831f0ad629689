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
