"""Attention-based token relevance.

- Attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers"): per layer
  the head-mean attention plus the identity (the residual connection), each row re-normalised to
  sum to 1, multiplied through the layers: ``R = Â_L · … · Â_1``, ``Â_l = rownorm(mean_h A_l + I)``.
  Every row of ``R`` sums to 1. The relevance of token j is ``R[query, j]``. It reads the attention
  maps the model handle already caches (``ModelHandle.attentions``): no forward pass of its own.
- Gradient-weighted attention (Chefer, Gur & Wolf 2021, "Generic Attention-model Explainability for
  Interpreting Bi-Modal and Encoder-Decoder Transformers", rule for self-attention):
  ``Ā_l = E_h[(∇A_l ⊙ A_l)^+]`` with ∇A_l the gradient of the target score w.r.t. the attention
  probabilities, ``R ← R + Ā_l · R`` from ``R = I``, first layer to last; the relevance of token j is
  ``(R - I)[query, j]`` (the identity only credits the query token with itself). Gradients come from
  one batched forward/backward pass per batch (eager attention), memoized on the handle.
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
    """Attention rollout relevance per token, from the handle's cached attention maps of ``texts``
    (default: the examples' texts); pass the list the attentions were asked for to hit the cache."""
    texts = [e.text for e in examples] if texts is None else list(texts)
    by_text = dict(zip(texts, handle.attentions(texts)))
    return [attention_rollout(by_text[e.text])[e.query] for e in examples]


def _target_logprob(handle, logits, lengths, targets):
    """log p(target) per row: classifier logits ``[B, C]`` or LM logits at each row's last token."""
    import torch
    logits = logits.float()
    if handle.task == "causal-lm":
        logits = logits[torch.arange(logits.shape[0], device=logits.device), lengths - 1]
    return torch.log_softmax(logits, -1).gather(1, targets.unsqueeze(1)).squeeze(1)


def grad_rollout_scores(handle, examples) -> list[np.ndarray]:
    """Chefer et al. (2021) relevance per token: one forward + backward per batch, memoized."""
    items = [[e.ids, e.target, e.query] for e in examples]

    def compute():
        import torch
        handle.ensure_eager()
        model = handle.model
        embed = model.get_input_embeddings()
        out: list = [None] * len(examples)
        with torch.enable_grad():
            for idx, inp, mask in handle.batches([e.ids for e in examples]):
                # gradients flow from the embeddings only: the weights' gradients are never computed
                emb = embed(inp).detach().requires_grad_(True)
                res = model(inputs_embeds=emb, attention_mask=mask, output_attentions=True)
                atts = list(res.attentions)
                if not atts:
                    raise RuntimeError("the model returned no attention maps (eager attention unsupported?)")
                targets = torch.tensor([examples[i].target for i in idx], device=inp.device)
                score = _target_logprob(handle, res.logits, mask.sum(1), targets)
                # rows are independent, so the gradient of the sum is each row's own gradient
                grads = torch.autograd.grad(score.sum(), atts)
                for row, i in enumerate(idx):
                    n = len(examples[i].ids)
                    a = torch.stack([x[row, :, :n, :n] for x in atts]).float().detach().cpu().numpy()
                    g = torch.stack([x[row, :, :n, :n] for x in grads]).float().cpu().numpy()
                    rel = chefer_relevance(a, g) - np.eye(n)
                    out[i] = rel[examples[i].query]
        return out

    return handle.memo("explain.grad_rollout", items, compute, persist=True)
