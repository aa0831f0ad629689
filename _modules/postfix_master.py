"""
master.cf: its active entries, where the smtp client (the relay transport) runs
chrooted, and the port-25 SMTP listener.

CLI Example:

.. code-block:: bash

    salt-call postfix_master.smtpd_listening
    salt-call postfix_master.smtp_chroot_dir
"""

import os

from salt.exceptions import CommandExecutionError

__virtualname__ = "postfix_master"


def __virtual__():
    return __virtualname__


def _master_entries(config_dir):
    """Active master.cf entries as (service, type, fields) tuples."""
    text = __salt__["postfix_maincf.read_file"](os.path.join(config_dir, "master.cf")) or ""
    entries, current = [], None
    for line in __utils__["postfix_text.lines"](text):
        if not line.strip() or line.startswith("#"):
            continue
        if line[0].isspace() and current:
            current.extend(line.split())
            continue
        current = line.split()
        entries.append(current)
    return entries


def smtp_chroot_dir(config_dir="/etc/postfix", default=""):
    """
    Where Postfix's smtp client (the relay transport) runs chrooted: the queue
    directory when master.cf says so for smtp/unix, else "". ``default`` when
    master.cf is not there yet (Postfix not installed).

    CLI Example:

    .. code-block:: bash

        salt-call postfix_master.smtp_chroot_dir
    """
    if not os.path.exists(os.path.join(config_dir, "master.cf")):
        return default
    for fields in _master_entries(config_dir):
        if fields[:2] == ["smtp", "unix"] and len(fields) > 4:
            # "-" is the built-in default: no chroot
            if fields[4] != "y":
                return ""
            return __salt__["postfix_facts.facts"](config_dir)["queue_directory"]
    return ""


def smtpd_listening(config_dir="/etc/postfix"):
    """
    True when master.cf runs an SMTP server on port 25 (``smtp inet ...``).

    CLI Example:

    .. code-block:: bash

        salt-call postfix_master.smtpd_listening
    """
    for fields in _master_entries(config_dir):
        if len(fields) > 1 and fields[1] == "inet" and \
                fields[0].rpartition(":")[2] in ("smtp", "25"):
            return True
    return False


def set_smtpd_listener(enabled, chroot="y", config_dir="/etc/postfix"):
    """
    Turn the port-25 SMTP listener in master.cf on or off with ``postconf -M``.

    CLI Example:

    .. code-block:: bash

        salt-call postfix_master.set_smtpd_listener False
    """
    if enabled:
        argv = ["postconf", "-c", config_dir, "-M",
                f"smtp/inet=smtp inet n - {chroot} - - smtpd"]
    else:
        argv = ["postconf", "-c", config_dir, "-M#", "smtp/inet"]
    res = __salt__["postfix_cmd.run"](argv)
    if res["retcode"]:
        raise CommandExecutionError(f"postconf -M failed: {res['stderr'].strip()}")
    return True
