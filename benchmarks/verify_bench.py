"""
Benchmark: postfix_relay.verify's round trip next to Postfix's own delay.

For each of --runs verifications (loopback relay, STARTTLS + AUTH), prints
the time from submission to verify reporting "sent" and the delay= Postfix
logged for the same message; target: verify adds at most 0.5 s (median).
Drives this host's Postfix (files restored afterwards). Run as root:
    .venv/bin/python benchmarks/verify_bench.py
"""

import argparse
import json
import pathlib
import statistics
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "test"))

from apply_bench import ENV, SALT_CALL, host_postfix_saved, make_config  # noqa: E402
from relay import Relay  # noqa: E402


def verify(conf):
    res = subprocess.run([SALT_CALL, "--local", "-c", str(conf), "--out=json",
                          "postfix_relay.verify", "timeout=30"],
                         capture_output=True, text=True, check=False, env=ENV)
    data = json.loads(res.stdout)["local"]
    if data.get("status") != "sent":
        sys.exit(f"verify did not report sent: {data}")
    return data


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    with host_postfix_saved("verify_bench.") as scratch, \
            Relay(tls="starttls", users={"bench": "bench-pw"}) as relay:
        conf = make_config(scratch / "salt", relay)
        subprocess.run([SALT_CALL, "--local", "-c", str(conf), "saltutil.sync_all"],
                       capture_output=True, check=True, env=ENV)
        subprocess.run([SALT_CALL, "--local", "-c", str(conf), "state.apply",
                        "postfix_relay"], capture_output=True, check=True, env=ENV)
        verify(conf)  # warm: first connection, TLS session set-up
        runs = [verify(conf) for _ in range(args.runs)]
    elapsed = statistics.median(r["elapsed"] for r in runs)
    delay = statistics.median(r["delay"] for r in runs)
    print(f"{'measure (median of ' + str(args.runs) + ')':<52}{'seconds':>9}{'target':>10}")
    print(f"{'verify: submit until it reports sent':<52}{elapsed:>9.3f}")
    print(f"{'Postfix delay= for the same messages':<52}{delay:>9.3f}")
    print(f"{'added by verify':<52}{elapsed - delay:>9.3f}{'<= 0.500':>10}")
    print("(per run: " + ", ".join(f"{r['elapsed']:.3f}/{r['delay']:.2f}" for r in runs) + ")")


if __name__ == "__main__":
    main()
