"""
Postfix lookup tables: a source file and, for indexed types, its compiled table,
kept in sync atomically and without ever exposing a secret.

The ``postmap`` state is a thin layer over these functions; each can be called
on its own:

.. code-block:: bash

    salt-call postmap.in_sync /etc/postfix/sasl/passwd
    salt-call postmap.query /etc/postfix/sasl/passwd '[smtp.example.net]:587'

In sync means: the source holds exactly the declared text with the declared
mode and owner, and (indexed types) the compiled table exists, is not older
than the source and holds exactly the source's entries. After each build a
stamp (source digest and the compiled file's inode, size and mtime) is kept in
Salt's cache, so a no-op check reads the source and stats the table instead of
dumping it; without a matching stamp the table is dumped (``postmap -s``) and
compared entry by entry, or rebuilt where its type cannot be dumped (cdb).
"""

import contextlib
import grp
import hashlib
import json
import os
import pwd
import re
import stat
import tempfile

from salt.exceptions import CommandExecutionError, SaltInvocationError

__virtualname__ = "postmap"

# Compiled files each indexed type writes next to the source.
INDEXED = {
    "hash": (".db",),
    "btree": (".db",),
    "lmdb": (".lmdb",),
    "cdb": (".cdb",),
    "dbm": (".dir", ".pag"),
    "sdbm": (".dir", ".pag"),
}
# Types that postmap -s can list (sequence operation).
DUMPABLE = {"hash", "btree", "lmdb", "dbm", "sdbm"}
PACKAGES = {  # Debian packages of the dynamically loaded types
    "lmdb": "postfix-lmdb", "cdb": "postfix-cdb", "pcre": "postfix-pcre",
    "ldap": "postfix-ldap", "mysql": "postfix-mysql", "pgsql": "postfix-pgsql",
    "sqlite": "postfix-sqlite",
}
# Applied to items joined with "\n": anything but that separator is refused.
_BAD_KEY = re.compile(r"[^\S\n]|[\x00-\x09\x0b-\x1f\x7f]")
_BAD_VALUE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")


def __virtual__():
    return __virtualname__


# -- helpers -------------------------------------------------------------------

def _run(argv):
    return __salt__["cmd.run_all"](argv, python_shell=False, ignore_retcode=True,
                                   output_loglevel="quiet")


def redact(text, values):
    """
    text with every one of values masked (for errors of secret tables).

    CLI Example:

    .. code-block:: bash

        salt-call postmap.redact 'user:pw failed' '["user:pw"]'
    """
    parts = set()
    for value in values or []:
        parts.add(value)
        parts.add(value.partition(":")[2])  # the password alone, for user:password
    # Very short strings would mask ordinary words and protect nothing.
    for part in sorted((p for p in parts if len(p) >= 4), key=len, reverse=True):
        text = text.replace(part, "********")
    return text


def _mode(mode):
    return int(str(mode), 8) if not isinstance(mode, int) else mode


def _ids(user, group):
    return pwd.getpwnam(user).pw_uid, grp.getgrnam(group).gr_gid


def _stamp_file(path):
    digest = hashlib.sha256(os.path.abspath(path).encode()).hexdigest()[:32]
    cachedir = __opts__.get("cachedir", "/var/cache/salt")
    return os.path.join(cachedir, "postmap", f"{digest}.json")


def _stat_key(path):
    st = os.stat(path)
    return [st.st_ino, st.st_size, st.st_mtime_ns]


# -- pure functions ------------------------------------------------------------

def parse(text):
    """
    Parse Postfix table text into a list of (key, value) as postmap reads it.

    Comments (# first) and blank lines are skipped, lines starting with
    whitespace continue the previous entry.

    CLI Example:

    .. code-block:: bash

        salt-call postmap.parse 'root me@example.org'
    """
    entries = []
    for line in (text or "").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if line[0].isspace() and entries:
            key, value = entries[-1]
            entries[-1] = (key, f"{value} {stripped}".strip())
            continue
        key, _, value = stripped.partition(" ") if " " in stripped.split("\t")[0] \
            else stripped.partition("\t")
        entries.append((key, value.strip()))
    return entries


