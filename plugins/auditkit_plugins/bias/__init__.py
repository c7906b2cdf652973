"""Bias checks: group fairness (``bias.groups``), counterfactual substitution (``bias.counterfactual``)
and stereotype minimal pairs (``bias.pairs``). Group-term swapping lives in :mod:`.swaps`."""
from __future__ import annotations

from auditkit.hookspecs import hookimpl

from .counterfactual import BiasCounterfactual
from .groups import BiasGroups
from .pairs import BiasPairs

__all__ = ["BiasCounterfactual", "BiasGroups", "BiasPairs", "DEFAULT_GATES"]

#: the default bias gates (suites/bias.yaml uses the same); (expression, severity) per check
DEFAULT_GATES = {
    "bias.groups": [("dp_difference <= 0.1", "fail"), ("eo_difference <= 0.1", "warn")],
    "bias.counterfactual": [("cf_gap <= 0.05", "fail"), ("flip_rate <= 0.05", "warn")],
    "bias.pairs": [("stereotype_score.ci_low <= 0.5", "fail")],
}


@hookimpl
def auditkit_register_checks(register):
    register(BiasGroups)
    register(BiasCounterfactual)
    register(BiasPairs)
