"""
postfix_cmd.run, the one command runner every module uses, against the real
postconf: exit codes come back (never raised), cmd.run_all's options pass
through, and a missing binary is one error naming the package to install.
"""

import re

import pytest
from salt.exceptions import CommandExecutionError


def test_output_and_exit_code_come_back(loaders, config_dir):
    res = loaders.modules.postfix_cmd.run(["postconf", "-c", config_dir, "-h", "mail_version"])
    assert res["retcode"] == 0
    assert re.fullmatch(r"\d+\.\d+(\.\d+)?", res["stdout"]), res["stdout"]


def test_a_failing_command_is_returned_not_raised(loaders, tmp_path):
    res = loaders.modules.postfix_cmd.run(["postconf", "-c", str(tmp_path / "none"), "-n"])
    assert res["retcode"] != 0
    assert "none" in res["stderr"]


def test_options_pass_through_to_cmd_run_all(loaders, config_dir):
    """postmap reads tables with rstrip=False: the last newline is data."""
    res = loaders.modules.postfix_cmd.run(["postconf", "-c", config_dir, "-h", "mail_version"],
                                          rstrip=False)
    assert res["stdout"].endswith("\n")


@pytest.mark.parametrize("argv0, package", [
    ("/nonexistent/postmap", "the postfix package"),
    ("/nonexistent/systemctl", "the systemd package"),
])
def test_a_missing_binary_names_the_package(loaders, argv0, package):
    with pytest.raises(CommandExecutionError) as exc:
        loaders.modules.postfix_cmd.run([argv0, "-h"])
    assert str(exc.value).startswith(f"{argv0} is not installed or cannot run: install")
    assert package in str(exc.value)
