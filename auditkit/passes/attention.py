"""Requests: attention reductions computed inside the pass."""
from __future__ import annotations


class AttentionRequests:
    """Mixin of ModelHandle: attention reductions computed inside the pass."""
