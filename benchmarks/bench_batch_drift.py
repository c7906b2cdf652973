"""Issue 10, item 5 on a device: how far a suite's metrics move with ``model.batch_size``.

Runs one suite at each ``--batch-sizes`` (the fine-tune, if any, runs once and is reused by the other
runs, so only the audit's batching differs) and compares every run with the first: statuses, gate
results, and each metric's value and CI bounds. Prints the largest absolute difference per check and
overall. On CPU in fp32 it is within 1e-6 (``tests/test_invariance.py`` asserts that); on a GPU in bf16
padding changes the kernels' reduction order, and this says by how much.

    python benchmarks/bench_batch_drift.py suites/lm-release.yaml --device cuda --batch-sizes 1,7,32
    python benchmarks/bench_batch_drift.py benchmarks/drift-lm.yaml --device cpu --dtypes float32,bfloat16
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import ROOT  # noqa: F401  (offline env)


def metric_values(results: dict) -> dict[tuple[str, str, str], float]:
    out = {}
    for c in results["checks"]:
        for name, m in (c.get("metrics") or {}).items():
            for field in ("value", "ci_low", "ci_high"):
                x = m.get(field) if isinstance(m, dict) else None
                if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x):
                    out[(c["id"], name, field)] = float(x)
    return out


def compare(ref: dict, other: dict) -> dict:
    """Largest |difference| per check, the metric it is on, and whether statuses and gates agree."""
    a, b = metric_values(ref), metric_values(other)
    worst: dict[str, tuple[float, str]] = {}
    for key in a.keys() & b.keys():
        d = abs(a[key] - b[key])
        if d >= worst.get(key[0], (-1.0, ""))[0]:
            worst[key[0]] = (d, f"{key[1]}.{key[2]}")
    same_status = [c["status"] for c in ref["checks"]] == [c["status"] for c in other["checks"]]
    same_gates = [[(g["expr"], g["status"]) for g in c["gates"]] for c in ref["checks"]] == \
        [[(g["expr"], g["status"]) for g in c["gates"]] for c in other["checks"]]
    return {"status": ref["status"] == other["status"] and same_status, "gates": same_gates,
            "missing": sorted(map(str, a.keys() ^ b.keys())), "worst": worst}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("suite")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch-sizes", default="1,7,32")
    ap.add_argument("--model", help="audit this model instead of the suite's model.base")
    ap.add_argument("--json", help="also write the comparison here")
    ap.add_argument("--dtypes", default="",
                    help="comma-separated model.dtype values (e.g. float32,bfloat16) measured side by side in this "
                         "run; default: the suite's own")
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.batch_sizes.split(",")]
    dtypes = [d for d in args.dtypes.split(",") if d] or [None]
    summary = {}
    for dtype in dtypes:
        if dtype:
            print(f"\n=== model.dtype: {dtype}", flush=True)
        code, report = drift(args, sizes, dtype)
        if code:
            return code
        summary[dtype or "suite"] = max((d for cmp in report.values() for d, _ in cmp["worst"].values()), default=0.0)
    if len(dtypes) > 1:
        print("\nlargest |metric difference| across batch sizes " + ", ".join(map(str, sizes)) + ": "
              + ", ".join(f"{k} {v:.3g}" for k, v in summary.items()))
    return 0


def drift(args, sizes: list[int], dtype: str | None) -> tuple[int, dict]:
    """Run the suite at each batch size (in ``dtype`` when given) and compare every run with the first."""
    import yaml
    raw = yaml.safe_load(Path(args.suite).read_text())
    if dtype:
        raw["model"]["dtype"] = dtype
    work = Path(tempfile.mkdtemp(prefix="auditkit-drift-"))
    results = {}
    for i, bs in enumerate(sizes):
        raw["model"]["batch_size"] = bs
        suite = Path(args.suite).resolve().parent / f".drift-{bs}-{Path(args.suite).name}"
        suite.write_text(yaml.safe_dump(raw, sort_keys=False))
        out = work / f"bs{bs}"
        if i and (work / f"bs{sizes[0]}" / "model").exists():  # the same fine-tuned weights for every run
            shutil.copytree(work / f"bs{sizes[0]}" / "model", out / "model")
        cmd = [sys.executable, "-m", "auditkit", "run", str(suite), "--out", str(out), "--device", args.device]
        if args.model:
            cmd += ["--model", args.model]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        suite.unlink()
        if not (out / "results.json").exists():
            print(f"batch_size {bs}: exit {proc.returncode}\n{proc.stderr[-2000:]}")
            return 1, {}
        results[bs] = json.loads((out / "results.json").read_text())
        print(f"batch_size {bs}: exit {proc.returncode}, {results[bs]['status']}, "
              f"{results[bs]['run']['duration_s']:.1f} s", flush=True)
    report = {}
    for bs in sizes[1:]:
        cmp = compare(results[sizes[0]], results[bs])
        report[bs] = cmp
        overall = max((d for d, _ in cmp["worst"].values()), default=0.0)
        print(f"\nbatch_size {bs} vs {sizes[0]}: statuses {'same' if cmp['status'] else 'DIFFER'}, gates "
              f"{'same' if cmp['gates'] else 'DIFFER'}, largest |metric difference| {overall:.3g}")
        for cid, (d, where) in sorted(cmp["worst"].items()):
            print(f"  {cid:22} {d:10.3g}  ({where})")
    if args.json:
        name = args.json if not dtype else str(Path(args.json).with_suffix(f".{dtype}.json"))
        Path(name).write_text(json.dumps({str(k): {**v, "worst": {c: list(w) for c, w in v["worst"].items()}}
                                          for k, v in report.items()}, indent=1))
    return 0, report


if __name__ == "__main__":
    raise SystemExit(main())
