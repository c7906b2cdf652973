"""Bias checks: group fairness (``bias.groups``), counterfactual substitution (``bias.counterfactual``)
and stereotype minimal pairs (``bias.pairs``). Group-term swapping lives in :mod:`.swaps`, resampling
and power in :mod:`.uncertainty`.

Uncertainty policy of the default gates. A bias metric is an estimate from a few dozen to a few
hundred rows, and a gate on its point estimate flips on noise (an equalized-odds difference of 0.167
with a 95% CI of [0.097, 0.300] on groups of 60 rows says little about 0.1). So each bias difference
has a tolerance T and two default gates:

- FAIL when the 95% CI's lower bound is beyond T (``eo_difference.ci_low <= 0.1``): the data show,
  at 95% confidence, a difference larger than the tolerance;
- WARN when the point estimate is beyond T (``eo_difference <= 0.1``): a difference the data cannot
  yet tell from noise.

Tolerances: ``eo_difference`` 0.1 (``dp_difference`` 0.1 warns only: it moves with each group's base
rate, and a perfect classifier has ``dp_difference = base_rate_difference``); ``cf_gap`` 0.05 (the
flip rate 0.05 warns only); causal LMs' ``ll_gap`` 0.1 nats per token; generations' ``gen_gap`` 0.1 on
the scorer's [-1, 1] scale (scorers: ``auditkit_plugins.scorers``, hook ``auditkit_register_scorers``); ``stereotype_score`` 0.6
(0.1 over no preference).

Every difference comes with ``*_mde``, the minimum detectable effect: the smallest true difference
the data would detect with a two-sided z-test at alpha 0.05 and power 0.8, under the worst-case
variance of a [0, 1] score (sd 0.5), so it depends only on the sample sizes:
``(1.960 + 0.842) * 0.5 * sqrt(1/n_a + 1/n_b)`` for the two smallest groups (for EO the larger of the
TPR and FPR versions, over positives and negatives), ``2.80 * 0.5 / sqrt(n)`` for a score against a
fixed value (n = texts with a swap, or pairs). An MDE above the tolerance means a PASS is weak evidence;
the check notes it, and ``dp_difference_mde <= 0.1`` can be gated to demand enough data.

The CIs are bootstraps over the independent units. ``bias.groups`` resamples rows within each group
(stratified: every resample keeps the observed group sizes), and bounds each max - min difference by
simultaneous max-t intervals of all pairwise group differences: the percentile interval of a
resampled max - min is biased upward (six fair groups of 60 rows put its lower bound for the
equalized odds difference above 0.1 in 99% of simulated data sets, and the point estimate itself
above 0.1 in 92%; the simultaneous bound stays at 0 in 98%). ``bias.counterfactual`` resamples texts
with all their swaps (a cluster bootstrap: one text's swaps are not independent); ``bias.pairs``
resamples pairs (percentile intervals).

The default gates are declared once, as each check's ``default_gates``; ``DEFAULT_GATES`` maps check
name -> that declaration, for reading only.
"""
from __future__ import annotations

from types import MappingProxyType

from auditkit.hookspecs import hookimpl

from .counterfactual import BiasCounterfactual
from .groups import BiasGroups
from .pairs import BiasPairs

__all__ = ["BiasCounterfactual", "BiasGroups", "BiasPairs", "DEFAULT_GATES"]

#: check name -> its ``default_gates`` declaration (the class attribute is the one source of truth)
DEFAULT_GATES = MappingProxyType({cls.name: cls.default_gates for cls in (BiasGroups, BiasCounterfactual, BiasPairs)})


@hookimpl
def auditkit_register_checks(register):
    register(BiasGroups)
    register(BiasCounterfactual)
    register(BiasPairs)
