"""
Postfix lookup tables: the source file and, for indexed types, the compiled
table, always in sync, rebuilt atomically, never more readable than declared.

.. code-block:: yaml

    /etc/postfix/sasl/passwd:
      postmap.managed:
        - entries: {"[smtp.example.net]:587": "user:password"}  # or source / contents
        - map_type: hash        # default: postconf -h default_database_type
        - mode: "0600"
        - secret: true          # changes show keys only, never values

    # Secrets kept out of the rendered state data (which Salt caches in its
    # cachedir as highstate.cache.p): an execution function returns the entries
    # while the state runs.
    /etc/postfix/sasl/passwd:
      postmap.managed:
        - entries_from: postfix_relay_settings.password_entries
        - secret: true

    /etc/postfix/old_map:
      postmap.absent: []

The work is done by the ``postmap`` execution module; this state decides and
reports. Changes are empty when nothing changed, so ``watch``/``onchanges``
reload Postfix only when a table really changed.
"""

__virtualname__ = "postmap"


def __virtual__():
    if "postmap.in_sync" in __salt__:
        return __virtualname__
    return (False, "the postmap execution module is not available")


def _get_source(source, saltenv):
    """The first of source (a salt:// URL or a list of them, as file.managed
    takes) that the file server has."""
    for url in source if isinstance(source, list) else [source]:
        if not isinstance(url, str):
            raise ValueError(f"source {url!r} is not a salt:// URL")
        text = __salt__["cp.get_file_str"](url, saltenv=saltenv)
        if text is not False and text is not None:
            return text
    names = ", ".join(map(str, source)) if isinstance(source, list) else source
    raise ValueError(f"source {names} not found in saltenv {saltenv}")


def _text(entries, source, contents, saltenv, map_type, utf8):
    given = [x is not None for x in (entries, source, contents)]
    if sum(given) != 1:
        raise ValueError("give exactly one of entries, source or contents")
    if entries is not None:
        return __salt__["postmap.render"](entries, map_type, utf8)
    if source is not None:
        text = _get_source(source, saltenv)
    elif isinstance(contents, list):  # lines, as file.managed joins them
        text = "\n".join(str(line) for line in contents)
    else:
        text = str(contents)
    return text if text.endswith("\n") or not text else text + "\n"


def _entries_from(function, entries, saltenv):
    """Call an entries_from function, with the run's saltenv when it takes one."""
    if entries is not None:
        raise ValueError("give exactly one of entries, source, contents or entries_from")
    try:
        entries = __utils__["salt_calls.call_with_saltenv"](__salt__[function], saltenv)
    except Exception as exc:  # pylint: disable=broad-except
        raise ValueError(f"entries_from {function}: {exc}") from None
    if not isinstance(entries, dict):
        raise ValueError(f"entries_from {function} did not return a mapping of entries")
    return entries


def _secrets(entries, text):
    """Every value of a secret table, to mask in any message (ASCII folding
    merges fewer keys: every value postmap may store is kept)."""
    values = [str(v) for v in (entries or {}).values()]
    return values + [v for _, v in __salt__["postmap.parse"](text or "", False)]


def _fail(ret, exc, secrets):
    message = str(exc) or exc.__class__.__name__
    ret.update(result=False, comment=__salt__["postmap.redact"](message, secrets)
               if secrets else message)
    return ret


def _changes(name, text, state, mode, user, group, secret, utf8):
    """What the rebuild changes: entries (keys only when secret), mode, owner,
    compiled table, removed compiled files of another type."""
    mod = __salt__
    changes = {}
    if "source missing" in state["source"]:
        changes["created"] = True
    elif "source content differs" in state["source"]:
        changes.update(mod["postmap.entry_changes"](
            mod["postmap.parse"](mod["postmap.read"](name) or "", utf8),
            mod["postmap.parse"](text, utf8), secret, utf8))
        if not changes:
            changes["source"] = "reformatted"
    if "source mode or owner differs" in state["source"]:
        shown = "kept" if mode is None else f"{mod['postmap.normalize_mode'](mode):04o}"
        changes["mode"] = f"{shown} {'kept' if user is None else user}:" \
                          f"{'kept' if group is None else group}"
    if state["compiled"] == ["source changed"]:
        changes["compiled"] = "rebuilt"
    elif state["compiled"]:
        changes["compiled"] = f"rebuilt: {state['compiled'][0]}"
    if state["stale"]:
        changes["removed_files"] = state["stale"]
    return changes


