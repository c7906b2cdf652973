"""Peak memory of a check at N and FACTOR x N examples: is memory bounded by the batch, not the data?

    .venv/bin/python benchmarks/bench_memory.py [--section explainability] [--model builtin:minilm]
        [--task sequence-classification|causal-lm] [--n 32] [--factor 8] [--words 24] [--batch-size 32]
        [--ig-steps 16] [--device cpu|cuda]

Issue 10 asks that peak memory of the explainability and memorization checks grow by less than 1.3x
when their examples grow 8x. Each size runs in a fresh subprocess (one measurement cannot inherit
another's allocations): the model loads, the check runs once on 2 other rows (imports, eager
attention, kernels), its cache is dropped, then the peak is reset and the check runs on the measured
rows. Reported per size:

- CPU: the process's peak resident set (VmHWM, reset through ``/proc/self/clear_refs`` just before
  the check; where that is refused, a 2 ms psutil sampler) and its increment over the resident set
  just before the check (what the check itself added: the quantity that must not grow with the data);
- CUDA: ``torch.cuda.max_memory_allocated`` (reset before the check) and its increment likewise.

N must be at least the batch size (``--batch-size``, and IG's ``ig_batch_size`` of 256 example x step
rows): below it the batch itself still grows with the data. The rows are synthetic sentences of a
fixed number of words (``--words``), so every size has the same token lengths and only the number of
examples changes. Smoke run (about a minute on a shared 2-core machine):
``.venv/bin/python benchmarks/bench_memory.py --model builtin:tiny-bert --n 2 --factor 2 --ig-steps 4``.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

from _common import ROOT, proc_status_bytes, reset_peak_rss  # offline env

sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "plugins"))
os.environ["AUDITKIT_DISK_CACHE"] = "0"  # measure the passes, not the disk cache of passes

WORDS = ("table river green quickly paper window music garden yellow stone coffee letter bright simple "
         "market winter cloud travel morning silver ocean pencil forest zebra tiger quiet happy broken "
         "warm cold film story actor plot great awful boring lovely").split()


# ---------------------------------------------------------------------- measuring one process

def _rss() -> int:
    import psutil
    return psutil.Process().memory_info().rss


class PeakMeter:
    """Peak memory over a ``with`` block: CPU resident set (VmHWM, else sampled) and CUDA allocations."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")

    def __enter__(self):
        gc.collect()
        if self.cuda:
            import torch
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self.gpu_before = torch.cuda.memory_allocated()
        self.before = _rss()
        self.sampled = self.before
        self._stop = threading.Event()

        def sample():
            while not self._stop.is_set():
                self.sampled = max(self.sampled, _rss())
                time.sleep(0.002)

        self.hwm_ok = reset_peak_rss()
        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        hwm = proc_status_bytes("VmHWM") if self.hwm_ok else None
        self.peak = max(self.sampled, hwm or 0)
        self.result = {"rss_before_mb": self.before / 2 ** 20, "rss_peak_mb": self.peak / 2 ** 20,
                       "rss_increment_mb": (self.peak - self.before) / 2 ** 20,
                       "peak_source": "VmHWM" if hwm else "sampled"}
        if self.cuda:
            import torch
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
            self.result.update({"gpu_before_mb": self.gpu_before / 2 ** 20, "gpu_peak_mb": peak / 2 ** 20,
                                "gpu_increment_mb": (peak - self.gpu_before) / 2 ** 20})
        return False


def _rows(n: int, words: int, seed: int, task: str) -> list[dict]:
    """``n`` distinct synthetic sentences of ``words`` words each (a per-row generator: sizes share rows)."""
    rows = []
    for i in range(n):
        rng = random.Random(seed * 1_000_003 + i)
        text = " ".join(rng.choice(WORDS) for _ in range(words))
        rows.append({"text": text, "label": i % 2} if task != "causal-lm" else {"text": text})
    return rows


def _load(args):
    import torch

    from auditkit.models import load_model
    from auditkit.plugins import registry
    torch.manual_seed(0)
    reg = registry()
    num_labels = 2 if args.task != "causal-lm" else None
    handle = load_model(args.model, args.task, reg, device=args.device, num_labels=num_labels)
    handle.batch_size = args.batch_size
    return reg, handle


