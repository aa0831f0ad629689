"""
File helpers shared by the formula's execution modules (Salt ``__utils__``).

Postfix commands that read a main.cf written less than ~2 s ago first sleep
about 1.8 s (Postfix waits for files that may still be being written). Files
here are always complete when they appear (temp file + rename), so their
mtime is set back and nothing that follows pays that wait.
"""

import contextlib
import os
import shutil
import tempfile
import time


def backdate(path, seconds=2.5):
    """Set path's times back so Postfix does not wait for it to settle."""
    then = time.time() - seconds
    os.utime(path, (then, then))


@contextlib.contextmanager
def readable_config_dir(config_dir):
    """Yield a config dir Postfix commands can read, even before main.cf exists
    (a fresh install answered "No configuration")."""
    if os.path.exists(os.path.join(config_dir, "main.cf")):
        yield config_dir
        return
    tmp = tempfile.mkdtemp(prefix="postfix_relay.")
    try:
        path = os.path.join(tmp, "main.cf")
        open(path, "w").close()
        backdate(path)
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_atomic(path, text, mode=0o644, backdate_mtime=True, owner=None):
    """Write text to path through a temp file (0600 until done), fsync and
    rename; ``owner`` is a (uid, gid) pair, default: the writer's."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".postfix_relay.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
            if owner is not None:
                os.fchown(handle.fileno(), *owner)
        os.chmod(tmp, mode)
        if backdate_mtime:
            backdate(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def private_dir(path):
    """Create path (root-only), or make an existing one root-only again: the
    formula's caches must not be writable by others, whatever the umask was."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    if os.stat(path).st_mode & 0o077:
        os.chmod(path, 0o700)
    return path
