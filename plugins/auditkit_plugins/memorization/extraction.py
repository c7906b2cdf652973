"""Training-data extraction by prefix prompting.

- Greedy extraction (Carlini et al. 2023, "Quantifying Memorization Across Neural Language Models",
  ICLR): a training sequence is extractable when greedy decoding from its first ``prefix_tokens``
  tokens reproduces the next ``suffix_tokens`` tokens exactly. For a canary the prefix is the template
  text before the secret ("my PIN is") and the suffix is the secret (and whatever the template puts
  after it).
- Probability of extraction (Hayes et al. 2024, "Measuring memorization in language models via
  probabilistic extraction"): the share of ``n`` seeded sampled generations (temperature sampling from
  the full next-token distribution, ``top_k=0``) that reproduce the suffix exactly.

Generation is batched with left padding (the prompts are right-aligned, with an attention mask, so
greedy results do not depend on the batch) and memoized on the model handle through ``memo``
(``persist=True``: also on disk, so a second audit of the same base model skips it); identical
prompts (every canary of a template shares one) are generated once.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def generate(handle, prompts: Sequence[Sequence[int]], max_new_tokens: int, *, samples: int = 0,
             temperature: float = 1.0, seed: int = 0) -> list[list[list[int]]]:
    """For each prompt (token ids), its continuations: one greedy one when ``samples`` is 0, else
    ``samples`` sampled ones. Each continuation is ``max_new_tokens`` ids long (-1 after an early stop).
    """
    prompts = [list(map(int, p)) for p in prompts]
    unique = sorted(set(map(tuple, prompts)), key=lambda p: (-len(p), p))

    def compute():
        import torch
        model = handle.model
        pad = handle.tokenizer.pad_token_id
        if pad is None:
            pad = handle.tokenizer.eos_token_id or 0
        eos = getattr(model.generation_config, "eos_token_id", None)
        eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        n_ret = max(1, samples)
        # a config of our own: the model's defaults (a chat model's temperature, top-p, repetition
        # penalty) must not change what greedy decoding or plain sampling means
        from transformers import GenerationConfig
        config = GenerationConfig(max_new_tokens=int(max_new_tokens), do_sample=bool(samples),
                                  num_return_sequences=n_ret, pad_token_id=pad, eos_token_id=eos or None,
                                  **(dict(temperature=float(temperature), top_k=0, top_p=1.0) if samples else {}))
        batch = max(1, handle.batch_size // n_ret) if samples else handle.batch_size
        out: list[list[list[int]]] = []  # aligned with ``unique`` (a list, so the disk cache can keep it)
        for start in range(0, len(unique), batch):
            chunk = unique[start:start + batch]
            width = max(len(p) for p in chunk)
            inp = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, p in enumerate(chunk):  # left padding: the prompt ends where generation starts
                inp[row, width - len(p):] = torch.tensor(p, dtype=torch.long)
                mask[row, width - len(p):] = 1
            with torch.inference_mode(), torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(seed) + start)
                if handle.device.startswith("cuda"):
                    torch.cuda.manual_seed_all(int(seed) + start)
                gen = model.generate(input_ids=inp.to(handle.device), attention_mask=mask.to(handle.device),
                                     generation_config=config)
            new = gen[:, width:].cpu().numpy()
            full = np.full((new.shape[0], int(max_new_tokens)), -1, dtype=np.int64)
            full[:, :new.shape[1]] = new
            if eos:  # a row that stopped is padded by generate; mark what follows its stop as -1
                stopped = np.isin(full, eos)
                after = np.cumsum(stopped, axis=1) - stopped > 0
                full[after] = -1
            for row in range(len(chunk)):
                out.append(full[row * n_ret:(row + 1) * n_ret].tolist())
        return out

    done = handle.memo("memorization.generate", [list(p) for p in unique], compute, persist=True,
                       max_new_tokens=int(max_new_tokens), samples=int(samples),
                       temperature=float(temperature) if samples else None, seed=int(seed) if samples else None)
    table = dict(zip(unique, done))
    return [table[tuple(p)] for p in prompts]


def split_sequences(ids: Sequence[Sequence[int]], prefix_tokens: int, suffix_tokens: int):
    """(indices, prefixes, suffixes) of the sequences long enough for prefix + suffix tokens."""
    keep, pre, suf = [], [], []
    for i, seq in enumerate(ids):
        if len(seq) >= prefix_tokens + suffix_tokens:
            keep.append(i)
            pre.append(list(seq[:prefix_tokens]))
            suf.append(list(seq[prefix_tokens:prefix_tokens + suffix_tokens]))
    return keep, pre, suf


def canary_split(handle, texts: Sequence[str], template: str) -> tuple[list[list[int]], list[list[int]]]:
    """Prefix ids (the template before the secret) and suffix ids (the rest) of each canary text."""
    head = template.split("{digits}")[0].rstrip()
    full = handle.token_ids(list(texts))
    head_ids = handle.token_ids([head])[0] if head else []
    pre, suf = [], []
    for seq in full:
        n = 0
        while n < min(len(head_ids), len(seq) - 1) and seq[n] == head_ids[n]:
            n += 1
        n = max(n, 1)
        pre.append(list(seq[:n]))
        suf.append(list(seq[n:]))
    return pre, suf


def extraction(handle, prefixes, suffixes, *, samples: int = 0, temperature: float = 1.0,
               seed: int = 0) -> dict:
    """Greedy exact-match extraction of each suffix, and its probability over ``samples`` draws."""
    if not prefixes:
        return {"greedy": np.zeros(0, bool), "sampled": None, "greedy_ids": []}
    length = max(len(s) for s in suffixes)
    greedy = generate(handle, prefixes, length)
    hit = np.array([g[0][:len(s)] == list(s) for g, s in zip(greedy, suffixes)], dtype=bool)
    sampled = None
    if samples > 0:
        draws = generate(handle, prefixes, length, samples=samples, temperature=temperature, seed=seed)
        sampled = np.array([np.mean([d[:len(s)] == list(s) for d in ds]) for ds, s in zip(draws, suffixes)])
    return {"greedy": hit, "sampled": sampled, "greedy_ids": [g[0] for g in greedy]}


def rate_ci(hits) -> tuple[float, tuple[float, float]]:
    """Share of successes with its Wilson score 95% interval (scipy.stats.binomtest)."""
    from scipy.stats import binomtest
    hits = np.asarray(hits, dtype=bool)
    if hits.size == 0:
        return float("nan"), (float("nan"), float("nan"))
    ci = binomtest(int(hits.sum()), int(hits.size)).proportion_ci(confidence_level=0.95, method="wilson")
    return float(hits.mean()), (float(ci.low), float(ci.high))
