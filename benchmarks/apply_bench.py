"""
Benchmark: the formula's apply times next to Salt's own floor, in one run.

  (1) no-op re-apply of postfix_relay vs. an SLS holding one test.nop, same
      salt-call flags (medians of --runs each, interleaved);
      target: at most 1.15x the floor.
  (2) first apply on a host where Postfix runs with distro defaults, until a
      mail sent right after it reaches the relay (medians of --first-runs);
      target: at most 1.5 s.

Drives this host's real Postfix (its files are restored afterwards) and a test
relay on 127.0.0.1. Run as root:  .venv/bin/python benchmarks/apply_bench.py
"""

import argparse
import contextlib
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "test"))

from relay import Relay  # noqa: E402

SALT_CALL = str(REPO / ".venv" / "bin" / "salt-call")
SAVED = ["/etc/postfix/main.cf", "/etc/postfix/master.cf", "/etc/mailname",
         "/etc/postfix/main.cf.pre-postfix_relay"]
TABLES = ["/etc/postfix/sasl/passwd", "/etc/postfix/reply_to_header",
          "/etc/postfix/recipient_canonical"]


def make_config(work, relay):
    root = work / "file_root"
    root.mkdir(parents=True)
    for name in ("postfix_relay", "_modules", "_states", "_utils"):
        (root / name).symlink_to(REPO / name)
    (root / "floor").mkdir()
    (root / "floor" / "init.sls").write_text("floor-nop:\n  test.nop: []\n")
    pillar = work / "pillar"
    pillar.mkdir()
    (pillar / "top.sls").write_text("base:\n  '*':\n    - postfix_relay\n")
    (pillar / "postfix_relay.sls").write_text(
        "postfix_relay:\n  domain: example.org\n  hostname: pi.example.org\n"
        "  recipient: me@example.org\n  reply_to: me@example.org\n"
        f"  relay:\n    host: 127.0.0.1\n    port: {relay.port}\n"
        "    username: bench\n    password: bench-pw\n    tls: encrypt\n")
    (work / "minion").write_text(
        f"file_client: local\nroot_dir: {work / 'root'}\n"
        f"file_roots:\n  base:\n    - {root}\n"
        f"pillar_roots:\n  base:\n    - {pillar}\n")
    return work


# Hosts cache the bytecode of Salt's synced modules; a PYTHONDONTWRITEBYTECODE
# inherited from a sandbox would recompile the formula's modules on every run.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def salt_call(conf, *args):
    start = time.perf_counter()
    res = subprocess.run([SALT_CALL, "--local", "-c", str(conf), "--out=quiet", *args],
                         capture_output=True, text=True, check=False, env=ENV)
    elapsed = time.perf_counter() - start
    if res.returncode:
        sys.exit(f"salt-call {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}")
    return elapsed


def postfix_running():
    return subprocess.run(["postfix", "status"], capture_output=True).returncode == 0


def reset_to_distro_defaults():
    """Postfix installed and running as the distro configures it; no formula."""
    if postfix_running():
        subprocess.run(["postfix", "stop"], capture_output=True, check=False)
        while postfix_running():
            time.sleep(0.05)
    for table in TABLES:
        for suffix in ("", ".db", ".lmdb", ".cdb"):
            pathlib.Path(table + suffix).unlink(missing_ok=True)
    pathlib.Path("/etc/postfix/main.cf.pre-postfix_relay").unlink(missing_ok=True)
    text = pathlib.Path("/usr/share/postfix/main.cf.debian").read_text()
    text += ("myhostname = pi.example.org\nmydestination = $myhostname, localhost\n"
             "inet_interfaces = loopback-only\nmaillog_file = /var/log/postfix.log\n")
    pathlib.Path("/etc/postfix/main.cf").write_text(text)
    # An installed host's main.cf is old: no "freshly written" wait for anybody.
    old = time.time() - 3600
    os.utime("/etc/postfix/main.cf", (old, old))
    subprocess.run(["postfix", "start"], capture_output=True, check=True)


def first_apply_until_relayed(conf, relay):
    reset_to_distro_defaults()
    token = uuid.uuid4().hex
    relay.reset()
    start = time.perf_counter()
    applied = salt_call(conf, "state.apply", "postfix_relay")
    subprocess.run(["/usr/sbin/sendmail", "-i", "root"],
                   input=f"Subject: bench {token}\n\n{token}\n".encode(), check=True)
    deadline = time.monotonic() + 60
    while not any(token in m["data"] for m in relay.messages):
        if time.monotonic() > deadline:
            sys.exit("the benchmark mail did not reach the relay in 60 s")
        time.sleep(0.01)
    return applied, time.perf_counter() - start


@contextlib.contextmanager
def host_postfix_saved(prefix):
    """Save the host's Postfix files and state; restore them afterwards.
    Yields a scratch directory that is removed at the end."""
    backup = pathlib.Path(tempfile.mkdtemp(prefix=prefix))
    was_running = postfix_running()
    for path in SAVED:
        if os.path.exists(path):
            shutil.copy2(path, backup / os.path.basename(path))
    try:
        yield backup
    finally:
        if postfix_running():
            subprocess.run(["postfix", "stop"], capture_output=True, check=False)
        for path in SAVED:
            saved = backup / os.path.basename(path)
            if saved.exists():
                shutil.copy2(saved, path)
            else:
                pathlib.Path(path).unlink(missing_ok=True)
        if was_running:
            subprocess.run(["postfix", "start"], capture_output=True, check=False)
        shutil.rmtree(backup, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--runs", type=int, default=11)
    parser.add_argument("--first-runs", type=int, default=5)
    args = parser.parse_args()
    with host_postfix_saved("apply_bench.") as scratch, \
            Relay(tls="starttls", mechanisms=("PLAIN", "LOGIN"),
                  users={"bench": "bench-pw"}) as relay:
        conf = make_config(scratch / "salt", relay)
        salt_call(conf, "saltutil.sync_all")
        firsts = [first_apply_until_relayed(conf, relay) for _ in range(args.first_runs)]
        salt_call(conf, "state.apply", "postfix_relay")  # settle
        floor, noop = [], []
        for _ in range(args.runs):
            floor.append(salt_call(conf, "state.apply", "floor"))
            noop.append(salt_call(conf, "state.apply", "postfix_relay"))

    med_floor, med_noop = statistics.median(floor), statistics.median(noop)
    apply_s = statistics.median(a for a, _ in firsts)
    relayed_s = statistics.median(t for _, t in firsts)
    print(f"{'measure':<46}{'median s':>10}{'target':>14}")
    print(f"{'salt floor (state.apply of one test.nop)':<46}{med_floor:>10.3f}")
    print(f"{'no-op re-apply of postfix_relay':<46}{med_noop:>10.3f}"
          f"{'<= ' + format(1.15 * med_floor, '.3f'):>14}")
    print(f"{'  ratio no-op / floor':<46}{med_noop / med_floor:>10.3f}{'<= 1.150':>14}")
    print(f"{'first apply (salt-call state.apply)':<46}{apply_s:>10.3f}")
    print(f"{'first apply until the mail reached the relay':<46}{relayed_s:>10.3f}"
          f"{'<= 1.500':>14}")
    print(f"(no-op runs: {args.runs} interleaved with the floor; first applies: "
          f"{args.first_runs}; all values {', '.join(f'{x:.3f}' for x in noop)})")


if __name__ == "__main__":
    main()
