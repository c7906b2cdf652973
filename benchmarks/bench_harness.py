"""Issue 2 speed figures, measured side by side in one run (never asserts on time).

1. Three forward-only checks on one dataset vs one plain batched torch forward over it (target <= 1.2x).
2. The accuracy check on MiniLM vs the plain forward over its data (target <= 1.15x).
3. Our multiple-choice acc/acc_norm vs lm-eval on the same task and model: same numbers, time ratio.

    .venv/bin/python benchmarks/bench_harness.py [--smollm2]
"""
from __future__ import annotations

import argparse
import sys

import _common  # noqa: F401  (offline env)
from _common import fresh, plain_forward, timed


def ctx_for(handle, check_cls, data, seed=0, **params):
    from auditkit.api import CheckContext
    p = {k: v.default for k, v in check_cls.params.items()}
    p.update(params)
    return CheckContext(model=handle, params=p, seed=seed, device=handle.device, data=data, check_id=check_cls.name)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--smollm2", action="store_true", help="also compare on SmolLM2-135M (slow on CPU)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--model", default="builtin:minilm", help="a BERT-style encoder (builtin:NAME or a dir)")
    args = ap.parse_args()
    import torch
    from auditkit.data import load_dataset
    from auditkit.models import load_model
    from auditkit.plugins import registry

    reg = registry()
    torch.manual_seed(0)
    handle = load_model(args.model, "sequence-classification", reg, device=args.device, num_labels=2)
    data = load_dataset("builtin:reviews#test", reg)
    texts = data.column("text")
    print(f"MiniLM, {len(texts)} texts (builtin:reviews#test), batch 32, device {args.device}, torch threads "
          f"{torch.get_num_threads()}")
    wanted = ["accuracy", "calibration", "bias.groups"]
    names = [n for n in wanted if n in reg.checks]

    def run_checks(check_names):
        h = fresh(handle)
        for name in check_names:
            cls = reg.checks[name]
            cls().run(ctx_for(h, cls, data))
        return h.stats

    # warm-up, then interleave the three measurements so machine noise hits them alike; best of N
    plain = lambda: plain_forward(handle.model, handle.tokenizer, texts, device=args.device)  # noqa: E731
    plain(), run_checks(names)
    t_plain, t_acc, t_three, stats = [], [], [], None
    for _ in range(args.repeat):
        t_plain.append(timed(plain, 1)[0])
        t_acc.append(timed(lambda: run_checks(["accuracy"]), 1)[0])
        t, stats = timed(lambda: run_checks(names), 1)
        t_three.append(t)
    t_plain, t_acc, t_three = min(t_plain), min(t_acc), min(t_three)
    print(f"plain batched forward:          {t_plain:7.3f} s   (best of {args.repeat}, interleaved)")
    print(f"accuracy check:                 {t_acc:7.3f} s   ratio {t_acc / t_plain:5.2f}x  (target <= 1.15x)")
    print(f"{len(names)} checks ({', '.join(names)}): {t_three:7.3f} s   ratio {t_three / t_plain:5.2f}x  "
          f"(target <= 1.2x; forward passes {stats['forward_passes']}, cache hits {stats['cache_hits']})")

    models = [("builtin:tiny-gpt2", 64)]
    if args.smollm2:
        models.append(("builtin:smollm2-135m", 64))
    for spec, limit in models:
        compare_lm_eval(reg, spec, limit, args.device)
    return 0


def compare_lm_eval(reg, spec: str, limit: int, device: str) -> None:
    from auditkit.data import load_dataset
    from auditkit.models import load_model
    from auditkit_plugins.accuracy import Accuracy
    from auditkit_plugins.lm_eval_task import LmEvalTask

    lm = load_model(spec, "causal-lm", reg, device=device)
    lm.batch_size = 16
    data = load_dataset("builtin:mc-general", reg)
    data.rows = data.rows[:limit]
    ctx_data = lambda s, c=None: data  # noqa: E731
    lm.continuation_logprobs([("Warm-up:", " yes")])  # first-call costs are not what we compare
    t_ours, ours = timed(lambda: Accuracy().run(ctx_for(fresh(lm), Accuracy, data)), repeat=1)

    def theirs():
        c = ctx_for(lm, LmEvalTask, None, task="builtin:mc-general", limit=limit)
        c.load_data = ctx_data
        return LmEvalTask().run(c)
    t_lm, lmres = timed(theirs, repeat=1)
    same = all(abs(ours.metrics[k].value - lmres.metrics[k].value) < 1e-12 for k in ("acc", "acc_norm"))
    print(f"{spec}: multiple choice on {limit} items: ours acc={ours.metrics['acc'].value:.4f} "
          f"acc_norm={ours.metrics['acc_norm'].value:.4f} in {t_ours:.2f} s; the lm_eval check (lm-eval's task "
          f"pipeline, scored on our engine; bench_mc_speed.py times lm-eval's own HFLM) "
          f"acc={lmres.metrics['acc'].value:.4f} acc_norm={lmres.metrics['acc_norm'].value:.4f} in {t_lm:.2f} s; "
          f"same numbers: {same}; time ours/lm-eval {t_ours / t_lm:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
