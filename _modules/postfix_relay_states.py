"""
The states of each ``postfix_relay`` SLS file, built in Python from the
validated settings. The SLS files only print them (``#!jinja|json``): their
logic is code with tests, and a no-op apply compiles no large template (Jinja
compiling the formula's SLS files was most of its cost over Salt's floor).

See what a host would get with ``state.show_sls``; this module returns the
same data. It holds no secret: passwords and refresh tokens are read by the
states when they run (``entries_from``, ``data_from``), never rendered.

CLI Example:

.. code-block:: bash

    salt-call postfix_relay_states.sls config
    salt-call state.show_sls postfix_relay
"""

from salt.exceptions import SaltInvocationError

__virtualname__ = "postfix_relay_states"

PACKAGE = "postfix-relay-package-installed"
MAIN_CF = "postfix-relay-config-main-cf"
CLEAN_MAIN_CF = "postfix-relay-clean-main-cf"


def __virtual__():
    return __virtualname__


def sls(name, saltenv=None):
    """
    The states of SLS file ``postfix_relay.<name>`` (package, config,
    oauth2_keepalive, service, beacon, clean) as Salt's high data: state ID to
    ``{"module.function": [arguments]}``, in the order they apply. A pillar
    value that is refused stops here, naming its key, before anything changes.

    CLI Example:

    .. code-block:: bash

        salt-call postfix_relay_states.sls config
    """
    builders = {"package": package, "config": config, "oauth2_keepalive": oauth2_keepalive,
                "service": service, "beacon": beacon, "clean": clean}
    if name not in builders:
        raise SaltInvocationError(f"no SLS postfix_relay.{name}: one of {', '.join(builders)}")
    return builders[name](_lookup(saltenv))


def _lookup(saltenv):
    # the render's own environment: a dev formula reads dev's defaults
    return __salt__["postfix_relay_settings.lookup"](saltenv=saltenv)


def _state(fun, *requires, watch=(), **args):
    """One state: ``fun`` with its arguments in order, then its requisites
    (``requires``/``watch``: (state module, ID) pairs)."""
    data = [{key: _sorted(value)} for key, value in args.items()]
    if requires:
        data.append({"require": [{module: ident} for module, ident in requires]})
    if watch:
        data.append({"watch": [{module: ident} for module, ident in watch]})
    return {fun: data}


