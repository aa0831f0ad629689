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
dumping it; without a matching stamp the table is listed (``postmap -s``; a cdb
file, which postmap -s cannot list, is read directly) and compared entry by
entry.
"""

import contextlib
import grp
import hashlib
import json
import os
import pwd
import re
import shutil
import stat
import struct
import tempfile

import salt.utils.files
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


def normalize_mode(mode, default=0o600):
    """
    A file mode as an int, read exactly as Salt's file states read it: its
    digits are the octal mode, so ``0600``, ``'0600'``, ``600`` (what YAML makes
    of an unquoted 0600) and ``'0o600'`` all mean 0600. A Python octal int is
    not such a mode: ``0o600`` is the int 384, refused (8 is no octal digit),
    and ``0o640`` (416) means 0416, as for Salt. None gives ``default``.

    CLI Example:

    .. code-block:: bash

        salt-call postmap.normalize_mode 0644
    """
    if mode is None:
        return default
    hint = "write it quoted, e.g. mode: '0600'"
    if isinstance(mode, bool) or not isinstance(mode, (int, str)):
        raise SaltInvocationError(f"mode {mode!r} is not a file mode: {hint}")
    text = salt.utils.files.normalize_mode(mode)
    if not re.fullmatch(r"[0-7]{1,5}", text or ""):
        raise SaltInvocationError(f"mode {mode!r} is not an octal file mode ({text} has a "
                                  f"digit other than 0-7): {hint}")
    value = int(text, 8)
    if value > 0o7777:
        raise SaltInvocationError(f"mode {mode!r} is out of range (at most 7777): {hint}")
    return value


def _id(value, kind):
    """A uid or gid from a name or a number (as file.managed takes them)."""
    if isinstance(value, bool):
        raise SaltInvocationError(f"{kind} {value!r} is not a {kind} name or id")
    if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
        return int(value)
    try:
        if kind == "user":
            return pwd.getpwnam(str(value)).pw_uid
        return grp.getgrnam(str(value)).gr_gid
    except KeyError:
        raise SaltInvocationError(
            f"{kind} {value!r} does not exist on this host: create it or give another "
            f"{kind}") from None


def _wanted(path, mode, user, group):
    """(mode, uid, gid) declared; None keeps the existing source's, else 0600
    root:root (a table may hold a password: private unless declared)."""
    try:
        st = os.stat(path)
        current = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
    except FileNotFoundError:
        current = (0o600, 0, 0)
    return (normalize_mode(mode, current[0]),
            current[1] if user is None else _id(user, "user"),
            current[2] if group is None else _id(group, "group"))


def _check_name(path):
    """Refuse a name that is no table file path (one message for every caller)."""
    if not isinstance(path, str) or not os.path.isabs(path):
        raise SaltInvocationError(f"name {path!r} is not an absolute path: give the "
                                  "table's full path, e.g. /etc/postfix/virtual")
    if os.path.isdir(path):
        raise SaltInvocationError(f"{path} is a directory: name must be a table file")


def _missing_directory(path):
    """Why the table cannot be written yet (a missing directory), or None.
    A dangling link's target is created, as file.managed writes through the
    link; a missing directory is not (file.managed: "Parent directory not
    present"), for the compiled files beside the name nor for the target."""
    real = os.path.realpath(path)
    for directory in dict.fromkeys([os.path.dirname(path), os.path.dirname(real)]):
        if not os.path.isdir(directory):
            via = f" (the target of the symlink {path})" if os.path.islink(path) else ""
            return (f"directory {directory}{via} does not exist: create it first "
                    "(file.directory) or fix the name")
    return None


def _source_path(path):
    """Where the source is written: a symlinked name is followed, as
    file.managed does (Postfix reads the compiled files beside the name)."""
    _check_name(path)
    missing = _missing_directory(path)
    if missing:
        raise SaltInvocationError(missing)
    return os.path.realpath(path)


def _with_newline(text):
    """Text as a file holds it: a final newline (the shell's $(cat) drops it)."""
    if not isinstance(text, str):
        raise SaltInvocationError("the table text must be a string")
    return text if not text or text.endswith("\n") else text + "\n"


def _stamp_file(path):
    digest = hashlib.sha256(os.path.abspath(path).encode()).hexdigest()[:32]
    cachedir = __opts__.get("cachedir", "/var/cache/salt")
    return os.path.join(cachedir, "postmap", f"{digest}.json")


def _stat_key(path):
    st = os.stat(path)
    return [st.st_ino, st.st_size, st.st_mtime_ns]


# -- pure functions ------------------------------------------------------------

# isspace() in the C locale: what Postfix's ISSPACE() matches (ASCII only).
SPACE = " \t\n\v\f\r"
_KEY_END = re.compile(r"[ \t\n\v\f\r]")


def _logical_lines(text):
    """
    Logical lines as Postfix's readllines() yields them: physical lines end at
    "\n" only; blank lines and lines whose first non-space is '#' are skipped
    anywhere; a line starting with whitespace is appended as is (its leading
    whitespace kept) to the logical line before; a logical line that starts
    with whitespace is dropped (postmap warns).
    """
    current = None
    for line in text.split("\n"):
        body = line.lstrip(SPACE)
        if not body or body.startswith("#"):
            continue
        if line[0] in SPACE and current is not None:
            current += line
            continue
        if current is not None and current[0] not in SPACE:
            yield current
        current = line
    if current is not None and current[0] not in SPACE:
        yield current


def _key_end(line):
    """
    Where the key of a line ends, as postmap's scan finds it: at the first
    whitespace outside double quotes, a backslash escaping the next character;
    None when a quote is left open (postmap skips the line).
    """
    end = _KEY_END.search(line)
    pos = end.start() if end else len(line)
    if '"' not in line[:pos] and "\\" not in line[:pos]:  # the usual key: no quoting
        return pos
    in_quotes, pos = False, 0
    while pos < len(line):
        char = line[pos]
        if char == "\\":
            pos += 1
            if pos >= len(line):
                break
        elif char in SPACE:
            if not in_quotes:
                break
        elif char == '"':
            in_quotes = not in_quotes
        pos += 1
    return None if in_quotes else min(pos, len(line))


def split_line(line):
    """
    (key, value) of one logical line as postmap splits it: the key ends at the
    first whitespace outside double quotes (a backslash escapes the next
    character), the value is trimmed; None when postmap skips the line
    (unbalanced quote, no key or no value). Text after a NUL is ignored.

    CLI Example:

    .. code-block:: bash

        salt-call postmap.split_line 'root me@example.org'
    """
    line = line.split("\0", 1)[0]
    pos = _key_end(line)
    if pos is None:
        return None
    key, value = line[:pos], line[pos + 1:].strip(SPACE)
    return (key, value) if key and value else None


# Postfix without SMTPUTF8 folds ASCII letters only (its lowercase()).
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def fold(key, utf8=True):
    """A key as postmap stores it: Unicode case folding when Postfix runs with
    smtputf8_enable (see ``folds_utf8``), else ASCII letters lowercased only."""
    return key.casefold() if utf8 else key.translate(_ASCII_LOWER)


def parse(text, utf8=True):
    """
    Parse Postfix table text into a list of (key, value) exactly as postmap
    reads it: lines end at "\\n" only, comments and blank lines are skipped,
    continuation lines keep their whitespace, lines without a key or value and
    with unbalanced quotes are skipped, and of duplicate keys (after case
    folding, ``utf8`` as ``folds_utf8`` says) the first one counts.

    CLI Example:

    .. code-block:: bash

        salt-call postmap.parse 'root me@example.org'
    """
    entries, seen = [], set()
    for line in _logical_lines(text or ""):
        pair = split_line(line)
        if pair is None or fold(pair[0], utf8) in seen:
            continue
        seen.add(fold(pair[0], utf8))
        entries.append(pair)
    return entries


def _check_entry(key, value):
    """Refuse an entry postmap would skip or read otherwise."""
    if not value.strip(SPACE):
        raise SaltInvocationError(
            f"entries: the value of {key!r} is empty: Postfix skips a key without a "
            "value; give a value or remove the key")
    if split_line(f"{key} {value}") != (key, value.strip(SPACE)):
        raise SaltInvocationError(
            f"entries: key {key!r} has an unbalanced '\"' or a trailing backslash, "
            "which postmap would misread: fix the key")


# LMDB's largest key (511 bytes) holds the folded key and Postfix's final NUL.
LMDB_MAX_KEY = 510


def _check_keys(keys, map_type, utf8):
    """Refuse keys that postmap folds to one, or that LMDB cannot hold."""
    folded = [fold(k, utf8) for k in keys]
    if len(set(folded)) != len(folded):
        seen, dups = set(), []
        for k in folded:
            if k in seen:
                dups.append(k)
            seen.add(k)
        raise SaltInvocationError(
            f"entries: duplicate keys (postmap folds case): {', '.join(sorted(set(dups)))}")
    if map_type == "lmdb":
        _check_lmdb_keys(zip(keys, folded))


def _check_lmdb_keys(pairs):
    """pairs of (key, folded key): the first too long for LMDB is refused."""
    for key, folded in pairs:
        size = len(folded.encode("utf-8", errors="surrogateescape"))
        if size > LMDB_MAX_KEY:
            shown = f"{key[:40]!r}" + ("..." if len(key) > 40 else "")
            raise SaltInvocationError(
                f"entries: key {shown} is {size} bytes as Postfix stores it; an lmdb "
                f"key holds at most {LMDB_MAX_KEY} bytes (LMDB's {LMDB_MAX_KEY + 1} with "
                "Postfix's final NUL): shorten the key or use another map_type")


def render(entries, map_type=None, utf8=True):
    """
    Validate an entries mapping and render it as table text (one ``key value``
    line each). Duplicate keys (also differing only in case, as postmap folds
    keys), empty keys and values, keys with whitespace or unbalanced quotes and
    any control character are refused, since postmap would skip them or they
    would change or inject table lines. Values are trimmed of leading and
    trailing spaces, as postmap trims them. Keys fold as ``fold`` with
    ``utf8``; for map_type lmdb, keys over LMDB's limit are refused too.

    CLI Example:

    .. code-block:: bash

        salt-call postmap.render '{"root": "me@example.org"}'
    """
    if not isinstance(entries, dict):
        raise SaltInvocationError("entries must be a mapping of key to value")
    if not entries:
        return ""  # an empty table is legal: Postfix finds no key in it
    nested = next((k for k, v in entries.items() if isinstance(v, (dict, list, tuple, set))),
                  None)
    if nested is not None:
        raise SaltInvocationError(f"entries: the value of {str(nested)!r} is a mapping or "
                                  "list: give a string")
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
    quoting = '"' in joined_keys or "\\" in joined_keys
    for key, value in zip(keys, values):
        if not value.strip(SPACE) or (quoting and ('"' in key or "\\" in key)):
            _check_entry(key, value)
    _check_keys(keys, map_type, utf8)
    return "".join(f"{k} {v.strip(SPACE)}\n" for k, v in zip(keys, values))


def entry_changes(old_entries, new_entries, secret=False, utf8=True):
    """Keys added, removed and changed; values only when not secret."""
    old = {fold(k, utf8): v for k, v in old_entries}
    new = {fold(k, utf8): v for k, v in new_entries}
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

def _postconf(args, config_dir):
    with __utils__["postfix_files.readable_config_dir"](config_dir) as conf:
        res = __salt__["postfix_cmd.run"](["postconf", "-c", conf, *args], rstrip=False)
    if res["retcode"]:
        raise CommandExecutionError(f"postconf -c {config_dir} {' '.join(args)} failed: "
                                    f"{res['stderr'].strip()}")
    return res["stdout"]


def _files_key(paths):
    """Identity of the files an answer depends on (missing ones included);
    ctime too: a copy that keeps size and mtime (cp -p) still changes it."""
    parts = []
    for path in paths:
        try:
            st = os.stat(path)
            parts.append([path, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns])
        except (OSError, TypeError):
            parts.append([path, None])
    return json.dumps(parts)


def _answers_file():
    return os.path.join(__opts__.get("cachedir", "/var/cache/salt"), "postmap", "postconf.json")


def _saved_answers():
    """postconf's answers kept on disk by an earlier run (none: {})."""
    if "postmap.saved" not in __context__:
        try:
            with salt.utils.files.fopen(_answers_file(), encoding="utf-8") as handle:
                saved = json.load(handle)
        except (OSError, ValueError):
            saved = {}
        __context__["postmap.saved"] = saved if isinstance(saved, dict) else {}
    return __context__["postmap.saved"]


def _config_dir_exists(name):
    try:
        return os.path.isdir(json.loads(name)[0])
    except (ValueError, TypeError, IndexError):
        return False


def _cached(args, config_dir, depends):
    """postconf's answer while the files it depends on (the postconf binary,
    main.cf, the dynamic map list) are unchanged: kept for the run and on
    disk, so a no-op apply spawns no postconf (a package installed mid-run
    changes the dynamic map list, and with it the key)."""
    key = _files_key([shutil.which("postconf")] + depends)
    name = json.dumps([config_dir, *args])
    saved = _saved_answers()
    entry = saved.get(name)
    if not isinstance(entry, list) or len(entry) != 2 or entry[0] != key:
        entry = saved[name] = [key, _postconf(args, config_dir)]
        if __opts__.get("test"):
            return entry[1]  # a dry run writes nothing, not even a cache
        # answers for config dirs that are gone are dropped: the file stays small
        kept = {k: v for k, v in saved.items() if _config_dir_exists(k)}
        with contextlib.suppress(OSError):  # a cache: the answer stands without it
            __utils__["postfix_files.private_dir"](os.path.dirname(_answers_file()))
            __utils__["postfix_files.write_atomic"](_answers_file(), json.dumps(kept),
                                                   mode=0o600, backdate_mtime=False)
    return entry[1]


def map_types(config_dir="/etc/postfix"):
    """
    The table types this host's Postfix supports (``postconf -m``).

    CLI Example:

    .. code-block:: bash

        salt-call postmap.map_types
    """
    maps = [os.path.join(d, n) for d in {config_dir, "/etc/postfix"}
            for n in ("dynamicmaps.cf", "dynamicmaps.cf.d")]
    return _cached(["-m"], config_dir, sorted(maps)).split()


def default_type(config_dir="/etc/postfix"):
    """
    The ``default_database_type`` the configuration in config_dir yields
    (main.cf's value, else Postfix's built-in default: hash, lmdb or cdb by
    distribution).

    CLI Example:

    .. code-block:: bash

        salt-call postmap.default_type
    """
    main_cf = os.path.join(config_dir, "main.cf")
    return _cached(["-h", "default_database_type"], config_dir, [main_cf]).strip()


def folds_utf8(config_dir="/etc/postfix"):
    """
    Whether Postfix with the configuration in config_dir folds keys as
    Unicode (``smtputf8_enable = yes``, the default since compatibility
    level 3.0) or ASCII letters only.

    CLI Example:

    .. code-block:: bash

        salt-call postmap.folds_utf8
    """
    main_cf = os.path.join(config_dir, "main.cf")
    answer = _cached(["-hx", "smtputf8_enable"], config_dir, [main_cf])  # -x: expanded
    return answer.strip().lower() == "yes"


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


def stale_files(path, map_type):
    """
    Compiled files of other indexed types beside a table (left by an earlier
    type, they may hold old entries, passwords included).

    CLI Example:

    .. code-block:: bash

        salt-call postmap.stale_files /etc/postfix/sasl/passwd lmdb
    """
    own = set(INDEXED.get(map_type, ()))
    others = sorted({s for group in INDEXED.values() for s in group} - own)
    return [path + s for s in others if os.path.lexists(path + s)]


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

def read(path):
    """
    A table source's text exactly as postmap reads it (no newline
    translation), or None when it does not exist.

    CLI Example:

    .. code-block:: bash

        salt-call postmap.read /etc/postfix/virtual
    """
    try:
        with open(path, "rb") as handle:
            return handle.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return None


def dump(path, map_type=None, config_dir="/etc/postfix"):
    """
    The entries of a compiled table, as a dict (``postmap -s``).

    CLI Example:

    .. code-block:: bash

        salt-call postmap.dump /etc/postfix/virtual hash
    """
    map_type = map_type or default_type(config_dir)
    if map_type == "cdb":  # postmap -s cannot list cdb
        return _cdb_dump(path + ".cdb")
    with __utils__["postfix_files.readable_config_dir"](config_dir) as conf:
        res = __salt__["postfix_cmd.run"](["postmap", "-c", conf, "-s", f"{map_type}:{path}"],
                                          rstrip=False)
    if res["retcode"]:
        raise CommandExecutionError(f"postmap -s {map_type}:{path} failed")
    out = {}
    # One entry a line, "\n" only: a value may hold \r or U+2028. The key is
    # printed as stored, quoted: it ends where postmap's own scan ends it.
    for line in res["stdout"].split("\n")[:-1]:
        end = _key_end(line)
        if end is None:  # an open quote (not built from text): the first tab
            end = line.find("\t") if "\t" in line else len(line)
        out[line[:end]] = line[end + 1:]
    return out


def _cdb_dump(path):
    """The records of a cdb file in order, first of a key kept (as a lookup
    finds it): a 2048-byte header whose first table position ends the records,
    then (key length, value length, key, value) records, little-endian."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
        end, pos, out = struct.unpack_from("<I", data, 0)[0], 2048, {}
        if not 2048 <= end <= len(data):
            raise ValueError("bad header")
        while pos < end:
            klen, vlen = struct.unpack_from("<II", data, pos)
            record = data[pos + 8:pos + 8 + klen + vlen]
            if len(record) != klen + vlen or pos + 8 + klen + vlen > end:
                raise ValueError("bad record")
            key = record[:klen].decode("utf-8", errors="replace")
            out.setdefault(key, record[klen:].decode("utf-8", errors="replace"))
            pos += 8 + klen + vlen
    except (OSError, ValueError, struct.error):
        raise CommandExecutionError(f"cannot read cdb:{path[:-4]}") from None
    return out


def query(path, key, map_type=None, config_dir="/etc/postfix"):
    """
    Look a key up the way Postfix does (``postmap -q``); None when absent.

    CLI Example:

    .. code-block:: bash

        salt-call postmap.query /etc/postfix/sasl/passwd '[smtp.example.net]:587'
    """
    map_type = map_type or default_type(config_dir)
    if not all(os.path.exists(f) for f in compiled_files(path, map_type)):
        # What postmap answers (no entry), without its fatal error's 1 s sleep
        # (the probe asks several keys of a table that was never compiled).
        return None
    with __utils__["postfix_files.readable_config_dir"](config_dir) as conf:
        res = __salt__["postfix_cmd.run"](
            ["postmap", "-c", conf, "-q", key, f"{map_type}:{path}"], rstrip=False)
    if res["retcode"] == 1:
        return None
    if res["retcode"]:
        raise CommandExecutionError(f"postmap -q on {map_type}:{path} failed: "
                                    f"{res['stderr'].strip()}")
    return res["stdout"][:-1] if res["stdout"].endswith("\n") else res["stdout"]


def in_sync(path, text, map_type=None, mode="0600", user="root", group="root",
            config_dir="/etc/postfix", stamp=True, prune_other_types=True):
    """
    Whether a table matches the declared text; returns ``{"in_sync": bool,
    "source": [reasons], "compiled": [reasons], "stale": [files]}``. Source
    reasons need the source rewritten; compiled reasons need a rebuild; stale
    files are compiled files of another type to remove (none listed, and not
    part of in sync, when ``prune_other_types`` is False). Text without a
    final newline counts as if it had one; mode, user and group as in ``build``.
    A table found in sync by comparing entries is stamped (in Salt's cache)
    unless ``stamp`` is False (a dry run writes nothing).

    CLI Example:

    .. code-block:: bash

        salt-call postmap.in_sync /etc/postfix/sasl/passwd "$(cat /etc/postfix/sasl/passwd)"
    """
    map_type = map_type or default_type(config_dir)
    _check_name(path)
    files = compiled_files(path, map_type)
    if _missing_directory(path):
        # Pending, not an error: in a dry run the file.directory that makes
        # it only reports; build() (a real run) refuses it.
        return {"in_sync": False, "source": ["source missing"],
                "compiled": ["source changed"] if files else [], "stale": []}
    source_path = os.path.realpath(path)
    data = _with_newline(text).encode()
    wanted = _wanted(source_path, mode, user, group)
    source, compiled = [], []
    try:
        st = os.stat(source_path)
        with open(source_path, "rb") as handle:
            current = handle.read()
    except FileNotFoundError:
        st, current = None, None
    if st is None:
        source.append("source missing")
    else:
        if current != data:
            source.append("source content differs")
        if (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) != wanted:
            source.append("source mode or owner differs")
    if files and not source:
        compiled = _compiled_reasons(path, map_type, data, st, wanted, config_dir, stamp)
    elif files:
        compiled = ["source changed"]
    stale = stale_files(path, map_type) if prune_other_types else []
    return {"in_sync": not (source or compiled or stale), "source": source,
            "compiled": compiled, "stale": stale}


def _compiled_reasons(path, map_type, data, source_st, wanted, config_dir, record):
    files = compiled_files(path, map_type)
    if any(not os.path.exists(f) for f in files):
        return ["compiled table missing"]
    stats = [os.stat(f) for f in files]
    if any(s.st_size == 0 for s in stats):
        return ["compiled table empty (corrupt)"]
    if any(s.st_mtime_ns < source_st.st_mtime_ns for s in stats):
        return ["compiled table older than the source"]
    if any((stat.S_IMODE(s.st_mode), s.st_uid, s.st_gid) != wanted for s in stats):
        return ["compiled table mode or owner differs"]
    found = _read_stamp(path)
    digest = hashlib.sha256(data).hexdigest()
    if found == _stamp(digest, map_type, files):
        return []
    if found and found.get("type") not in (None, map_type):
        return [f"compiled table built as {found['type']}, declared {map_type}"]
    # No stamp of ours for these files: compare entry by entry (every
    # indexed type can be listed: postmap -s, cdb read directly).
    try:
        entries = dump(path, map_type, config_dir)
    except CommandExecutionError:
        return [f"compiled table unreadable (corrupt) as {map_type}"]
    utf8 = folds_utf8(config_dir)
    expected = {fold(k, utf8): v for k, v in parse(data.decode(), utf8)}
    if entries != expected:
        return ["compiled table holds other entries than the source"]
    if record:
        _write_stamp(path, digest, map_type, files)
    return []


def _stamp(digest, map_type, files):
    """What a build leaves: the text's digest, the type, the compiled files' stat."""
    return {"digest": digest, "type": map_type, "compiled": [_stat_key(f) for f in files]}


def _read_stamp(path):
    try:
        with open(_stamp_file(path), encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def _write_stamp(path, digest, map_type, files):
    target = _stamp_file(path)
    with contextlib.suppress(OSError):
        __utils__["postfix_files.private_dir"](os.path.dirname(target))
        # The digest is of the table text, secrets included: root-only.
        __utils__["postfix_files.write_atomic"](
            target, json.dumps(_stamp(digest, map_type, files)), mode=0o600,
            backdate_mtime=False)


def _private_temp(directory, name, data):
    """A new file holding data that only root can read, whatever the umask."""
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return tmp


def _compile(tmp, path, map_type, config_dir, secrets):
    """postmap on a root-owned temp source: as root, so it can write in a
    root-owned directory whatever the table's final owner."""
    with __utils__["postfix_files.readable_config_dir"](config_dir) as conf:
        res = __salt__["postfix_cmd.run"](["postmap", "-c", conf, f"{map_type}:{tmp}"],
                                          rstrip=False)
    if res["retcode"]:
        message = _failure(res, tmp, path, map_type, config_dir)
        raise CommandExecutionError(redact(message, secrets or []))


# postmap's own fatal lines: none quotes table text (a duplicate key is only
# fatal without -w and the default duplicate warning; keys are not secret).
_FATAL = re.compile(r"postmap: fatal: ")


def _failure(res, tmp, path, map_type, config_dir):
    """
    Why postmap failed, without a character of the table: only the lines
    postmap starts with its fatal prefix, split at "\n" only (its warnings quote
    table lines, and may hold "fatal:" or a U+2028 that other splits take for
    a line end); LMDB's key limit named by the key, as render() names it.
    """
    fatal = [ln for ln in res["stderr"].split("\n") if _FATAL.match(ln)]
    if map_type == "lmdb" and any("MDB_BAD_VALSIZE" in ln for ln in fatal):
        with open(tmp, "rb") as handle:
            text = handle.read().decode("utf-8", errors="surrogateescape")
        utf8 = folds_utf8(config_dir)
        try:
            _check_lmdb_keys((k, fold(k, utf8)) for k, _ in parse(text, utf8))
        except SaltInvocationError as exc:
            return f"postmap {map_type}:{path} failed: {str(exc).removeprefix('entries: ')}"
    detail = "; ".join(fatal).replace(tmp, path) or f"exit code {res['retcode']}"
    return f"postmap {map_type}:{path} failed: {detail}"


def _place(tmp, target, mode, uid, gid):
    os.chown(tmp, uid, gid)
    os.chmod(tmp, mode)  # after chown, which may clear set-id bits
    os.replace(tmp, target)


def build(path, text, map_type=None, mode="0600", user="root", group="root",
          config_dir="/etc/postfix", secrets=None, prune_other_types=True):
    """
    Write the source and (indexed types) compile it, atomically: both are built
    under temporary names and renamed into place, compiled table first; then
    compiled files of other types beside it are removed (kept when
    ``prune_other_types`` is False: while main.cf still names the old type,
    Postfix reads them; remove them with ``prune`` once it names the new
    one). A symlinked path is
    followed for the source (Postfix reads the compiled files beside the
    link). ``mode`` as Salt's file states read it; ``mode``, ``user`` or
    ``group`` None keep the existing source's (new: 0600 root:root); names or
    numeric ids. The compiled table never has more permissions than the
    source. ``secrets`` are masked in any error. Returns the removed files.

    CLI Example:

    .. code-block:: bash

        salt-call postmap.build /etc/postfix/virtual 'root me@example.org' hash mode=0644
    """
    map_type = map_type or default_type(config_dir)
    check_type(map_type, config_dir)
    source_path = _source_path(path)
    final_mode, uid, gid = _wanted(source_path, mode, user, group)
    data = _with_newline(text).encode()
    files = compiled_files(path, map_type)
    src_dir, src_name = os.path.split(source_path)
    made = [_private_temp(src_dir, src_name, data)]
    try:
        if files:
            build_dir, name = os.path.split(os.path.abspath(path))
            tmp = made[0] if build_dir == src_dir else _private_temp(build_dir, name, data)
            made.extend([tmp] + [tmp + s for s in INDEXED[map_type]])
            _compile(tmp, path, map_type, config_dir, secrets)
            for suffix, target in zip(INDEXED[map_type], files):
                _place(tmp + suffix, target, final_mode, uid, gid)
        _place(made[0], source_path, final_mode, uid, gid)
        if files:
            _write_stamp(path, hashlib.sha256(data).hexdigest(), map_type, files)
    finally:
        for leftover in made:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)
    return prune(path, map_type, config_dir) if prune_other_types else []


def prune(path, map_type=None, config_dir="/etc/postfix"):
    """
    Remove the compiled files of other indexed types beside a table (see
    ``stale_files``); only once Postfix's config names ``map_type``: it reads
    the old type's files until then. Returns the removed files.

    CLI Example:

    .. code-block:: bash

        salt-call postmap.prune /etc/postfix/sasl/passwd lmdb
    """
    _check_name(path)
    removed = stale_files(path, map_type or default_type(config_dir))
    for leftover in removed:
        os.unlink(leftover)
    return removed


def remove(path, map_type=None):
    """
    Remove a table's source and compiled files (every indexed type's when
    map_type is not given). Returns the removed paths.

    CLI Example:

    .. code-block:: bash

        salt-call postmap.remove /etc/postfix/old_map
    """
    removed = []
    for candidate in present(path, map_type):
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
    _check_name(path)
    suffixes = INDEXED.get(map_type, ()) if map_type else \
        sorted({s for group in INDEXED.values() for s in group})
    return [p for p in [path] + [path + s for s in suffixes] if os.path.lexists(p)]
