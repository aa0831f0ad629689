"""
The relay password: never more readable than root-only at any moment of an
apply, whatever the umask, and, after the whole test run (this module runs
last), found nowhere but in the password table and its compiled form.
"""

import ctypes
import os
import pathlib
import select
import shutil
import stat
import struct
import threading

from conftest import PASSWORD, dump

SASL_DIR = pathlib.Path("/etc/postfix/sasl")
TABLES = {"/etc/postfix/sasl/passwd", "/etc/postfix/sasl/passwd.db"}


# inotify(7): each file created, written, renamed into place or changed in
# mode in the directory wakes the watcher at once, which then looks at it.
IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE, IN_MOVED_TO, IN_CREATE = 0x2, 0x4, 0x8, 0x80, 0x100
IN_Q_OVERFLOW, IN_IGNORED = 0x4000, 0x8000
LIBC = ctypes.CDLL(None, use_errno=True)


class ModeWatcher(threading.Thread):
    """Looks at the password table's directory at every change in it (inotify;
    it used to list it in a loop, a CPU core for the whole apply) and notes
    every file that anyone but root could read at that moment."""

    def __init__(self):
        super().__init__(daemon=True)
        self.halt = threading.Event()
        self.names, self.exposed = set(), []
        self.table_replaced = 0
        self.fd = LIBC.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0, os.strerror(ctypes.get_errno())
        self.parent = self.watch(SASL_DIR.parent, IN_CREATE)  # for sasl/ itself
        self.wd = None

    def watch(self, path, mask):
        wd = LIBC.inotify_add_watch(self.fd, str(path).encode(), mask)
        assert wd >= 0, os.strerror(ctypes.get_errno())
        return wd

    def run(self):
        try:
            while not self.halt.is_set():
                if self.wd is None and SASL_DIR.is_dir():
                    self.wd = self.watch(SASL_DIR, IN_CREATE | IN_MODIFY | IN_ATTRIB
                                         | IN_CLOSE_WRITE | IN_MOVED_TO)
                    self.look_at_all()  # what was made before the watch began
                if select.select([self.fd], [], [], 0.1)[0]:
                    self.handle(os.read(self.fd, 65536))
        finally:
            os.close(self.fd)

    def handle(self, data):
        pos = 0
        while pos < len(data):
            wd, mask, _, size = struct.unpack_from("iIII", data, pos)
            name = data[pos + 16:pos + 16 + size].rstrip(b"\0").decode()
            pos += 16 + size
            if mask & IN_Q_OVERFLOW:  # events were lost: look at everything now
                self.look_at_all()
            elif wd == self.wd and mask & IN_IGNORED:  # sasl/ gone: watch the next one
                self.wd = None
            elif wd == self.wd and name:  # (no name: sasl/ itself, 0755 by design)
                if mask & IN_MOVED_TO and name == "passwd.db":
                    self.table_replaced += 1
                self.look_at(SASL_DIR / name)

    def look_at_all(self):
        if not SASL_DIR.is_dir():
            return
        for entry in SASL_DIR.iterdir():
            self.look_at(entry)

    def look_at(self, path):
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return  # renamed away meanwhile: its new name has its own event
        self.names.add(path.name)
        if st.st_mode & 0o077 or st.st_uid != 0:
            self.exposed.append((path.name, oct(stat.S_IMODE(st.st_mode)), st.st_uid))


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
