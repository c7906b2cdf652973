"""Statistics shared by checks: bootstrap CIs, standard errors, paired tests.

- ``bootstrap_ci``: percentile bootstrap (scipy.stats.bootstrap), seeded.
- ``mean_stderr``: sample sd / sqrt(n), as lm-eval reports ``acc_stderr``.
- ``mcnemar``: McNemar's test on paired correctness; exact binomial when b + c <= 25,
  chi-square with continuity correction otherwise.
- ``paired_bootstrap``: two-sided p-value of a mean paired difference by bootstrap.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
from scipy import stats as sps


def mean_stderr(values) -> float:
    """Sample standard deviation / sqrt(n) (lm-eval's ``mean_stderr``)."""
    x = np.asarray(values, dtype=float)
    if x.size < 2:
        return float("nan")
    return float(np.std(x, ddof=1) / math.sqrt(x.size))


def bootstrap_ci(statistic: Callable, *arrays, seed: int = 0, n_resamples: int = 1000,
                 confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of ``statistic(*arrays)`` resampling rows jointly (paired)."""
    arrays = [np.asarray(a) for a in arrays]
    n = len(arrays[0])
    if n < 2:
        v = float(statistic(*arrays)) if n else float("nan")
        return v, v
    if len(arrays) == 1 and statistic is np.mean:
        data, vec, stat = (arrays[0].astype(float),), True, lambda x, axis=-1: np.mean(x, axis=axis)
    else:
        data, vec = tuple(arrays), False
        stat = statistic
    res = sps.bootstrap(data, stat, paired=len(data) > 1, vectorized=vec, n_resamples=n_resamples,
                        confidence_level=confidence, method="percentile",
                        rng=np.random.default_rng(seed))
    low, high = res.confidence_interval
    return float(low), float(high)


def mean_ci(values, seed: int = 0, n_resamples: int = 1000) -> tuple[float, float]:
    """Percentile-bootstrap 95% CI of a mean (:func:`bootstrap_ci`); a constant sample (every value
    alike, one value included) gives a zero-width interval at that value, an empty one (nan, nan)."""
    x = np.asarray(values, dtype=float)
    if x.size and np.all(x == x[0]):
        return float(x[0]), float(x[0])
    return bootstrap_ci(np.mean, x, seed=seed, n_resamples=n_resamples)


def mcnemar(correct_a, correct_b) -> dict:
    """McNemar's paired test on two correctness vectors (exact binomial when b+c <= 25)."""
    a = np.asarray(correct_a, dtype=bool)
    b_ = np.asarray(correct_b, dtype=bool)
    b = int(np.sum(a & ~b_))
    c = int(np.sum(~a & b_))
    if b + c == 0:
        return {"b": b, "c": c, "p_value": 1.0, "method": "exact"}
    if b + c <= 25:
        p = sps.binomtest(b, b + c, 0.5).pvalue
        return {"b": b, "c": c, "p_value": float(p), "method": "exact"}
    chi2 = (abs(b - c) - 1) ** 2 / (b + c)
    return {"b": b, "c": c, "p_value": float(sps.chi2.sf(chi2, 1)), "method": "chi2"}


def paired_bootstrap(x, y, seed: int = 0, n_resamples: int = 2000) -> dict:
    """Mean of y - x, its 95% CI and a two-sided bootstrap p-value for 'no difference'."""
    d = np.asarray(y, dtype=float) - np.asarray(x, dtype=float)
    if d.size == 0:
        return {"delta": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "p_value": 1.0}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, d.size, size=(n_resamples, d.size))
    means = d[idx].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    centered = means - d.mean()
    p = float(np.mean(np.abs(centered) >= abs(d.mean()))) if d.std() > 0 else (1.0 if d.mean() == 0 else 0.0)
    return {"delta": float(d.mean()), "ci_low": float(low), "ci_high": float(high), "p_value": p}


def macro_f1(y_true, y_pred, n_classes: int) -> float:
    """Unweighted mean of per-class F1 (sklearn's ``f1_score(average='macro')`` with zero_division=0)."""
    return float(macro_f1_resampled(np.asarray(y_true)[None, :], np.asarray(y_pred)[None, :], n_classes)[0])


def macro_f1_resampled(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Macro-F1 for each row of ``[B, n]`` label/prediction matrices, vectorized over resamples."""
    scores = np.zeros(y_true.shape[0])
    for c in range(n_classes):
        t, p = y_true == c, y_pred == c
        tp = np.sum(t & p, axis=1)
        denom = np.sum(t, axis=1) + np.sum(p, axis=1)
        scores += np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
    return scores / n_classes


def macro_f1_ci(y_true, y_pred, n_classes: int, seed: int = 0, n_resamples: int = 1000) -> tuple[float, float]:
    """Percentile-bootstrap 95% CI of macro-F1, resampling (label, prediction) pairs jointly."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.size < 2:
        v = macro_f1(y_true, y_pred, n_classes) if y_true.size else float("nan")
        return v, v
    idx = np.random.default_rng(seed).integers(0, y_true.size, size=(n_resamples, y_true.size))
    boot = macro_f1_resampled(y_true[idx], y_pred[idx], n_classes)
    low, high = np.percentile(boot, [2.5, 97.5])
    return float(low), float(high)
