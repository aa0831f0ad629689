"""
The local alias databases (``alias_database``): which are missing or stale, and
building them with ``newaliases``. Local delivery defers all mail while one is
missing ("alias database unavailable").

CLI Example:

.. code-block:: bash

    salt-call postfix_aliases.missing_alias_databases
"""

import os
import re

from salt.exceptions import CommandExecutionError

__virtualname__ = "postfix_aliases"


def __virtual__():
    return __virtualname__


def missing_alias_databases(config_dir="/etc/postfix"):
    """
    The indexed alias databases (``alias_database``) whose compiled file is
    missing or older than its source: local delivery defers all mail while
    one is missing ("alias database unavailable").

    CLI Example:

    .. code-block:: bash

        salt-call postfix_aliases.missing_alias_databases
    """
    res = __salt__["postfix_cmd.run"](["postconf", "-c", config_dir, "-h", "-x", "alias_database"])
    missing = []
    for table in re.split(r"[\s,]+", res["stdout"].strip()):
        map_type, _, path = table.partition(":")
        if os.path.exists(path) and __salt__["postmap.outdated_files"](path, map_type):
            missing.append(table)
    return missing


def newaliases(config_dir="/etc/postfix"):
    """
    Build the alias databases (``newaliases``).

    CLI Example:

    .. code-block:: bash

        salt-call postfix_aliases.newaliases
    """
    res = __salt__["postfix_cmd.run"](["newaliases", "-C", config_dir])
    if res["retcode"]:
        raise CommandExecutionError(f"newaliases failed: {res['stderr'].strip()}")
    return True
