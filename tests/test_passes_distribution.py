"""The engine's ``next_token_kl`` request (auditkit/passes/distribution.py, issue 10).

Shows: it equals KL(p_other || p_self) computed here by a plain loop over model(...) in float64; a model
against itself gives exactly 0; batch sizes 1, 7 and 32 agree within 1e-6; a second call is a cache hit
and runs no pass; causal LMs with one tokenization only (an input error otherwise).
"""
from __future__ import annotations

import copy

import numpy as np
import pytest

from auditkit.errors import AuditInputError

TEXTS = [
    "The weather in spring is usually",
    "A map",
    "The museum's newest exhibition is about the history of printing in small towns.",
    "Trains",
    "She opened the window and",
    "Water boils at a lower temperature on a mountain because the air pressure is lower.",
    "Bread, cheese and",
    "In the morning the market",
    "Libraries lend books.",
    "It",
    "Most rivers flow into a sea or a lake, and some end in a desert.",
]


def handle_of(model, like, batch_size: int = 32, max_length: int | None = None):
    """A new handle (empty cache, own pass counter) over ``model`` with ``like``'s tokenizer."""
    from auditkit.models import ModelHandle
    return ModelHandle(model=model, tokenizer=like.tokenizer, task=like.task, source=f"test:{id(model)}",
                       batch_size=batch_size, max_length=max_length or like.max_length)


