"""Attention-based token relevance, asked of the model handle (the reductions run inside its pass:
:mod:`auditkit.passes.attention`; no attention map per example is kept).

- Attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers"): per layer
  the head-mean attention plus the identity (the residual connection), each row re-normalised to
  sum to 1, multiplied through the layers: ``R = Â_L · … · Â_1``, ``Â_l = rownorm(mean_h A_l + I)``.
  Every row of ``R`` sums to 1. The relevance of token j is ``R[query, j]``
  (``ModelHandle.attention_rollout``: the same eager pass gives the head statistics and the logits).
- Gradient-weighted attention (Chefer, Gur & Wolf 2021, "Generic Attention-model Explainability for
  Interpreting Bi-Modal and Encoder-Decoder Transformers", rule for self-attention):
  ``Ā_l = E_h[(∇A_l ⊙ A_l)^+]`` with ∇A_l the gradient of the target score w.r.t. the attention
  probabilities, ``R ← R + Ā_l · R`` from ``R = I``, first layer to last; the relevance of token j is
  ``(R - I)[query, j]`` (the identity only credits the query token with itself)
  (``ModelHandle.grad_weighted_attention``: one forward + backward per batch, memoized).

:func:`attention_rollout` and :func:`chefer_relevance` are the same definitions on full maps, in
numpy, for whoever holds maps already (and as the reference the tests check the requests against).
"""
from __future__ import annotations

import numpy as np


def attention_rollout(att: np.ndarray) -> np.ndarray:
    """``[layers, heads, T, T]`` attention maps -> ``[T, T]`` rollout matrix (rows sum to 1)."""
    att = np.asarray(att, dtype=np.float64)
    eye = np.eye(att.shape[-1])
    rollout = eye
    for layer in att:
        a = layer.mean(0) + eye
        a = a / a.sum(-1, keepdims=True)
        rollout = a @ rollout
    return rollout


def chefer_relevance(att: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """``[layers, heads, T, T]`` attention maps and their gradients -> ``[T, T]`` relevance ``R``."""
    att = np.asarray(att, dtype=np.float64)
    grad = np.asarray(grad, dtype=np.float64)
    rel = np.eye(att.shape[-1])
    for a, g in zip(att, grad):
        cam = np.clip(g * a, 0.0, None).mean(0)
        rel = rel + cam @ rel
    return rel


def rollout_scores(handle, examples, texts=None) -> list[np.ndarray]:
    """Attention rollout relevance per token of each example's query row. ``texts``: the list the
    check's shared attention pass was asked for (default: the examples' texts), to hit its cache."""
    texts = [e.text for e in examples] if texts is None else list(texts)
    ids = handle.token_ids(texts)
    from auditkit.passes.attention import default_query
    by_text = dict(zip(texts, handle.attention_rollout(texts, [default_query(handle, x) for x in ids])))
    out = []
    for e in examples:
        row = by_text[e.text]
        if e.query != default_query(handle, e.ids):  # another query row than the shared pass's
            row = handle.attention_rollout([e.ids], [e.query])[0]
        out.append(row)
    return out


def grad_rollout_scores(handle, examples) -> list[np.ndarray]:
    """Chefer et al. (2021) relevance per token of each example's query row, for its target."""
    return handle.grad_weighted_attention([e.ids for e in examples], [e.target for e in examples],
                                          [e.query for e in examples])
