"""
Benchmark: 1,000 cron-style messages submitted at once through sendmail, time
until all of them reached the relay: Postfix configured by the formula next to
the same settings configured by hand (main.cf by `postconf -e`, the password
table by `postmap`), alternating, in one run. Target: ratio at most 1.05.

Drives this host's real Postfix (its files are restored afterwards) and a test
relay (STARTTLS + AUTH) on 127.0.0.1. Run as root:
    .venv/bin/python benchmarks/load_bench.py [--messages 1000] [--rounds 3]
"""

import argparse
import concurrent.futures
import os
import pathlib
import statistics
import subprocess
import sys
import time
import uuid

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from apply_bench import (  # noqa: E402
    Relay, host_postfix_saved, make_config, reset_to_distro_defaults, salt_call,
)

PASSWD = pathlib.Path("/etc/postfix/sasl/passwd")
COPIED = ["/etc/postfix/sasl/passwd", "/etc/postfix/reply_to_header"]


def by_formula(conf):
    reset_to_distro_defaults()
    salt_call(conf, "state.apply", "postfix_relay")


def settings_of_formula():
    """What the formula wrote: its main.cf parameters and table sources."""
    out = subprocess.run(["postconf", "-n"], capture_output=True, text=True,
                         check=True).stdout
    params = [line for line in out.splitlines() if line.strip()]
    return params, {path: pathlib.Path(path).read_text() for path in COPIED}


def by_hand(params, tables):
    """The same settings the way a sysadmin types them in."""
    reset_to_distro_defaults()
    for path, text in tables.items():
        pathlib.Path(path).parent.mkdir(exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
    subprocess.run(["postmap", f"hash:{PASSWD}"], check=True)
    subprocess.run(["postconf", "-e", *params], check=True)
    subprocess.run(["postfix", "reload"], capture_output=True, check=True)
    time.sleep(1)  # let the reload settle, as the formula's apply has by then


def burst(relay, count, workers):
    """Seconds from the first submission until the last message arrived."""
    relay.reset()
    tag = uuid.uuid4().hex[:8]

    def one(i):
        body = (f"From: root (Cron Daemon)\nTo: root\nSubject: Cron <root@pi> job {tag}-{i}\n"
                f"\noutput {tag}-{i}\n")
        subprocess.run(["/usr/sbin/sendmail", "-FCronDaemon", "-i", "-oem", "root"],
                       input=body.encode(), check=True)

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, range(count)))
    submitted = time.perf_counter() - start
    relay.wait_for(count, timeout=600)
    elapsed = time.perf_counter() - start
    got = {m["data"].split(f"{tag}-", 1)[1].split("\n", 1)[0] for m in relay.messages
           if tag in m["data"]}
    if len(got) != count or len(relay.messages) != count:
        sys.exit(f"lost or duplicated mail: {len(got)} distinct of {len(relay.messages)}")
    return elapsed, submitted


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()
    times = {"formula": [], "hand": []}
    with host_postfix_saved("load_bench.") as scratch, \
            Relay(tls="starttls", mechanisms=("PLAIN", "LOGIN"),
                  users={"bench": "bench-pw"}) as relay:
        conf = make_config(scratch / "salt", relay)
        salt_call(conf, "saltutil.sync_all")
        by_formula(conf)
        params, tables = settings_of_formula()
        for _ in range(args.rounds):
            by_formula(conf)
            times["formula"].append(burst(relay, args.messages, args.workers))
            by_hand(params, tables)
            times["hand"].append(burst(relay, args.messages, args.workers))
    med = {k: statistics.median(t for t, _ in v) for k, v in times.items()}
    sub = {k: statistics.median(s for _, s in v) for k, v in times.items()}
    print(f"{args.messages} messages, {args.workers} submitting processes, "
          f"{args.rounds} rounds alternating; medians")
    print(f"{'configured by':<16}{'all relayed s':>14}{'submitted s':>13}{'msg/s':>9}")
    for name in ("formula", "hand"):
        print(f"{name:<16}{med[name]:>14.2f}{sub[name]:>13.2f}"
              f"{args.messages / med[name]:>9.0f}")
    print(f"{'ratio formula / hand':<30}{med['formula'] / med['hand']:>14.3f}  target <= 1.05")
    print("all runs (s): " + "; ".join(
        f"{k}: {', '.join(f'{t:.2f}' for t, _ in v)}" for k, v in times.items()))


if __name__ == "__main__":
    main()
