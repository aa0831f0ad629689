"""
Facts about the installed Postfix that the formula depends on (release, table
types, queue directory) and the compatibility level that follows from them.

They change only with the Postfix package, so they are cached on disk: a no-op
apply spawns no postconf.

CLI Example:

.. code-block:: bash

    salt-call postfix_facts.facts
"""

import contextlib
import json
import os
import shutil

from salt.exceptions import CommandExecutionError

__virtualname__ = "postfix_facts"


def __virtual__():
    return __virtualname__


def _facts_key(config_dir):
    """What the facts depend on: the postconf binary and the dynamic map list,
    in config_dir and in /etc/postfix (postconf -c reads the latter's whatever
    config_dir says; postfix-lmdb and friends edit it); ctime too: a copy that
    keeps size and mtime still changes it."""
    maps = [os.path.join(d, n) for d in sorted({config_dir, "/etc/postfix"})
            for n in ("dynamicmaps.cf", "dynamicmaps.cf.d")]
    parts = []
    for path in (shutil.which("postconf"), *maps):
        try:
            st = os.stat(path)
            parts.append(f"{path}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}")
        except (OSError, TypeError):
            parts.append(f"{path}:-")
    return "|".join(parts)


def _facts_cache_file():
    return os.path.join(__opts__.get("cachedir", "/var/cache/salt"), "postfix_relay", "facts.json")


def facts(config_dir="/etc/postfix"):
    """
    Facts about the installed Postfix that the formula depends on.

    Returns mail_version, default_database_type, map_types (``postconf -m``),
    queue_directory and config_dir. They change only with the Postfix package,
    so they are cached on disk, keyed by the postconf binary and the dynamic
    map list: a no-op apply spawns no postconf.

    CLI Example:

    .. code-block:: bash

        salt-call postfix_facts.facts
    """
    key = _facts_key(config_dir)
    cached = __context__.get("postfix_facts.facts", {})
    if cached.get("key") == key:
        return dict(cached["facts"])
    cache_file = _facts_cache_file()
    try:
        with open(cache_file, encoding="utf-8") as handle:
            cached = json.load(handle)
    except (OSError, ValueError):
        cached = {}
    if cached.get("key") != key:
        cached = {"key": key, "facts": _read_facts(config_dir)}
        if not __opts__.get("test"):  # a dry run writes nothing, not even a cache
            with contextlib.suppress(OSError):
                __utils__["postfix_files.private_dir"](os.path.dirname(cache_file))
                __utils__["postfix_files.write_atomic"](cache_file, json.dumps(cached),
                                                       backdate_mtime=False)
    __context__["postfix_facts.facts"] = cached
    return dict(cached["facts"])


def _read_facts(config_dir):
    if not shutil.which("postconf"):
        raise CommandExecutionError("postconf not found: is Postfix installed?")
    with __utils__["postfix_files.readable_config_dir"](config_dir) as readable:
        names = ["mail_version", "default_database_type", "queue_directory"]
        res = __salt__["postfix_cmd.run"](["postconf", "-c", readable, "-d", "-h"] + names)
        maps = __salt__["postfix_cmd.run"](["postconf", "-c", readable, "-m"])
    if res["retcode"] or maps["retcode"]:
        raise CommandExecutionError(f"postconf failed: {res['stderr'] or maps['stderr']}")
    result = dict(zip(names, __utils__["postfix_text.lines"](res["stdout"])))
    result["map_types"] = maps["stdout"].split()
    result["config_dir"] = config_dir
    return result


def compatibility_level(mail_version):
    """The installed Postfix's own compatibility level, as its main.cf.dist
    sets it for a new install.

    Postfix does not print it (`postconf -d compatibility_level` says 0), so it
    follows from the release: since 3.6 the level is the release itself (3.7
    on Debian 12, 3.10 on Debian 13); 3.0 to 3.5 know level 2.
    """
    try:
        major, minor = (int(x) for x in str(mail_version).split(".")[:2])
    except ValueError:
        return "2"
    if (major, minor) >= (3, 6):
        return f"{major}.{minor}"
    return "2" if major >= 3 else "1"
