"""auditkit: a plugin-based evaluation and responsible-AI audit suite for language models."""
from auditkit.api import Check, CheckContext, CheckResult, Metric, MetricSpec, Param
from auditkit.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["Check", "CheckContext", "CheckResult", "Metric", "MetricSpec", "Param", "hookimpl",
           "__version__"]
