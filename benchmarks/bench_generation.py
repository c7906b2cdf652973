"""Issue 11 speed: generation through the engine against a plain batched ``model.generate`` loop.

The same greedy answers to the same prompts (``builtin:qa``, optionally repeated), the same model object,
batch size, ``max_new_tokens`` and device: auditkit's ``handle.generate`` (length-sorted batches through
``map_batches``, left-padded inside the batch, with the per-row seeded logits processor) against a plain
loop that left-pads each batch in data order and calls ``model.generate(do_sample=False)``. Timed
interleaved (best of ``--repeat``, each with a cold cache), as generated tokens/s (each row's tokens up to
and including its end-of-sequence token); the ratio is the engine's over the plain loop's (target: at
least 0.8). It also checks that both give the same texts. Never asserts on time.

    .venv/bin/python benchmarks/bench_generation.py                                  # SmolLM2-135M
    .venv/bin/python benchmarks/bench_generation.py --model builtin:tiny-llama --repeat 1   # smoke
"""
from __future__ import annotations

import argparse
import time

import _common  # noqa: F401  (offline env)
from _common import fresh, load_lm


def plain_generate(handle, prompts: list[str], batch_size: int, max_new_tokens: int) -> tuple[list[list[int]], int]:
    """A plain batched loop: data order, left padding, greedy; the tokens each row generated (to its EOS)."""
    import torch
    tok, model = handle.tokenizer, handle.model
    side = tok.padding_side
    tok.padding_side = "left"
    eos, out, count = tok.eos_token_id, [], 0
    try:
        with torch.inference_mode():
            for s in range(0, len(prompts), batch_size):
                enc = tok(prompts[s:s + batch_size], return_tensors="pt", padding=True).to(handle.device)
                gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tok.pad_token_id)
                for row in gen[:, enc["input_ids"].shape[1]:].tolist():
                    if eos in row:
                        row = row[:row.index(eos) + 1]
                    out.append(row)
                    count += len(row)
    finally:
        tok.padding_side = side
    return out, count


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin:smollm2-135m")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--copies", type=int, default=1, help="repeat the prompt set (more work per timing)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)

    from auditkit.data import load_dataset
    from auditkit.models import resolve_device
    from auditkit.plugins import registry

    reg = registry()
    device = resolve_device(args.device)
    spec, handle = load_lm(args.model, reg, device)
    handle.batch_size = args.batch_size
    rows = load_dataset("builtin:qa", reg, seed=0).rows
    prompts = [f"Question: {r['prompt']}\nAnswer:" for r in rows] * args.copies

    # warm-up, untimed: CUDA context, cuBLAS handles and kernel choices belong to neither side
    fresh(handle).generate(prompts[:args.batch_size], max_new_tokens=4, temperature=0.0)
    plain_generate(handle, prompts[:args.batch_size], args.batch_size, 4)
    best_ours, best_plain, ours_texts, plain_ids = float("inf"), float("inf"), None, None
    ours_tokens = plain_tokens = 0
    for _ in range(args.repeat):
        h = fresh(handle)
        t0 = time.perf_counter()
        gens = h.generate(prompts, max_new_tokens=args.max_new_tokens, temperature=0.0)
        best_ours = min(best_ours, time.perf_counter() - t0)
        ours_tokens = sum(len(g[0].token_ids) for g in gens)
        ours_texts = [g[0].text for g in gens]
        t0 = time.perf_counter()
        plain_ids, plain_tokens = plain_generate(handle, prompts, args.batch_size, args.max_new_tokens)
        best_plain = min(best_plain, time.perf_counter() - t0)
    plain_texts = [handle.tokenizer.decode(r, skip_special_tokens=True) for r in plain_ids]
    same = sum(a == b for a, b in zip(ours_texts, plain_texts))
    ours_tps, plain_tps = ours_tokens / best_ours, plain_tokens / best_plain
    print(f"model {spec}, {len(prompts)} prompts, batch {args.batch_size}, max_new_tokens {args.max_new_tokens}, "
          f"device {device}, best of {args.repeat}")
    print(f"engine handle.generate : {ours_tokens} tokens in {best_ours:.2f} s = {ours_tps:.1f} tok/s")
    print(f"plain model.generate   : {plain_tokens} tokens in {best_plain:.2f} s = {plain_tps:.1f} tok/s")
    print(f"ratio engine / plain: {ours_tps / plain_tps:.2f}x (target >= 0.8)")
    print(f"identical answers: {same}/{len(prompts)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
