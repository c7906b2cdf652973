"""Run every benchmark in this folder with its quick settings, one after another (what `make bench` runs).

Each benchmark prints its own ratios, measured side by side in one process; this script only runs them in
turn and says which failed. Benchmarks never gate CI on time: the exit code is 1 only when a benchmark
script itself crashed. ``--only harness,bias`` runs a subset; ``--full`` uses each script's own defaults.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: (name, script, quick arguments): small enough for a 2-core CPU machine in a few minutes in all
BENCHMARKS = (
    ("harness", "bench_harness.py", ["--repeat", "3"]),
    ("finetune", "bench_finetune.py", ["--n", "256"]),
    ("disk_cache", "bench_disk_cache.py", ["--steps", "6"]),
    ("bias", "bench_bias.py", ["--repeats", "2", "--rows", "200"]),
    ("memorization", "bench_memorization.py", ["--n", "500"]),
    ("explainability", "bench_explainability.py", ["--n", "8"]),
    ("mc_speed", "bench_mc_speed.py", ["--n", "64", "--repeat", "3"]),
    ("generation", "bench_generation.py", ["--repeat", "1"]),
    ("memory", "bench_memory.py", ["--n", "32", "--factor", "8"]),
    ("memory_memorization", "bench_memory_memorization.py", ["--n", "32"]),
    ("api", "bench_api.py", ["--n", "64"]),
    ("processes", "bench_processes.py", ["--suite", "quick", "--repeat", "1"]),
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated names: " + ", ".join(b[0] for b in BENCHMARKS))
    ap.add_argument("--full", action="store_true", help="each benchmark's own (larger) defaults")
    args = ap.parse_args(argv)
    wanted = {n.strip() for n in args.only.split(",") if n.strip()}
    unknown = wanted - {b[0] for b in BENCHMARKS}
    if unknown:
        ap.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    failed = []
    for name, script, quick in BENCHMARKS:
        if wanted and name not in wanted:
            continue
        cmd = [sys.executable, str(HERE / script)] + ([] if args.full else quick)
        print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        code = subprocess.call(cmd, cwd=HERE.parent)
        print(f"=== {name}: exit {code} in {time.perf_counter() - t0:.1f} s", flush=True)
        if code:
            failed.append(name)
    if failed:
        print(f"benchmarks that crashed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
