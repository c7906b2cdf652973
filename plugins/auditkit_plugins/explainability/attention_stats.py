"""Attention statistics per layer and head, from the handle's cached attention maps:

- entropy of each query row's attention distribution, ``H = -sum_j a_j log a_j`` (nats), averaged
  over rows and examples, and normalised by ``log`` of the number of positions the row may attend to
  (all ``T`` tokens, or ``i + 1`` under a causal mask; rows with a single position are skipped) so
  that 1 = uniform and 0 = one token (Clark et al. 2019, "What Does BERT Look At?", section 3);
- the mean attention mass each head puts on special tokens ([CLS], [SEP], ...); heads above a
  threshold "mostly attend to special tokens" (Clark et al. 2019 found many such [SEP] heads).
"""
from __future__ import annotations

import numpy as np

from auditkit_plugins.explainability.targets import special_positions


def head_statistics(attentions: list[np.ndarray], ids: list[list[int]], tokenizer, causal: bool) -> dict:
    """Mean entropy (nats), normalised entropy and special-token mass, each ``[layers, heads]``."""
    ent_sum = norm_sum = special_sum = None
    rows = 0
    for att, tok_ids in zip(attentions, ids):
        att = np.asarray(att, dtype=np.float64)
        T = att.shape[-1]
        allowed = np.arange(1, T + 1) if causal else np.full(T, T)
        keep = allowed > 1
        if not keep.any():
            continue
        plogp = np.where(att > 0, att * np.log(np.where(att > 0, att, 1.0)), 0.0)
        ent = -plogp.sum(-1)                                   # [L, H, T]
        norm = ent[..., keep] / np.log(allowed[keep])
        mask = special_positions(tokenizer, tok_ids)
        special = att[..., mask].sum(-1)                        # [L, H, T]
        e, n, s = ent[..., keep].sum(-1), norm.sum(-1), special[..., keep].sum(-1)
        ent_sum = e if ent_sum is None else ent_sum + e
        norm_sum = n if norm_sum is None else norm_sum + n
        special_sum = s if special_sum is None else special_sum + s
        rows += int(keep.sum())
    if not rows:
        return {}
    return {"entropy": ent_sum / rows, "normalised_entropy": norm_sum / rows, "special_mass": special_sum / rows}
