"""Issue 10 speed: multiple-choice accuracy on SmolLM2, auditkit's engine vs lm-eval's HFLM, side by side.

Both score the same ``(question, " " + choice)`` loglikelihood requests of ``builtin:mc-general`` with the same
model object, batch size, max_length and device; timings are interleaved (best of ``--repeat``, each with a
cold cache) and printed as request tokens/s (the tokens lm-eval's model input holds, ``(ctx + cont)[:-1]`` per
request, the same count for both) and their ratio. Also timed: the same requests through lm-eval's LM API on
our engine (``EngineLM``, what the ``lm_eval`` check runs). It checks that acc, acc_norm and every item's
correctness are equal. Never asserts on time.

    .venv/bin/python benchmarks/bench_mc_speed.py                        # SmolLM2-135M, all 262 items
    .venv/bin/python benchmarks/bench_mc_speed.py --model builtin:tiny-llama --n 16 --repeat 1   # smoke

Without the SmolLM2 wheel in the cache (offline) it falls back to builtin:tiny-llama and says so.
"""
from __future__ import annotations

import argparse
import sys

import _common  # noqa: F401  (offline env)
from _common import fresh, load_lm


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin:smollm2-135m")
    ap.add_argument("--n", type=int, default=0, help="items (0 = all)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    ap.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                    help="cast the model (auto: bf16 on CUDA, fp32 on CPU). lm-eval's HFLM takes log_softmax in "
                         "the model's dtype, auditkit in fp32: compare answers in float32")
    args = ap.parse_args(argv)

    import numpy as np
    import torch
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from auditkit.data import load_dataset
    from auditkit.models import resolve_device
    from auditkit.plugins import registry
    from auditkit_plugins.accuracy import multiple_choice_scores
    from auditkit_plugins.lm_eval_adapter import EngineLM
    from _common import timed

    if args.threads:
        torch.set_num_threads(args.threads)
    reg = registry()
    device = resolve_device(args.device)
    spec, handle = load_lm(args.model, reg, device)
    handle.batch_size, handle.max_length = args.batch_size, args.max_length
    if args.dtype != "auto":
        handle.model.to(getattr(torch, args.dtype))
    rows = load_dataset("builtin:mc-general", reg).rows
    rows = rows[:args.n] if args.n else rows
    pairs = [(r["question"], " " + c) for r in rows for c in r["choices"]]
    hf = HFLM(pretrained=handle.model, tokenizer=handle.tokenizer, batch_size=args.batch_size,
              max_length=args.max_length)
    instances = [Instance(request_type="loglikelihood", doc={}, arguments=p, idx=0) for p in pairs]
    enc = handle.encode_pairs(pairs)
    tokens = sum(len((c + x)[-(args.max_length + 1):][:-1]) for c, x in enc)
    print(f"{spec} ({handle.describe()['parameters'] / 1e6:.1f}M params), {len(rows)} items, {len(pairs)} "
          f"requests, {tokens} request tokens; batch {args.batch_size}, max_length {args.max_length}, device "
          f"{device}, dtype {next(handle.model.parameters()).dtype}, torch threads {torch.get_num_threads()}")

    def sync():
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()

    def ours():
        out = multiple_choice_scores(fresh(handle), rows)
        sync()
        return out

    def theirs():
        lls = [ll for ll, _ in hf.loglikelihood(instances, disable_tqdm=True)]
        sync()
        return lls

    def engine_lm():
        out = EngineLM(fresh(handle)).loglikelihood(instances)
        sync()
        return out

    # warm-up (first-call costs are not what we compare), then interleave so noise hits all alike
    ours(), theirs(), engine_lm()
    t_ours, t_theirs, t_engine = [], [], []
    for _ in range(args.repeat):
        t, (acc, acc_norm, lls_ours) = timed(ours, 1)
        t_ours.append(t)
        t, lls_theirs = timed(theirs, 1)
        t_theirs.append(t)
        t_engine.append(timed(engine_lm, 1)[0])
    t_ours, t_theirs, t_engine = min(t_ours), min(t_theirs), min(t_engine)

    # lm-eval's acc / acc_norm from HFLM's answers, per item
    acc_t, accn_t, pos = [], [], 0
    for r in rows:
        ll = np.array(lls_theirs[pos:pos + len(r["choices"])])
        pos += len(r["choices"])
        lens = np.array([float(len(c)) for c in r["choices"]])
        acc_t.append(float(np.argmax(ll) == r["label"]))
        accn_t.append(float(np.argmax(ll / lens) == r["label"]))
    diff = max(abs(a - b) for row_ours, b_row in zip(lls_ours, _split(lls_theirs, rows))
               for a, b in zip(row_ours, b_row))
    same = list(acc) == acc_t and list(acc_norm) == accn_t
    print(f"auditkit engine   : {t_ours:8.3f} s  {tokens / t_ours:10.0f} tok/s   acc={np.mean(acc):.4f} "
          f"acc_norm={np.mean(acc_norm):.4f}  (forward passes: one batched request)")
    print(f"lm-eval HFLM      : {t_theirs:8.3f} s  {tokens / t_theirs:10.0f} tok/s   acc={np.mean(acc_t):.4f} "
          f"acc_norm={np.mean(accn_t):.4f}")
    print(f"lm-eval API on our engine (EngineLM): {t_engine:8.3f} s  {tokens / t_engine:10.0f} tok/s")
    print(f"speed-up ours vs lm-eval: {t_theirs / t_ours:.2f}x (target > 1); EngineLM vs HFLM "
          f"{t_theirs / t_engine:.2f}x; same acc and acc_norm on every item: {same}; max |loglik diff| "
          f"{diff:.2e}")
    return 0


def _split(lls, rows):
    pos = 0
    for r in rows:
        yield lls[pos:pos + len(r["choices"])]
        pos += len(r["choices"])


if __name__ == "__main__":
    sys.exit(main())
