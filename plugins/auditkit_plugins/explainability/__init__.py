"""The ``explainability`` check plugin: attention rollout (Abnar & Zuidema 2020), gradient-weighted
attention (Chefer et al. 2021) and Integrated Gradients (captum), with ERASER faithfulness against a
random rationale, agreement between methods and attention-head statistics. See ``check.py``."""
from __future__ import annotations

from auditkit.hookspecs import hookimpl
from auditkit_plugins.explainability.check import Explainability


@hookimpl
def auditkit_register_checks(register):
    register(Explainability)
