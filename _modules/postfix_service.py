"""
The Postfix service: enabled at boot, running, started, reloaded, restarted or
stopped (through the init system, or ``postfix(1)`` where none runs: containers,
chroots), and its deferred queue counted and flushed.

The checks run on every apply, so they read files (the master's pid file, the
unit's symlink, the queue) and spawn commands only to change something.

CLI Example:

.. code-block:: bash

    salt-call postfix_service.status
    salt-call postfix_service.flush
"""

import os
import shutil
import time

from salt.exceptions import CommandExecutionError

__virtualname__ = "postfix_service"

_RESTART_PARAMS = ("inet_interfaces", "inet_protocols")


def __virtual__():
    return __virtualname__


def init_managed():
    """
    True when an init system runs and Salt's service module can drive it.

    Without one (containers, chroots, this CI: Salt's systemd module says
    "OFFLINE mode"), the formula drives Postfix with ``postfix start|reload``.

    CLI Example:

    .. code-block:: bash

        salt-call postfix_service.init_managed
    """
    if os.path.isdir("/run/systemd/system"):  # sd_booted(): systemd is PID 1
        return True
    if shutil.which("systemctl"):  # systemd installed but not running: offline
        return False
    if "service.start" not in __salt__:
        return False
    offline = __salt__.get("service.offline")
    return not (offline and offline())


def enabled():
    """
    True when Postfix starts at boot; None where no init system is installed.

    Without a running init system, ``systemctl is-enabled`` still answers from
    the unit files (images and containers that boot later keep the setting).

    CLI Example:

    .. code-block:: bash

        salt-call postfix_service.enabled
    """
    if init_managed():
        return bool(__salt__["service.enabled"]("postfix"))
    if not shutil.which("systemctl"):
        return None
    # Fast path, no spawn: the symlink `systemctl enable` makes (Debian's unit).
    if os.path.exists("/etc/systemd/system/multi-user.target.wants/postfix.service"):
        return True
    res = __salt__["postfix_cmd.run"](["systemctl", "is-enabled", "--quiet", "postfix"])
    return res["retcode"] == 0


def enable():
    """
    Enable Postfix at boot (offline too, through the unit files).

    CLI Example:

    .. code-block:: bash

        salt-call postfix_service.enable
    """
    if init_managed():
        return bool(__salt__["service.enable"]("postfix"))
    res = __salt__["postfix_cmd.run"](["systemctl", "enable", "--quiet", "postfix"])
    if res["retcode"]:
        raise CommandExecutionError(f"systemctl enable postfix failed: {res['stderr'].strip()}")
    return True


def _master_pid(queue_directory):
    pid_file = os.path.join(queue_directory, "pid", "master.pid")
    try:
        with open(pid_file, encoding="ascii") as handle:
            pid = int(handle.read().strip())
        with open(f"/proc/{pid}/comm", encoding="ascii") as handle:
            if handle.read().strip() == "master":
                return pid
    except (OSError, ValueError):
        pass
    return None


def status(config_dir="/etc/postfix"):
    """
    True when the Postfix master process runs (read from its pid file).

    CLI Example:

    .. code-block:: bash

        salt-call postfix_service.status
    """
    if init_managed():
        return bool(__salt__["service.status"]("postfix"))
    return _master_pid(__salt__["postfix_facts.facts"](config_dir)["queue_directory"]) is not None


def deferred_count(config_dir="/etc/postfix"):
    """
    Messages waiting in the deferred queue (files counted, no Postfix command).

    CLI Example:

    .. code-block:: bash

        salt-call postfix_service.deferred_count
    """
    root = os.path.join(__salt__["postfix_facts.facts"](config_dir)["queue_directory"], "deferred")
    return sum(len(files) for _, _, files in os.walk(root))


def flush(config_dir="/etc/postfix"):
    """
    Retry the deferred mail now (``postqueue -f``), as after fixing the relay
    settings; without it, deferred mail waits up to maximal_backoff_time.
    Returns how many messages were waiting.

    CLI Example:

    .. code-block:: bash

        salt-call postfix_service.flush
    """
    waiting = deferred_count(config_dir)
    if waiting:
        res = __salt__["postfix_cmd.run"](["postqueue", "-c", config_dir, "-f"])
        if res["retcode"]:
            raise CommandExecutionError(f"postqueue -f failed: {res['stderr'].strip()}")
    return waiting


def _postfix(action, config_dir):
    res = __salt__["postfix_cmd.run"](["postfix", "-c", config_dir, action])
    if res["retcode"]:
        raise CommandExecutionError(
            f"postfix {action} failed: {(res['stderr'] or res['stdout']).strip()}")
    return True


def _prepare_chroot(config_dir, prestart):
    """Run the distro's pre-start helper (Debian copies resolv.conf etc. into
    the smtp chroot), as its init script would."""
    if prestart and os.path.exists(prestart[0]):
        if _runs_itself(prestart[0]):
            return
        res = __salt__["postfix_cmd.run"](list(prestart), env={"MAIL_CONFIG": config_dir})
        if res["retcode"]:
            raise CommandExecutionError(f"{prestart[0]} failed: {res['stderr'].strip()}")


def _runs_itself(script):
    """Debian's Postfix 3.11 runs configure-instance.sh from `postfix start`
    itself and refuses to be called from outside."""
    try:
        with open(script, encoding="utf-8", errors="replace") as handle:
            return "internal script used by postfix" in handle.read()
    except OSError:
        return False


def _control(action, config_dir, prestart):
    """start/reload through the init system, or postfix(1) without one."""
    if init_managed():
        return __salt__[f"service.{action}"]("postfix")
    _prepare_chroot(config_dir, prestart)
    return _postfix(action, config_dir)


def start(config_dir="/etc/postfix", prestart=None):
    """
    Start Postfix through the init system, or with ``postfix start`` without one.

    CLI Example:

    .. code-block:: bash

        salt-call postfix_service.start
    """
    return _control("start", config_dir, prestart)


def reload(config_dir="/etc/postfix", prestart=None):
    """
    Reload Postfix (re-reads main.cf and master.cf; the queue is kept).

    CLI Example:

    .. code-block:: bash

        salt-call postfix_service.reload
    """
    return _control("reload", config_dir, prestart)


def stop(config_dir="/etc/postfix", timeout=30):
    """
    Stop Postfix and wait for the master process to exit. Queued mail stays queued.

    CLI Example:

    .. code-block:: bash

        salt-call postfix_service.stop
    """
    if init_managed():
        return __salt__["service.stop"]("postfix")
    queue = __salt__["postfix_facts.facts"](config_dir)["queue_directory"]
    if _master_pid(queue) is None:
        return True
    _postfix("stop", config_dir)
    deadline = time.monotonic() + timeout
    while _master_pid(queue) is not None:
        if time.monotonic() > deadline:
            raise CommandExecutionError("postfix stop: master did not exit in time")
        time.sleep(0.05)
    return True


def restart(config_dir="/etc/postfix", prestart=None):
    """
    Stop and start Postfix (needed when inet_interfaces changes).

    CLI Example:

    .. code-block:: bash

        salt-call postfix_service.restart
    """
    if init_managed():
        return __salt__["service.restart"]("postfix")
    stop(config_dir)
    return start(config_dir, prestart)


def needs_restart(changes):
    """True when a change to these main.cf params needs a stop/start, not a reload."""
    return any(name in _RESTART_PARAMS for name in changes or {})
