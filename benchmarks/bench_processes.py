"""Data parallel on CPU: the model passes of a suite in 2 processes against 1 (issue 10: at least 1.6x).

Runs the suite once to finish (or reuse) its fine-tune, then runs it again with ``--processes 1`` and
``--processes 2`` side by side in this one benchmark (alternating, ``--repeat`` times each), so both
reuse the same fine-tuned model and only the checks' passes differ. The figure is the ratio of the
summed check durations (rank 0's ``run.check_durations_s``), the passes; wall time, which includes
starting the processes and loading the model in each, is printed beside it. Both runs must agree:
the same statuses, every metric within 1e-6.

    .venv/bin/python benchmarks/bench_processes.py [--suite suites/release-gate.yaml] [--repeat 2]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT  # noqa: F401  (offline environment)


def run(suite: str, out: Path, processes: int) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "auditkit", "run", suite, "--out", str(out), "--device", "cpu"]
    if processes > 1:
        cmd += ["--processes", str(processes)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 1):
        raise SystemExit(f"auditkit exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    return wall, json.loads((out / "results.json").read_text())


def differences(a: dict, b: dict) -> list[str]:
    bad = []
    for ca, cb in zip(a["checks"], b["checks"]):
        if ca["status"] != cb["status"]:
            bad.append(f"{ca['id']}: {ca['status']} vs {cb['status']}")
        for name, m in ca["metrics"].items():
            x, y = m.get("value"), cb["metrics"].get(name, {}).get("value")
            if isinstance(x, float) and isinstance(y, float) and not (math.isnan(x) and math.isnan(y)) \
                    and abs(x - y) > 1e-6:
                bad.append(f"{ca['id']}.{name}: {x} vs {y}")
    return bad


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", default=str(Path(__file__).resolve().parents[1] / "suites" / "release-gate.yaml"))
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    if not Path(args.suite).exists():  # a shipped suite's name
        args.suite = str(Path(__file__).resolve().parents[1] / "suites" / f"{args.suite}.yaml")
    os.environ["AUDITKIT_DISK_CACHE"] = "0"  # every pass computed, none read back
    out = Path(tempfile.mkdtemp(prefix="bench-processes-"))
    print(f"preparing (fine-tune, or reuse) in {out}", flush=True)
    run(args.suite, out, 1)
    times: dict[int, list[tuple[float, float]]] = {1: [], 2: []}
    last: dict[int, dict] = {}
    for _ in range(args.repeat):
        for n in (1, 2):
            wall, res = run(args.suite, out, n)
            assert res["training"] is None or res["training"].get("reused"), "the fine-tune was not reused"
            passes = sum(res["run"]["check_durations_s"].values())
            times[n].append((passes, wall))
            last[n] = res
    p1, p2 = (statistics.median(t[0] for t in times[n]) for n in (1, 2))
    w1, w2 = (statistics.median(t[1] for t in times[n]) for n in (1, 2))
    print(f"suite {args.suite}, {os.cpu_count()} CPUs, median of {args.repeat}")
    print(f"checks' passes: 1 process {p1:.1f} s, 2 processes {p2:.1f} s -> {p1 / p2:.2f}x")
    print(f"wall (with start-up and loading): 1 process {w1:.1f} s, 2 processes {w2:.1f} s -> {w1 / w2:.2f}x")
    diff = differences(last[1], last[2])
    print("results agree (statuses, metrics within 1e-6)" if not diff else "DIFFERENT: " + "; ".join(diff[:10]))
    return 0 if not diff else 1


if __name__ == "__main__":
    raise SystemExit(main())