def render(entries):
    """
    Validate an entries mapping and render it as table text (one ``key value``
    line each). Duplicate keys (also differing only in case, as postmap folds
    keys), empty keys, keys with whitespace and any control character are
    refused, since they would change or inject table lines.

    CLI Example:

    .. code-block:: bash

        salt-call postmap.render '{"root": "me@example.org"}'
    """
    if not isinstance(entries, dict):
        raise SaltInvocationError("entries must be a mapping of key to value")
    keys = [str(k) for k in entries]
    values = ["" if v is None else str(v) for v in entries.values()]
    if any(not k for k in keys):
        raise SaltInvocationError("entries: a key is empty")
    # One regex pass over all keys and one over all values keeps 100k entries
    # fast; a newline inside an item shows as an extra line in the join.
    joined_keys, joined_values = "\n".join(keys), "\n".join(values)
    if _BAD_KEY.search(joined_keys) or joined_keys.count("\n") != len(keys) - 1:
        key = next(k for k in keys if re.search(r"[\s\x00-\x1f\x7f]", k))
        raise SaltInvocationError(
            f"entries: key {key!r} contains whitespace or a control character")
    if any(k.startswith("#") for k in keys):
        raise SaltInvocationError("entries: a key starting with '#' would be a comment")
    if _BAD_VALUE.search(joined_values) or joined_values.count("\n") != len(values) - 1:
        key = next(k for k, v in zip(keys, values) if re.search(r"[\x00-\x1f\x7f]", v))
        raise SaltInvocationError(
            f"entries: the value of {key!r} contains a newline or control character")
    folded = [k.lower() for k in keys]
    if len(set(folded)) != len(folded):
        seen, dups = set(), []
        for k in folded:
            if k in seen:
                dups.append(k)
            seen.add(k)
        raise SaltInvocationError(
            f"entries: duplicate keys (postmap folds case): {', '.join(sorted(set(dups)))}")
    return "".join(f"{k} {v.strip()}\n" for k, v in zip(keys, values))


def entry_changes(old_entries, new_entries, secret=False):
    """Keys added, removed and changed; values only when not secret."""
    old = {k.lower(): v for k, v in old_entries}
    new = {k.lower(): v for k, v in new_entries}
    added = sorted(set(new) - set(old))
    removed = sorted(set(old) - set(new))
    changed = sorted(k for k in set(old) & set(new) if old[k] != new[k])
    if secret:
        out = {"added": added, "removed": removed, "changed": changed}
    else:
        out = {"added": {k: new[k] for k in added},
               "removed": {k: old[k] for k in removed},
               "changed": {k: {"old": old[k], "new": new[k]} for k in changed}}
    return {k: v for k, v in out.items() if v}


# -- host facts ------------------------------------------------------------------

def map_types(config_dir="/etc/postfix"):
    """
    The table types this host's Postfix supports (``postconf -m``).

    CLI Example:

    .. code-block:: bash

        salt-call postmap.map_types
    """
    return __salt__["postfix_control.facts"](config_dir)["map_types"]


def default_type(config_dir="/etc/postfix"):
    """
    Postfix's ``default_database_type`` (hash, lmdb or cdb by distribution).

    CLI Example:

    .. code-block:: bash

        salt-call postmap.default_type
    """
    return __salt__["postfix_control.facts"](config_dir)["default_database_type"]


def check_type(map_type, config_dir="/etc/postfix"):
    """Raise a clear error when this Postfix cannot use map_type."""
    supported = map_types(config_dir)
    if map_type not in supported:
        package = PACKAGES.get(map_type)
        hint = f" (install {package} on Debian/Ubuntu)" if package else ""
        raise SaltInvocationError(
            f"map_type {map_type!r} is not supported by this Postfix{hint}; "
            f"postconf -m lists: {', '.join(supported)}")


def compiled_files(path, map_type):
    """
    The compiled files of a table (empty for text types such as regexp).

    CLI Example:

    .. code-block:: bash

        salt-call postmap.compiled_files /etc/postfix/sasl/passwd hash
    """
    return [path + suffix for suffix in INDEXED.get(map_type, ())]


