"""
No test touches the machine's own Postfix. A test host plays the machine, with
what an admin's host has: Postfix running, a message held in its queue, its own
password table. The suite then runs in test hosts of its own (scripts/test-host,
as ./run-tests runs it), once to the end and once killed with SIGKILL while its
Postfix runs: the machine's Postfix, queue and files are exactly as they were.
The suite run here is the integration module's clean tests: its fixtures stop
Postfix and delete every queued message, and the tests apply the formula, then
undo it (clean removes the password table and, on a host installed with "No
configuration", /etc/aliases.db). Its other tests (bad pillars, refused before
any file changes) would only add salt-calls that touch nothing.
"""

import json
import pathlib
import subprocess

REPO = pathlib.Path(__file__).resolve().parents[2]
DESTRUCTIVE = ("test/integration/test_bad_pillar_and_clean.py", "-k", "test_clean_removes")


def test_a_full_run_and_a_killed_run_leave_the_machines_postfix_as_it_was():
    res = subprocess.run(
        [str(REPO / "scripts/test-host"), str(REPO / ".venv/bin/python"),
         str(REPO / "test/isolation/machine_check.py"), *DESTRUCTIVE],
        capture_output=True, text=True, timeout=900, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(res.stdout.strip().splitlines()[-1])
    before = report["before"]
    # what the machine had: its Postfix running, a held message, a password table
    assert len(before["masters"]) == 1
    assert [name for _, name in before["queue"]] == ["hold"]
    assert before["passwd.db"] and before["aliases.db"]
    # the suite really ran, and really ran into the destructive part
    assert report["full_run_rc"] == 0, report["full_run_tail"]
    assert "2 passed" in report["full_run_tail"]
    assert report["killed"]["its_postfix_started"]
    # and nothing of the machine's changed
    assert report["after_full_run"] == before
    assert report["after_killed_run"] == before
    assert report["killed"]["left_running"] == []
    # a killed run leaves its throwaway root; the next test host removes it
    roots = [n for n in report["left_by_killed_run"] if n.startswith("postfix_relay-host.")]
    assert len(roots) == 1
    assert not [n for n in report["left_after_next_run"] if n.startswith("postfix_relay-host.")]
