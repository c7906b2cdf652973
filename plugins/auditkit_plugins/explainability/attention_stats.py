"""Attention statistics per layer and head, reduced inside the model handle's attention pass
(``ModelHandle.attention_head_stats``, :mod:`auditkit.passes.attention`; no map per example is kept):

- entropy of each query row's attention distribution, ``H = -sum_j a_j log a_j`` (nats), averaged
  over rows and examples, and normalised by ``log`` of the number of positions the row may attend to
  (all ``T`` tokens, or ``i + 1`` under a causal mask; rows with a single position are skipped) so
  that 1 = uniform and 0 = one token (Clark et al. 2019, "What Does BERT Look At?", section 3);
- the mean attention mass each head puts on special tokens ([CLS], [SEP], ...); heads above a
  threshold "mostly attend to special tokens" (Clark et al. 2019 found many such [SEP] heads).
"""
from __future__ import annotations


def head_statistics_of(handle, texts) -> dict:
    """Mean entropy (nats), normalised entropy and special-token mass, each ``[layers, heads]``
    (empty when no row may attend to more than one position)."""
    stats = handle.attention_head_stats(list(texts))
    return {k: stats[k] for k in ("entropy", "normalised_entropy", "special_mass")} if stats else {}
