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


def _text(entries, source, contents, saltenv):
    given = [x is not None for x in (entries, source, contents)]
    if sum(given) != 1:
        raise ValueError("give exactly one of entries, source or contents")
    if entries is not None:
        return __salt__["postmap.render"](entries)
    if source is not None:
        text = __salt__["cp.get_file_str"](source, saltenv=saltenv)
        if text is False or text is None:
            raise ValueError(f"source {source} not found")
    else:
        text = contents
    return text if text.endswith("\n") or not text else text + "\n"


def managed(name, entries=None, source=None, contents=None, map_type=None, mode="0600",
            user="root", group="root", secret=False, config_dir="/etc/postfix",
            saltenv="base", entries_from=None):
    """
    Keep a lookup table in sync: source as declared, compiled table (indexed
    types) present, current and holding exactly the source's entries.

    name
        Path of the source file; the compiled table is written beside it.
    entries / source / contents / entries_from
        The table as a mapping, a ``salt://`` file, text, or the name of an
        execution function that returns the mapping when the state runs (so
        secrets never sit in the rendered SLS). Exactly one.
    map_type
        Table type; default: Postfix's ``default_database_type``.
    secret
        Never show values (changes list keys only).
    """
    ret = {"name": name, "changes": {}, "result": True, "comment": ""}
    mod = __salt__
    try:
        if entries_from is not None:
            if entries is not None:
                raise ValueError("give exactly one of entries, source, contents or "
                                 "entries_from")
            entries = mod[entries_from]()
            if not isinstance(entries, dict):
                raise ValueError(f"{entries_from} did not return a mapping of entries")
    except Exception as exc:  # pylint: disable=broad-except
        ret.update(result=False, comment=f"entries_from {entries_from}: {exc}")
        return ret
    secrets = [str(v) for v in (entries or {}).values()] if secret else []
    try:
        text = _text(entries, source, contents, saltenv)
        map_type = map_type or mod["postmap.default_type"](config_dir)
        mod["postmap.check_type"](map_type, config_dir)
        state = mod["postmap.in_sync"](name, text, map_type, mode, user, group, config_dir)
    except Exception as exc:  # pylint: disable=broad-except
        ret.update(result=False, comment=mod["postmap.redact"](str(exc), secrets)
                   if secrets else str(exc))
        return ret
    if state["in_sync"]:
        ret["comment"] = f"Table {map_type}:{name} is in sync"
        return ret
    old_text = mod["postfix_control.read_file"](name) if "source content differs" in \
        state["source"] else None
    changes = {}
    if "source missing" in state["source"]:
        changes["created"] = True
    elif old_text is not None:
        changes.update(mod["postmap.entry_changes"](
            mod["postmap.parse"](old_text), mod["postmap.parse"](text), secret))
        if not changes:
            changes["source"] = "reformatted"
    if "source mode or owner differs" in state["source"]:
        changes["mode"] = f"{mode} {user}:{group}"
    if state["compiled"] == ["source changed"]:
        changes["compiled"] = "rebuilt"
    elif state["compiled"]:
        changes["compiled"] = f"rebuilt: {state['compiled'][0]}"
    why = "; ".join(state["source"] + state["compiled"])
    if __opts__["test"]:
        ret.update(result=None, changes=changes,
                   comment=f"Table {map_type}:{name} would be rebuilt ({why})")
        return ret
    try:
        mod["postmap.build"](name, text, map_type, mode, user, group, config_dir, secrets)
    except Exception as exc:  # pylint: disable=broad-except
        ret.update(result=False, comment=mod["postmap.redact"](str(exc), secrets))
        return ret
    ret.update(changes=changes, comment=f"Table {map_type}:{name} rebuilt ({why})")
    return ret


def absent(name, map_type=None, config_dir="/etc/postfix"):
    """
    Remove a table's source and compiled files (of every indexed type unless
    map_type is given).
    """
    ret = {"name": name, "changes": {}, "result": True, "comment": ""}
    present = __salt__["postmap.present"](name, map_type)
    if not present:
        ret["comment"] = f"Table {name} is absent"
        return ret
    if __opts__["test"]:
        ret.update(result=None, changes={"removed": present},
                   comment=f"Table {name} would be removed")
        return ret
    ret["changes"] = {"removed": __salt__["postmap.remove"](name, map_type)}
    ret["comment"] = f"Table {name} removed"
    return ret
