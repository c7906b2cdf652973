"""Requests: masked-LM pseudo-log-likelihood."""
from __future__ import annotations


class MaskedLMRequests:
    """Mixin of ModelHandle: masked-LM pseudo-log-likelihood."""
