"""Canary exposure (Carlini et al. 2019, "The Secret Sharer: Evaluating and Testing Unintended
Memorization in Neural Networks", USENIX Security).

For a canary ``s`` inserted into the training data and a set ``R`` of never-inserted candidates drawn
from the same template (the references), with log-perplexity ``Px(s) = -sum_i log2 p(s_i | s_<i)``:

- rank-based exposure: ``exposure(s) = log2 |R| - log2 rank(s)``, where ``rank(s)`` is the position of
  the canary among the references ordered by increasing log-perplexity (rank 1 = the canary is more
  likely than every reference). Ties are mid-ranks: ``rank = 1 + #{r: Px(r) < Px(s)} +
  #{r: Px(r) = Px(s)} / 2``, so a canary equal to every reference sits in the middle. The rank-based
  estimate is capped at ``log2 |R|`` and can be slightly negative (``log2 |R| - log2(|R| + 1)``) for a
  canary less likely than every reference.
- extrapolated exposure (section 4.3 of the paper): fit a skew-normal distribution
  (``scipy.stats.skewnorm``) to the reference log-perplexities and take ``-log2 CDF(Px(s))``, which
  estimates the exposure beyond the reference count; capped at ``log2`` of the template's secret space
  (the exposure of a canary ranked first in the whole space).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

LN2 = math.log(2.0)


def log_perplexity_bits(token_logprobs: Sequence[np.ndarray]) -> np.ndarray:
    """Px(s) = -sum_i log2 p(s_i | s_<i) for each sequence (natural-log token log-probs in)."""
    return np.array([-float(np.sum(lp)) / LN2 for lp in token_logprobs], dtype=float)


def exposure_rank(canary_px, reference_px) -> tuple[np.ndarray, np.ndarray]:
    """(rank, exposure) of each canary log-perplexity among the reference log-perplexities.

    ``rank = 1 + #lower + #equal / 2`` (mid-rank ties); ``exposure = log2 |R| - log2 rank``.
    """
    ref = np.sort(np.asarray(reference_px, dtype=float))
    if ref.size == 0:
        raise ValueError("exposure needs at least one reference")
    c = np.atleast_1d(np.asarray(canary_px, dtype=float))
    lower = np.searchsorted(ref, c, side="left")
    equal = np.searchsorted(ref, c, side="right") - lower
    rank = 1.0 + lower + equal / 2.0
    return rank, math.log2(ref.size) - np.log2(rank)


def skewnorm_fit(reference_px) -> tuple[float, float, float]:
    """Maximum-likelihood skew-normal (a, loc, scale) of the reference log-perplexities."""
    from scipy.stats import skewnorm
    ref = np.asarray(reference_px, dtype=float)
    if ref.size < 3 or np.ptp(ref) == 0:
        return 0.0, float(ref.mean()) if ref.size else 0.0, 0.0
    a, loc, scale = skewnorm.fit(ref)
    return float(a), float(loc), float(scale)


def exposure_fit(canary_px, params: tuple[float, float, float], space_size: float | None = None) -> np.ndarray:
    """Extrapolated exposure ``-log2 CDF(Px)`` under the fitted skew-normal, capped at log2(space)."""
    from scipy.stats import skewnorm
    a, loc, scale = params
    c = np.atleast_1d(np.asarray(canary_px, dtype=float))
    if scale <= 0:
        out = np.where(c < loc, np.inf, np.where(c == loc, 1.0, 0.0))
    else:
        out = -skewnorm.logcdf(c, a, loc, scale) / LN2
    out = np.maximum(out, 0.0)
    if space_size:
        out = np.minimum(out, math.log2(space_size))
    return out


def canary_exposures(handle, canaries: dict, unseen: int = 20) -> dict:
    """Exposure of every inserted canary and of ``unseen`` held-out never-inserted references.

    The references are scored in one batched pass through the handle's shared, cached
    ``token_logprobs`` (together with the canaries). The last ``unseen`` references are held out as
    never-inserted canaries and ranked against the remaining references like the inserted ones, so
    their exposure shows what chance looks like (about log2(e) = 1.44 bits on average).
    """
    refs = list(canaries.get("references") or [])
    cans = list(canaries.get("canaries") or [])
    unseen = max(0, min(int(unseen), len(refs) // 2))
    held, ranked = refs[len(refs) - unseen:] if unseen else [], refs[:len(refs) - unseen]
    if not ranked:
        raise ValueError("the canary record holds no references to rank against")
    texts = [c["text"] for c in cans] + held + ranked
    px = log_perplexity_bits(handle.token_logprobs(texts))
    can_px, held_px, ref_px = px[:len(cans)], px[len(cans):len(cans) + len(held)], px[len(cans) + len(held):]
    space = canaries.get("space_size")
    params = skewnorm_fit(ref_px)
    rank, exp = exposure_rank(can_px, ref_px)
    held_rank, held_exp = exposure_rank(held_px, ref_px) if len(held) else (np.zeros(0), np.zeros(0))
    return {
        "log_perplexity": can_px, "rank": rank, "exposure": exp,
        "exposure_fit": exposure_fit(can_px, params, space),
        "unseen_exposure": held_exp, "unseen_exposure_fit": exposure_fit(held_px, params, space),
        "reference_px": ref_px, "skewnorm": params, "n_references": int(ref_px.size),
        "max_possible": math.log2(ref_px.size),
        "max_possible_fit": math.log2(space) if space else float("nan"),
    }
