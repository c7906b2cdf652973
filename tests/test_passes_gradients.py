"""The Integrated Gradients request against captum called directly, its completeness, its batch-size
invariance (1, 7, 32 within 1e-6) and its memory shape (one attribution per token per example)."""
from __future__ import annotations

import numpy as np
import pytest

from tests.test_passes_attention import TEXTS, fresh


@pytest.fixture(autouse=True)
def no_disk_cache(monkeypatch):
    monkeypatch.setenv("AUDITKIT_DISK_CACHE", "0")


def targets_for(handle, n):
    return [i % 2 for i in range(n)] if handle.task != "causal-lm" else [(17 * i + 3) % 500 for i in range(n)]


def captum_ig(handle, ids, target, n_steps):
    """captum's LayerIntegratedGradients on one unpadded example: non-special tokens -> the pad token."""
    import torch
    from captum.attr import LayerIntegratedGradients
    model, tok = handle.model, handle.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def forward(inp):
        logits = model(input_ids=inp, attention_mask=torch.ones_like(inp)).logits
        logits = logits[:, -1] if handle.task == "causal-lm" else logits
        return torch.log_softmax(logits.float(), -1)[:, target]

    inp = torch.tensor([ids])
    special = set(tok.all_special_ids)
    ref = torch.tensor([[pad if t not in special else t for t in ids]])
    lig = LayerIntegratedGradients(forward, model.get_input_embeddings())
    attr, delta = lig.attribute(inp, baselines=ref, n_steps=n_steps, return_convergence_delta=True)
    with torch.no_grad():
        gap = float(forward(inp)[0] - forward(ref)[0])
    return attr[0].sum(-1).double().detach().numpy(), float(delta[0]), gap


@pytest.mark.parametrize("name", ["tiny_bert", "tiny_gpt2"])
def test_ig_matches_captum_called_directly(name, request):
    h = fresh(request.getfixturevalue(name), 4)
    texts = TEXTS[:5]
    ids = h.token_ids(texts)
    targets = targets_for(h, len(ids))
    attr, delta, gap = h.integrated_gradients(texts, targets, n_steps=8, internal_batch_size=16)
    assert len(attr) == len(ids) and delta.shape == gap.shape == (len(ids),)
    for i, x in enumerate(ids):
        a, d, g = captum_ig(h, x, targets[i], 8)
        assert attr[i].shape == (len(x),) and attr[i].dtype == np.float64
        np.testing.assert_allclose(attr[i], a, atol=1e-6)
        assert abs(delta[i] - d) < 1e-6
        np.testing.assert_allclose(gap[i], g, atol=1e-5)  # F(x) - F(baseline), from a plain forward
        np.testing.assert_allclose(attr[i].sum() - delta[i], gap[i], atol=1e-9)  # completeness as captum has it


def test_ig_baseline_positions_and_token(tiny_bert):
    """Only the named positions are replaced: the others (here [CLS] and [SEP]) get exactly 0."""
    h = fresh(tiny_bert)
    ids = h.token_ids(TEXTS[:3])
    attr, _, _ = h.integrated_gradients(ids, [0, 1, 0], positions=[[1], [2, 3], []], n_steps=4)
    assert np.count_nonzero(attr[0]) <= 1 and attr[0][1] != 0
    assert set(np.flatnonzero(attr[1])) <= {2, 3}
    assert not attr[2].any()  # baseline = input: nothing to attribute
    other, _, _ = h.integrated_gradients(ids, [0, 1, 0], positions=[[1], [2, 3], []], n_steps=4,
                                         baseline_token=h.tokenizer.mask_token_id)
    assert not np.allclose(other[0], attr[0])


@pytest.mark.parametrize("name", ["tiny_bert", "tiny_gpt2"])
def test_ig_is_batch_size_invariant(name, request):
    base = request.getfixturevalue(name)
    out = []
    for bs in (1, 7, 32):
        h = fresh(base, bs)
        out.append(h.integrated_gradients(TEXTS, targets_for(h, len(TEXTS)), n_steps=6, internal_batch_size=24))
    a0, d0, g0 = out[0]
    for a, d, g in out[1:]:
        for x, y in zip(a0, a):
            np.testing.assert_allclose(x, y, atol=1e-6, rtol=0)
        np.testing.assert_allclose(d, d0, atol=1e-6, rtol=0)
        np.testing.assert_allclose(g, g0, atol=1e-6, rtol=0)


def test_ig_is_memoized_and_counted(tiny_gpt2):
    h = fresh(tiny_gpt2)
    targets = targets_for(h, 3)
    first = h.integrated_gradients(TEXTS[:3], targets, n_steps=4)
    passes = h.stats["forward_passes"]
    again = h.integrated_gradients(h.token_ids(TEXTS[:3]), targets, n_steps=4, internal_batch_size=7)
    assert h.stats["forward_passes"] == passes and again is first
    h.integrated_gradients(TEXTS[:3], targets, n_steps=5)
    assert h.stats["forward_passes"] == passes + 1
    with pytest.raises(ValueError, match="targets"):
        h.integrated_gradients(TEXTS[:3], [1], n_steps=4)
