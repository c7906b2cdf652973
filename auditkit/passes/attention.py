"""Requests: attention reductions computed inside the pass.

No ``[layers, heads, T, T]`` map outlives its batch: each batch's maps (and, for gradient-weighted
attention, their gradients) are reduced row by row inside :meth:`~auditkit.models.ModelHandle.map_batches`
to what an explanation needs, one length-``T`` vector per example (or per requested query row) and
``[layers, heads]`` statistics, so memory is bounded by the batch, not by the data.

- :meth:`AttentionRequests.attention_rollout`: attention rollout (Abnar & Zuidema 2020, "Quantifying
  Attention Flow in Transformers"): ``R = Â_L · … · Â_1`` with ``Â_l = rownorm(mean_h A_l + I)``; the
  request returns the query rows ``R[q]`` (every row of ``R`` sums to 1).
- :meth:`AttentionRequests.grad_weighted_attention`: gradient-weighted attention (Chefer, Gur & Wolf
  2021, "Generic Attention-model Explainability for Interpreting Bi-Modal and Encoder-Decoder
  Transformers", self-attention rule): ``Ā_l = E_h[(∇A_l ⊙ A_l)^+]``, ``R ← R + Ā_l · R`` from
  ``R = I``, first layer to last; the request returns ``(R - I)[q]``. ``∇A_l`` is the gradient of the
  target's log-probability (:func:`auditkit.passes.gradients.target_logprob`) w.r.t. the attention
  probabilities.
- :meth:`AttentionRequests.attention_head_stats`: per layer and head, the entropy of each query row's
  attention, raw (nats) and normalised by the log of the number of positions the row may attend to
  (all ``T``, or ``i + 1`` under a causal mask; single-position rows skipped), and the attention mass
  on special tokens (Clark et al. 2019, "What Does BERT Look At?", section 3).

Rollout and head statistics come from one eager pass: asking for one stores the other (for the
default query rows), and the pass also leaves the classifier logits / token log-probs of text inputs
in the handle's cache, so a check that needs all three runs the model once. A causal LM's head runs
through :meth:`~auditkit.models.ModelHandle._lm_logits`, at the positions that predict a real token only,
so the token log-probs are those :meth:`~auditkit.models.ModelHandle.token_logprobs` computes.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def _as_ids(handle, items: Sequence) -> tuple[list[list[int]], list[str] | None]:
    """Token ids of ``items`` (texts, encoded as the handle scores them, or token-id lists), and the texts."""
    items = list(items)
    if all(isinstance(x, str) for x in items):
        return handle.token_ids(items), items
    return [[int(t) for t in x] for x in items], None


def default_query(handle, ids: list[int]) -> int:
    """The position whose prediction is explained: ``[CLS]`` for classifiers whose tokenizer puts one
    first, the last token otherwise (causal LMs predict from it, decoder classifiers pool it)."""
    tok = handle.tokenizer
    if handle.task != "causal-lm" and tok.cls_token_id is not None and ids and ids[0] == tok.cls_token_id:
        return 0
    return len(ids) - 1


def _queries(handle, ids: list[list[int]], queries) -> list:
    if queries is None:
        return [default_query(handle, x) for x in ids]
    queries = list(queries)
    if len(queries) != len(ids):
        raise ValueError(f"{len(queries)} queries for {len(ids)} inputs")
    out = []
    for q, x in zip(queries, ids):
        qs = [int(v) for v in q] if isinstance(q, (list, tuple, np.ndarray)) else [int(q)]
        for v in qs:
            if not -len(x) <= v < len(x):
                raise ValueError(f"query position {v} outside an input of {len(x)} tokens")
        qs = [v % len(x) for v in qs]
        out.append(qs if isinstance(q, (list, tuple, np.ndarray)) else qs[0])
    return out


def _pick(rows, q):
    """``rows`` ``[k, T]`` for the query list ``q``, or its one row for an int query."""
    return rows if isinstance(q, list) else rows[0]


def rollout_rows(att, queries: list[int]):
    """Rows ``queries`` of the rollout of one example's maps ``att`` ``[L, H, T, T]`` (torch, float64).

    ``e_q · Â_L · … · Â_1`` as vector-matrix products: O(L T^2), not the O(L T^3) of the full matrix.
    """
    import torch
    n = att.shape[-1]
    eye = torch.eye(n, dtype=att.dtype, device=att.device)
    a = att.mean(1) + eye                                   # [L, T, T]
    a = a / a.sum(-1, keepdim=True)
    v = eye[queries]                                        # [k, T]
    for layer in reversed(range(a.shape[0])):
        v = v @ a[layer]
    return v


def chefer_rows(att, grad, queries: list[int]):
    """Rows ``queries`` of ``R - I`` with ``R = (I + Ā_L) · … · (I + Ā_1)``, ``Ā_l = mean_h (∇A ⊙ A)^+``."""
    import torch
    n = att.shape[-1]
    eye = torch.eye(n, dtype=att.dtype, device=att.device)
    cam = (grad * att).clamp(min=0).mean(1)                 # [L, T, T]
    v = eye[queries]
    for layer in reversed(range(cam.shape[0])):
        v = v + v @ cam[layer]
    return v - eye[queries]


def head_sums(att, special, causal: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """One example's ``[L, H]`` sums over its query rows of entropy, normalised entropy and mass on
    special tokens, and the number of rows summed (rows that may attend to one position only are skipped)."""
    import torch
    L, H, n = att.shape[0], att.shape[1], att.shape[-1]
    allowed = torch.arange(1, n + 1, dtype=att.dtype, device=att.device) if causal \
        else torch.full((n,), float(n), dtype=att.dtype, device=att.device)
    keep = allowed > 1
    rows = int(keep.sum())
    if not rows:
        z = np.zeros((L, H))
        return z, z.copy(), z.copy(), 0
    pos = att > 0
    plogp = torch.where(pos, att * torch.log(torch.where(pos, att, torch.ones_like(att))), torch.zeros_like(att))
    ent = -plogp.sum(-1)                                    # [L, H, T]
    norm = ent[..., keep] / torch.log(allowed[keep])
    spec = att[..., special].sum(-1)                        # [L, H, T]
    return (ent[..., keep].sum(-1).cpu().numpy(), norm.sum(-1).cpu().numpy(),
            spec[..., keep].sum(-1).cpu().numpy(), rows)


class AttentionRequests:
    """Mixin of ModelHandle: attention reductions computed inside the pass (eager attention)."""

    def attention_rollout(self, items: Sequence, queries: Sequence | None = None) -> list[np.ndarray]:
        """Attention rollout (Abnar & Zuidema 2020) rows: per example ``R[q]``, a float64 vector over its
        ``T`` tokens (``[k, T]`` where its query is a list of ``k`` positions).

        ``items``: texts (encoded as :meth:`token_ids` does) or token-id lists. ``queries``: per example a
        position or a list of positions (default :func:`default_query`). Memoized; the same pass stores
        :meth:`attention_head_stats` (and, for texts, the logits / token log-probs)."""
        ids, texts = _as_ids(self, items)
        key = texts if texts is not None else ids
        qs = _queries(self, ids, queries)
        return self.memo("attention_rollout", key, lambda: self._attention_pass(key, qs)[0], persist=True,
                         queries=qs)

    def attention_head_stats(self, items: Sequence) -> dict:
        """Attention-head statistics (Clark et al. 2019), each ``[layers, heads]``: ``entropy`` (nats),
        ``normalised_entropy`` (1 = uniform) and ``special_mass`` (mass on special tokens), each the mean
        over every query row of every example; ``rows``: how many rows; ``per_example``: the per-example
        sums ``(entropy, normalised_entropy, special_mass)`` ``[N, L, H]`` and row counts ``[N]``.
        An empty dict when no row may attend to more than one position."""
        ids, texts = _as_ids(self, items)
        key = texts if texts is not None else ids
        sums = self.memo("attention_head_stats", key, lambda: self._attention_pass(key, _queries(self, ids, None))[1],
                         persist=True)
        ent, norm, spec, rows = sums
        total = int(np.sum(rows))
        if not total:
            return {}
        # summed in input order: the same numbers whatever the batch size or process count
        return {"entropy": ent.sum(0) / total, "normalised_entropy": norm.sum(0) / total,
                "special_mass": spec.sum(0) / total, "rows": total, "per_example": sums}

    def _attention_pass(self, items: Sequence, qs: list) -> tuple[list, tuple]:
        """One eager forward: rollout rows, head-statistic sums, and the plain scores of text inputs (causal
        LMs: the LM head and log-softmax through :meth:`_lm_logits`, at the non-padding positions that predict
        a next token, as :meth:`token_logprobs`; classifiers: the logits of the same forward)."""
        import torch
        ids, texts = _as_ids(self, items)
        self.ensure_eager()
        self.stats["forward_passes"] += 1
        lm = self.task == "causal-lm"
        special_ids = set(self.tokenizer.all_special_ids or [])

        def run(idx, inp, mask):
            with torch.inference_mode():
                if lm:  # the LM head only where a real next token is predicted, as token_logprobs applies it
                    per_row, out = self._token_logprob_rows(inp, mask, output_attentions=True)
                else:
                    out = self.model(input_ids=inp, attention_mask=mask, output_attentions=True,
                                     **self._no_kv_cache())
                    logits = out.logits.float()
                atts = getattr(out, "attentions", None)
                if not atts:
                    raise RuntimeError("the model returned no attention maps (eager attention unsupported?)")
                rows = []
                for row, i in enumerate(idx):
                    n = len(ids[i])
                    # this row's maps only, in float64: [L, H, n, n], freed with the batch
                    att = torch.stack([a[row, :, :n, :n] for a in atts]).float().double()
                    q = qs[i] if isinstance(qs[i], list) else [qs[i]]
                    roll = rollout_rows(att, q).cpu().numpy()
                    special = torch.tensor([t in special_ids for t in ids[i]], device=att.device)
                    sums = head_sums(att, special, lm)
                    first = per_row[row].cpu().numpy() if lm else logits[row].cpu().numpy()
                    rows.append((_pick(roll, qs[i]), sums, first))
                return rows

        rows = self.map_batches(ids, run)
        rollout = [r[0] for r in rows]
        if rows:
            sums = (np.stack([r[1][0] for r in rows]), np.stack([r[1][1] for r in rows]),
                    np.stack([r[1][2] for r in rows]), np.array([r[1][3] for r in rows], dtype=np.int64))
        else:
            sums = (np.zeros((0, 0, 0)), np.zeros((0, 0, 0)), np.zeros((0, 0, 0)), np.zeros(0, dtype=np.int64))
        # what the same pass also answers, so a later request for it is a cache hit
        self._put("attention_head_stats", items, sums)
        default = _queries(self, ids, None)
        if qs == default:
            self._put("attention_rollout", items, rollout, queries=qs)
        if texts is not None and rows:
            if lm:
                self._put("token_logprobs", texts, [r[2] for r in rows])
            else:
                self._put("class_logits", texts, np.stack([r[2] for r in rows]))
        return rollout, sums

    def grad_weighted_attention(self, items: Sequence, targets: Sequence[int],
                                queries: Sequence | None = None) -> list[np.ndarray]:
        """Gradient-weighted attention (Chefer et al. 2021) rows: per example ``(R - I)[q]``, a float64
        vector over its ``T`` tokens (``[k, T]`` for a list of query positions), for the target's
        log-probability (a class index for classifiers, the next token after the input for causal LMs).

        One forward + backward per batch (gradients flow from the input embeddings only; the weights'
        gradients are never computed), reduced inside the batch. Memoized."""
        ids, _ = _as_ids(self, items)
        qs = _queries(self, ids, queries)
        targets = [int(t) for t in targets]
        if len(targets) != len(ids):
            raise ValueError(f"{len(targets)} targets for {len(ids)} inputs")
        key = [[x, t, q] for x, t, q in zip(ids, targets, qs)]

        def compute():
            import torch

            from auditkit.passes.gradients import target_logprob
            self.ensure_eager()
            self.stats["forward_passes"] += 1
            embed = self.model.get_input_embeddings()

            def run(idx, inp, mask):
                tgt = torch.tensor([targets[i] for i in idx], device=inp.device)
                with torch.enable_grad():
                    emb = embed(inp).detach().requires_grad_(True)
                    out = self.model(inputs_embeds=emb, attention_mask=mask, output_attentions=True,
                                     **self._no_kv_cache())
                    atts = list(out.attentions)
                    if not atts:
                        raise RuntimeError("the model returned no attention maps (eager attention unsupported?)")
                    score = target_logprob(self.task, out.logits, mask.sum(1), tgt)
                    # rows are independent, so the gradient of the sum is each row's own gradient
                    grads = torch.autograd.grad(score.sum(), atts)
                rows = []
                with torch.no_grad():
                    for row, i in enumerate(idx):
                        n = len(ids[i])
                        a = torch.stack([x[row, :, :n, :n] for x in atts]).detach().float().double()
                        g = torch.stack([x[row, :, :n, :n] for x in grads]).float().double()
                        q = qs[i] if isinstance(qs[i], list) else [qs[i]]
                        rows.append(_pick(chefer_rows(a, g, q).cpu().numpy(), qs[i]))
                return rows

            return self.map_batches(ids, run)

        return self.memo("grad_weighted_attention", key, compute, persist=True)
