"""Uncertainty for the bias checks: resampling CIs, minimum detectable effects, metric-name parts.

- ``stratified_indices``: bootstrap resamples that draw rows *within* each group (group sizes fixed
  as observed, so no resample loses a group), the resampling of ``bias.groups``.
- ``cluster_mean_ci``: percentile bootstrap of a mean that resamples *clusters* (the texts of
  ``bias.counterfactual``: all swaps of one text go in or out together, since they share the text's
  prediction and are not independent); the statistic is the ratio estimator sum / count.
- ``mde``: the minimum detectable effect of a two-sided z-test at alpha 0.05 and power 0.8 under
  the worst-case variance of a [0, 1] score (sd 0.5, i.e. a rate of 0.5), so it depends only on the
  sample sizes (Cohen 1988, ch. 6; Fleiss et al. 2003, eq. 4.14 solved for the difference):
  ``MDE = (z_{1-alpha/2} + z_{power}) * 0.5 * sqrt(1/n_a + 1/n_b)`` for two groups and
  ``(z_{1-alpha/2} + z_{power}) * 0.5 / sqrt(n)`` for one sample against a fixed value.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy.stats import norm

ALPHA, POWER = 0.05, 0.8
#: z_{1-alpha/2} + z_{power} = 1.960 + 0.842
Z_SUM = float(norm.ppf(1 - ALPHA / 2) + norm.ppf(POWER))
#: the largest standard deviation of a score in [0, 1] (a rate of 0.5)
SD_MAX = 0.5
#: resampled rows held in memory at once (index matrices are chunked beyond this)
_CHUNK_CELLS = 4_000_000


def mde(*sizes: int, sd: float = SD_MAX) -> float:
    """Minimum detectable effect (alpha 0.05 two-sided, power 0.8): ``Z_SUM * sd * sqrt(sum 1/n)``.

    One size: a one-sample mean against a fixed value; two sizes: a difference between two groups.
    Capped at 1 (a difference of rates cannot exceed it); a size of 0 gives 1.
    """
    if not sizes or any(n <= 0 for n in sizes):
        return 1.0
    return float(min(1.0, Z_SUM * sd * np.sqrt(sum(1.0 / n for n in sizes))))


def mde_smallest_pair(sizes: Iterable[int]) -> float:
    """MDE of a difference between the two smallest groups (the least powered pair of a max - min spread)."""
    two = sorted(int(n) for n in sizes)[:2]
    return mde(*two) if len(two) == 2 else 1.0


def stratified_indices(codes: np.ndarray, k: int, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """``[n_resamples, n]`` row indices: each group's rows resampled with replacement within the group."""
    codes = np.asarray(codes)
    cols = []
    for j in range(k):
        members = np.flatnonzero(codes == j)
        if members.size:
            cols.append(members[rng.integers(0, members.size, size=(n_resamples, members.size))])
    return np.concatenate(cols, axis=1) if cols else np.zeros((n_resamples, 0), dtype=int)


def chunks(n_resamples: int, n: int) -> list[int]:
    """Resample counts per chunk so that one index matrix stays under ``_CHUNK_CELLS`` cells."""
    step = max(1, _CHUNK_CELLS // max(n, 1))
    return [min(step, n_resamples - s) for s in range(0, n_resamples, step)]


def cluster_mean_ci(values, clusters, seed: int = 0, n_resamples: int = 1000) -> tuple[float, float]:
    """Percentile-bootstrap 95% CI of ``mean(values)`` resampling whole clusters with replacement.

    Each resample draws as many clusters as there are, and its statistic is the sum of their values
    over the count of their values (the ratio estimator, equal to the plain mean on the original).
    """
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return float("nan"), float("nan")
    _, inv = np.unique(np.asarray(clusters), return_inverse=True)
    total, count = np.bincount(inv, weights=v), np.bincount(inv).astype(float)
    m = total.size
    if m < 2 or np.all(v == v[0]):
        x = float(v.mean())
        return x, x
    rng = np.random.default_rng(seed)
    stats = []
    for b in chunks(n_resamples, m):
        idx = rng.integers(0, m, size=(b, m))
        stats.append(total[idx].sum(axis=1) / count[idx].sum(axis=1))
    lo, hi = np.percentile(np.concatenate(stats), [2.5, 97.5])
    return float(lo), float(hi)


