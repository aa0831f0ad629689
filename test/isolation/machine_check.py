"""
Driver of test_machine_untouched.py, run as its own test host playing "the
machine": it gives itself what an admin's host has (Postfix running with its
own main.cf, a message held in the queue, a custom password table, an alias
database), then runs the test suite twice in test hosts of its own (once to
the end, once killed with SIGKILL while its Postfix runs) and prints, as JSON,
the machine's state before, after each run, and what was left behind.

Usage: scripts/test-host .venv/bin/python test/isolation/machine_check.py TESTS...
"""

import hashlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[2]
PASSWD = pathlib.Path("/etc/postfix/sasl/passwd")
MAIN_CF = """compatibility_level = 3.6
maillog_file = /var/log/postfix.log
inet_interfaces = loopback-only
mydestination =
relayhost = [127.0.0.1]:9
smtp_sasl_auth_enable = yes
smtp_sasl_password_maps = hash:/etc/postfix/sasl/passwd
"""


def run(*argv, **kwargs):
    return subprocess.run(argv, capture_output=True, text=True, check=True, **kwargs)


def comm(pid):
    return pathlib.Path(f"/proc/{pid}/comm").read_text().strip()


def masters():
    """PIDs of every Postfix master process this host can see (not the children
    a master has just forked, which carry its name until they exec)."""
    found = set()
    for proc in pathlib.Path("/proc").iterdir():
        try:
            if not proc.name.isdigit() or comm(proc.name) != "master":
                continue
            ppid = (proc / "stat").read_text().rsplit(")", 1)[1].split()[1]
            if ppid == "0" or comm(ppid) != "master":
                found.add(int(proc.name))
        except OSError:
            continue
    return found


def give_the_machine_its_postfix():
    conf = pathlib.Path("/etc/postfix/main.cf")
    conf.write_text(MAIN_CF)
    old = time.time() - 60  # no 1.8 s wait for a young main.cf
    os.utime(conf, (old, old))
    PASSWD.parent.mkdir(exist_ok=True)
    PASSWD.write_text("[smtp.example.net]:587 admin:machine-secret-not-for-tests\n")
    PASSWD.chmod(0o600)
    run("postmap", f"hash:{PASSWD}")
    run("newaliases")  # /etc/aliases.db, which clean on a "No configuration" host rebuilds
    run("postfix", "start")
    run("sendmail", "-i", "-f", "root", "admin@example.net",
        input="Subject: held on the machine\n\nmust survive every test run\n")
    # picked up from maildrop and tried (relay port 9: refused, so deferred),
    # then held: it stays in the queue whatever happens
    wait_for_queue({"deferred", "active", "incoming"})
    run("postsuper", "-h", "ALL")
    wait_for_queue({"hold"})


def wait_for_queue(names, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(name in names for _, name in queue()):
            return
        time.sleep(0.2)
    raise AssertionError(f"no queued message reached {sorted(names)}: {queue()}")


def queue():
    out = subprocess.run(["postqueue", "-j"], capture_output=True, text=True).stdout
    return sorted((m["queue_id"], m["queue_name"]) for m in map(json.loads, out.splitlines()))


def file_state(path):
    if not path.exists():
        return None
    st = path.stat()
    return [hashlib.sha256(path.read_bytes()).hexdigest(), oct(st.st_mode), st.st_uid]


def machine_state():
    return {
        "masters": sorted(masters()),
        "queue": queue(),
        "passwd": file_state(PASSWD),
        "passwd.db": file_state(pathlib.Path(f"{PASSWD}.db")),
        "main.cf": file_state(pathlib.Path("/etc/postfix/main.cf")),
        "aliases.db": file_state(pathlib.Path("/etc/aliases.db")),
    }


def suite(tests, tmpdir):
    argv = [str(REPO / "scripts/test-host"), str(REPO / ".venv/bin/python"), "-m", "pytest",
            "-p", "no:cacheprovider", "-q", "-x", *tests]
    env = dict(os.environ, TMPDIR=str(tmpdir))
    return subprocess.Popen(argv, cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def killed_half_way(tests, tmpdir, mine):
    """Start the suite, SIGKILL its whole process group once its own Postfix runs."""
    proc = suite(tests, tmpdir)
    deadline = time.monotonic() + 300
    while not (masters() - mine) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    started = bool(masters() - mine)
    time.sleep(1)  # mid-apply or mid-test rather than on the first fork
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 20
    while (masters() - mine) and time.monotonic() < deadline:
        time.sleep(0.1)
    return {"its_postfix_started": started, "left_running": sorted(masters() - mine)}


def main(tests):
    give_the_machine_its_postfix()
    before = machine_state()
    tmpdir = pathlib.Path(tempfile.mkdtemp(prefix="machine-check."))
    full = suite(tests, tmpdir)
    output = full.communicate()[0]
    after_full = machine_state()
    killed = killed_half_way(tests, tmpdir, set(before["masters"]))
    after_kill = machine_state()
    left = sorted(p.name for p in tmpdir.iterdir())
    # the next test host clears what a killed one could not
    subprocess.run([str(REPO / "scripts/test-host"), "true"], check=True,
                   env=dict(os.environ, TMPDIR=str(tmpdir)))
    left_after_next = sorted(p.name for p in tmpdir.iterdir())
    shutil.rmtree(tmpdir, ignore_errors=True)
    print(json.dumps({
        "before": before, "after_full_run": after_full, "after_killed_run": after_kill,
        "full_run_rc": full.returncode, "full_run_tail": output[-3000:], "killed": killed,
        "left_by_killed_run": left, "left_after_next_run": left_after_next,
    }))


if __name__ == "__main__":
    main(sys.argv[1:])
