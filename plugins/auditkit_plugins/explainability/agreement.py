"""Agreement between explanation methods over the same tokens (non-special positions):

- Spearman rank correlation of the token scores (scipy.stats.spearmanr), per example, averaged;
  IG enters as |attribution| (magnitude of influence, the quantity attention is compared with);
- top-k overlap: |top_k(a) ∩ top_k(b)| / k with ``k = min(topk, n)``.

A constant score vector has no ranking: its Spearman correlation is NaN and is left out of the mean.
"""
from __future__ import annotations

import numpy as np
from scipy import stats as sps


def magnitude(method: str, scores: np.ndarray) -> np.ndarray:
    return np.abs(scores) if method == "ig" else np.asarray(scores, dtype=np.float64)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return float("nan")
    return float(sps.spearmanr(a, b).statistic)


def topk_overlap(a: np.ndarray, b: np.ndarray, k: int) -> float:
    k = int(min(k, len(a)))
    if k <= 0:
        return float("nan")
    top_a = set(np.argsort(-np.asarray(a), kind="stable")[:k].tolist())
    top_b = set(np.argsort(-np.asarray(b), kind="stable")[:k].tolist())
    return len(top_a & top_b) / k


def agreement(examples, scores: dict[str, list[np.ndarray]], topk: int) -> dict[tuple[str, str], dict]:
    """Per method pair (in the given order): per-example ``spearman`` and ``topk_overlap`` arrays."""
    methods = list(scores)
    out = {}
    for x in range(len(methods)):
        for y in range(x + 1, len(methods)):
            a, b = methods[x], methods[y]
            rho, over = [], []
            for i, e in enumerate(examples):
                sa = magnitude(a, scores[a][i])[e.candidates]
                sb = magnitude(b, scores[b][i])[e.candidates]
                rho.append(spearman(sa, sb))
                over.append(topk_overlap(sa, sb, topk))
            out[(a, b)] = {"spearman": np.array(rho), "topk_overlap": np.array(over)}
    return out
