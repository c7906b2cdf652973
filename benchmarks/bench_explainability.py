"""Seconds per example of each explanation method, side by side (no assertions on time).

    .venv/bin/python benchmarks/bench_explainability.py [--model builtin:minilm] [--n 16] [--steps 32]
                                                       [--device cpu|cuda]

- rollout with the attention maps already cached (should cost no forward pass) vs rollout cold
  (the one eager pass it reuses included);
- gradient-weighted attention (one forward + backward per batch);
- Integrated Gradients three ways: one forward per step (internal_batch_size=1), one example at a
  time with all its steps in one forward, and examples x steps batched (what the check does);
- the ERASER faithfulness scoring of all methods + random at 3 rationale sizes.
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
os.environ["AUDITKIT_DISK_CACHE"] = "0"  # measure the passes, not the disk cache of passes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="builtin:minilm")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    import torch

    from auditkit.data import load_dataset
    from auditkit.models import load_model
    from auditkit.plugins import registry
    from auditkit_plugins.explainability.faithfulness import faithfulness, random_rankings, ranking
    from auditkit_plugins.explainability.integrated_gradients import baseline_token, integrated_gradients
    from auditkit_plugins.explainability.rollout import grad_rollout_scores, rollout_scores
    from auditkit_plugins.explainability.targets import prepare

    torch.manual_seed(0)
    reg = registry()
    h = load_model(args.model, "sequence-classification", reg, device=args.device, num_labels=2)
    ds = load_dataset("builtin:reviews#test", reg)
    rows = list(range(min(args.n, len(ds))))
    texts = [ds.rows[r]["text"] for r in rows]
    n = len(texts)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def timed(fn):
        sync()
        passes = h.stats["forward_passes"]
        t0 = time.perf_counter()
        out = fn()
        sync()
        return out, time.perf_counter() - t0, h.stats["forward_passes"] - passes

    # warm-up (imports, eager switch, kernels) on other texts
    warm = ["warm up the model", "and its kernels"]
    ex_w = prepare(h, load_dataset("builtin:reviews#test", reg), [0, 1], warm, "classification")
    h.attentions(warm)
    grad_rollout_scores(h, ex_w)
    integrated_gradients(h, ex_w, 4, 64)
    h.invalidate()

    results = []
    _, t_att, p_att = timed(lambda: h.attentions(texts))
    ex = prepare(h, ds, rows, texts, "classification")
    results.append(("attention pass (eager, cold)", t_att, p_att))
    rs, t, p = timed(lambda: rollout_scores(h, ex, texts))
    results.append(("rollout, attentions cached", t, p))
    h.invalidate()
    _, t, p = timed(lambda: rollout_scores(h, ex, texts))
    results.append(("rollout, cold (pass included)", t, p))
    gs, t, p = timed(lambda: grad_rollout_scores(h, ex))
    results.append(("grad-weighted attention", t, p))
    few = ex[:2]  # one forward per step is slow: timed on 2 examples, reported per example
    for label, ibs, subset in (("IG, one forward per step (2 examples)", 1, few),
                               ("IG, one example at a time", args.steps, ex),
                               ("IG, examples x steps batched", 256, None)):
        h.invalidate()
        if subset is not None:
            _, t, p = timed(lambda: [integrated_gradients(h, [e], args.steps, ibs) for e in subset])
            t = t * n / len(subset)
        else:
            (ig, delta, diff), t, p = timed(lambda: integrated_gradients(h, ex, args.steps, ibs))
        results.append((label, t, p))
    rank = {"rollout": [ranking(s, e.candidates) for s, e in zip(rs, ex)],
            "grad_rollout": [ranking(s, e.candidates) for s, e in zip(gs, ex)],
            "ig": [ranking(s, e.candidates) for s, e in zip(ig, ex)], "random": random_rankings(ex, 0)}
    _, t, p = timed(lambda: faithfulness(h, ex, rank, [0.1, 0.2, 0.5], baseline_token(h)))
    results.append(("faithfulness (4 rankings x 3 sizes x 2)", t, p))

    tokens = sum(len(e.ids) for e in ex) / n
    print(f"model {args.model} on {args.device}, {n} examples, {tokens:.1f} tokens each, IG n_steps={args.steps}, "
          f"torch threads {torch.get_num_threads()}")
    print("(s total of the per-step IG row is extrapolated to all examples; 'cached-pass forwards' counts the "
          "handle's own scoring passes)")
    print(f"{'step':44s} {'s total':>9s} {'s/example':>10s} {'cached-pass forwards':>21s}")
    for label, t, p in results:
        print(f"{label:44s} {t:9.4f} {t / n:10.5f} {p:21d}")
    by = {label: t for label, t, _ in results}
    print(f"ratio rollout cached / attention pass: {by['rollout, attentions cached'] / by['attention pass (eager, cold)']:.3f}")
    print(f"speed-up IG batched vs one forward per step: "
          f"{by['IG, one forward per step (2 examples)'] / by['IG, examples x steps batched']:.1f}x; "
          f"vs one example at a time: {by['IG, one example at a time'] / by['IG, examples x steps batched']:.1f}x")
    print(f"IG mean |delta| {delta.mean():.2e}, relative (mean |delta| / mean |F(x) - F(baseline)|) "
          f"{delta.mean() / max(diff.mean(), 1e-30):.2e}")


if __name__ == "__main__":
    main()
