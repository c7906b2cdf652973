"""Integrated Gradients (Sundararajan, Taly & Yan 2017) on the input (word) embedding layer, with
captum's ``LayerIntegratedGradients``.

The baseline replaces every explained (non-special) token by the padding token and keeps the special
tokens, as captum's BERT tutorial does. A token's attribution is its embedding attribution summed
over the hidden dimension. The convergence delta is captum's
``sum(attributions) - (F(x) - F(baseline))`` (completeness axiom); its relative size is reported as
``mean |delta| / mean |F(x) - F(baseline)|`` over examples (a ratio of means: one example whose
input and baseline score alike must not blow it up). The ``n_steps`` interpolation points of a batch of examples run
through the model in chunks of ``internal_batch_size`` rows (example x step), not one by one.
"""
from __future__ import annotations

import numpy as np


def baseline_token(handle) -> int:
    tok = handle.tokenizer
    for t in (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id):
        if t is not None:
            return int(t)
    return 0


def integrated_gradients(handle, examples, n_steps: int = 32, internal_batch_size: int = 256):
    """Per example: token attributions (full length), |delta| and |F(x) - F(baseline)|; memoized."""
    items = [[e.ids, e.target, e.query] for e in examples]
    ref_id = baseline_token(handle)

    def compute():
        import torch
        from captum.attr import LayerIntegratedGradients

        from auditkit_plugins.explainability.rollout import _target_logprob

        model = handle.model

        def forward(input_ids, attention_mask, targets):
            logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
            return _target_logprob(handle, logits, attention_mask.sum(1), targets)

        lig = LayerIntegratedGradients(forward, model.get_input_embeddings())
        scores: list = [None] * len(examples)
        delta = np.zeros(len(examples))
        diff = np.zeros(len(examples))
        with torch.enable_grad():
            for idx, inp, mask in handle.batches([e.ids for e in examples]):
                ref = inp.clone()
                for row, i in enumerate(idx):
                    ref[row, torch.as_tensor(examples[i].candidates, device=inp.device)] = ref_id
                targets = torch.tensor([examples[i].target for i in idx], device=inp.device)
                attr, d = lig.attribute(inp, baselines=ref, additional_forward_args=(mask, targets),
                                        n_steps=n_steps, internal_batch_size=max(1, internal_batch_size),
                                        return_convergence_delta=True)
                tok_attr = attr.float().sum(-1).detach().cpu().numpy()
                d = d.float().detach().cpu().numpy()
                for row, i in enumerate(idx):
                    n = len(examples[i].ids)
                    scores[i] = tok_attr[row, :n].astype(np.float64)
                    delta[i] = abs(float(d[row]))
                    diff[i] = abs(float(scores[i].sum()) - float(d[row]))  # = |F(x) - F(baseline)|
        return scores, delta, diff

    return handle.memo("explain.ig", items, compute, persist=True, n_steps=n_steps, baseline=ref_id)
