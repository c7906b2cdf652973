"""Requests: scoring many continuations that share prefixes."""
from __future__ import annotations


class PrefixTreeRequests:
    """Mixin of ModelHandle: scoring many continuations that share prefixes."""
