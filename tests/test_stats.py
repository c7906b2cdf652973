"""``auditkit.stats.mean_ci``: the one bootstrap CI of a mean that checks share (generation, cost, accuracy, ...)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import bootstrap

from auditkit.stats import mean_ci


@pytest.mark.parametrize("seed, n_resamples", [(0, None), (3, 137), (11, 2000)])
def test_mean_ci_is_scipys_percentile_bootstrap(seed, n_resamples):
    x = np.random.default_rng(seed).normal(size=25)
    kw = {} if n_resamples is None else {"n_resamples": n_resamples}
    ci = mean_ci(x, seed, **kw)
    ref = bootstrap((x,), np.mean, n_resamples=n_resamples or 1000, method="percentile",
                    rng=np.random.default_rng(seed)).confidence_interval
    assert ci == (ref.low, ref.high)
    # by hand: the means of n_resamples seeded resamples, their 2.5th and 97.5th percentiles
    idx = np.random.default_rng(seed).integers(0, x.size, size=(n_resamples or 1000, x.size))
    assert ci == pytest.approx(tuple(np.percentile(x[idx].mean(axis=1), [2.5, 97.5])), rel=1e-12)


def test_mean_ci_default_is_1000_resamples_and_the_seed_fixes_it():
    x = np.random.default_rng(1).random(40)
    assert mean_ci(x, 5) == mean_ci(x, 5, 1000) == mean_ci(x, seed=5, n_resamples=1000)
    assert mean_ci(x, 5) != mean_ci(x, 6) and mean_ci(x, 5) != mean_ci(x, 5, 999)


def test_mean_ci_degenerate_samples():
    assert mean_ci([0.3, 0.3, 0.3], 0, 200) == (0.3, 0.3)  # constant: zero width, at the value itself
    assert mean_ci([2.5]) == (2.5, 2.5)
    lo, hi = mean_ci([])
    assert math.isnan(lo) and math.isnan(hi)
