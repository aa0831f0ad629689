"""
Benchmark: postmap.managed on a 100,000-entry hash table next to raw postmap.

Prints, in one run (medians of --runs):
  raw `postmap hash:FILE` on the same source,
  a no-op postmap.managed run (table already in sync),   target <= 0.5x raw,
  a forced rebuild (compiled table deleted first),         target <= 1.2x raw.

The state function runs in-process from Salt's state loader, as a highstate
calls it; for context the same call through `state.single` (which builds a
new State and walks the arguments on every call) is printed too.
Run:  .venv/bin/python benchmarks/postmap_bench.py
"""

import argparse
import os
import pathlib
import statistics
import subprocess
import tempfile
import time

import salt.config
import salt.loader
from saltfactories.utils.functional import Loaders

REPO = pathlib.Path(__file__).resolve().parent.parent


def loaders_for(root):
    file_root = root / "file_root"
    file_root.mkdir()
    for name in ("postfix_relay", "_modules", "_states", "_utils"):
        (file_root / name).symlink_to(REPO / name)
    opts = salt.config.minion_config(None)
    opts.update({"id": "bench", "file_client": "local",
                 "file_roots": {"base": [str(file_root)]},
                 "cachedir": str(root / "cache"), "extension_modules": str(root / "ext"),
                 "pki_dir": str(root / "pki"), "sock_dir": str(root / "sock"),
                 "log_file": str(root / "minion.log")})
    return Loaders(opts)


def timed(func):
    start = time.perf_counter()
    func()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    root = pathlib.Path(tempfile.mkdtemp(prefix="postmap_bench."))
    conf = root / "conf"
    conf.mkdir()
    (conf / "main.cf").write_text("compatibility_level = 3.6\n")
    os.utime(conf / "main.cf", (time.time() - 60,) * 2)
    entries = {f"[relay{i}.example.net]:587": f"user{i}:password-{i:08d}"
               for i in range(args.entries)}
    loaders = loaders_for(root)
    path = root / "passwd"
    raw_src = root / "raw"
    raw_src.write_text("".join(f"{k} {v}\n" for k, v in entries.items()))
    os.chmod(raw_src, 0o600)

    text = raw_src.read_text()

    managed = salt.loader.states(loaders.opts, loaders.modules, loaders.utils,
                                 loaders.serializers, context=loaders.context)["postmap.managed"]
    common = {"name": str(path), "map_type": "hash", "mode": "0600", "secret": True,
              "config_dir": str(conf)}

    def state(**table):
        ret = managed(**common, **table)
        assert ret["result"] is True, ret["comment"]
        return ret

    def single(**table):
        ret = loaders.states.postmap.managed(**common, **table)
        assert ret.result is True, ret.comment

    state(contents=text)  # first build
    times = {k: [] for k in ("raw", "noop", "rebuild", "entries", "single", "single_entries")}
    for _ in range(args.runs):
        times["raw"].append(timed(lambda: subprocess.run(
            ["postmap", "-c", str(conf), f"hash:{raw_src}"], check=True)))
        times["noop"].append(timed(lambda: state(contents=text)))
        os.unlink(f"{path}.db")
        times["rebuild"].append(timed(lambda: state(contents=text)))
        times["entries"].append(timed(lambda: state(entries=entries)))
        times["single"].append(timed(lambda: single(contents=text)))
        times["single_entries"].append(timed(lambda: single(entries=entries)))
    assert state(contents=text)["changes"] == {}
    assert state(entries=entries)["changes"] == {}

    med = {name: statistics.median(x) for name, x in times.items()}
    print(f"{args.entries:,} entries, hash, medians of {args.runs} runs")
    print(f"{'measure':<52}{'seconds':>9}{'x raw':>8}{'target':>9}")
    rows = [("raw postmap hash:FILE", "raw", ""),
            ("postmap.managed, no-op (in sync)", "noop", "<= 0.50"),
            ("postmap.managed, forced rebuild (.db deleted)", "rebuild", "<= 1.20"),
            ("postmap.managed entries= (100k-key dict), no-op", "entries", ""),
            ("via state.single, no-op (Salt's per-call setup)", "single", ""),
            ("via state.single entries=, no-op", "single_entries", "")]
    for label, key, target in rows:
        print(f"{label:<52}{med[key]:>9.3f}{med[key] / med['raw']:>8.2f}{target:>9}")
    print("(the first three rows use contents= (the table as text); state.single rebuilds "
          "the State and walks every argument on each call)")
    subprocess.run(["rm", "-rf", str(root)], check=False)


if __name__ == "__main__":
    main()
