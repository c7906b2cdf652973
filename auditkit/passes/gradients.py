"""Requests: gradients with respect to the embeddings."""
from __future__ import annotations


class GradientRequests:
    """Mixin of ModelHandle: gradients with respect to the embeddings."""
