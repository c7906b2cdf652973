"""Benchmark: scoring canary references through the shared batched, cached pass vs a per-sequence loop.

Exposure ranks each canary among ~1,000 never-inserted references (Carlini et al. 2019), so the
references must be scored in batches. This script times, on the same handle:

- ``token_logprobs`` of N references in one batched call (length-sorted batches, cold cache), the same
  call again (served from the handle's cache), and a per-sequence loop (one forward per reference);
- the Min-K%++ pass over full next-token distributions, batched vs per sequence;
- greedy extraction of 100 prefixes, batched with left padding vs one prompt at a time.

Run: ``.venv/bin/python benchmarks/bench_memorization.py [--model builtin:tiny-gpt2] [--n 1000]
[--threads 1]``. It prints the measured times and ratios side by side; it never asserts on time.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("AUDITKIT_CACHE", str(ROOT / ".cache" / "auditkit"))
for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(var, "1")
os.environ["AUDITKIT_DISK_CACHE"] = "0"  # time the passes themselves, not a disk cache of them


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin:tiny-gpt2")
    ap.add_argument("--n", type=int, default=1000, help="references to score")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    import numpy as np
    import torch
    from auditkit.finetune import DEFAULT_CANARY_TEMPLATE, make_canaries
    from auditkit.models import load_model
    from auditkit.plugins import registry
    from auditkit_plugins.memorization.extraction import generate
    from auditkit_plugins.memorization.membership import next_token_moments

    if args.threads:
        torch.set_num_threads(args.threads)
    handle = load_model(args.model, "causal-lm", registry(), device=args.device)
    refs = make_canaries({"template": DEFAULT_CANARY_TEMPLATE, "count": 0, "repeats": [], "references": args.n},
                         seed=0)["references"]
    # warm-up (kernels, allocator, a full batch and a single sequence), not timed
    handle.token_logprobs(refs[:2 * handle.batch_size])
    next_token_moments(handle, refs[:handle.batch_size])
    for t in refs[:4]:
        handle.token_logprobs([t])
    handle.invalidate()

    rows = []
    t_batch, batched = timed(lambda: handle.token_logprobs(refs))
    t_cached, _ = timed(lambda: handle.token_logprobs(refs))
    handle.invalidate()
    t_loop, looped = timed(lambda: [handle.token_logprobs([t])[0] for t in refs])
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(batched, looped))
    rows.append((f"token_logprobs, {args.n} references", t_loop, t_batch, f"cached re-use {t_cached * 1e3:.1f} ms; "
                 f"max |batched - loop| = {diff:.1e}"))
    default_bs = handle.batch_size
    handle.invalidate()
    handle.batch_size = 128  # model.batch_size in a suite
    t_big, _ = timed(lambda: handle.token_logprobs(refs))
    handle.batch_size = default_bs
    rows.append((f"  the same with model.batch_size 128", t_loop, t_big, ""))

    handle.invalidate()
    t_mb, _ = timed(lambda: next_token_moments(handle, refs))
    handle.invalidate()
    t_ml, _ = timed(lambda: [next_token_moments(handle, [t]) for t in refs])
    rows.append((f"Min-K%++ moments, {args.n} references", t_ml, t_mb, "full next-token distributions"))

    handle.invalidate()
    prompts = [ids[:4] for ids in handle.token_ids(refs[:100])]
    prompts = [p + [int(d)] for p, d in zip(prompts, range(100))]  # 100 distinct prompts
    t_gb, gb = timed(lambda: generate(handle, prompts, 8))
    handle.invalidate()
    t_gl, gl = timed(lambda: [generate(handle, [p], 8)[0] for p in prompts])
    rows.append(("greedy extraction, 100 prefixes x 8 tokens", t_gl, t_gb,
                 f"identical outputs: {gb == gl}"))

    print(f"model {args.model} on {args.device}, torch threads {torch.get_num_threads()}, "
          f"batch size {handle.batch_size}")
    print(f"{'what':45s} {'per-sequence':>13s} {'batched':>9s} {'speed-up':>9s}  notes")
    for what, loop, batch, note in rows:
        print(f"{what:45s} {loop:12.2f}s {batch:8.2f}s {loop / batch:8.1f}x  {note}")


if __name__ == "__main__":
    main()