# ---------------------------------------------------------------------- sections (one per check)

def explainability(args, size: int) -> dict:
    """The explainability check (all methods) on ``size`` rows: its peak memory."""
    from auditkit.api import CheckContext
    from auditkit.data import Dataset
    reg, handle = _load(args)
    cls = reg.checks["explainability"]
    params = {k: p.default for k, p in cls.params.items()}
    params.update({"ig_steps": args.ig_steps, "heatmaps": 1})

    def run(rows):
        p = dict(params, max_examples=len(rows))
        ctx = CheckContext(model=handle, params=p, seed=0, device=args.device,
                           data=Dataset("mem", rows, "mem.jsonl"))
        return cls().run(ctx)

    run(_rows(2, args.words, seed=1, task=args.task))  # warm-up on other rows
    handle._cache.clear()
    rows = _rows(size, args.words, seed=0, task=args.task)
    passes = handle.stats["forward_passes"]
    with PeakMeter(args.device) as meter:
        t0 = time.perf_counter()
        res = run(rows)
        seconds = time.perf_counter() - t0
    out = dict(meter.result)
    out.update({"examples": size, "seconds": seconds, "passes": handle.stats["forward_passes"] - passes,
                "comprehensiveness": float(res.metrics["comprehensiveness"].value)})
    return out


# ---------------------------------------------------------------------- memorization
# The memorization helper adds its section here: a function ``memorization(args, size) -> dict`` built
# like :func:`explainability` (load with ``_load``, warm up on other rows, drop the cache, run the
# check on ``size`` rows inside ``with PeakMeter(args.device) as meter`` and return ``meter.result``
# plus ``examples``), then registers it in SECTIONS below.

SECTIONS = {"explainability": explainability}


# ---------------------------------------------------------------------- driver

def _child(args) -> None:
    import torch
    torch.set_num_threads(args.threads)
    print("RESULT " + json.dumps(SECTIONS[args.section](args, args.size)), flush=True)


def _measure(args, size: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--size", str(size)]
    for key in ("section", "model", "task", "words", "batch_size", "ig_steps", "device", "threads"):
        cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"the measurement at {size} examples failed (exit {proc.returncode})")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--section", default="explainability", choices=sorted(SECTIONS))
    ap.add_argument("--model", default="builtin:minilm")
    ap.add_argument("--task", default="sequence-classification", choices=["sequence-classification", "causal-lm"])
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--factor", type=int, default=8)
    ap.add_argument("--words", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--ig-steps", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args)
        return

    if args.n < args.batch_size:
        print(f"note: --n {args.n} is below --batch-size {args.batch_size}: the batches themselves grow with the "
              "examples here, so the ratio does not measure what issue 10 asks", file=sys.stderr)
    sizes = [args.n, args.n * args.factor]
    results = [_measure(args, s) for s in sizes]
    print(f"{args.section} on {args.model} ({args.task}, {args.device}), {args.words} words a row, "
          f"batch {args.batch_size}, IG steps {args.ig_steps}; each size in its own process")
    cols = ["examples", "seconds", "passes", "rss_before_mb", "rss_peak_mb", "rss_increment_mb"]
    if args.device.startswith("cuda"):
        cols += ["gpu_before_mb", "gpu_peak_mb", "gpu_increment_mb"]
    print(" ".join(f"{c:>17s}" for c in cols) + "  peak from")
    for r in results:
        print(" ".join(f"{r[c]:17.1f}" if isinstance(r[c], float) else f"{r[c]:17d}" for c in cols)
              + f"  {r['peak_source']}")
    small, large = results
    print(f"examples x{args.factor}: peak RSS x{large['rss_peak_mb'] / small['rss_peak_mb']:.3f}, "
          f"RSS added by the check x{large['rss_increment_mb'] / max(small['rss_increment_mb'], 1e-9):.3f}"
          + (f", peak GPU memory x{large['gpu_peak_mb'] / max(small['gpu_peak_mb'], 1e-9):.3f}, "
             f"GPU memory added x{large['gpu_increment_mb'] / max(small['gpu_increment_mb'], 1e-9):.3f}"
             if args.device.startswith("cuda") else "")
          + " (issue 10: below 1.3)")


if __name__ == "__main__":
    main()
