"""
Beacon: tell the master when this host's mail stops leaving.

Every interval it reads the new part of Postfix's log (journal cursor or file
offset) and the queue (``postqueue -j``), and sends one event per change of
condition, tagged ``salt/beacon/<minion>/postfix_relay/<condition>``:
``deferred``, ``age``, ``credentials``, ``tls``, ``unreachable``, ``oauth2``,
and ``recovered`` (``recovered: <condition>``) when one clears. A relay dead
for a week sends one event, not one per interval. The work is done by
``postfix_watch`` (usable alone: ``salt-call postfix_watch.conditions``).

.. code-block:: yaml

    beacons:
      postfix_relay:
        - interval: 60
        - deferred_max: 10        # messages
        - age_max: 3600           # seconds
        - metrics_textfile: /var/lib/prometheus/node-exporter/postfix_relay.prom
        - config_dir: /etc/postfix  # the Postfix to watch (its log, queue, relays)

Installed from the pillar by the ``postfix_relay.beacon`` SLS. Beacons run in
a running salt-minion, not under ``salt-call --local``.
"""

import logging
import os

import salt.utils.beacons

log = logging.getLogger(__name__)

__virtualname__ = "postfix_relay"

DEFAULTS = {"deferred_max": 10, "age_max": 3600, "metrics_textfile": None,
            "config_dir": "/etc/postfix"}
# Salt's own per-beacon keys, accepted beside ours
SALT_KEYS = {"interval", "disable_during_state_run", "beacon_module", "run_once", "enabled"}


def __virtual__():
    if "postfix_watch.evaluate" not in __salt__:
        return False, "postfix_relay beacon: the formula's modules are not synced " \
                      "(salt-call saltutil.sync_all)"
    return __virtualname__


def _settings(config):
    """The config (Salt's list of one-key dicts) as one dict with defaults."""
    merged = dict(DEFAULTS)
    merged.update(salt.utils.beacons.list_to_dict(config))
    return merged


def _count(value, minimum):
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def validate(config):
    """(True, message) for a list of dicts with deferred_max (>= 0), age_max
    (seconds, >= 1), metrics_textfile (absolute *.prom path or None),
    config_dir (an absolute path)."""
    if not isinstance(config, list):
        return False, "postfix_relay beacon: configuration must be a list of dicts"
    settings = _settings(config)
    unknown = sorted(set(settings) - set(DEFAULTS) - SALT_KEYS)
    if unknown:
        return False, f"postfix_relay beacon: unknown key {unknown[0]} (known: " \
                      f"{', '.join(sorted(DEFAULTS))})"
    if not _count(settings["deferred_max"], 0):
        return False, "postfix_relay beacon: deferred_max must be a whole number >= 0"
    if not _count(settings["age_max"], 1):
        return False, "postfix_relay beacon: age_max must be seconds (a whole number >= 1)"
    textfile = settings["metrics_textfile"]
    if textfile is not None and not (isinstance(textfile, str) and os.path.isabs(textfile)
                                     and textfile.endswith(".prom")):
        return False, "postfix_relay beacon: metrics_textfile must be an absolute path " \
                      "ending in .prom"
    if not (isinstance(settings["config_dir"], str) and os.path.isabs(settings["config_dir"])):
        return False, "postfix_relay beacon: config_dir must be an absolute path"
    return True, "Valid beacon configuration"


def beacon(config):
    """
    The events of this interval (usually none): one per (condition, relay)
    that appeared, changed its cause, or cleared (``recovered``). The state
    (log position, conditions) is the beacon's own: loaded and saved here
    only, never by a CLI function.
    """
    settings = _settings(config)
    watch = __salt__
    state = watch["postfix_watch.load_state"]()
    out = watch["postfix_watch.evaluate"](state, settings, settings["config_dir"])
    _metrics(settings.get("metrics_textfile"), out["facts"], state)
    watch["postfix_watch.save_state"](state)
    for event in out["events"]:
        log.info("postfix_relay beacon: %s (%s)", event["condition"], event.get("relay"))
    return out["events"]


def _metrics(path, facts, state):
    """Write the textfile and remember where (clean removes it later, when
    the pillar may be gone); a textfile no longer configured is removed, so
    node_exporter stops exporting its last values."""
    old = state.get("metrics_textfile")
    if old and old != path:
        try:
            os.unlink(old)
        except FileNotFoundError:
            pass
    state["metrics_textfile"] = path
    if path:
        __salt__["postfix_watch.write_metrics"](path, facts, state)
