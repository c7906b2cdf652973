"""Attention requests (rollout, gradient-weighted attention, head statistics) and next-token requests.

Each request is checked against an independent computation written here (a plain forward of one
unpadded example with ``output_attentions=True``, the full-matrix definitions in numpy), for batch
sizes 1, 7 and 32 (equal within 1e-6), and for its memory shape: per example a length-T vector (or
``[k, T]``), never a ``[layers, heads, T, T]`` map.
"""
from __future__ import annotations

import numpy as np
import pytest

TEXTS = ["short one", "a much longer sentence about a zebra and the river in winter", "three words here",
         "the weather today is", "she opened the door and walked into the quiet garden", "ok",
         "my favourite food is soup", "cats", "a b c d e f g h i j k l", "the market opens at nine every morning",
         "winter", "paper and pencil on the table", "blue", "it rained all night long in the old town",
         "coffee", "letters from a friend far away", "x y", "morning light over the silver ocean"]


@pytest.fixture(autouse=True)
def no_disk_cache(monkeypatch):
    monkeypatch.setenv("AUDITKIT_DISK_CACHE", "0")


def fresh(handle, batch_size=32):
    """The same model behind a new handle (cold cache) with the given batch size."""
    from auditkit.models import ModelHandle
    return ModelHandle(model=handle.model, tokenizer=handle.tokenizer, task=handle.task, source=handle.source,
                       device=handle.device, batch_size=batch_size, max_length=handle.max_length)


def _eager(handle):
    handle.ensure_eager()
    return handle.model


def plain_attentions(handle, ids):
    """One example, no padding: its ``[L, H, T, T]`` maps in float64 and its logits."""
    import torch
    model = _eager(handle)
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                    output_attentions=True)
    return np.stack([a[0].double().numpy() for a in out.attentions]), out.logits[0].double().numpy()


def full_rollout(att):
    """Abnar & Zuidema (2020), the whole matrix: R = rownorm(mean_h A_L + I) ... rownorm(mean_h A_1 + I)."""
    n = att.shape[-1]
    r = np.eye(n)
    for layer in att:
        a = layer.mean(0) + np.eye(n)
        r = (a / a.sum(1, keepdims=True)) @ r
    return r


def plain_chefer(handle, ids, target):
    """Chefer et al. (2021): gradient of log p(target) w.r.t. the attention maps of one unpadded example."""
    import torch
    model = _eager(handle)
    inp = torch.tensor([ids])
    emb = model.get_input_embeddings()(inp).detach().requires_grad_(True)
    with torch.enable_grad():
        out = model(inputs_embeds=emb, attention_mask=torch.ones_like(inp), output_attentions=True)
        logits = out.logits[0, -1] if handle.task == "causal-lm" else out.logits[0]
        score = torch.log_softmax(logits.float(), -1)[target]
        grads = torch.autograd.grad(score, list(out.attentions))
    n = len(ids)
    rel = np.eye(n)
    for a, g in zip(out.attentions, grads):
        cam = np.maximum(g[0].double().numpy() * a[0].detach().double().numpy(), 0).mean(0)
        rel = rel + cam @ rel
    return rel - np.eye(n)


def query(handle, ids):
    tok = handle.tokenizer
    return 0 if handle.task != "causal-lm" and ids[0] == tok.cls_token_id else len(ids) - 1


@pytest.mark.parametrize("name", ["tiny_bert", "tiny_gpt2"])
def test_rollout_and_head_stats_match_a_plain_computation(name, request):
    h = fresh(request.getfixturevalue(name))
    texts = TEXTS[:6]
    rows = h.attention_rollout(texts)
    stats = h.attention_head_stats(texts)
    causal = h.task == "causal-lm"
    special = set(h.tokenizer.all_special_ids)
    ent = norm = spec = 0.0
    n_rows = 0
    for ids, row in zip(h.token_ids(texts), rows):
        att, _ = plain_attentions(h, ids)
        assert row.shape == (len(ids),)
        np.testing.assert_allclose(row, full_rollout(att)[query(h, ids)], atol=1e-6)
        np.testing.assert_allclose(row.sum(), 1.0, atol=1e-9)
        for i in range(len(ids)):  # entropy per query row, normalised by log(#positions it may see)
            allowed = i + 1 if causal else len(ids)
            if allowed < 2:
                continue
            p = att[..., i, :]
            e = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0), -1)
            ent, norm = ent + e, norm + e / np.log(allowed)
            spec = spec + p[..., [j for j, t in enumerate(ids) if t in special]].sum(-1)
            n_rows += 1
    assert stats["rows"] == n_rows
    np.testing.assert_allclose(stats["entropy"], ent / n_rows, atol=1e-6)
    np.testing.assert_allclose(stats["normalised_entropy"], norm / n_rows, atol=1e-6)
    np.testing.assert_allclose(stats["special_mass"], spec / n_rows, atol=1e-6)


def test_rollout_query_lists_give_one_row_each(tiny_bert):
    h = fresh(tiny_bert)
    texts = TEXTS[:3]
    ids = h.token_ids(texts)
    rows = h.attention_rollout(texts, [[0, len(x) - 1] for x in ids])
    for x, r in zip(ids, rows):
        att, _ = plain_attentions(h, x)
        assert r.shape == (2, len(x))
        np.testing.assert_allclose(r, full_rollout(att)[[0, len(x) - 1]], atol=1e-6)
    with pytest.raises(ValueError, match="query"):
        h.attention_rollout(texts, [99, 0, 0])