def managed(name, entries=None, source=None, contents=None, map_type=None, mode="0600",
            user="root", group="root", secret=False, config_dir="/etc/postfix",
            saltenv=None, entries_from=None, prune_other_types=True):
    """
    Keep a lookup table in sync: source as declared, compiled table (indexed
    types) current, of the declared type, holding exactly the source's
    entries; compiled files of another type beside it are removed unless
    ``prune_other_types`` is False (a type change while main.cf names the old
    type: then ``postmap.other_types_absent`` once main.cf names the new one).

    name
        Absolute path of the source file; the compiled table is written beside
        it. A symlink is followed for the source, as file.managed does.
    entries / source / contents / entries_from
        The table as a mapping, a ``salt://`` file (or a list: the first
        found), text (or a list of lines), or the name of an execution
        function that returns the mapping when the state runs (so secrets
        never sit in the rendered SLS; it gets ``saltenv`` when it takes it).
        Exactly one. An empty mapping makes an empty table.
    map_type
        Table type; default: config_dir's ``default_database_type``.
    mode / user / group
        As file.managed: ``0600``, ``'0600'``, ``600`` are 0600 (Python's
        0o600 is refused); names or ids. None keeps the file's (new: 0600 root).
    saltenv / secret
        For source and entries_from (default: the run's) / show keys only.
    """
    ret = {"name": name, "changes": {}, "result": True, "comment": ""}
    mod = __salt__
    saltenv = saltenv or globals().get("__env__") or "base"
    secrets, text = [], None
    try:
        if entries_from is not None:
            entries = _entries_from(entries_from, entries, saltenv)
        secrets = _secrets(entries, None) if secret else []
        map_type = map_type or mod["postmap.default_type"](config_dir)
        utf8 = mod["postmap.folds_utf8"](config_dir)  # how Postfix folds keys here
        text = _text(entries, source, contents, saltenv, map_type, utf8)
        mod["postmap.check_type"](map_type, config_dir)
        state = mod["postmap.in_sync"](name, text, map_type, mode, user, group, config_dir,
                                       not __opts__["test"], prune_other_types)
        changes = _changes(name, text, state, mode, user, group, secret, utf8)
    except Exception as exc:  # pylint: disable=broad-except
        return _fail(ret, exc, _secrets(entries, text) if secret and text else secrets)
    table = f"Table {map_type}:{name}" + (" (empty)" if not text else "")
    if state["in_sync"]:
        return {**ret, "comment": f"{table} is in sync"}
    why = "; ".join(state["source"] + state["compiled"] +
                    [f"{f} is of another type" for f in state["stale"]])
    if __opts__["test"]:
        ret.update(result=None, changes=changes, comment=f"{table} would be rebuilt ({why})")
        return ret
    try:
        mod["postmap.build"](name, text, map_type, mode, user, group, config_dir, secrets,
                             prune_other_types)
    except Exception as exc:  # pylint: disable=broad-except
        # every value of the text too (parsed only now: a no-op parses nothing)
        return _fail(ret, exc, _secrets(entries, text) if secret else [])
    ret.update(changes=changes, comment=f"{table} rebuilt ({why})")
    return ret


def absent(name, map_type=None, config_dir="/etc/postfix"):
    """
    Remove a table's source and compiled files (of every indexed type unless
    map_type is given).
    """
    ret = {"name": name, "changes": {}, "result": True, "comment": ""}
    try:
        present = __salt__["postmap.present"](name, map_type)
        if not present:
            ret["comment"] = f"Table {name} is absent"
            return ret
        if __opts__["test"]:
            ret.update(result=None, changes={"removed": present},
                       comment=f"Table {name} would be removed")
            return ret
        ret["changes"] = {"removed": __salt__["postmap.remove"](name, map_type)}
    except Exception as exc:  # pylint: disable=broad-except
        return _fail(ret, exc, [])
    ret["comment"] = f"Table {name} removed"
    return ret


def other_types_absent(name, map_type=None, config_dir="/etc/postfix"):
    """
    Remove the compiled files of other indexed types beside a table (left by
    an earlier map_type; they may hold old passwords). Run it after the state
    that makes main.cf name the new type (``require``): Postfix reads the old
    files until then.

    .. code-block:: yaml

        /etc/postfix/sasl/passwd:
          postmap.other_types_absent:
            - map_type: lmdb      # default: postconf -h default_database_type
            - require:
              - postfix_control: postfix-main-cf
    """
    ret = {"name": name, "changes": {}, "result": True, "comment": ""}
    mod = __salt__
    try:
        map_type = map_type or mod["postmap.default_type"](config_dir)
        stale = mod["postmap.stale_files"](name, map_type)
        if not stale:
            return {**ret, "comment": f"No compiled file of another type than {map_type} "
                                      f"beside {name}"}
        if __opts__["test"]:
            return {**ret, "result": None, "changes": {"removed_files": stale},
                    "comment": f"Compiled files of another type than {map_type} would be "
                               "removed"}
        ret["changes"] = {"removed_files": mod["postmap.prune"](name, map_type, config_dir)}
    except Exception as exc:  # pylint: disable=broad-except
        return _fail(ret, exc, [])
    ret["comment"] = f"Compiled files of another type than {map_type} removed"
    return ret
