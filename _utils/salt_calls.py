"""
Calling Salt functions named in state arguments (Salt ``__utils__``).
"""

import inspect


def call_with_saltenv(func, saltenv):
    """Call func with the run's saltenv when it takes one (a function that
    reads the pillar or the file server must see the environment of the run),
    else with no argument."""
    try:
        takes_env = "saltenv" in inspect.signature(func).parameters
    except (TypeError, ValueError):  # no signature to read: call it plainly
        takes_env = False
    return func(saltenv=saltenv) if takes_env else func()
