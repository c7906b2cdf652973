"""Requests: gradients with respect to the embeddings.

- :meth:`GradientRequests.integrated_gradients`: Integrated Gradients (Sundararajan, Taly & Yan 2017,
  "Axiomatic Attribution for Deep Networks") of the target's log-probability
  (:func:`target_logprob`) on the input (word) embedding layer, through captum's
  ``LayerIntegratedGradients`` (Gauss-Legendre steps), with captum's convergence delta
  ``sum(attributions) - (F(x) - F(baseline))`` (the completeness axiom).

The baseline replaces the chosen positions (default: every non-special token) by one baseline token
(default :func:`default_baseline_token`: padding, else end-of-sequence, else unknown) and keeps the
others, as captum's BERT tutorial does. A token's attribution is its embedding attribution summed over
the hidden dimension. The examples of a batch of :meth:`~auditkit.models.ModelHandle.map_batches` and
their ``n_steps`` interpolation points run through the model in chunks of ``internal_batch_size``
rows (example x step), so memory is bounded by the batch and the chunk, never by the data.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def target_logprob(task: str, logits, lengths, targets):
    """log p(target) per row (torch, float64): classifier logits ``[B, C]``, or causal-LM logits at each
    row's last real token (``lengths - 1``, right padding) for a next-token target."""
    import torch
    # float64 from the logits on: a log-prob near -log|V| has a float32 spacing of ~5e-7, which alone
    # would move F(x) - F(baseline) by 1e-6 between batch compositions
    logits = logits.double()
    if task == "causal-lm":
        logits = logits[torch.arange(logits.shape[0], device=logits.device), lengths - 1]
    return torch.log_softmax(logits, -1).gather(1, targets.unsqueeze(1)).squeeze(1)


def _ig_rows(attr, delta, idx, ids) -> list[tuple]:
    """Per example of a batch: token attributions (summed over the hidden dimension, float64), the
    convergence delta, and F(x) - F(baseline) (= sum of attributions - delta)."""
    tok_attr = attr.double().sum(-1).detach().cpu().numpy()
    d = delta.double().detach().cpu().numpy()
    rows = []
    for row, i in enumerate(idx):
        a = tok_attr[row, :len(ids[i])].astype(np.float64)
        rows.append((a, float(d[row]), float(a.sum()) - float(d[row])))
    return rows


def _ig_result(rows) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    return ([r[0] for r in rows], np.array([r[1] for r in rows], dtype=np.float64),
            np.array([r[2] for r in rows], dtype=np.float64))


def _ig_examples_per_batch(internal_batch_size: int, n_steps: int) -> int:
    """As many examples as one chunk of ``internal_batch_size`` (example x step) rows holds: fixed by the
    chunk, not by the handle's batch size, so the padded widths (and the float rounding of the gradients)
    are the same whatever ``model.batch_size``."""
    return max(1, int(internal_batch_size) // max(1, int(n_steps)))


def default_baseline_token(tokenizer) -> int:
    """The token an IG baseline (or an ERASER fill) puts in place of a token: pad, else eos, else unk, else 0."""
    for t in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id):
        if t is not None:
            return int(t)
    return 0


def _ig_baseline(inp, idx, positions, ref_id: int):
    """The baseline ids of a batch: ``inp`` with each example's ``positions`` set to ``ref_id``."""
    import torch
    ref = inp.clone()
    for row, i in enumerate(idx):
        if positions[i]:
            ref[row, torch.as_tensor(positions[i], device=inp.device)] = ref_id
    return ref