@pytest.mark.parametrize("name", ["tiny_bert", "tiny_gpt2"])
def test_grad_weighted_attention_matches_a_plain_computation(name, request):
    h = fresh(request.getfixturevalue(name))
    ids = h.token_ids(TEXTS[:5])
    targets = [i % 2 for i in range(5)] if h.task != "causal-lm" else [7, 42, 100, 3, 999]
    rows = h.grad_weighted_attention(ids, targets)
    for x, t, r in zip(ids, targets, rows):
        assert r.shape == (len(x),)
        np.testing.assert_allclose(r, plain_chefer(h, x, t)[query(h, x)], atol=1e-6)


@pytest.mark.parametrize("name", ["tiny_bert", "tiny_gpt2"])
def test_attention_requests_are_batch_size_invariant(name, request):
    base = request.getfixturevalue(name)
    targets = [i % 2 for i in range(len(TEXTS))] if base.task != "causal-lm" else list(range(5, 5 + len(TEXTS)))
    results = []
    for bs in (1, 7, 32):
        h = fresh(base, bs)
        ids = h.token_ids(TEXTS)
        results.append((h.attention_rollout(TEXTS), h.attention_head_stats(TEXTS),
                        h.grad_weighted_attention(ids, targets)))
    (r0, s0, g0) = results[0]
    for r, s, g in results[1:]:
        for a, b in zip(r0, r):
            np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
        for a, b in zip(g0, g):
            np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
        for k in ("entropy", "normalised_entropy", "special_mass"):
            np.testing.assert_allclose(s0[k], s[k], atol=1e-6, rtol=0)


def test_one_pass_answers_rollout_stats_and_logits(tiny_bert, tiny_gpt2):
    for base in (tiny_bert, tiny_gpt2):
        h = fresh(base)
        texts = TEXTS[:4]
        h.attention_head_stats(texts)
        passes = h.stats["forward_passes"]
        h.attention_rollout(texts)
        if h.task == "causal-lm":
            lps = h.token_logprobs(texts)
            for x, lp in zip(h.token_ids(texts), lps):
                _, logits = plain_attentions(h, x)
                ref = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
                np.testing.assert_allclose(lp, (logits[np.arange(len(x) - 1), x[1:]] - ref[:-1]), atol=1e-5)
        else:
            logits = h.class_logits(texts)
            for x, lg in zip(h.token_ids(texts), logits):
                np.testing.assert_allclose(lg, plain_attentions(h, x)[1], atol=1e-5)
        assert h.stats["forward_passes"] == passes


def test_memory_shape_no_attention_map_is_kept(tiny_bert, monkeypatch):
    """Every request answers per-example vectors; the handle never builds [L, H, T, T] maps per example."""
    h = fresh(tiny_bert, 4)
    monkeypatch.setattr(type(h), "attentions", lambda *a, **k: pytest.fail("full maps were asked for"))
    ids = h.token_ids(TEXTS)
    rows = h.attention_rollout(TEXTS)
    grads = h.grad_weighted_attention(ids, [0] * len(ids))
    stats = h.attention_head_stats(TEXTS)
    for x, r, g in zip(ids, rows, grads):
        assert r.shape == g.shape == (len(x),)
    L, H = stats["entropy"].shape
    assert stats["per_example"][0].shape == (len(TEXTS), L, H)
    # nothing in the handle's cache is a map over token pairs
    def arrays(v):
        if isinstance(v, np.ndarray):
            yield v
        elif isinstance(v, (list, tuple)):
            for x in v:
                yield from arrays(x)
        elif isinstance(v, dict):
            for x in v.values():
                yield from arrays(x)
    longest = max(len(x) for x in ids)
    for value in h._cache.values():
        for a in arrays(value):
            assert a.ndim <= 1 or (a.ndim == 2 and a.shape[-1] != longest) or a.shape[-2:] == (L, H), a.shape


# ---------------------------------------------------------------------- next-token requests

def test_next_token_requests_match_a_plain_forward(tiny_gpt2):
    import torch
    h = fresh(tiny_gpt2)
    ids = h.token_ids(TEXTS[:6])
    tokens, logps = h.next_token_topk(ids, k=3)
    cands = [[1, 2, int(t[0])] for t in tokens]
    lps = h.next_token_logprobs(ids, cands)
    assert tokens.shape == logps.shape == (6, 3)
    for x, tk, lp, c, lc in zip(ids, tokens, logps, cands, lps):
        with torch.no_grad():
            ref = torch.log_softmax(h.model(input_ids=torch.tensor([x])).logits[0, -1].double(), -1).numpy()
        order = np.argsort(-ref, kind="stable")[:3]
        assert tk.tolist() == order.tolist()
        np.testing.assert_allclose(lp, ref[order], atol=1e-5)
        np.testing.assert_allclose(lc, ref[c], atol=1e-5)
    texts_tokens, _ = h.next_token_topk(TEXTS[:6], k=3)  # texts are encoded as token_ids does
    assert (texts_tokens == tokens).all()


def test_next_token_requests_are_batch_size_invariant(tiny_gpt2, tiny_bert):
    from auditkit.models import UnservedRequest
    out = []
    for bs in (1, 7, 32):
        h = fresh(tiny_gpt2, bs)
        ids = h.token_ids(TEXTS)
        out.append((h.next_token_topk(ids, k=2), h.next_token_logprobs(ids, [[5, 6]] * len(ids))))
    (t0, l0), c0 = out[0]
    for (t, lp), c in out[1:]:
        assert (t == t0).all()
        np.testing.assert_allclose(lp, l0, atol=1e-6, rtol=0)
        np.testing.assert_allclose(np.stack(c), np.stack(c0), atol=1e-6, rtol=0)
    with pytest.raises(UnservedRequest, match="causal-lm"):
        fresh(tiny_bert).next_token_topk(["a text"])
