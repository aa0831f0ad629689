"""
The one way the formula's modules run a command (Postfix's, systemctl,
newaliases): a list argv, no shell, the exit code returned rather than logged
as an error, and the output never logged (it may hold a table's secrets).

CLI Example:

.. code-block:: bash

    salt-call postfix_cmd.run '["postconf", "-h", "mail_version"]'
"""

import os

from salt.exceptions import CommandExecutionError

__virtualname__ = "postfix_cmd"

# Debian packages of the commands the formula runs, for the missing-binary error.
PACKAGES = {"systemctl": "systemd"}


def __virtual__():
    return __virtualname__


def run(argv, **kwargs):
    """
    Run argv (a list, no shell) and return cmd.run_all's dict (retcode,
    stdout, stderr). A non-zero exit is returned, not raised; a missing
    binary is one CommandExecutionError naming the package to install.
    Extra keyword arguments (env, rstrip, ...) go to cmd.run_all.

    CLI Example:

    .. code-block:: bash

        salt-call postfix_cmd.run '["postconf", "-h", "mail_version"]'
    """
    try:
        return __salt__["cmd.run_all"](list(argv), python_shell=False, ignore_retcode=True,
                                       output_loglevel="quiet", **kwargs)
    except CommandExecutionError:
        # Salt's message holds the whole context; ours names the fix.
        package = PACKAGES.get(os.path.basename(argv[0]), "postfix")
        what = "Postfix (the postfix package)" if package == "postfix" else \
            f"the {package} package"
        raise CommandExecutionError(
            f"{argv[0]} is not installed or cannot run: install {what} first"
        ) from None
