"""Benchmark: base-model passes cached on disk across audits of different candidates.

Audits two different candidates (LoRA fine-tunes of the same base with different learning rates) with
the ``forgetting`` and ``accuracy`` checks against that base, in this order:

  1. candidate A, cold disk cache          (every base pass computed and written)
  2. candidate B, warm disk cache          (the base passes read back from disk)
  3. candidate B again, AUDITKIT_DISK_CACHE=0 (control: the same audit without the disk cache)

and prints the time spent in the base model's passes (every ``ModelHandle.memo`` call on the base
handle, compute or disk read) and in the whole run, side by side, with the speed-ups.

    .venv/bin/python benchmarks/bench_disk_cache.py                      # builtin:minilm
    .venv/bin/python benchmarks/bench_disk_cache.py --base builtin:tiny-bert --steps 4

Passes go to a temporary AUDITKIT_CACHE (converted models are linked from the usual cache), so the
benchmark never reads passes a previous run left behind; it is removed at the end unless --keep.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import textwrap
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="builtin:minilm", help="base encoder (default builtin:minilm)")
    ap.add_argument("--steps", type=int, default=12, help="LoRA steps per candidate")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary cache and run folders")
    args = ap.parse_args()

    real_cache = Path(os.environ.get("AUDITKIT_CACHE") or ROOT / ".cache" / "auditkit")
    tmp = Path(tempfile.mkdtemp(prefix="auditkit-bench-cache-"))
    cache = tmp / "cache"
    cache.mkdir()
    if (real_cache / "models").exists():
        (cache / "models").symlink_to((real_cache / "models").resolve(), target_is_directory=True)
    os.environ["AUDITKIT_CACHE"] = str(cache)
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    from auditkit.cli import main as cli
    from auditkit.models import ModelHandle

    # time every memo call per handle source (the base is the handle loaded from --base)
    spent: dict[str, float] = defaultdict(float)
    hits: dict[str, int] = defaultdict(int)
    original = ModelHandle.memo

    def timed(self, op, items, compute, **kw):
        t0 = time.perf_counter()
        before = self.stats.get("disk_hits", 0)
        try:
            return original(self, op, items, compute, **kw)
        finally:
            key = "base" if self.source == args.base else "candidate"
            spent[key] += time.perf_counter() - t0
            hits[key] += self.stats.get("disk_hits", 0) - before

    ModelHandle.memo = timed

    def suite(name: str, lr: float) -> Path:
        path = tmp / f"{name}.yaml"
        path.write_text(textwrap.dedent(f"""
            name: bench-disk-cache
            seed: 0
            model: {{base: {args.base}, task: sequence-classification, num_labels: 2, batch_size: 32}}
            finetune: {{data: builtin:reviews, method: lora, learning_rate: {lr}, epochs: 1, max_steps: {args.steps},
                        batch_size: 16, max_length: 64, train_eval_size: 32}}
            checks:
              - uses: accuracy
                data: builtin:reviews#test
                bootstrap: 200
                gates: ["accuracy >= baseline.accuracy - 1"]
              - uses: forgetting
                bootstrap: 200
            """).lstrip())
        return path

    runs = [("1 candidate A, cold cache", "a", 5e-4, "1"),
            ("2 candidate B, warm cache", "b", 2e-3, "1"),
            ("3 candidate B, disk cache off", "b", 2e-3, "0")]
    table = []
    for label, name, lr, disk in runs:
        os.environ["AUDITKIT_DISK_CACHE"] = disk
        spent.clear()
        hits.clear()
        t0 = time.perf_counter()
        code = cli(["run", str(suite(name, lr)), "--out", str(tmp / f"out-{label[0]}"), "--device", "cpu"])
        wall = time.perf_counter() - t0
        if code not in (0, 1):
            sys.exit(f"run {label!r} exited {code}")
        table.append((label, spent["base"], hits["base"], spent["candidate"], wall))

    passes = sum(1 for _ in (cache / "passes").rglob("*.npz")) if (cache / "passes").exists() else 0
    size = sum(p.stat().st_size for p in (cache / "passes").rglob("*.npz")) if passes else 0
    print(f"\nbase {args.base}, torch threads {torch.get_num_threads()}, {passes} passes on disk "
          f"({size / 2**20:.1f} MiB) in {cache / 'passes'}")
    print(f"{'run':34} {'base passes s':>14} {'base disk hits':>15} {'candidate s':>12} {'run wall s':>11}")
    for label, base_s, base_hits, cand_s, wall in table:
        print(f"{label:34} {base_s:14.2f} {base_hits:15d} {cand_s:12.2f} {wall:11.2f}")
    cold, warm, off = table
    print(f"\nspeed-up of the base-model passes, warm vs cold cache:  {cold[1] / max(warm[1], 1e-9):6.1f}x")
    print(f"speed-up of the base-model passes, warm vs cache off:   {off[1] / max(warm[1], 1e-9):6.1f}x")
    print(f"whole run, warm vs cache off:                           {off[4] / max(warm[4], 1e-9):6.2f}x")
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
