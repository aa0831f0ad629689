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
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "test"))

from apply_bench import ENV, SALT_CALL, SAVED, make_config, postfix_running  # noqa: E402
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
    backup = pathlib.Path(tempfile.mkdtemp(prefix="verify_bench."))
    was_running = postfix_running()
    for path in SAVED:
        if os.path.exists(path):
            shutil.copy2(path, backup / os.path.basename(path))
    try:
        with Relay(tls="starttls", users={"bench": "bench-pw"}) as relay:
            conf = make_config(backup / "salt", relay)
            subprocess.run([SALT_CALL, "--local", "-c", str(conf), "saltutil.sync_all"],
                           capture_output=True, check=True, env=ENV)
            subprocess.run([SALT_CALL, "--local", "-c", str(conf), "state.apply",
                            "postfix_relay"], capture_output=True, check=True, env=ENV)
            verify(conf)  # warm: first connection, TLS session set-up
            runs = [verify(conf) for _ in range(args.runs)]
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
    elapsed = statistics.median(r["elapsed"] for r in runs)
    delay = statistics.median(r["delay"] for r in runs)
    print(f"{'measure (median of ' + str(args.runs) + ')':<52}{'seconds':>9}{'target':>10}")
    print(f"{'verify: submit until it reports sent':<52}{elapsed:>9.3f}")
    print(f"{'Postfix delay= for the same messages':<52}{delay:>9.3f}")
    print(f"{'added by verify':<52}{elapsed - delay:>9.3f}{'<= 0.500':>10}")
    print("(per run: " + ", ".join(f"{r['elapsed']:.3f}/{r['delay']:.2f}" for r in runs) + ")")


if __name__ == "__main__":
    main()