def outdated_files(path, map_type):
    """
    The compiled files of a table that are missing, or older than an existing
    source (Postfix then reads no entries, or old ones).

    CLI Example:

    .. code-block:: bash

        salt-call postmap.outdated_files /etc/aliases hash
    """
    source = os.stat(path).st_mtime if os.path.exists(path) else None
    return [f for f in compiled_files(path, map_type)
            if not os.path.exists(f) or (source is not None and os.stat(f).st_mtime < source)]


# -- execution functions -------------------------------------------------------

def dump(path, map_type=None, config_dir="/etc/postfix"):
    """
    The entries of a compiled table, as a dict (``postmap -s``).

    CLI Example:

    .. code-block:: bash

        salt-call postmap.dump /etc/postfix/virtual hash
    """
    map_type = map_type or default_type(config_dir)
    with __utils__["postfix_files.readable_config_dir"](config_dir) as conf:
        res = _run(["postmap", "-c", conf, "-s", f"{map_type}:{path}"])
    if res["retcode"]:
        raise CommandExecutionError(f"postmap -s {map_type}:{path} failed")
    out = {}
    for line in res["stdout"].splitlines():
        key, _, value = line.partition("\t")
        out[key] = value
    return out


def query(path, key, map_type=None, config_dir="/etc/postfix"):
    """
    Look a key up the way Postfix does (``postmap -q``); None when absent.

    CLI Example:

    .. code-block:: bash

        salt-call postmap.query /etc/postfix/sasl/passwd '[smtp.example.net]:587'
    """
    map_type = map_type or default_type(config_dir)
    with __utils__["postfix_files.readable_config_dir"](config_dir) as conf:
        res = _run(["postmap", "-c", conf, "-q", key, f"{map_type}:{path}"])
    if res["retcode"] == 1:
        return None
    if res["retcode"]:
        raise CommandExecutionError(f"postmap -q on {map_type}:{path} failed: "
                                    f"{res['stderr'].strip()}")
    return res["stdout"]


def in_sync(path, text, map_type=None, mode="0600", user="root", group="root",
            config_dir="/etc/postfix"):
    """
    Whether a table matches the declared text; returns ``{"in_sync": bool,
    "source": [reasons], "compiled": [reasons]}``. Source reasons need the
    source rewritten; compiled reasons need a rebuild.

    CLI Example:

    .. code-block:: bash

        salt-call postmap.in_sync /etc/postfix/sasl/passwd "$(cat /etc/postfix/sasl/passwd)"
    """
    map_type = map_type or default_type(config_dir)
    source, compiled = [], []
    data = text.encode()
    try:
        st = os.stat(path)
        with open(path, "rb") as handle:
            current = handle.read()
    except FileNotFoundError:
        st, current = None, None
    if st is None:
        source.append("source missing")
    else:
        if current != data:
            source.append("source content differs")
        uid, gid = _ids(user, group)
        if stat.S_IMODE(st.st_mode) != _mode(mode) or (st.st_uid, st.st_gid) != (uid, gid):
            source.append("source mode or owner differs")
    files = compiled_files(path, map_type)
    if files and not source:
        compiled = _compiled_reasons(path, files, map_type, data, st, mode, user, group,
                                     config_dir)
    elif files:
        compiled = ["source changed"]
    return {"in_sync": not source and not compiled, "source": source, "compiled": compiled}


def _compiled_reasons(path, files, map_type, data, source_st, mode, user, group,
                      config_dir):
    missing = [f for f in files if not os.path.exists(f)]
    if missing:
        return ["compiled table missing"]
    uid, gid = _ids(user, group)
    stats = [os.stat(f) for f in files]
    if any(s.st_size == 0 for s in stats):
        return ["compiled table empty (corrupt)"]
    if any(s.st_mtime_ns < source_st.st_mtime_ns for s in stats):
        return ["compiled table older than the source"]
    if any(stat.S_IMODE(s.st_mode) != _mode(mode) or (s.st_uid, s.st_gid) != (uid, gid)
           for s in stats):
        return ["compiled table mode or owner differs"]
    stamp = _read_stamp(path)
    digest = hashlib.sha256(data).hexdigest()
    if stamp == {"digest": digest, "compiled": [_stat_key(f) for f in files]}:
        return []
    # No stamp of ours for these files: compare entry by entry.
    if map_type not in DUMPABLE:
        return ["compiled table not built by this state (cannot be listed: rebuilt)"]
    try:
        entries = dump(path, map_type, config_dir)
    except CommandExecutionError:
        return ["compiled table unreadable (corrupt)"]
    expected = {k.lower(): v for k, v in parse(data.decode())}
    if entries != expected:
        return ["compiled table holds other entries than the source"]
    _write_stamp(path, digest, files)
    return []


