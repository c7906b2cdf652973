"""The attention pass and the next-token moments apply a causal LM's head through ``ModelHandle._lm_logits``.

``_lm_logits`` is the one place that applies the LM head (at the kept positions only, with the model's logit
post-processing): a pass that called ``model(...).logits`` itself would score differently from
``token_logprobs`` wherever ``_lm_logits`` does something the plain forward does not. Here ``_lm_logits`` is
wrapped to count its calls and the kept positions, and to rescale the logits (a stand-in for a head whose
post-processing only ``_lm_logits`` knows): the token log-probs both passes store must equal what
``token_logprobs`` computes alone on a fresh handle with the same head, for batch sizes 1, 3 and 7.
"""
from __future__ import annotations

import types

import numpy as np
import pytest

TEXTS = ["the lighthouse keeper", "my PIN is 1-2-3", "a", "once upon a time there was a little fox",
         "x y z", "to be or not to be", "winter", "a much longer sentence about a zebra and the river in winter",
         "she opened the door"]
SCALE = 1.7


@pytest.fixture(autouse=True)
def no_disk_cache(monkeypatch):
    monkeypatch.setenv("AUDITKIT_DISK_CACHE", "0")


@pytest.fixture(scope="module")
def tiny_llama(registry):
    from auditkit.models import load_model
    return load_model("builtin:tiny-llama", "causal-lm", registry, device="cpu")


def fresh(handle, batch_size=32, scaled=False):
    """The same model behind a new handle; with ``scaled``, its ``_lm_logits`` rescales the logits and
    records each call's kept positions (``handle.calls``)."""
    from auditkit.models import ModelHandle
    h = ModelHandle(model=handle.model, tokenizer=handle.tokenizer, task=handle.task, source=handle.source,
                    device=handle.device, batch_size=batch_size, max_length=handle.max_length)
    h.calls = []
    if scaled:
        plain = h._lm_logits

        def head(inp, mask, keep, **extra):
            h.calls.append((keep.clone(), mask.clone(), extra))
            logits, out = plain(inp, mask, keep, **extra)
            return logits * SCALE, out

        h._lm_logits = head
    return h


def _close(got, want, atol=1e-6):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=atol, rtol=0)


def _check_calls(h):
    """Every call kept exactly the positions that predict a real token, no padding."""
    assert h.calls
    for keep, mask, _ in h.calls:
        lengths = mask.sum(1)
        assert (keep.sum(1) == (lengths - 1).clamp(min=0)).all()
        assert not (keep & (mask == 0)).any()


@pytest.mark.parametrize("name", ["tiny_gpt2", "tiny_llama"])
def test_attention_pass_applies_the_head_through_lm_logits(name, request):
    base = request.getfixturevalue(name)
    want = fresh(base, scaled=True).token_logprobs(TEXTS)
    plain = fresh(base).token_logprobs(TEXTS)
    assert max(float(np.abs(a - b).max()) for a, b in zip(want, plain) if a.size) > 1e-3  # the rescaling shows
    for bs in (1, 3, 7):
        h = fresh(base, bs, scaled=True)
        h.attention_head_stats(TEXTS)
        assert all(extra.get("output_attentions") for _, _, extra in h.calls)
        _check_calls(h)
        passes = h.stats["forward_passes"]
        _close(h.token_logprobs(TEXTS), want)  # stored by the attention pass
        assert h.stats["forward_passes"] == passes


@pytest.mark.parametrize("name", ["tiny_gpt2", "tiny_llama"])
def test_next_token_moments_apply_the_head_through_lm_logits(name, request):
    import torch
    base = request.getfixturevalue(name)
    want = fresh(base, scaled=True).token_logprobs(TEXTS)
    runs = []
    for bs in (1, 3, 7):
        h = fresh(base, bs, scaled=True)
        runs.append(h.next_token_moments(TEXTS))
        _check_calls(h)
        passes = h.stats["forward_passes"]
        _close(h.token_logprobs(TEXTS), want)
        assert h.stats["forward_passes"] == passes
    for r in runs[1:]:
        for key in ("token_logprobs", "mu", "sigma"):
            _close(r[key], runs[0][key])
    # the moments are those of the rescaled head's distribution
    with torch.no_grad():
        for k, ids in enumerate(fresh(base).token_ids(TEXTS)):
            lp = torch.log_softmax(base.model(input_ids=torch.tensor([ids])).logits[0, :-1].double() * SCALE, -1)
            p = lp.exp()
            mu = (p * lp).sum(-1)
            np.testing.assert_allclose(runs[0]["mu"][k], mu.numpy(), atol=1e-4)
            np.testing.assert_allclose(runs[0]["sigma"][k], ((p * (lp - mu[:, None]) ** 2).sum(-1)).sqrt().numpy(),
                                       atol=1e-4)


def test_moment_slices_hold_at_most_moment_logits(tiny_gpt2, monkeypatch):
    """Slices count kept positions: at most MOMENT_LOGITS logits each (one row at least); same numbers."""
    from auditkit.passes import prefix_tree
    whole = fresh(tiny_gpt2, 7).next_token_moments(TEXTS)
    vocab = tiny_gpt2.model.config.vocab_size
    monkeypatch.setattr(prefix_tree, "MOMENT_LOGITS", 6 * vocab)
    h = fresh(tiny_gpt2, 7)
    calls = []
    plain = h._lm_logits

    def counting(inp, mask, keep, **extra):
        calls.append((keep.shape[0], int(keep.sum())))
        return plain(inp, mask, keep, **extra)

    h._lm_logits = counting
    got = h.next_token_moments(TEXTS)
    assert len(calls) > 3 and all(kept <= 6 or rows == 1 for rows, kept in calls)
    assert any(rows > 1 for rows, _ in calls)
    for key in ("token_logprobs", "mu", "sigma"):
        _close(got[key], whole[key])


@pytest.mark.parametrize("mode", ["keep", "hidden", "full"])
def test_attention_pass_in_every_head_mode(tiny_gpt2, mode):
    """Whichever way _lm_logits applies the head, the pass gets its maps (the backbone's in "hidden" mode)
    and the same numbers."""
    from auditkit.models import ModelHandle
    want_lp = fresh(tiny_gpt2).token_logprobs(TEXTS)
    want = fresh(tiny_gpt2, 3).attention_rollout(TEXTS)
    key = fresh(tiny_gpt2)._head_key()
    saved = ModelHandle._head_modes.get(key)
    ModelHandle._head_modes[key] = mode
    try:
        h = fresh(tiny_gpt2, 3)
        got = h.attention_rollout(TEXTS)
        assert ModelHandle._head_modes[key] == mode  # no fallback was needed
        got_lp = h.token_logprobs(TEXTS)
        moments = fresh(tiny_gpt2, 3).next_token_moments(TEXTS)
    finally:
        ModelHandle._head_modes[key] = saved
    _close(got, want)
    _close(got_lp, want_lp)
    _close(moments["token_logprobs"], want_lp)


def test_an_output_without_maps_is_a_clear_error(tiny_gpt2):
    """Both head roads return the maps when asked; a model that gives none is an error the check reports."""
    h = fresh(tiny_gpt2, 3)
    plain = h._lm_logits
    h._lm_logits = lambda inp, mask, keep, **extra: (plain(inp, mask, keep, **extra)[0], types.SimpleNamespace())
    with pytest.raises(RuntimeError, match="no attention maps"):
        h.attention_head_stats(TEXTS)
