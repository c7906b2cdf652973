"""Requests: the next-token distribution after a prompt."""
from __future__ import annotations


class NextTokenRequests:
    """Mixin of ModelHandle: the next-token distribution after a prompt."""
