"""Requests: the next-token distribution after a prompt (causal LMs).

The distribution ``p(· | x)`` at each input's last token, reduced inside the batch to what is asked:

- :meth:`NextTokenRequests.next_token_topk`: the ``k`` most likely next tokens and their log-probs
  (``k = 1``: the greedy next token, as greedy decoding picks it);
- :meth:`NextTokenRequests.next_token_logprobs`: the log-probs of given candidate tokens.

Vocabulary-sized rows exist only inside the batch, and the LM head runs only at each input's last
position (the handle's ``_lm_logits``, as every scoring pass).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np


class NextTokenRequests:
    """Mixin of ModelHandle: the next-token distribution after a prompt."""

    def next_token_topk(self, items: Sequence, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most likely next tokens after each input (texts or token-id lists) and their
        log-probs (log-softmax over the vocabulary at the last token): ``tokens [N, k]`` int64 and
        ``logprobs [N, k]`` float64, most likely first (ties: lower token id first). Memoized."""
        self._require("causal-lm", "next_token_topk")
        from auditkit.passes.attention import _as_ids
        ids, texts = _as_ids(self, items)
        key = texts if texts is not None else ids
        k = int(k)
        if k < 1:
            raise ValueError("k must be at least 1")

        def reduce(logp, i):
            # a stable sort on (-log p, token id): the order cannot depend on the kernel's tie-breaking
            top = np.lexsort((np.arange(logp.shape[-1]), -logp))[:k]
            return top.astype(np.int64), logp[top].astype(np.float64)

        def compute():
            rows = self._last_position(ids, reduce)
            if not rows:
                return np.zeros((0, k), dtype=np.int64), np.zeros((0, k))
            return np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])

        return self.memo("next_token_topk", key, compute, persist=True, k=k)

    def next_token_logprobs(self, items: Sequence, candidates: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """log p(c | x) at each input's last token for each candidate token ``c`` of that input: per
        example a float64 array in the order of its candidates. Memoized."""
        self._require("causal-lm", "next_token_logprobs")
        from auditkit.passes.attention import _as_ids
        ids, _ = _as_ids(self, items)
        cands = [[int(c) for c in cs] for cs in candidates]
        if len(cands) != len(ids):
            raise ValueError(f"{len(cands)} candidate lists for {len(ids)} inputs")
        return self.memo("next_token_logprobs", [[x, c] for x, c in zip(ids, cands)],
                         lambda: self._last_position(ids, lambda logp, i: logp[cands[i]].astype(np.float64)),
                         persist=True)

    def _last_position(self, ids: list[list[int]], reduce: Callable) -> list:
        """``reduce(log p(· | ids[i]) as a float32 numpy row, i)`` per input, one batched pass; the LM head
        runs at each row's last position only (:meth:`ModelHandle._lm_logits`)."""
        import torch
        self.stats["forward_passes"] += 1

        def run(idx, inp, mask):
            with torch.inference_mode():
                keep = torch.arange(inp.shape[1], device=inp.device)[None, :] == (mask.sum(1) - 1)[:, None]
                logits, _ = self._lm_logits(inp, mask, keep)  # [B, V], one row per input in order
                logp = torch.log_softmax(logits.float(), -1).cpu().numpy()
            return [reduce(logp[row], i) for row, i in enumerate(idx)]

        return self.map_batches(ids, run)
