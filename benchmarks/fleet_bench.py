"""
Benchmark: `salt '*' state.apply postfix_relay` wall time over fleets of 1, 3
and 6 minions (first apply, then the no-op re-apply), in one run, next to each
other. Target: 6 minions take at most 1.5x the time of one.

Real salt-master and salt-minion daemons; each minion is its own host in
private mount and UTS namespaces (the fleet tests' Host, test/fleet/conftest.py),
with its own Postfix relaying to a test relay on 127.0.0.1. Run as root:
    .venv/bin/python benchmarks/fleet_bench.py [--sizes 1,3,6] [--noop-runs 3]
"""

import argparse
import importlib.util
import json
import pathlib
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
BIN = REPO / ".venv" / "bin"
sys.path.insert(0, str(REPO / "test"))
_spec = importlib.util.spec_from_file_location("fleet_hosts", REPO / "test/fleet/conftest.py")
fleet_hosts = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fleet_hosts)

from relay import Relay  # noqa: E402


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_master(work, relay):
    files, pillar = work / "files", work / "pillar"
    files.mkdir()
    pillar.mkdir()
    for name in ("postfix_relay", "_modules", "_states", "_utils"):
        (files / name).symlink_to(REPO / name)
    (files / "floor").mkdir()
    (files / "floor" / "init.sls").write_text("floor-nop:\n  test.nop: []\n")
    (pillar / "top.sls").write_text("base:\n  '*':\n    - postfix_relay\n")
    (pillar / "postfix_relay.sls").write_text(
        "postfix_relay:\n  domain: example.org\n  recipient: admin@example.org\n"
        f"  listen: none\n  relay:\n    host: 127.0.0.1\n    port: {relay.port}\n"
        "    username: bench\n    password: bench-pw\n")
    ports = free_port(), free_port()
    conf = work / "master"
    conf.mkdir()
    (conf / "master").write_text(
        f"root_dir: {work / 'master-root'}\ninterface: 127.0.0.1\n"
        f"publish_port: {ports[0]}\nret_port: {ports[1]}\nauto_accept: true\n"
        f"worker_threads: 4\nfile_roots:\n  base: [{files}]\n"
        f"pillar_roots:\n  base: [{pillar}]\nlog_level_logfile: warning\n")
    return conf, ports


def start_minion(work, host, ports):
    conf = work / f"minion-{host.id}"
    conf.mkdir()
    (conf / "minion").write_text(
        f"id: {host.id}\nroot_dir: {work / ('minion-root-' + host.id)}\nmaster: 127.0.0.1\n"
        f"master_port: {ports[1]}\npublish_port: {ports[0]}\nenable_fqdns_grains: false\n"
        "log_level_logfile: warning\n")
    return subprocess.Popen([str(host.wrapper), str(BIN / "salt-minion"), "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def salt(conf, *args, timeout=600):
    start = time.perf_counter()
    res = subprocess.run([str(BIN / "salt"), "-c", str(conf), "--out=json", "--static",
                          "-t", "300", "*", *args], capture_output=True, text=True,
                         timeout=timeout)
    elapsed = time.perf_counter() - start
    try:
        data = json.loads(res.stdout) if res.stdout.strip() else {}
    except ValueError:
        data = {}
    return elapsed, data


def wait_for(conf, count, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, data = salt(conf, "test.ping", timeout=60)
        if sum(1 for v in data.values() if v is True) == count:
            return
        time.sleep(1)
    sys.exit(f"only some of {count} minions answered")


def fleet_run(size, relay, noop_runs):
    work = pathlib.Path(tempfile.mkdtemp(prefix=f"fleet_bench.{size}."))
    conf, ports = write_master(work, relay)
    master = subprocess.Popen([str(BIN / "salt-master"), "-c", str(conf)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    hosts = [fleet_hosts.Host(work / "hosts", f"b{size}h{i}") for i in range(size)]
    minions = [start_minion(work, host, ports) for host in hosts]
    try:
        wait_for(conf, size)
        salt(conf, "saltutil.sync_all")
        first, data = salt(conf, "state.apply", "postfix_relay")
        failed = [h for h, states in data.items() if not isinstance(states, dict) or
                  not all(s["result"] for s in states.values())]
        if len(data) != size or failed:
            sys.exit(f"apply failed on {failed or 'some minions'}")
        noops, floors = [], []
        for _ in range(noop_runs):
            elapsed, data = salt(conf, "state.apply", "postfix_relay")
            if any(s["changes"] for states in data.values() for s in states.values()):
                sys.exit("the re-apply was not a no-op")
            noops.append(elapsed)
            floors.append(salt(conf, "state.apply", "floor")[0])
        return first, statistics.median(noops), statistics.median(floors)
    finally:
        for proc in minions + [master]:
            proc.terminate()
        for proc in minions + [master]:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        for host in hosts:
            host.stop_postfix()
        shutil.rmtree(work, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--sizes", default="1,3,6")
    parser.add_argument("--noop-runs", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    results = {}
    with Relay(tls="starttls", users={"bench": "bench-pw"}) as relay:
        for size in sizes:
            results[size] = fleet_run(size, relay, args.noop_runs)
    base_first, base_noop, base_floor = results[sizes[0]]
    print(f"{'minions':>8}{'first apply s':>15}{'no-op s':>10}{'salt floor s':>14}"
          f"{'first/1':>9}{'no-op/1':>9}{'floor/1':>9}")
    for size in sizes:
        first, noop, floor = results[size]
        print(f"{size:>8}{first:>15.2f}{noop:>10.2f}{floor:>14.2f}{first / base_first:>9.2f}"
              f"{noop / base_noop:>9.2f}{floor / base_floor:>9.2f}")
    print(f"target: {sizes[-1]} minions at most 1.5x the time of {sizes[0]}; salt floor = "
          f"state.apply of one test.nop on the same fleet (medians of {args.noop_runs})")


if __name__ == "__main__":
    main()