def _sorted(value):
    """Mappings in key order, as the SLS files printed them (``| json``
    sorts): main.cf's parameters and table entries keep the order earlier
    releases wrote them in."""
    if isinstance(value, dict):
        return {key: _sorted(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_sorted(item) for item in value]
    return value


def package(lookup):
    """The packages: the os_family's client plugins, the XOAUTH2 plugin when a
    relay uses oauth2 (refused here when the package sources lack it)."""
    return {PACKAGE: _state("pkg.installed",
                            pkgs=__salt__["postfix_relay_settings.packages"](lookup))}


def service(lookup):
    """Postfix running and enabled; reloaded or restarted (listener or
    inet_interfaces) for what the config SLS changed, as mod_watch decides."""
    return {
        "include": ["postfix_relay.config"],
        "postfix-relay-service-running": _state(
            "postfix_control.running", watch=[("sls", "postfix_relay.config")],
            name="postfix", enable=True, config_dir=lookup["config_dir"],
            prestart=lookup["prestart"]),
    }


def config(lookup):
    """Postfix's files from the pillar: the SASL directory, the XOAUTH2
    plugin's files, every table, the mailname, master.cf's listener, main.cf,
    and what main.cf stopped naming (removed after it)."""
    # validates the whole pillar: a bad value stops the render here
    s = __salt__["postfix_relay_settings.get"](lookup=lookup, show_secrets=True, check=True)
    conf = lookup["config_dir"]
    states = {"include": ["postfix_relay.package"]}
    if s["sasl"]:
        states["postfix-relay-config-sasl-dir"] = _state(
            "file.directory", ("pkg", PACKAGE), name=s["sasl_dir"], user="root", mode="0755")
    if s["oauth2"]:
        states.update(_xoauth2_states(s))
    for index, path in enumerate(s["xoauth2_leftovers"], 1):
        # no relay uses oauth2 (any more): the plugin's files and every token
        # file (each holds a refresh token) go, once main.cf stops naming them
        states[f"postfix-relay-config-xoauth2-absent-{index}"] = _state(
            "file.absent", ("postfix_control", MAIN_CF), name=path)
    for table in s["tables"]:
        states[f"postfix-relay-config-{table['state_id']}"] = _table_state(table, conf)
    if lookup.get("mailname_file"):
        states["postfix-relay-config-mailname"] = _state(
            "file.managed", name=lookup["mailname_file"], contents=s["domain"], mode="0644")
    states["postfix-relay-config-smtpd-listener"] = _state(
        "postfix_control.smtpd_listener", ("pkg", PACKAGE), name=f"{conf}/master.cf",
        enabled=s["listen"] == "loopback", chroot=lookup["smtpd_chroot"], config_dir=conf)
    # tables first: main.cf never names a table that does not exist yet
    states[MAIN_CF] = _state(
        "postfix_control.main_cf", ("pkg", PACKAGE),
        *[("postmap", f"postfix-relay-config-{t['state_id']}") for t in s["tables"]
          if t["present"]],
        name=f"{conf}/main.cf", params=s["main_cf"], config_dir=conf)
    for table in s["tables"]:
        if table["present"] and table["indexed"]:
            # compiled files of an earlier map_type (old passwords), removed
            # only once main.cf names the new type: until then Postfix reads them
            args = {"map_type": table["map_type"]} if table["map_type"] else {}
            states[f"postfix-relay-config-{table['state_id']}-other-types"] = _state(
                "postmap.other_types_absent", ("postfix_control", MAIN_CF),
                name=table["path"], **args, config_dir=conf)
    return states


def _xoauth2_states(s):
    """The XOAUTH2 plugin's files. The plugin runs in Postfix's smtp process,
    inside its chroot when master.cf gives it one: its config, token files
    and CA bundles go there."""
    paths, directory = s["xoauth2_paths"], "postfix-relay-config-xoauth2-dir"
    states = {
        directory: _state("file.directory", ("pkg", PACKAGE), name=paths["dir"],
                          user="postfix", group="postfix", mode="0700", makedirs=True),
        # read when the plugin loads (before smtp enters its chroot)
        "postfix-relay-config-xoauth2-conf": _state(
            "file.managed", ("pkg", PACKAGE), name=paths["conf"], contents=s["xoauth2_conf"],
            mode="0644"),
    }
    if paths["conf_chroot"]:
        # and inside the chroot, for a plugin that reads it there
        states["postfix-relay-config-xoauth2-conf-chroot"] = _state(
            "file.managed", ("file", directory), name=paths["conf_chroot"],
            contents=s["xoauth2_conf"], mode="0644")
    keep = [relay["name"] for relay in s["oauth2_relays"]]
    for index, relay in enumerate(s["oauth2_relays"], 1):
        suffix = "" if index == 1 else f"-{index}"  # the primary keeps one-relay IDs
        states[f"postfix-relay-config-xoauth2-ca{suffix}"] = _state(
            "file.managed", ("file", directory), name=relay["ca"], source=relay["ca_source"],
            mode="0644")
        # one token file per relay; pruning keeps every configured relay's file
        states[f"postfix-relay-config-xoauth2-token{suffix}"] = _state(
            "postfix_xoauth2.token_file", ("file", directory), name=relay["token"],
            data_from="postfix_relay_settings.oauth2_token_files", data_key=relay["name"],
            keep=keep, user="postfix")
    return states


def _table_state(table, conf):
    """A table present (built before main.cf names it) or absent (removed
    once main.cf stops naming it: Postfix would defer mail looking it up)."""
    if not table["present"]:
        args = {} if table["indexed"] else {"map_type": table["map_type"]}
        return _state("postmap.absent", ("pkg", PACKAGE), ("postfix_control", MAIN_CF),
                      name=table["path"], **args, config_dir=conf)
    if table["entries_from"]:
        # read when the state runs: secrets stay out of Salt's state cache
        source = {"entries_from": table["entries_from"]}
    elif table["contents"] is not None:
        source = {"contents": table["contents"]}
    else:
        source = {"entries": table["entries"]}
    args = {"name": table["path"], **source}
    if table["map_type"]:
        args["map_type"] = table["map_type"]
    args["mode"] = table["mode"]
    if table["secret"]:
        args["secret"] = True
    args["config_dir"] = conf
    if table["indexed"]:
        # on a type change the live main.cf still reads the old compiled
        # file: it goes in ...-other-types, after main.cf
        args["prune_other_types"] = False
    requires = [("pkg", PACKAGE)]
    if table["id"] == "password":
        requires.append(("file", "postfix-relay-config-sasl-dir"))
    return _state("postmap.managed", *requires, **args)


def oauth2_keepalive(lookup):
    """The daily cron.d job that keeps XOAUTH2 refresh tokens alive (a
    provider revokes one left unused: Microsoft after 90 days, Google after
    7 for an app in "Testing"), and the relays it refreshes, saved without
    secrets for a minion whose pillar lives on the master. cron, not a Salt
    schedule: a host driven by salt-call --local has no minion to run one.
    Both go when no relay uses oauth2 (or every one has keepalive_days: false)."""
    settings = __salt__["postfix_relay_settings.get"](lookup=lookup)
    plan = __salt__["postfix_xoauth2.keepalive_plan"](settings)
    job = __salt__["postfix_xoauth2.keepalive_job"]()
    plan_path = __salt__["postfix_xoauth2.keepalive_paths"]()["plan"]
    if not plan:
        return {"postfix-relay-oauth2-keepalive-job": _state("file.absent", name=job["path"]),
                "postfix-relay-oauth2-keepalive-relays": _state("file.absent", name=plan_path)}
    import json  # pylint: disable=import-outside-toplevel
    states = {
        "postfix-relay-oauth2-keepalive-relays": _state(
            "file.managed", name=plan_path, contents=json.dumps(plan, sort_keys=True), mode="0600",
            makedirs=True, dir_mode="0700"),
        # /etc/cron.d is there once cron is installed; until then it waits there
        "postfix-relay-oauth2-keepalive-job": _state(
            "file.managed", ("file", "postfix-relay-oauth2-keepalive-relays"),
            name=job["path"], contents=job["contents"], user="root", group="root",
            mode="0644", makedirs=True),
    }
    if not job["cron_daemon"]:
        states["postfix-relay-oauth2-keepalive-needs-cron"] = _state(
            "test.show_notification",
            text=f"no cron daemon found on this host: {job['path']} runs only once one is "
                 f"installed (Debian: apt-get install cron); until then run "
                 f"`{job['command']}` from time to time")
    return states


def beacon(lookup):
    """The postfix_relay beacon from pillar ``postfix_relay:beacon`` (a bad
    value stops the render naming the key), saved to minion.d/beacons.conf.
    Without the key: the beacon removed, and the files it wrote (its state,
    the metrics textfile node_exporter would export forever). Beacons run in
    a salt-minion daemon: where none answers (salt-call --local, a masterless
    host without one) the key gets a note instead of a failure."""
    pillar = __pillar__.get("postfix_relay") or {}
    pillar = pillar if isinstance(pillar, dict) else {}
    wanted = __salt__["postfix_relay_settings.beacon_settings"](
        pillar.get("beacon"), pillar.get("metrics_textfile"))
    daemon = not __opts__.get("local") and __salt__["postfix_watch.minion_daemon"]()
    if wanted and not daemon:
        where = "salt-call --local" if __opts__.get("local") else "no salt-minion running"
        return {"postfix-relay-beacon-needs-minion": _state(
            "test.show_notification",
            text=f"postfix_relay beacon not installed: beacons run in a running salt-minion "
                 f"daemon, and none answers here ({where}); start salt-minion (masterless: "
                 f"file_client local in its config) and apply again")}
    if wanted:
        args = {"metrics_textfile": wanted["metrics_textfile"]} \
            if wanted["metrics_textfile"] else {}
        if lookup["config_dir"] != "/etc/postfix":  # the beacon watches that Postfix
            args["config_dir"] = lookup["config_dir"]
        return {"postfix-relay-beacon": _state(
            "beacon.present", name="postfix_relay", save=True, interval=wanted["interval"],
            deferred_max=wanted["deferred_max"], age_max=wanted["age_max"], **args)}
    states = {}
    if daemon:
        states["postfix-relay-beacon"] = _state("beacon.absent", name="postfix_relay", save=True)
    # (not the files of a beacon still running: salt-call --local beside a minion)
    if daemon or not __salt__["postfix_watch.minion_daemon"]():
        requires = [("beacon", "postfix-relay-beacon")] if daemon else []
        for index, path in enumerate(__salt__["postfix_watch.leftovers"](after_beacon=True), 1):
            states[f"postfix-relay-beacon-leftover-{index}"] = _state(
                "file.absent", *requires, name=path)
    return states


def clean(lookup):
    """Undoes init.sls in reverse: Postfix back to the main.cf from before the
    formula (or the distro's), secrets, tables, the keep-alive and the beacon
    removed. Postfix stays installed and running, delivering locally. Needs
    no valid pillar: table paths only."""
    conf, after_main_cf = lookup["config_dir"], ("postfix_control", CLEAN_MAIN_CF)
    states = {
        CLEAN_MAIN_CF: _state("postfix_control.main_cf_restored", name=f"{conf}/main.cf",
                              config_dir=conf, dist_main_cf=lookup["dist_main_cf"]),
        "postfix-relay-clean-smtpd-listener": _state(
            "postfix_control.smtpd_listener", name=f"{conf}/master.cf", enabled=True,
            chroot=lookup["smtpd_chroot"], config_dir=conf),
    }
    for table in __salt__["postfix_relay_settings.clean_tables"](conf):
        states[f"postfix-relay-clean-{table['state_id']}"] = _state(
            "postmap.absent", after_main_cf, name=table["path"], config_dir=conf)
    states["postfix-relay-clean-aliases"] = _state(
        "postfix_control.aliases_built", after_main_cf, name=f"{conf}/main.cf", config_dir=conf)
    # XOAUTH2 token files (refresh tokens) and the plugin's config
    chroot = __salt__["postfix_master.smtp_chroot_dir"](conf, lookup["smtp_chroot_dir"])
    for index, path in enumerate(__salt__["postfix_relay_settings.xoauth2_leftovers"](chroot), 1):
        states[f"postfix-relay-clean-xoauth2-{index}"] = _state(
            "file.absent", after_main_cf, name=path)
    states["postfix-relay-clean-service"] = _state(
        "postfix_control.running", name="postfix", enable=True, config_dir=conf,
        prestart=lookup["prestart"],
        watch=[after_main_cf, ("postfix_control", "postfix-relay-clean-smtpd-listener")])
    states.update(_clean_watch_files())
    return states


def _clean_watch_files():
    """clean's removal of the keep-alive job, its plan and outcomes, and of
    the beacon (where a minion daemon runs it) with its state and textfile."""
    paths = __salt__["postfix_xoauth2.keepalive_paths"]()
    keepalive = [__salt__["postfix_xoauth2.keepalive_job"]()["path"], paths["plan"],
                 paths["status"]]
    states = {f"postfix-relay-clean-oauth2-keepalive-{index}": _state("file.absent", name=path)
              for index, path in enumerate(keepalive, 1)}
    daemon = not __opts__.get("local") and __salt__["postfix_watch.minion_daemon"]()
    if daemon:
        states["postfix-relay-clean-beacon"] = _state(
            "beacon.absent", name="postfix_relay", save=True)
    requires = [("beacon", "postfix-relay-clean-beacon")] if daemon else []
    for index, path in enumerate(__salt__["postfix_watch.leftovers"](), 1):
        states[f"postfix-relay-clean-beacon-leftover-{index}"] = _state(
            "file.absent", *requires, name=path)
    return states
