"""The table types this host's Postfix supports, asked once per process.

Test modules choose their parameters from it at import, in every pytest
process that collects them (each xdist worker, each older-Salt run): the
private main.cf is backdated, or postconf would first wait ~1.8 s for a file
younger than 2 s.
"""

import functools
import os
import subprocess
import tempfile
import time

INDEXED = ("hash", "btree", "lmdb", "cdb", "dbm")


@functools.cache
def map_types():
    """``postconf -m`` with an empty private config (the host may have no main.cf)."""
    with tempfile.TemporaryDirectory() as conf:
        main_cf = os.path.join(conf, "main.cf")
        open(main_cf, "w").close()
        old = time.time() - 60
        os.utime(main_cf, (old, old))
        res = subprocess.run(["postconf", "-c", conf, "-m"], capture_output=True, text=True,
                             check=False)
    return tuple(res.stdout.split())


def indexed_types():
    """The compiled (indexed) types among them, in a fixed order."""
    return [name for name in INDEXED if name in map_types()]
