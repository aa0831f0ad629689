"""
The service states under test=True, on hosts in every situation (running or
not, enabled at boot or not, mail deferred or not), which this machine cannot
be put in without driving its Postfix. The execution module is replaced by a
host description whose every action (start, reload, enable, flush, ...)
fails the test: a dry run must report, never act. The functional twin in
test/functional/test_dry_run.py runs the same states against this host.
"""

import pytest

from helpers import load_module

ACTIONS = tuple(f"postfix_service.{action}" for action in
                ("start", "reload", "restart", "stop", "enable", "flush")) + (
    "postfix_master.set_smtpd_listener", "postfix_maincf.install_main_cf",
    "postfix_aliases.newaliases")


def states_for(host, test=True, low=None, running=None):
    """_states/postfix_control.py against a described host. Under test every
    action fails; otherwise actions succeed and are recorded in host["done"]."""
    states = load_module("_states/postfix_control.py")

    def act(action):
        def run(*args, **kwargs):
            if test:
                raise AssertionError(f"{action} ran under test=True")
            host.setdefault("done", []).append(action)
            return host["deferred"] if action == "flush" else True
        return run

    funcs = {fun: act(fun.partition(".")[2]) for fun in ACTIONS}
    funcs.update({
        "postfix_service.status": lambda config_dir="/etc/postfix": host["running"],
        "postfix_service.enabled": lambda: host["enabled"],
        "postfix_service.deferred_count": lambda config_dir="/etc/postfix": host["deferred"],
        "postfix_service.init_managed": lambda: False,
        "postfix_service.needs_restart": lambda changes: "inet_interfaces" in changes,
    })
    states.__salt__ = funcs
    states.__opts__ = {"test": test}
    states.__low__ = low or {}
    states.__running__ = running or {}
    return states


HOSTS = [{"running": r, "enabled": e, "deferred": d}
         for r in (True, False) for e in (True, False, None) for d in (0, 3)]


@pytest.mark.parametrize("host", HOSTS, ids=str)
def test_running_dry_run_reports_what_it_would_do(host):
    ret = states_for(host).running(name="postfix")
    expected = {}
    if host["enabled"] is False:
        expected["enabled"] = True
    if not host["running"]:
        expected["running"] = True
        if host["deferred"]:
            expected["flushed"] = host["deferred"]
    assert ret["changes"] == expected
    assert ret["result"] is (None if expected else True), ret["comment"]
    assert ret["comment"]
    real = states_for(dict(host), test=False).running(name="postfix")
    assert (real["result"], real["changes"]) == (True, expected), real["comment"]


def watched(changes):
    """__low__ and __running__ as Salt hands them to mod_watch: one watched
    state with these changes."""
    chunk = {"__id__": "postfix-relay-config-main-cf"}
    tag = "postfix_control_|-postfix-relay-config-main-cf_|-/etc/postfix/main.cf_|-main_cf"
    return {"__reqs__": {"watch": [chunk]}}, {tag: {"changes": changes, "result": None}}


@pytest.mark.parametrize(("changes", "action"), [
    ({"relayhost": {"old": None, "new": "[a]:587"}}, "reload"),
    ({"inet_interfaces": {"old": "all", "new": "loopback-only"}}, "restart"),
])
@pytest.mark.parametrize("deferred", [0, 2])
def test_mod_watch_dry_run_reports_the_reload_or_restart(changes, action, deferred):
    low, running = watched(changes)
    host = {"running": True, "enabled": True, "deferred": deferred}
    ret = states_for(host, low=low, running=running).mod_watch(name="postfix", sfun="running")
    expected = {action: True, **({"flushed": deferred} if deferred else {})}
    assert (ret["result"], ret["changes"]) == (None, expected), ret["comment"]
    assert action in ret["comment"]
    real = states_for(dict(host), test=False, low=low, running=running).mod_watch(
        name="postfix", sfun="running")
    assert (real["result"], real["changes"]) == (True, expected), real["comment"]


@pytest.mark.parametrize("test", [True, False])
@pytest.mark.parametrize(("changed_id", "expected"), [
    ("postfix-relay-clean-main-cf", {"enabled": True, "reload": True}),
    ("postfix-relay-clean-aliases", {"enabled": True}),  # not watched
])
def test_running_that_enables_acts_on_watch_by_id(test, changed_id, expected):
    """clean.sls watches by state ID: enabling at boot in the same run (Salt
    then skips mod_watch) still reloads for a watched change, and only then."""
    tag = f"postfix_control_|-{changed_id}_|-/etc/postfix/main.cf_|-main_cf_restored"
    running = {tag: {"__id__": changed_id, "name": "/etc/postfix/main.cf",
                     "__sls__": "postfix_relay.clean", "changes": {"main.cf": "restored"}}}
    low = {"watch": [{"postfix_control": "postfix-relay-clean-main-cf"},
                     {"postfix_control": "postfix-relay-clean-smtpd-listener"}]}
    host = {"running": True, "enabled": False, "deferred": 0}
    ret = states_for(host, test=test, low=low, running=running).running(name="postfix")
    assert ret["changes"] == expected, ret["comment"]
    assert ret["result"] is (None if test else True)
