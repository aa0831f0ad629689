"""Root conftest: makes test/ importable (relay.py, helpers.py) for every suite."""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
