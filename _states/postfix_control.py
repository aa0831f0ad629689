"""
States for the host's Postfix: main.cf, the SMTP listener and the service.

.. code-block:: yaml

    postfix-relay-config-main-cf:
      postfix_control.main_cf:
        - params:
            relayhost: "[smtp.example.net]:587"
            inet_interfaces: loopback-only

    postfix-relay-service:
      postfix_control.running:
        - watch:
          - postfix_control: postfix-relay-config-main-cf

The work is done by the execution modules ``postfix_maincf`` (main.cf),
``postfix_master`` (the listener), ``postfix_aliases`` and ``postfix_service``;
these functions decide and report. ``running`` works with and without an init
system: where none runs (Salt reports "OFFLINE mode"), it drives
``postfix start|reload``.
"""

import fnmatch
from collections.abc import Mapping

__virtualname__ = "postfix_control"
# One function of each execution module these states drive.
_NEEDS = ("postfix_maincf.install_main_cf", "postfix_master.smtpd_listening",
          "postfix_aliases.newaliases", "postfix_service.status")


def __virtual__():
    missing = [fun.partition(".")[0] for fun in _NEEDS if fun not in __salt__]
    if not missing:
        return __virtualname__
    return (False, f"the execution modules {', '.join(missing)} are not available")


def _ret(name):
    return {"name": name, "changes": {}, "result": True, "comment": ""}


def main_cf(name, params, config_dir="/etc/postfix"):
    """
    Own main.cf completely: exactly ``params``, checked by Postfix before it
    replaces the live file. Changes list the parameters with old and new values.

    name
        The path of main.cf (informational; the file is config_dir/main.cf).
    params
        Mapping of parameter name to value, in the order to write them.
    """
    ret = _ret(name)
    mod = __salt__
    # The host's own compatibility level, read now: Postfix may have been
    # installed by this very run.
    params = mod["postfix_maincf.complete_params"](params, config_dir)
    old = mod["postfix_maincf.read_file"](f"{config_dir}/main.cf")
    if old == mod["postfix_maincf.render_main_cf"](params):
        ret["comment"] = "main.cf is in the desired state"
        return ret
    changes = mod["postfix_maincf.diff_params"](old, params)
    if __opts__["test"]:
        problems = mod["postfix_maincf.check_main_cf"](
            mod["postfix_maincf.render_main_cf"](params), config_dir)
        ret["result"] = False if problems else None
        ret["changes"] = changes
        ret["comment"] = "; ".join(problems) or \
            f"main.cf would change: {', '.join(changes) or 'formatting'}"
        return ret
    try:
        mod["postfix_maincf.install_main_cf"](params, config_dir)
    except Exception as exc:  # pylint: disable=broad-except
        ret["result"] = False
        ret["comment"] = f"main.cf left unchanged: {exc}"
        return ret
    ret["changes"] = changes or {"main.cf": "rewritten (formatting only)"}
    ret["comment"] = f"main.cf updated: {', '.join(changes) or 'formatting'}"
    return ret


def main_cf_restored(name, config_dir="/etc/postfix", dist_main_cf=None):
    """
    Undo ``main_cf``: restore the main.cf saved before the formula's first
    apply, or the distro's template (kept on loopback).
    """
    ret = _ret(name)
    try:
        what = __salt__["postfix_maincf.restore_main_cf"](
            config_dir, dist_main_cf, test=__opts__["test"])
    except Exception as exc:  # pylint: disable=broad-except
        ret.update(result=False, comment=f"main.cf left unchanged: {exc}")
        return ret
    if what is None:
        ret["comment"] = "main.cf is not managed by postfix_relay"
        return ret
    ret["changes"] = {"main.cf": what}
    ret["result"] = None if __opts__["test"] else True
    ret["comment"] = what
    return ret


def smtpd_listener(name, enabled=True, chroot="y", config_dir="/etc/postfix"):
    """
    Keep the port-25 SMTP listener in master.cf on (``enabled``) or off.

    A null client that only takes mail from ``sendmail`` needs no listener.
    """
    ret = _ret(name)
    current = __salt__["postfix_master.smtpd_listening"](config_dir)
    if current == enabled:
        ret["comment"] = f"SMTP listener already {'on' if enabled else 'off'}"
        return ret
    ret["changes"] = {"smtpd_listener": {"old": current, "new": enabled}}
    if __opts__["test"]:
        ret["result"] = None
        ret["comment"] = f"SMTP listener would be turned {'on' if enabled else 'off'}"
        return ret
    __salt__["postfix_master.set_smtpd_listener"](enabled, chroot, config_dir)
    ret["comment"] = f"SMTP listener turned {'on' if enabled else 'off'}"
    return ret


def aliases_built(name, config_dir="/etc/postfix"):
    """
    The alias databases exist and are current, so local delivery works (a
    host installed with "No configuration" has none).
    """
    ret = _ret(name)
    missing = __salt__["postfix_aliases.missing_alias_databases"](config_dir)
    if not missing:
        ret["comment"] = "Alias databases are current"
        return ret
    ret["changes"] = {"built": missing}
    if __opts__["test"]:
        ret.update(result=None, comment=f"Would run newaliases for {', '.join(missing)}")
        return ret
    try:
        __salt__["postfix_aliases.newaliases"](config_dir)
    except Exception as exc:  # pylint: disable=broad-except
        ret.update(result=False, changes={}, comment=str(exc))
        return ret
    ret["comment"] = f"newaliases built {', '.join(missing)}"
    return ret