def _read_stamp(path):
    try:
        with open(_stamp_file(path), encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def _write_stamp(path, digest, files):
    target = _stamp_file(path)
    with contextlib.suppress(OSError):
        __utils__["postfix_files.private_dir"](os.path.dirname(target))
        # The digest is of the table text, secrets included: root-only.
        __utils__["postfix_files.write_atomic"](
            target, json.dumps({"digest": digest, "compiled": [_stat_key(f) for f in files]}),
            mode=0o600, backdate_mtime=False)


def _private_temp(directory, name):
    """A new empty file only root can read, whatever the umask."""
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    os.fchmod(fd, 0o600)
    return fd, tmp


def build(path, text, map_type=None, mode="0600", user="root", group="root",
          config_dir="/etc/postfix", secrets=None):
    """
    Write the source and (indexed types) compile it, atomically: both are built
    under temporary names in the table's directory and renamed into place,
    compiled table first. The compiled table never has more permissions than
    the source. ``secrets`` are masked in any error.

    CLI Example:

    .. code-block:: bash

        salt-call postmap.build /etc/postfix/virtual 'root me@example.org' hash mode=0644
    """
    map_type = map_type or default_type(config_dir)
    check_type(map_type, config_dir)
    directory, name = os.path.split(os.path.abspath(path))
    uid, gid = _ids(user, group)
    final_mode = _mode(mode)
    data = text.encode()
    fd, tmp = _private_temp(directory, name)
    made = [tmp]
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
            os.fchown(handle.fileno(), uid, gid)
        files = compiled_files(path, map_type)
        if files:
            made.extend(tmp + suffix for suffix in INDEXED[map_type])
            with __utils__["postfix_files.readable_config_dir"](config_dir) as conf:
                res = _run(["postmap", "-c", conf, f"{map_type}:{tmp}"])
            if res["retcode"]:
                detail = redact(res["stderr"].replace(tmp, path), secrets or [])
                raise CommandExecutionError(f"postmap {map_type}:{path} failed: "
                                            f"{detail.strip()}")
            for suffix, target in zip(INDEXED[map_type], files):
                os.chown(tmp + suffix, uid, gid)
                os.chmod(tmp + suffix, final_mode)
                os.replace(tmp + suffix, target)
        os.chmod(tmp, final_mode)
        os.replace(tmp, path)
        if files:
            _write_stamp(path, hashlib.sha256(data).hexdigest(), files)
    finally:
        for leftover in made:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)
    return True


def remove(path, map_type=None):
    """
    Remove a table's source and compiled files (every indexed type's when
    map_type is not given). Returns the removed paths.

    CLI Example:

    .. code-block:: bash

        salt-call postmap.remove /etc/postfix/old_map
    """
    suffixes = INDEXED.get(map_type, ()) if map_type else \
        sorted({s for group in INDEXED.values() for s in group})
    removed = []
    for candidate in [path] + [path + s for s in suffixes]:
        if os.path.lexists(candidate):
            os.unlink(candidate)
            removed.append(candidate)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_stamp_file(path))
    return removed


def present(path, map_type=None):
    """
    The files of a table that exist (what ``remove`` would delete).

    CLI Example:

    .. code-block:: bash

        salt-call postmap.present /etc/postfix/old_map
    """
    suffixes = INDEXED.get(map_type, ()) if map_type else \
        sorted({s for group in INDEXED.values() for s in group})
    return [p for p in [path] + [path + s for s in suffixes] if os.path.lexists(p)]
