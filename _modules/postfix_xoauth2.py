"""
Token files of the sasl-xoauth2 Cyrus SASL plugin (XOAUTH2 for Microsoft 365
and Gmail). The plugin, running inside Postfix's smtp process, refreshes the
access token and rewrites the file itself; the formula writes it only when the
pillar's values (refresh token, client, endpoint) change, tracked by a digest
in the minion's cache, so a refreshed file is never overwritten by a re-apply.

CLI Example:

.. code-block:: bash

    salt-call postfix_xoauth2.token_current /var/spool/postfix/etc/sasl-xoauth2/x.json
"""

import contextlib
import hashlib
import json
import os
import pwd
import tempfile

__virtualname__ = "postfix_xoauth2"


def __virtual__():
    return __virtualname__


def digest(data):
    """A digest of the values the formula puts in a token file."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _stamp_file(path):
    name = hashlib.sha256(os.path.abspath(path).encode()).hexdigest()[:24]
    return os.path.join(__opts__.get("cachedir", "/var/cache/salt"), "postfix_relay",
                        f"xoauth2-{name}")


def token_current(path, data):
    """
    True when the token file exists and was written from these values (the
    plugin may have refreshed its access token since: that is current too).

    CLI Example:

    .. code-block:: bash

        salt-call postfix_xoauth2.token_current /etc/sasl-xoauth2/x.json '{...}'
    """
    try:
        with open(_stamp_file(path), encoding="ascii") as handle:
            stamp = handle.read().strip()
    except OSError:
        return False
    return os.path.exists(path) and stamp == digest(data)


def write_token(path, data, user="postfix"):
    """
    Write the token file (0600, owned by the user Postfix's smtp runs as, who
    rewrites it on refresh) atomically, and remember what it was written from.

    CLI Example:

    .. code-block:: bash

        salt-call postfix_xoauth2.write_token /etc/sasl-xoauth2/x.json '{...}'
    """
    entry = pwd.getpwnam(user)
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=".token.", dir=directory)
    try:
        os.fchmod(fd, 0o600)
        os.fchown(fd, entry.pw_uid, entry.pw_gid)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    stamp = _stamp_file(path)
    __utils__["postfix_files.private_dir"](os.path.dirname(stamp))
    fd = os.open(stamp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(digest(data))
    return True
