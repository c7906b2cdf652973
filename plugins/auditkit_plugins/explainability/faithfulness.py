"""Faithfulness of token rankings: ERASER comprehensiveness and sufficiency (DeYoung et al. 2020,
"ERASER: A Benchmark to Evaluate Rationalized NLP Models"), aggregated as AOPC over rationale sizes.

For a rationale ``r`` (the top ``k`` explained tokens, ``k = max(1, round(size * n))`` of the ``n``
non-special tokens, ranked by the method's signed score):

- comprehensiveness = ``p(y|x) - p(y|x \\ r)`` (the rationale tokens deleted): higher = more faithful;
- sufficiency = ``p(y|x) - p(y|r)`` (only the rationale tokens kept): lower = more faithful;

special tokens are always kept, ``y`` is the model's own target. AOPC is the mean over the sizes.
A random rationale of the same sizes (a permutation seeded from the run's seed) is the baseline a
method must beat. Every perturbed sequence is scored in one batched, memoized pass.
"""
from __future__ import annotations

import numpy as np

from auditkit_plugins.explainability.targets import score_ids


def ranking(scores: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Candidate positions, most relevant first (stable: ties keep text order)."""
    vals = np.asarray(scores, dtype=np.float64)[candidates]
    return candidates[np.argsort(-vals, kind="stable")]


def rationale_size(size: float, n: int) -> int:
    return int(min(n, max(1, round(size * n))))


def perturb(ids: list[int], keep_special: np.ndarray, rationale: np.ndarray, mode: str, fill: int) -> list[int]:
    """``mode='remove'``: x without the rationale; ``mode='keep'``: the rationale (and specials) only."""
    in_r = np.zeros(len(ids), dtype=bool)
    in_r[rationale] = True
    keep = (keep_special | ~in_r) if mode == "remove" else (keep_special | in_r)
    out = [int(t) for t, k in zip(ids, keep) if k]
    return out or [int(fill)]


def random_rankings(examples, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.permutation(e.candidates) for e in examples]


def faithfulness(handle, examples, rankings: dict[str, list[np.ndarray]], sizes: list[float],
                 fill: int) -> dict[str, dict[str, np.ndarray]]:
    """Per method: ``comprehensiveness`` / ``sufficiency`` arrays ``[N, len(sizes)]`` and their AOPC ``[N]``."""
    # the unperturbed inputs first (p(y|x) through the same scoring path), then every perturbation
    seqs, targets, where = [e.ids for e in examples], [e.target for e in examples], []
    special = [np.ones(len(e.ids), dtype=bool) for e in examples]
    for s, e in zip(special, examples):
        s[e.candidates] = False
    for method, ranks in rankings.items():
        for i, (e, order) in enumerate(zip(examples, ranks)):
            for j, size in enumerate(sizes):
                r = order[:rationale_size(size, len(e.candidates))]
                for mode in ("remove", "keep"):
                    where.append((method, i, j, mode))
                    seqs.append(perturb(e.ids, special[i], r, mode, fill))
                    targets.append(e.target)
    probs = np.exp(score_ids(handle, seqs, targets))
    n = len(examples)
    full = probs[:n]
    out = {m: {"comprehensiveness": np.zeros((n, len(sizes))), "sufficiency": np.zeros((n, len(sizes)))}
           for m in rankings}
    for (method, i, j, mode), p in zip(where, probs[n:]):
        key = "comprehensiveness" if mode == "remove" else "sufficiency"
        out[method][key][i, j] = full[i] - p
    for m in out:
        out[m]["comprehensiveness_aopc"] = out[m]["comprehensiveness"].mean(1)
        out[m]["sufficiency_aopc"] = out[m]["sufficiency"].mean(1)
    return out
