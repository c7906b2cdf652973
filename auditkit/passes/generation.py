"""Requests: greedy and sampled generation."""
from __future__ import annotations


class GenerationRequests:
    """Mixin of ModelHandle: greedy and sampled generation."""
