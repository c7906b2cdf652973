"""Benchmark: the ``bias.counterfactual`` check against a plain batched forward pass.

The issue's speed target: the whole check (swapping, scoring, CIs, evidence, heat map) on the demo
model costs at most 1.3x a plain torch forward pass over the same original + counterfactual texts.

    AUDITKIT_CACHE=$PWD/.cache/auditkit HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
        .venv/bin/python benchmarks/bench_bias.py [--model builtin:minilm] [--repeats 3] [--rows 0]

Prints both timings side by side (best of ``--repeats``, each run with an empty handle cache) and
their ratio. It never asserts on time.
"""
from __future__ import annotations

import argparse
import sys
import time

import _common  # noqa: F401  (offline env, disk cache off: measure the passes, not a read of a stored one)
from _common import plain_forward


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin:minilm")
    ap.add_argument("--data", default="builtin:reviews#test")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rows", type=int, default=0, help="use at most this many rows (0 = all)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)

    import torch
    from auditkit.api import CheckContext
    from auditkit.data import load_dataset
    from auditkit.models import load_model
    from auditkit.plugins import registry
    from auditkit_plugins.bias.swaps import make_swapper

    reg = registry()
    torch.manual_seed(0)
    handle = load_model(args.model, "sequence-classification", reg, device=args.device, num_labels=2)
    ds = load_dataset(args.data, reg)
    cls = reg.checks["bias.counterfactual"]
    params = {k: p.default for k, p in cls.params.items()}
    params["max_examples"] = args.rows
    rows = ds.rows[: args.rows] if args.rows else ds.rows
    swapper = make_swapper(params)
    items = [(r["text"], cf) for r in rows for cf in swapper.counterfactuals(r["text"])]
    originals = list(dict.fromkeys(t for t, _ in items))
    texts = originals + [cf.text for _, cf in items]

    def run_check() -> tuple[float, int]:
        handle.invalidate()
        before = handle.stats["forward_passes"]
        t0 = time.perf_counter()
        cls().run(CheckContext(model=handle, params=dict(params), seed=0, device=args.device, data=ds))
        return time.perf_counter() - t0, handle.stats["forward_passes"] - before

    # warm-up: first-call costs (imports, allocator, matplotlib) are not what we measure
    run_check()
    plain_forward(handle.model, handle.tokenizer, texts, handle.batch_size, handle.max_length, args.device)
    check_t, plain_t, passes = [], [], 0
    for _ in range(args.repeats):
        t, passes = run_check()
        check_t.append(t)
        t0 = time.perf_counter()
        plain_forward(handle.model, handle.tokenizer, texts, handle.batch_size, handle.max_length, args.device)
        plain_t.append(time.perf_counter() - t0)
    best_check, best_plain = min(check_t), min(plain_t)
    print(f"model {args.model} on {args.device}, torch threads {torch.get_num_threads()}; data {args.data}: "
          f"{len(originals)} originals + {len(items)} counterfactuals = {len(texts)} texts")
    print(f"{'':28s}{'best (s)':>10s}{'all runs (s)':>34s}")
    print(f"{'plain torch forward':28s}{best_plain:10.3f}    {' '.join(f'{t:.3f}' for t in plain_t):>30s}")
    print(f"{'bias.counterfactual check':28s}{best_check:10.3f}    {' '.join(f'{t:.3f}' for t in check_t):>30s}")
    print(f"ratio check / plain forward: {best_check / best_plain:.2f}x (target <= 1.3x); "
          f"forward passes per check run: {passes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
