"""Requests: masked-LM pseudo-log-likelihood."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np

from auditkit.errors import AuditInputError


class MaskedLMRequests:
    """Mixin of ModelHandle: masked-LM pseudo-log-likelihood."""

    def masked_lm_head(self):
        """``(model, how)``: the masked LM that scores this handle's encoder, or ``(None, why not)``.

        The model itself when it is a ``*ForMaskedLM``; else the masked-LM head of the checkpoint the
        model was loaded from (``config._name_or_path``), with the audited encoder's weights put under it
        (a classifier fine-tuned from a BERT checkpoint keeps that checkpoint's MLM head). Loaded once per
        handle; no pass runs here.
        """
        model = self.model
        if type(model).__name__.endswith("ForMaskedLM"):
            return model, "own head"
        if self.task == "causal-lm":
            return None, "it is a causal LM: score it with its log-likelihood"
        location = getattr(model.config, "_name_or_path", "") or ""
        if not location or not Path(location).is_dir():
            return None, "its checkpoint folder is not known"

        def load():
            from transformers import AutoModelForMaskedLM
            try:
                mlm, info = AutoModelForMaskedLM.from_pretrained(location, output_loading_info=True)
            except (OSError, ValueError) as exc:
                return None, f"cannot load a masked LM from {location}: {str(exc).splitlines()[0]}"
            prefix = mlm.base_model_prefix
            if any(not k.startswith(prefix) for k in info["missing_keys"]):
                return None, "the checkpoint has no trained masked-LM head"
            encoder = getattr(model, prefix, None)
            if encoder is None:
                return None, f"the audited model has no {prefix!r} encoder to put under the head"
            missing, _ = mlm.base_model.load_state_dict(encoder.state_dict(), strict=False)
            if missing:
                return None, "the audited encoder does not match the checkpoint's masked-LM architecture"
            mlm.to(self.device).eval()
            return mlm, "checkpoint head over the audited encoder"

        return self.memo("masked_lm.head", [location], load)

    def pseudo_log_likelihood(self, texts: Sequence[str], positions: Sequence[Sequence[int]] | None = None, *,
                              batch_size: int | None = None) -> list[np.ndarray]:
        """Per text, ``log P(token_t | the text with token t masked)`` at each scored position t.

        Salazar et al. 2020 ("Masked Language Model Scoring"): one masked copy of the text per scored
        position, the log-softmax of the masked LM at that position read at the true token; the PLL of a
        text is the sum of its array (CrowS-Pairs, Nangia et al. 2020, sums over the tokens two sentences
        share). Texts are tokenized as :meth:`token_ids` does (special tokens added, truncated to
        ``max_length``); ``positions[i]`` lists the indices into ``token_ids(texts)[i]`` to score (default:
        every token that is not a special token), and the result keeps that order. The masked copies are
        the rows of :meth:`map_batches` (``batch_size`` of them per pass, default the handle's), so the
        values do not depend on the batch size or the number of processes. The scoring model is
        :meth:`masked_lm_head`; no head is an :class:`AuditInputError`.
        """
        texts = list(texts)
        ids = self.token_ids(texts)
        tok = self.tokenizer
        if positions is None:
            special = set(getattr(tok, "all_special_ids", None) or [])
            positions = [[t for t, x in enumerate(row) if x not in special] for row in ids]
        positions = [[int(p) for p in ps] for ps in positions]
        if len(positions) != len(texts):
            raise ValueError(f"pseudo_log_likelihood: {len(positions)} position lists for {len(texts)} texts")
        for i, ps in enumerate(positions):
            bad = [p for p in ps if not 0 <= p < len(ids[i])]
            if bad:
                raise ValueError(f"pseudo_log_likelihood: position {bad[0]} is outside text {i} "
                                 f"({len(ids[i])} tokens)")
        mlm, how = self.masked_lm_head()
        if mlm is None:
            raise AuditInputError(f"a pseudo-log-likelihood needs a masked LM head, and {self.source} has none "
                                  f"({how})", place="model.base",
                                  fix="use a checkpoint with a masked-LM head (or a causal LM and its log-likelihood)")
        mask_id = tok.mask_token_id
        if mask_id is None:
            raise AuditInputError(f"the tokenizer of {self.source} has no mask token, so no pseudo-log-likelihood",
                                  place="model.base", fix="use a masked LM's tokenizer, or a causal LM")
        head = "own" if mlm is self.model else _head_fingerprint(mlm)

        def compute() -> list[np.ndarray]:
            import torch
            self.stats["forward_passes"] += 1
            jobs, owner, where, target = [], [], [], []
            for i, ps in enumerate(positions):
                for p in ps:
                    masked = list(ids[i])
                    masked[p] = mask_id
                    jobs.append(masked)
                    owner.append(i)
                    where.append(p)
                    target.append(ids[i][p])

            def run(idx, inp, mask):
                with torch.inference_mode():
                    logits = mlm(input_ids=inp, attention_mask=mask).logits
                    rows = torch.arange(len(idx), device=logits.device)
                    pos = torch.tensor([where[j] for j in idx], device=logits.device)
                    tgt = torch.tensor([target[j] for j in idx], device=logits.device)
                    lp = torch.log_softmax(logits[rows, pos].float(), dim=-1).gather(-1, tgt[:, None]).squeeze(-1)
                    return lp.cpu().numpy().astype(np.float64).tolist()

            values = self.map_batches(jobs, run, batch_size=batch_size) if jobs else []
            out = [np.zeros(len(ps), dtype=np.float64) for ps in positions]
            fill = [0] * len(positions)
            for j, v in enumerate(values):
                i = owner[j]
                out[i][fill[i]] = v
                fill[i] += 1
            return out

        items = [[t, ps] for t, ps in zip(texts, positions)]
        return self.memo("pseudo_log_likelihood", items, compute, persist=True, head=head)


def _head_fingerprint(mlm) -> str:
    """blake2b over the masked LM's parameters outside its encoder (the head put over the audited encoder)."""
    h = hashlib.blake2b(digest_size=16)
    prefix = getattr(mlm, "base_model_prefix", "") + "."
    for name, t in sorted(mlm.state_dict().items()):
        if name.startswith(prefix):
            continue
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