class GradientRequests:
    """Mixin of ModelHandle: gradients with respect to the embeddings."""

    def _ig_inputs(self, items: Sequence, targets: Sequence, positions, baseline_token, what: str):
        """Token ids of ``items`` (checked one ``what`` per input), the positions each baseline replaces
        (default: the non-special tokens) and the baseline token (default :func:`default_baseline_token`)."""
        from auditkit.passes.attention import _as_ids
        ids, _ = _as_ids(self, items)
        if len(targets) != len(ids):
            raise ValueError(f"{len(targets)} {what} for {len(ids)} inputs")
        if positions is None:
            special = set(self.tokenizer.all_special_ids or [])
            positions = [[j for j, t in enumerate(x) if t not in special] for x in ids]
        positions = [[int(j) for j in p] for p in positions]
        ref_id = default_baseline_token(self.tokenizer) if baseline_token is None else int(baseline_token)
        return ids, positions, ref_id

    def integrated_gradients(self, items: Sequence, targets: Sequence[int], *,
                             positions: Sequence[Sequence[int]] | None = None, baseline_token: int | None = None,
                             n_steps: int = 32, internal_batch_size: int = 256
                             ) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
        """Integrated Gradients (Sundararajan et al. 2017; captum ``LayerIntegratedGradients`` on the input
        embeddings) of log p(target): per example the token attributions (float64, one per token), the
        signed convergence delta, and ``F(x) - F(baseline)`` (= sum of attributions - delta).

        ``items``: texts or token-id lists; ``targets``: class indices (classifiers), next tokens (causal
        LMs) or, for seq2seq LMs, token-id lists (the decoder's answer: :meth:`_integrated_gradients_seq2seq`);
        ``positions``: per example the positions the baseline replaces (default: non-special tokens).
        Memoized. ``internal_batch_size`` (rows of example x step per chunk) also fixes how many examples
        share a batch (``internal_batch_size // n_steps``), independent of the handle's batch size, so the
        convergence delta (float rounding of the gradients) does not move with ``model.batch_size``."""
        if self.task == "seq2seq-lm":
            return self._integrated_gradients_seq2seq(items, targets, positions=positions,
                                                      baseline_token=baseline_token, n_steps=n_steps,
                                                      internal_batch_size=internal_batch_size)
        targets = [int(t) for t in targets]
        ids, positions, ref_id = self._ig_inputs(items, targets, positions, baseline_token, "targets")
        key = [[x, t, p] for x, t, p in zip(ids, targets, positions)]

        def compute():
            import torch
            from captum.attr import LayerIntegratedGradients

            model, task = self.model, self.task
            self.stats["forward_passes"] += 1
            nokv = self._no_kv_cache()

            def forward(input_ids, attention_mask, tgt):
                logits = model(input_ids=input_ids, attention_mask=attention_mask, **nokv).logits
                return target_logprob(task, logits, attention_mask.sum(1), tgt)

            lig = LayerIntegratedGradients(forward, model.get_input_embeddings())

            def run(idx, inp, mask):
                ref = _ig_baseline(inp, idx, positions, ref_id)
                tgt = torch.tensor([targets[i] for i in idx], device=inp.device)
                with torch.enable_grad():
                    attr, d = lig.attribute(inp, baselines=ref, additional_forward_args=(mask, tgt),
                                            n_steps=n_steps, internal_batch_size=max(1, internal_batch_size),
                                            return_convergence_delta=True)
                return _ig_rows(attr, d, idx, ids)

            return _ig_result(self.map_batches(ids, run, batch_size=_ig_examples_per_batch(internal_batch_size,
                                                                                           n_steps)))

        return self.memo("integrated_gradients", key, compute, persist=True, n_steps=int(n_steps), baseline=ref_id)

    def _integrated_gradients_seq2seq(self, items: Sequence, answers: Sequence[Sequence[int]], *,
                                      positions: Sequence[Sequence[int]] | None = None,
                                      baseline_token: int | None = None, n_steps: int = 32,
                                      internal_batch_size: int = 256):
        """Integrated Gradients on an encoder-decoder's ENCODER embeddings (Sundararajan et al. 2017; captum
        ``IntegratedGradients`` on the encoder's ``inputs_embeds``, which is what ``LayerIntegratedGradients``
        on the encoder's embedding layer computes; T5 shares that layer with the decoder, so a layer hook
        would interpolate the decoder's embeddings too) of ``log p(answer | input)``: the summed float64
        log-probs of the answer's tokens, the decoder teacher-forced on the answer. ``items`` are the
        encoder inputs (texts or token ids), ``answers`` the decoder targets (e.g. the model's own greedy
        answer, EOS included). Returns what :meth:`integrated_gradients` returns; memoized."""
        answers = [[int(t) for t in a] for a in answers]
        ids, positions, ref_id = self._ig_inputs(items, answers, positions, baseline_token, "answers")
        if any(not a for a in answers):
            raise ValueError("every answer needs at least one token")
        key = [[x, a, p] for x, a, p in zip(ids, answers, positions)]

        def compute():
            import torch
            from captum.attr import IntegratedGradients

            model = self.model
            embed = model.get_encoder().get_input_embeddings()
            self.stats["forward_passes"] += 1

            def forward(embeds, attention_mask, dec_in, labels):
                logits = model(inputs_embeds=embeds, attention_mask=attention_mask, decoder_input_ids=dec_in,
                               use_cache=False).logits.double()
                lp = torch.log_softmax(logits, -1)
                keep = labels >= 0
                tok = lp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
                return (tok * keep).sum(-1)

            ig = IntegratedGradients(forward)

            def run(idx, inp, mask):
                ref = _ig_baseline(inp, idx, positions, ref_id)
                width = max(len(answers[i]) for i in idx)
                labels = torch.full((len(idx), width), -100, dtype=torch.long)
                for row, i in enumerate(idx):
                    labels[row, :len(answers[i])] = torch.tensor(answers[i], dtype=torch.long)
                labels = labels.to(inp.device)
                dec_in = model.prepare_decoder_input_ids_from_labels(labels=labels)
                with torch.no_grad():
                    x, b = embed(inp).detach(), embed(ref).detach()
                with torch.enable_grad():
                    attr, d = ig.attribute(x, baselines=b, additional_forward_args=(mask, dec_in, labels),
                                           n_steps=n_steps, internal_batch_size=max(1, internal_batch_size),
                                           return_convergence_delta=True)
                return _ig_rows(attr, d, idx, ids)

            return _ig_result(self.map_batches(ids, run, batch_size=_ig_examples_per_batch(internal_batch_size,
                                                                                           n_steps)))

        return self.memo("integrated_gradients_seq2seq", key, compute, persist=True, n_steps=int(n_steps),
                         baseline=ref_id)
