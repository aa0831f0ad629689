"""
The relay password: never more readable than root-only at any moment of an
apply, whatever the umask, and, after the whole test run (this module runs
last), found nowhere but in the password table and its compiled form.
"""

import os
import pathlib
import shutil
import stat
import threading

from conftest import PASSWORD, dump

SASL_DIR = pathlib.Path("/etc/postfix/sasl")
TABLES = {"/etc/postfix/sasl/passwd", "/etc/postfix/sasl/passwd.db"}


class ModeWatcher(threading.Thread):
    """Lists the password table's directory as fast as it can and notes every
    file that anyone but root could read at that moment."""

    def __init__(self):
        super().__init__(daemon=True)
        self.halt = threading.Event()
        self.looks, self.names, self.exposed = 0, set(), []
        self.table_inode, self.table_replaced = None, 0

    def run(self):
        while not self.halt.is_set():
            try:
                entries = list(os.scandir(SASL_DIR))
            except FileNotFoundError:
                continue
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # renamed away between listing and stat
                self.names.add(entry.name)
                if entry.name == "passwd.db" and st.st_ino != self.table_inode:
                    # counted as changes: a freed inode number may come back
                    self.table_inode, self.table_replaced = st.st_ino, self.table_replaced + 1
                if st.st_mode & 0o077 or st.st_uid != 0:
                    self.exposed.append((entry.name, oct(stat.S_IMODE(st.st_mode)), st.st_uid))
            self.looks += 1


def test_password_files_are_root_only_at_every_moment_of_an_apply(applier):
    shutil.rmtree(SASL_DIR, ignore_errors=True)  # created from nothing, then rebuilt
    watcher = ModeWatcher()
    old_umask = os.umask(0)  # the worst umask a salt-call could inherit
    watcher.start()
    try:
        for password in (PASSWORD, PASSWORD + "-rotated", PASSWORD):
            res = applier.apply(applier.pillar(relay={"password": password}))
            assert res.returncode == 0, dump(res)
    finally:
        os.umask(old_umask)
        watcher.halt.set()
        watcher.join()
    assert watcher.exposed == []
    assert watcher.looks > 100
    # The watcher saw the build: temporary files and three compiled tables.
    assert any(name.startswith(".passwd.") for name in watcher.names), watcher.names
    assert watcher.table_replaced >= 3
    for path in TABLES:
        st = os.stat(path)
        assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o600, 0), path
    # The formula's own caches (Postfix facts, table digests) stay root-only.
    cachedir = applier.cli.config["cachedir"]
    for name in ("postfix_relay", "postmap"):
        assert stat.S_IMODE(os.stat(os.path.join(cachedir, name)).st_mode) == 0o700, name


def files_under(root):
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            if os.path.isfile(path) and not os.path.islink(path):
                yield path


def holds_password(path):
    try:
        with open(path, "rb") as handle:
            return PASSWORD.encode() in handle.read()
    except OSError:
        return False


def test_password_only_in_the_table_after_the_whole_run(applier, minion):
    """Every state and job return, every log, /etc/postfix, the queue, the
    mailboxes and the minion's own files (cache, logs)."""
    assert applier.returns and not [r for r in applier.returns if PASSWORD in r]
    roots = ["/etc/postfix", "/var/spool/postfix", "/var/log", "/var/mail",
             "/var/cache/salt", minion.config["root_dir"]]
    found = sorted({p for root in roots for p in files_under(root) if holds_password(p)})
    assert set(found) <= TABLES, found
    assert found, "the password table itself was not found: the scan is blind"
    for path in found:
        st = os.stat(path)
        assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o600, 0), path
