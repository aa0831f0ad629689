"""
Benchmark: no-op re-apply with several relays (issue 14) next to Salt's floor.

  A pillar with a primary relay, two fallback_relays and two sender_relays
  (sender_mode local, queue_lifetime), applied once and checked live (a cron
  mail reaches the primary, a billing mail its own relay); then, interleaved,
  --runs times each: Salt's floor (an SLS holding one test.nop, as
  apply_bench.py defines it), the no-op re-apply of postfix_relay with that
  pillar, and, for scale, the no-op re-apply with the one-relay pillar of
  apply_bench.py (its own applied state: re-applied before its runs).
  Target: several relays within 1.15x the floor. Wall time as apply_bench.py
  measures it, and CPU time (salt-call and the commands it waits for), which
  a machine shared with other work inflates far less.

Drives Postfix: run it inside a private test host, as root:
    scripts/test-host .venv/bin/python benchmarks/relays_bench.py
"""

import argparse
import json
import pathlib
import resource
import statistics
import subprocess
import sys
import time
import uuid

BENCH = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent / "test"))

from apply_bench import ENV, SALT_CALL, host_postfix_saved, make_config, salt_call  # noqa: E402
from relay import Relay  # noqa: E402

ACCOUNTS = {name: (f"{name}-user", f"{name}-bench-pw")
            for name in ("primary", "fb1", "fb2", "billing", "shop")}
SENDERS = {"billing": "billing@example.org", "shop": "@shop.example.org"}


def relay_yaml(name, port, indent):
    user, password = ACCOUNTS[name]
    pad = " " * indent
    return (f"{pad}host: 127.0.0.1\n{pad}port: {port}\n{pad}username: {user}\n"
            f"{pad}password: {password}\n{pad}tls: encrypt\n")


def several_pillar(relays):
    """The pillar text: primary, two fallbacks, two sender relays."""
    text = ("postfix_relay:\n  domain: example.org\n  hostname: pi.example.org\n"
            "  recipient: me@example.org\n  reply_to: me@example.org\n"
            "  sender_mode: local\n  queue_lifetime: 2d\n"
            "  relay:\n" + relay_yaml("primary", relays["primary"].port, 4) +
            "  fallback_relays:\n")
    for name in ("fb1", "fb2"):
        text += "    - " + relay_yaml(name, relays[name].port, 6)[6:]
    text += "  sender_relays:\n"
    for name, sender in SENDERS.items():
        text += f"    '{sender}':\n" + relay_yaml(name, relays[name].port, 6)
    return text


def changes_of_apply(conf):
    """State IDs an apply changed (a no-op must change none)."""
    res = subprocess.run([SALT_CALL, "--local", "-c", str(conf), "--out=json",
                          "state.apply", "postfix_relay"], capture_output=True, text=True,
                         check=False, env=ENV)
    data = json.loads(res.stdout)["local"]
    if res.returncode or not isinstance(data, dict):
        sys.exit(f"state.apply failed:\n{res.stdout[-3000:]}\n{res.stderr[-2000:]}")
    return sorted(v["__id__"] for v in data.values() if v["changes"])


def check_live(relays):
    """A cron mail reaches the primary, a billing mail the billing relay."""
    cron, billing = uuid.uuid4().hex, uuid.uuid4().hex
    subprocess.run(["/usr/sbin/sendmail", "-i", "root"],
                   input=f"Subject: bench {cron}\n\n{cron}\n".encode(), check=True)
    subprocess.run(["/usr/sbin/sendmail", "-f", SENDERS["billing"], "-i", "root"],
                   input=f"From: {SENDERS['billing']}\nSubject: bench {billing}\n\n"
                         f"{billing}\n".encode(), check=True)
    for token, name in ((cron, "primary"), (billing, "billing")):
        record = relays[name].find(token, timeout=60)
        if record is None or record["auth_user"] != ACCOUNTS[name][0]:
            sys.exit(f"the {name} check mail did not reach the {name} relay with its account")


def timed_call(conf, *args):
    """(wall seconds, CPU seconds) of one salt-call: the CPU time of salt-call
    and the commands it waited for (postconf, postmap), which a loaded
    machine inflates far less than the wall time."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = salt_call(conf, *args)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def timed_series(conf, pillar_file, pillar_text, runs):
    """Floor and no-op runs, interleaved, for one pillar (applied first)."""
    pillar_file.write_text(pillar_text)
    salt_call(conf, "state.apply", "postfix_relay")  # settle
    again = changes_of_apply(conf)
    if again:
        sys.exit(f"the re-apply is not a no-op: it changed {again}")
    floor, noop = [], []
    for _ in range(runs):
        floor.append(timed_call(conf, "state.apply", "floor"))
        noop.append(timed_call(conf, "state.apply", "postfix_relay"))
    return floor, noop


def _lines(key, label, floor, noop, unit):
    """Floor and no-op medians of one series, their ratio and the median of
    the paired ratios (each no-op over the floor run just before it)."""
    med_floor, med_noop = statistics.median(floor), statistics.median(noop)
    paired = statistics.median(n / f for f, n in zip(floor, noop))
    target = key == "several"
    print(f"{'salt floor (one test.nop), ' + unit:<56}{med_floor:>10.3f}")
    print(f"{label + ', ' + unit:<56}{med_noop:>10.3f}"
          f"{'<= ' + format(1.15 * med_floor, '.3f') if target else '':>14}")
    print(f"{'  ratio of the medians':<56}{med_noop / med_floor:>10.3f}"
          f"{'<= 1.150' if target else '':>14}")
    print(f"{'  median of the paired ratios':<56}{paired:>10.3f}")


def report(series, runs):
    """Wall and CPU medians per series, each beside the floor measured with it."""
    print(f"{'measure':<56}{'median s':>10}{'target':>14}")
    labels = {"several": "no-op, 3 relays + 2 sender relays",
              "one": "no-op, one relay (apply_bench pillar)"}
    for key, label in labels.items():
        for index, unit in enumerate(("wall", "CPU")):
            floor = [run[index] for run in series[key][0]]
            noop = [run[index] for run in series[key][1]]
            _lines(key, label, floor, noop, unit)
    for key in labels:
        floor, noop = series[key]
        print(f"({key}: {runs} runs each, interleaved; wall floor "
              f"{', '.join(f'{w:.2f}' for w, _ in floor)}; wall no-op "
              f"{', '.join(f'{w:.2f}' for w, _ in noop)})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--runs", type=int, default=11)
    args = parser.parse_args()
    with host_postfix_saved("relays_bench.") as scratch:
        relays = {name: Relay(users=dict([ACCOUNTS[name]])).start() for name in ACCOUNTS}
        try:
            conf = make_config(scratch / "salt", relays["primary"])
            pillar_file = conf / "pillar" / "postfix_relay.sls"
            one_relay = pillar_file.read_text()
            salt_call(conf, "saltutil.sync_all")
            pillar_file.write_text(several_pillar(relays))
            salt_call(conf, "state.apply", "postfix_relay")
            started = time.monotonic()
            check_live(relays)
            print(f"several-relay setup live: check mails relayed in "
                  f"{time.monotonic() - started:.2f} s")
            series = {"several": timed_series(conf, pillar_file, several_pillar(relays),
                                              args.runs),
                      "one": timed_series(conf, pillar_file, one_relay, args.runs)}
        finally:
            for relay in relays.values():
                relay.stop()
    report(series, args.runs)


if __name__ == "__main__":
    main()
