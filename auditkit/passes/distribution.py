"""Requests: reductions of the next-token distribution against a second model."""
from __future__ import annotations


class DistributionRequests:
    """Mixin of ModelHandle: reductions of the next-token distribution against a second model."""
