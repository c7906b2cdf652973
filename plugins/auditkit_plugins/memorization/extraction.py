"""Training-data extraction by prefix prompting.

- Greedy extraction (Carlini et al. 2023, "Quantifying Memorization Across Neural Language Models",
  ICLR): a training sequence is extractable when greedy decoding from its first ``prefix_tokens``
  tokens reproduces the next ``suffix_tokens`` tokens exactly. For a canary the prefix is the template
  text before the secret ("my PIN is") and the suffix is the secret (and whatever the template puts
  after it).
- Probability of extraction (Hayes et al. 2024, "Measuring memorization in language models via
  probabilistic extraction"): the share of ``n`` seeded sampled generations (temperature sampling from
  the full next-token distribution, ``top_k=0``) that reproduce the suffix exactly.

Generation is the model handle's ``generate_ids`` request: batched with left padding (greedy results
do not depend on the batch), sampled by seeded Gumbel-max draws per prompt, sample and step (so the
draws do not depend on the batch or the number of processes either), memoized on the handle and on
disk, so a second audit of the same base model skips it; identical prompts (every canary of a
template shares one) are generated once.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from auditkit.finetune import canary_head, canary_pair


def generate(handle, prompts: Sequence[Sequence[int]], max_new_tokens: int, *, samples: int = 0,
             temperature: float = 1.0, seed: int = 0) -> list[list[list[int]]]:
    """For each prompt (token ids), its continuations: one greedy one when ``samples`` is 0, else
    ``samples`` sampled ones (temperature sampling from the full next-token distribution). Each
    continuation is ``max_new_tokens`` ids long: the new tokens, the end-of-sequence token where the
    model stopped, then -1.

    Runs on the handle's ``generate_ids`` request (batched with left padding, seeded per prompt and
    sample so the draws do not depend on the batch, memoized also on disk); identical prompts (every
    canary of a template shares one) are generated once.
    """
    prompts = [list(map(int, p)) for p in prompts]
    if not prompts:
        return []
    unique = sorted(set(map(tuple, prompts)), key=lambda p: (-len(p), p))
    n = int(max_new_tokens)
    gens = handle.generate_ids([list(p) for p in unique], max_new_tokens=n,
                               temperature=float(temperature) if samples else 0.0, top_p=1.0,
                               seed=int(seed) if samples else 0, samples=max(1, int(samples)))
    table = {p: [g.token_ids[:n] + [-1] * (n - len(g.token_ids[:n])) for g in per] for p, per in zip(unique, gens)}
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
    """Prefix ids (the template before the secret) and suffix ids (the rest) of each canary text. A seq2seq
    LM reads the head in its encoder and is asked for the rest as its target, the pair it trained on
    (:func:`auditkit.finetune.canary_examples`)."""
    if handle.task == "seq2seq-lm":
        enc = handle.encode_pairs([canary_pair(t, template) for t in texts])
        return [list(e) for e, _ in enc], [list(c) for _, c in enc]
    head = canary_head(template)
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
