"""Benchmark: peak memory of the memorization check's passes at N vs 8N examples (issue 10, item 6).

The memorization check runs, on the engine's requests: membership scores (LOSS, zlib, Min-K%, Min-K%++
through ``next_token_moments``, the reference difference through the base's ``token_logprobs``) on N
members and N non-members, greedy and sampled extraction (``generate_ids``) of N training prefixes,
and canary exposure with N references (``token_logprobs``) and the exact enumeration of a 3-digit
secret space (``prefix_tree_logprobs``). Each size runs in a fresh process; the peak is measured from
just before the passes (after the model loaded and warmed up), so it is what the passes add:

- CPU: the resident set's high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs``) minus
  the resident set before the passes;
- CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus what was
  allocated before.

The promise: the peak grows by less than 1.3x when the examples grow 8x (the passes are bounded by
the batch; only the per-example results, a few numbers a token, grow with N).

glibc's malloc raises its mmap threshold each time a large block is freed, so after the first batches
the batch-sized tensors come from the heap, which fragments and only grows: the resident high-water
mark then climbs with the number of batches although nothing is kept (measured: 2.5x at 8x the
examples). The sizes therefore run with ``MALLOC_MMAP_THRESHOLD_=131072`` (a fixed threshold: large
blocks are mapped and returned to the system on free; ``--glibc-default`` turns this off), which
measures what the passes hold rather than the allocator's fragmentation.

Run: ``.venv/bin/python benchmarks/bench_memory_memorization.py [--model builtin:tiny-gpt2] [--n 256]
[--device cpu]``. Prints both peaks and their ratio; never asserts. ``bench_memorization(...)`` is the
function a combined ``bench_memory.py`` can call.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from _common import ROOT, proc_status_bytes, reset_peak_rss  # offline env

sys.path.insert(0, str(ROOT))
os.environ["AUDITKIT_DISK_CACHE"] = "0"  # measure the passes, not a disk cache of them

WORDS = ("the a keeper light house river stone quiet morning letter garden window paper old new small "
         "large green blue red walks reads writes finds keeps opens closes under over near far after "
         "before always never often city forest road bridge tower market friend teacher doctor child").split()


def _texts(n: int, seed: int, words: int = 40) -> list[str]:
    import random
    rng = random.Random(f"bench-memory:{seed}")
    return [" ".join(rng.choice(WORDS) for _ in range(words)) + "." for _ in range(n)]


def _passes(handle, base, n: int, samples: int) -> None:
    """The memorization check's passes on n examples of each kind."""
    from auditkit.finetune import DEFAULT_CANARY_TEMPLATE, make_canaries
    from auditkit_plugins.memorization.exposure import canary_exposures
    from auditkit_plugins.memorization.extraction import extraction, split_sequences
    from auditkit_plugins.memorization.membership import lm_scores
    members, non_members = _texts(n, 1), _texts(n, 2)
    lm_scores(handle, members + non_members, 0.2, reference=base, minkpp=True)
    keep, pre, suf = split_sequences(handle.token_ids(members), 16, 16)
    extraction(handle, pre, suf, samples=samples, temperature=1.0, seed=0)
    cans = make_canaries({"template": DEFAULT_CANARY_TEMPLATE, "count": 4, "repeats": [1], "references": n,
                          "digits": 3}, seed=0)
    canary_exposures(handle, cans, unseen=min(20, n // 4))


def bench_memorization(model: str = "builtin:tiny-gpt2", n: int = 256, device: str = "cpu", samples: int = 2,
                       batch_size: int = 32) -> dict:
    """Peak memory the memorization passes add, in this process, on n examples: ``{"n", "peak_mb", ...}``."""
    import torch
    from auditkit.models import load_model
    from auditkit.plugins import registry
    handle = load_model(model, "causal-lm", registry(), device=device)
    base = load_model(model, "causal-lm", registry(), device=device)
    handle.batch_size = base.batch_size = batch_size
    _passes(handle, base, 8, samples)  # warm-up: kernels, allocator pools
    handle.invalidate()
    base.invalidate()
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        if not reset_peak_rss():  # VmHWM back to the current resident set
            raise SystemExit("cannot reset the peak RSS (/proc/self/clear_refs); this benchmark needs it")
        before = proc_status_bytes("VmRSS")
    _passes(handle, base, n, samples)
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = proc_status_bytes("VmHWM")
    return {"n": n, "device": device, "peak_mb": (peak - before) / 2 ** 20, "before_mb": before / 2 ** 20,
            "forward_passes": handle.stats["forward_passes"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin:tiny-gpt2")
    ap.add_argument("--n", type=int, default=256, help="examples of each kind at the small size (8x at the large)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--samples", type=int, default=2, help="sampled extractions per prefix")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--glibc-default", action="store_true",
                    help="keep glibc's dynamic mmap threshold (the resident peak then includes heap fragmentation)")
    ap.add_argument("--one", type=int, default=0, help=argparse.SUPPRESS)  # internal: run one size, print JSON
    args = ap.parse_args()
    if args.one:
        import torch
        torch.set_num_threads(1)
        print(json.dumps(bench_memorization(args.model, args.one, args.device, args.samples, args.batch_size)))
        return
    results = []
    for n in (args.n, 8 * args.n):
        cmd = [sys.executable, __file__, "--model", args.model, "--device", args.device, "--samples",
               str(args.samples), "--batch-size", str(args.batch_size), "--one", str(n)]
        env = dict(os.environ) if args.glibc_default else dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    small, large = results
    print(f"memorization passes, model {args.model} on {args.device}, batch size {args.batch_size}, "
          f"glibc mmap threshold {'dynamic (default)' if args.glibc_default else 'fixed at 128 KiB'}")
    for r in results:
        print(f"  N={r['n']:6d}: peak added {r['peak_mb']:8.1f} MiB (resident before {r['before_mb']:.0f} MiB)")
    ratio = large["peak_mb"] / max(small["peak_mb"], 1e-9)
    print(f"  ratio 8N/N: {ratio:.2f}x (target < 1.3x)")


if __name__ == "__main__":
    main()