def perturbed_model(handle, scale: float, seed: int = 0):
    import torch
    model = copy.deepcopy(handle.model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


@pytest.fixture(scope="module")
def cand_model(tiny_gpt2):
    return perturbed_model(tiny_gpt2, 0.05)


def direct_kl(base_model, cand_model, tokenizer, text: str) -> np.ndarray:
    """KL(p_base || p_cand) per position, one text at a time (no padding), in float64 with scipy."""
    import torch
    from scipy.special import rel_entr
    ids = torch.tensor([tokenizer(text, truncation=True, max_length=256)["input_ids"]])
    with torch.inference_mode():
        pb = torch.softmax(base_model(input_ids=ids).logits[0].double(), -1).numpy()
        pc = torch.softmax(cand_model(input_ids=ids).logits[0].double(), -1).numpy()
    return rel_entr(pb, pc).sum(-1)


def test_next_token_kl_matches_a_plain_loop(tiny_gpt2, cand_model):
    base = handle_of(tiny_gpt2.model, tiny_gpt2)
    cand = handle_of(cand_model, tiny_gpt2)
    kls = cand.next_token_kl(base, TEXTS)
    assert len(kls) == len(TEXTS)
    for text, kl in zip(TEXTS, kls):
        direct = direct_kl(tiny_gpt2.model, cand_model, tiny_gpt2.tokenizer, text)
        assert kl.shape == direct.shape == (len(tiny_gpt2.tokenizer(text)["input_ids"]),)
        assert kl.dtype == np.float64
        np.testing.assert_allclose(kl, direct, rtol=1e-4, atol=1e-7)
        assert (kl > 0).all()
    # the direction matters: KL is not symmetric
    back = base.next_token_kl(cand, TEXTS)
    assert not np.allclose(np.concatenate(back), np.concatenate(kls), rtol=1e-3)
    np.testing.assert_allclose(back[2], direct_kl(cand_model, tiny_gpt2.model, tiny_gpt2.tokenizer, TEXTS[2]),
                               rtol=1e-4, atol=1e-7)


def test_a_model_against_itself_is_exactly_zero(tiny_gpt2):
    h = handle_of(tiny_gpt2.model, tiny_gpt2, batch_size=4)
    kls = h.next_token_kl(h, TEXTS)
    assert all(k.shape[0] > 0 and (k == 0.0).all() for k in kls)
    other = handle_of(tiny_gpt2.model, tiny_gpt2, batch_size=3)  # same weights, another handle
    assert all((k == 0.0).all() for k in h.next_token_kl(other, TEXTS[:4]))


def test_batch_size_does_not_change_the_values(tiny_gpt2, cand_model):
    runs = []
    for bs in (1, 7, 32):
        base = handle_of(tiny_gpt2.model, tiny_gpt2, batch_size=bs)
        cand = handle_of(cand_model, tiny_gpt2, batch_size=bs)
        runs.append(cand.next_token_kl(base, TEXTS))
        assert cand.stats["forward_passes"] == 1 and base.stats["forward_passes"] == 1
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert a.shape == b.shape
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_second_call_is_a_cache_hit_keyed_by_the_other_model(tiny_gpt2, cand_model):
    base = handle_of(tiny_gpt2.model, tiny_gpt2)
    cand = handle_of(cand_model, tiny_gpt2)
    first = cand.next_token_kl(base, TEXTS[:5])
    passes, hits = cand.stats["forward_passes"], cand.stats["cache_hits"]
    again = cand.next_token_kl(base, TEXTS[:5])
    assert again is first
    assert cand.stats["forward_passes"] == passes and base.stats["forward_passes"] == 1
    assert cand.stats["cache_hits"] > hits
    # another reference model is another pass, not the cached answer
    third = handle_of(perturbed_model(tiny_gpt2, 0.05, seed=1), tiny_gpt2)
    other = cand.next_token_kl(third, TEXTS[:5])
    assert cand.stats["forward_passes"] == passes + 1
    assert not np.allclose(np.concatenate(other), np.concatenate(first))


def test_memory_stays_on_the_batch_values_are_per_position(tiny_gpt2, cand_model):
    """Each answer is one float per position: nothing vocabulary-sized survives the batch."""
    cand = handle_of(cand_model, tiny_gpt2, batch_size=2)
    kls = cand.next_token_kl(handle_of(tiny_gpt2.model, tiny_gpt2), TEXTS)
    assert all(k.ndim == 1 and k.nbytes <= 8 * 256 for k in kls)


def test_needs_two_causal_lms_with_one_tokenization(tiny_gpt2, tiny_bert):
    h = handle_of(tiny_gpt2.model, tiny_gpt2)
    with pytest.raises(AuditInputError, match="two causal LMs"):
        h.next_token_kl(tiny_bert, TEXTS[:2])
    from auditkit.models import UnservedRequest
    with pytest.raises(UnservedRequest, match="needs a causal-lm model"):
        tiny_bert.next_token_kl(h, TEXTS[:2])
    short = handle_of(tiny_gpt2.model, tiny_gpt2, max_length=4)  # truncates: other token ids
    with pytest.raises(AuditInputError, match="tokenize the same texts differently") as err:
        h.next_token_kl(short, TEXTS[2:3])
    assert err.value.fix
    from transformers import GPT2Config, GPT2LMHeadModel
    cfg = GPT2Config(vocab_size=tiny_gpt2.model.config.vocab_size + 8, n_embd=32, n_layer=1, n_head=2, n_positions=256)
    wider = handle_of(GPT2LMHeadModel(cfg).eval(), tiny_gpt2)  # same tokenizer, more logits
    with pytest.raises(AuditInputError, match="different vocabularies"):
        h.next_token_kl(wider, TEXTS[:2])
    assert wider.stats["forward_passes"] == 0  # refused before any pass


def test_forgetting_uses_the_request(registry, tiny_gpt2, cand_model):
    from auditkit_plugins.forgetting import neutral_kl
    base = handle_of(tiny_gpt2.model, tiny_gpt2)
    cand = handle_of(cand_model, tiny_gpt2)
    kls = neutral_kl(base, cand, TEXTS[:3])
    assert cand.next_token_kl(base, TEXTS[:3]) is kls  # one cached pass shared by the check and the request


def test_kept_on_disk_for_another_handle_of_the_same_weights(tmp_path, monkeypatch, tiny_gpt2, cand_model):
    monkeypatch.setenv("AUDITKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("AUDITKIT_DISK_CACHE", "1")
    first = handle_of(cand_model, tiny_gpt2).next_token_kl(handle_of(tiny_gpt2.model, tiny_gpt2), TEXTS[:4])
    cand, base = handle_of(cand_model, tiny_gpt2), handle_of(tiny_gpt2.model, tiny_gpt2)
    again = cand.next_token_kl(base, TEXTS[:4])
    assert cand.stats["disk_hits"] == 1 and cand.stats["forward_passes"] == 0 and base.stats["forward_passes"] == 0
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
