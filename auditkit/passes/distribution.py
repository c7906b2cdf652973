"""Requests: reductions of the next-token distribution against a second model."""
from __future__ import annotations

import hashlib
import json
from typing import Sequence

import numpy as np

from auditkit.errors import AuditInputError


class DistributionRequests:
    """Mixin of ModelHandle: reductions of the next-token distribution against a second model."""

    def next_token_kl(self, other, texts: Sequence[str]) -> list[np.ndarray]:
        """Per text, ``KL(p_other || p_self)`` of the full next-token distributions at every position.

        Implements the forgetting KL of DESIGN.md (``KL(p_base || p_ft)`` per position on neutral
        prompts, with ``other`` the base and ``self`` the fine-tune; ``KL(m, m) = 0``):
        ``sum_v p_other(v) (log p_other(v) - log p_self(v))`` at each of the text's T positions (the
        distribution after token t, the last position included), in nats, clamped at 0 against rounding.
        Both models read the same token ids in the same batches of :meth:`map_batches` (``other`` on its
        own device), so only one batch of vocabulary-sized logits per model is alive at a time and the
        values do not depend on the batch size or the number of processes. Both must be causal LMs (or both
        seq2seq LMs) with one shared tokenization; cached on ``self`` under ``other``'s weights fingerprint.

        Seq2seq LMs: the decoder's next-token distributions over the text, as :meth:`token_logprobs` scores it
        (lm-eval's seq2seq rolling loglikelihood): the encoder reads the prefix token alone and the decoder is
        teacher-forced on the text's tokens; the T positions are the distributions that predict each token.
        """
        self._require_lm("next_token_kl")
        if getattr(other, "task", None) != self.task:
            kind = "causal LMs" if self.task == "causal-lm" else "seq2seq LMs"
            raise AuditInputError(f"next_token_kl compares two {kind}, but the second "
                                  f"model {getattr(other, 'source', other)} is loaded as "
                                  f"{getattr(other, 'task', '?')}", place="model.task",
                                  fix=f"compare the candidate with a {self.task} base model")
        texts = list(texts)
        ids = self.token_ids(texts)
        if other.token_ids(texts) != ids:
            raise AuditInputError(f"{other.source} and {self.source} tokenize the same texts differently: a "
                                  "per-position KL needs one shared tokenizer", place="model.base",
                                  fix="compare a fine-tune with the base model it was trained from (same tokenizer)")
        mine, theirs = _vocab_size(self.model), _vocab_size(other.model)
        if mine and theirs and mine != theirs:  # before the pass: every process refuses alike
            raise AuditInputError(f"{other.source} and {self.source} have different vocabularies ({theirs} vs "
                                  f"{mine} logits): a KL needs one", place="model.base",
                                  fix="compare a fine-tune with the base model it was trained from")
        other_config = hashlib.blake2b(json.dumps(other._pass_config(), sort_keys=True).encode(),
                                       digest_size=8).hexdigest()

        def compute() -> list[np.ndarray]:
            import torch
            import torch.nn.functional as F

            self.stats["forward_passes"] += 1
            other.stats["forward_passes"] += 1

            def run(idx, inp, mask):
                keep = mask.bool()  # every real position (right padding), none of the padding
                with torch.inference_mode():
                    lc = F.log_softmax(_lm_logits_at(self, inp, mask, keep).float(), -1)
                    lb = _lm_logits_at(other, inp.to(other.device), mask.to(other.device), keep.to(other.device))
                    lb = F.log_softmax(lb.float().to(lc.device), -1)
                    if lb.shape != lc.shape:
                        raise AuditInputError(f"{other.source} and {self.source} have different vocabularies "
                                              f"({lb.shape[-1]} vs {lc.shape[-1]} logits): a KL needs one",
                                              place="model.base",
                                              fix="compare a fine-tune with the base model it was trained from")
                    kl = F.kl_div(lc, lb, reduction="none", log_target=True).sum(-1).clamp_min(0.0)
                    kl = kl.cpu().numpy().astype(np.float64)
                    del lc, lb
                return np.split(kl, np.cumsum([len(ids[i]) for i in idx])[:-1])

            return self.map_batches(ids, run)

        return self.memo("next_token_kl", texts, compute, persist=True, other=other.fingerprint,
                         other_config=other_config)


def _lm_logits_at(handle, inp, mask, keep):
    """``[K, V]`` logits at the ``K`` True positions of ``keep`` (row-major) of right-padded ``inp``: a causal
    LM reading it (its head applied there only, :meth:`~auditkit.models.ModelHandle._lm_logits`), or a
    seq2seq LM's decoder teacher-forced on it (the encoder reading the prefix token alone); no KV cache."""
    import torch
    if handle.task != "seq2seq-lm":
        return handle._lm_logits(inp, mask, keep)[0]
    enc = torch.full((inp.shape[0], 1), int(handle._prefix_token_id()), dtype=torch.long, device=inp.device)
    labels = inp.masked_fill(mask == 0, -100)
    dec_in = handle.model.prepare_decoder_input_ids_from_labels(labels=labels)
    return handle.model(input_ids=enc, attention_mask=torch.ones_like(enc), decoder_input_ids=dec_in,
                        use_cache=False).logits[keep]


def _vocab_size(model) -> int | None:
    """The number of logits the model's LM head gives (None when it cannot be told without a pass)."""
    try:
        head = model.get_output_embeddings()
        if head is not None and getattr(head, "weight", None) is not None:
            return int(head.weight.shape[0])
    except (AttributeError, NotImplementedError):
        pass
    return None