def _enable(ret, enable):
    """Enable at boot where an init system is installed (works offline too)."""
    if not enable:
        return
    try:
        if __salt__["postfix_service.enabled"]() in (True, None):
            return
        ret["changes"]["enabled"] = True
        if not __opts__["test"]:
            __salt__["postfix_service.enable"]()
    except Exception as exc:  # pylint: disable=broad-except
        ret["changes"].pop("enabled", None)
        ret["comment"] += f" (could not enable at boot: {exc})"


def running(name="postfix", enable=True, config_dir="/etc/postfix", prestart=None):
    """
    Keep Postfix running (and enabled at boot).

    With ``watch``, a change reloads Postfix, or restarts it when
    inet_interfaces/inet_protocols or the SMTP listener changed. After a start,
    reload or restart, deferred mail is retried at once (``postqueue -f``).

    prestart
        Command (argv list) run before starting without an init system, as the
        distro's init script would (Debian: configure-instance.sh).
    """
    ret = _ret(name)
    mod = __salt__
    _enable(ret, enable)
    if mod["postfix_service.status"](config_dir):
        enabled = "; enabled at boot" if ret["changes"] else ""
        if __opts__["test"] and ret["changes"]:
            ret["result"] = None
            enabled = "; it would be enabled at boot"
        ret["comment"] = f"Postfix is running{enabled}{ret['comment']}"
        # Salt calls mod_watch only when this state reports no changes: with
        # "enabled" reported, the watched changes are acted on here.
        watched = _watched_changes() if ret["changes"] else {}
        if watched:
            _reload_or_restart(ret, _watched_action(watched), config_dir, prestart)
        return ret
    ret["changes"]["running"] = True
    if __opts__["test"]:
        ret["result"] = None
        ret["comment"] = f"Postfix would be started{ret['comment']}"
        _flush(ret, config_dir)
        return ret
    try:
        mod["postfix_service.start"](config_dir, prestart)
    except Exception as exc:  # pylint: disable=broad-except
        ret.update(result=False, changes={}, comment=f"Postfix did not start: {exc}")
        return ret
    how = "by init system" if mod["postfix_service.init_managed"]() else \
        "with `postfix start` (no init system running)"
    ret["comment"] = f"Postfix started {how}{ret['comment']}"
    _flush(ret, config_dir)
    return ret


def _flush(ret, config_dir):
    """Mail deferred under the old settings (or while Postfix was down) is
    retried now instead of after its backoff time; under test, counted only."""
    try:
        if __opts__["test"]:
            waiting = __salt__["postfix_service.deferred_count"](config_dir)
        else:
            waiting = __salt__["postfix_service.flush"](config_dir)
    except Exception as exc:  # pylint: disable=broad-except
        ret["comment"] += f"; deferred mail not flushed: {exc}"
        return
    if waiting:
        ret["changes"]["flushed"] = waiting
        would = "would be " if __opts__["test"] else ""
        ret["comment"] += f"; {waiting} deferred message(s) {would}retried"


def _changes_of(match):
    """The changes of the states in the running data that match(tag, result)."""
    changes = {}
    for tag, result in __running__.items():
        # Salt hands these over as read-only mappings, not dicts.
        if match(tag, result) and isinstance(result.get("changes"), Mapping):
            changes.update(result["changes"])
    return changes


def _declared_watch(tag, result):
    """True for a result this state's own ``watch`` list names: by SLS, or by
    state module and ID or name (as Salt matches them)."""
    for req in __low__.get("watch") or []:
        for kind, ref in req.items() if isinstance(req, Mapping) else ():
            if kind == "sls" and fnmatch.fnmatch(str(result.get("__sls__")), str(ref)):
                return True
            if tag.startswith(f"{kind}_|-") and ref in (result.get("__id__"), result.get("name")):
                return True
    return False


def _watched_changes():
    """All changes of the states this one watches: those Salt resolved
    (``__reqs__``, given to mod_watch), else those its ``watch`` list names."""
    if "__reqs__" not in __low__:
        return _changes_of(_declared_watch)
    reqs = __low__.get("__reqs__") or {}
    # Salt 3008 keys these by a RequisiteType enum, older releases by "watch".
    ids = {chunk["__id__"] for kind, chunks in reqs.items()
           if getattr(kind, "value", kind) == "watch" for chunk in chunks}
    return _changes_of(lambda tag, _: any(f"_|-{id_}_|-" in tag for id_ in ids))


def _watched_action(changes):
    """restart when the listener or inet_interfaces/inet_protocols changed
    (a reload keeps the old sockets), else reload."""
    if "smtpd_listener" in changes or __salt__["postfix_service.needs_restart"](changes):
        return "restart"
    return "reload"


def _reload_or_restart(ret, action, config_dir, prestart):
    """Reload or restart Postfix for watched changes (under test: say so),
    then retry deferred mail."""
    ret["changes"][action] = True
    if __opts__["test"]:
        ret["result"] = None
        ret["comment"] += f"; Postfix would {action}"
    else:
        try:
            __salt__[f"postfix_service.{action}"](config_dir, prestart)
        except Exception as exc:  # pylint: disable=broad-except
            ret["changes"].pop(action)
            ret["result"] = False
            ret["comment"] += f"; Postfix {action} failed: {exc}"
            return
        ret["comment"] += "; Postfix restarted" if action == "restart" else "; Postfix reloaded"
    _flush(ret, config_dir)


def mod_watch(name, sfun=None, config_dir="/etc/postfix", prestart=None, **kwargs):
    """Reload (or restart for listener changes) after a watched state changed."""
    ret = _ret(name)
    _reload_or_restart(ret, _watched_action(_watched_changes()), config_dir, prestart)
    ret["comment"] = ret["comment"].lstrip("; ")
    return ret
