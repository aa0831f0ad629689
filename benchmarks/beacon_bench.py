"""
Benchmark: one interval of the postfix_relay beacon next to `postqueue -j` alone.

Sets up the formula with its relay down, fills the queue with --messages
deferred messages (default 1,000) and Postfix's log with --lines old lines
(default 100,000), then times (medians of --runs, interleaved):
  (1) `postqueue -j` alone, the command the beacon runs each interval;
  (2) an interval with nothing new in the log (the steady state);
  (3) an interval with 1,000 new log lines (a busy minute);
  (4) an interval that must read all --lines lines (a state from before them).
The beacon runs as a minion runs it: Salt's Beacon over the minion's loader,
loaded once (a minion keeps it loaded). Target for (2): at most postqueue -j
+ 0.1 s, so a 60 s interval costs a Raspberry Pi well under 1 % of a core.
Drives Postfix: run inside a test host, as root:
    scripts/test-host .venv/bin/python benchmarks/beacon_bench.py
"""

import argparse
import concurrent.futures
import json
import pathlib
import shutil
import statistics
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "test"))

import salt.beacons  # noqa: E402
import salt.config  # noqa: E402
import salt.loader  # noqa: E402
from apply_bench import ENV, SALT_CALL, host_postfix_saved, make_config  # noqa: E402
from relay import Relay  # noqa: E402

MAILLOG = pathlib.Path("/var/log/postfix.log")


def setup(scratch, relay_port):
    """Formula applied (relay down), the beacon synced; the minion's opts."""
    relay = Relay(tls="starttls", users={"bench": "bench-pw"}, port=relay_port)
    conf = make_config(scratch / "salt", relay)
    (conf / "file_root" / "_beacons").symlink_to(REPO / "_beacons")
    for args in (["saltutil.sync_all"], ["state.apply", "postfix_relay"]):
        res = subprocess.run([SALT_CALL, "--local", "-c", str(conf), *args],
                             capture_output=True, text=True, check=False, env=ENV)
        if res.returncode:
            sys.exit(f"salt-call {' '.join(args)} failed:\n{res.stdout[-2000:]}")
    opts = salt.config.minion_config(str(conf / "minion"))
    opts["cachedir"] = str(scratch / "beacon-cache")
    return opts


def fill_queue(count):
    """count cron-style messages, submitted 8 at a time, all deferred."""
    def one(index):
        subprocess.run(["/usr/sbin/sendmail", "-i", "root"], check=True,
                       input=f"Subject: bench {index}\n\nqueued while the relay is down\n",
                       text=True)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(count)))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        out = subprocess.run(["postqueue", "-j"], capture_output=True, text=True).stdout
        names = [json.loads(line)["queue_name"] for line in out.splitlines()]
        if len(names) == count and set(names) == {"deferred"}:
            return
        time.sleep(1)
    sys.exit(f"the queue did not settle at {count} deferred messages")


def log_lines(count, start=0):
    """Lines as a busy null client logs them, one failure every 100 lines."""
    stamp = time.strftime("%b %d %H:%M:%S")
    out = []
    for i in range(start, start + count):
        if i % 100 == 99:
            out.append(f"{stamp} pi postfix/smtp[4242]: Q{i:07X}: to=<me@example.org>, "
                       "relay=none, delay=1, delays=0/0/1/0, dsn=4.4.1, status=deferred "
                       "(connect to 127.0.0.1[127.0.0.1]:9: Connection refused)")
        else:
            out.append(f"{stamp} pi postfix/qmgr[77]: Q{i:07X}: from=<pi@example.org>, "
                       "size=420, nrcpt=1 (queue active)")
    return "\n".join(out) + "\n"


def append(text):
    with open(MAILLOG, "a", encoding="utf-8") as handle:
        handle.write(text)


def timed(func, check=None):
    start = time.perf_counter()
    result = func()
    elapsed = time.perf_counter() - start
    if check and not check(result):
        sys.exit(f"unexpected beacon result: {result}")
    return elapsed


def tags(events):
    return sorted(event["tag"].rsplit("/", 1)[-1] for event in events)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--runs", type=int, default=11)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--lines", type=int, default=100_000)
    args = parser.parse_args()
    with host_postfix_saved("beacon_bench.") as scratch:
        opts = setup(scratch, relay_port=9)  # nothing listens on port 9
        fill_queue(args.messages)
        append(log_lines(args.lines))
        beacon = salt.beacons.Beacon(opts, salt.loader.minion_mods(
            opts, utils=salt.loader.utils(opts)))
        config = {"postfix_relay": [{"deferred_max": 10}, {"age_max": 3600}]}
        state = pathlib.Path(opts["cachedir"], "postfix_relay", "beacon.json")
        beacon.process(config, {})  # first interval: starts at the log's end
        saved = scratch / "state-before"
        shutil.copy2(state, saved)
        times = {"postqueue": [], "nothing": [], "busy": [], "all": []}
        for run in range(args.runs):
            times["postqueue"].append(timed(lambda: subprocess.run(
                ["postqueue", "-j"], capture_output=True, check=True)))
            # checked: no event when nothing changed, the new failures read
            times["nothing"].append(timed(lambda: beacon.process(config, {}),
                                          lambda events: events == []))
            append(log_lines(1000, start=run * 1000))
            times["busy"].append(timed(lambda: beacon.process(config, {})))
            shutil.copy2(saved, state)  # the position from before --lines lines
            times["all"].append(timed(lambda: beacon.process(config, {}),
                                      lambda events: tags(events) == ["unreachable"]))
        size = MAILLOG.stat().st_size
    report(times, args, size)


def report(times, args, size):
    med = {key: statistics.median(values) for key, values in times.items()}
    print(f"queue: {args.messages} deferred messages; log: {args.lines} old lines "
          f"({size // 1024} KiB at the end)")
    print(f"{'measure (median of ' + str(args.runs) + ')':<60}{'seconds':>9}{'target':>10}")
    print(f"{'(1) postqueue -j alone':<60}{med['postqueue']:>9.3f}")
    print(f"{'(2) beacon interval, nothing new in the log':<60}{med['nothing']:>9.3f}"
          f"{'<= ' + format(med['postqueue'] + 0.1, '.3f'):>10}")
    print(f"{'(3) beacon interval, 1,000 new log lines':<60}{med['busy']:>9.3f}")
    print(f"{'(4) beacon interval reading all ' + str(args.lines) + ' lines':<60}"
          f"{med['all']:>9.3f}")
    print("(2) minus (1), the beacon's own cost: "
          f"{med['nothing'] - med['postqueue']:.3f} s")


if __name__ == "__main__":
    main()
