"""Integrated Gradients (Sundararajan, Taly & Yan 2017) on the input (word) embedding layer, with
captum's ``LayerIntegratedGradients``, asked of the model handle (``ModelHandle.integrated_gradients``,
:mod:`auditkit.passes.gradients`).

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

from auditkit.passes.gradients import default_baseline_token


def baseline_token(handle) -> int:
    """The padding token (else eos, else unk, else 0): IG's baseline and ERASER's fill."""
    return default_baseline_token(handle.tokenizer)


def integrated_gradients(handle, examples, n_steps: int = 32, internal_batch_size: int = 256):
    """Per example: token attributions (full length), |delta| and |F(x) - F(baseline)|; memoized."""
    scores, delta, gap = handle.integrated_gradients(
        [e.ids for e in examples], [e.target for e in examples],
        positions=[[int(j) for j in e.candidates] for e in examples], baseline_token=baseline_token(handle),
        n_steps=n_steps, internal_batch_size=internal_batch_size)
    return list(scores), np.abs(delta), np.abs(gap)
