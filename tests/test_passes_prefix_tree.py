"""The prefix-tree request against brute-force scoring, and the next-token moments against a plain pass."""
from __future__ import annotations

import numpy as np
import pytest


def _brute(model, rows) -> np.ndarray:
    """Sum of log p(x_t | x_<t) over every token after the first, one full sequence at a time."""
    import torch
    out = []
    with torch.no_grad():
        for r in rows:
            x = torch.tensor([r])
            lp = torch.log_softmax(model(input_ids=x).logits[0, :-1].double(), dim=-1)
            out.append(float(lp.gather(-1, x[0, 1:, None]).sum()))
    return np.array(out)


def _table(rows) -> np.ndarray:
    width = max(len(r) for r in rows)
    t = np.full((len(rows), width), -1, dtype=np.int64)
    for i, r in enumerate(rows):
        t[i, :len(r)] = r
    return t


def _rows(seed: int = 0, n: int = 60):
    """Ragged rows under one shared prefix: different depths, rows that are prefixes of others,
    a row that is the prefix alone, duplicates."""
    rng = np.random.default_rng(seed)
    prefix = [77, 89, 498]
    rows = [prefix[:]]
    for _ in range(n):
        rows.append(prefix + rng.integers(5, 15, size=int(rng.integers(1, 5))).tolist())
    rows += [rows[5][:], rows[7][:-1] if len(rows[7]) > 4 else rows[7][:]]
    return rows


@pytest.fixture(scope="module")
def llama(registry):
    import torch
    from auditkit.models import load_model
    torch.manual_seed(0)
    return load_model("builtin:tiny-llama", "causal-lm", registry, device="cpu")


@pytest.mark.parametrize("name", ["tiny_gpt2", "llama"])
def test_trie_equals_brute_force_on_ragged_rows(name, request):
    handle = request.getfixturevalue(name)
    rows = _rows()
    want = _brute(handle.model, rows)
    got = handle.prefix_tree_logprobs(_table(rows))
    np.testing.assert_allclose(got, want, atol=1e-4)
    # tiny chunks (a byte budget of 1): every level one chunk of 16 rows
    np.testing.assert_allclose(handle.prefix_tree_logprobs(_table(rows), budget_bytes=1), want, atol=1e-4)
    np.testing.assert_allclose(handle.full_sequence_logprobs(_table(rows), chunk=7), want, atol=1e-4)


def test_trie_does_not_depend_on_the_batch_size(tiny_gpt2):
    from auditkit.models import ModelHandle
    rows = _rows(seed=3, n=80)
    runs = []
    for bs in (1, 7, 32):
        h = ModelHandle(model=tiny_gpt2.model, tokenizer=tiny_gpt2.tokenizer, task="causal-lm", source="t",
                        batch_size=bs)
        runs.append(h.prefix_tree_logprobs(_table(rows)))
    np.testing.assert_allclose(runs[0], runs[1], atol=1e-6, rtol=0)
    np.testing.assert_allclose(runs[0], runs[2], atol=1e-6, rtol=0)


def test_trie_order_of_rows_and_memo(tiny_gpt2):
    from auditkit.models import ModelHandle
    h = ModelHandle(model=tiny_gpt2.model, tokenizer=tiny_gpt2.tokenizer, task="causal-lm", source="t")
    rows = _rows(seed=5)
    perm = np.random.default_rng(0).permutation(len(rows))
    a = h.prefix_tree_logprobs(_table(rows))
    b = h.prefix_tree_logprobs(_table([rows[i] for i in perm]))
    np.testing.assert_allclose(b, a[perm], atol=1e-6)
    passes, hits = h.stats["forward_passes"], h.stats["cache_hits"]
    np.testing.assert_array_equal(h.prefix_tree_logprobs(_table(rows)), a)
    assert h.stats["forward_passes"] == passes and h.stats["cache_hits"] == hits + 1


def test_rows_without_a_shared_prefix_fall_back_to_full_sequences(tiny_gpt2):
    rows = [[5, 6, 7], [8, 9], [10, 11, 12, 13]]
    assert tiny_gpt2.prefix_tree_logprobs(_table(rows), fallback=False) is None
    np.testing.assert_allclose(tiny_gpt2.prefix_tree_logprobs(_table(rows)), _brute(tiny_gpt2.model, rows), atol=1e-4)


def test_a_classifier_has_no_prefix_tree(tiny_bert):
    from auditkit.models import UnservedRequest
    with pytest.raises(UnservedRequest):
        tiny_bert.prefix_tree_logprobs(_table([[1, 2], [1, 3]]))


TEXTS = ["the lighthouse keeper", "my PIN is 1-2-3", "a", "once upon a time there was a little fox",
         "x y z", "to be or not to be"]


def test_next_token_moments_against_a_plain_pass(tiny_gpt2):
    import torch
    from auditkit.models import ModelHandle
    runs = []
    for bs in (1, 7, 32):
        h = ModelHandle(model=tiny_gpt2.model, tokenizer=tiny_gpt2.tokenizer, task="causal-lm", source="t",
                        batch_size=bs)
        runs.append(h.next_token_moments(TEXTS))
        # the token log-probs are shared as the handle's token_logprobs pass
        passes = h.stats["forward_passes"]
        for a, b in zip(h.token_logprobs(TEXTS), runs[-1]["token_logprobs"]):
            np.testing.assert_array_equal(a, b)
        assert h.stats["forward_passes"] == passes
    for key in ("token_logprobs", "mu", "sigma"):
        for r in runs[1:]:
            for a, b in zip(runs[0][key], r[key]):
                np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
    tok = tiny_gpt2.tokenizer
    with torch.no_grad():
        for k, t in enumerate(TEXTS):
            ids = tok(t)["input_ids"]
            lp = torch.log_softmax(tiny_gpt2.model(input_ids=torch.tensor([ids])).logits[0, :-1].double(), dim=-1)
            p = lp.exp()
            mu = (p * lp).sum(-1)
            sd = ((p * (lp - mu[:, None]) ** 2).sum(-1)).sqrt()
            want = lp.gather(-1, torch.tensor(ids[1:])[:, None])[:, 0].numpy()
            np.testing.assert_allclose(runs[0]["token_logprobs"][k], want, atol=1e-5)
            np.testing.assert_allclose(runs[0]["mu"][k], mu.numpy(), atol=1e-4)
            np.testing.assert_allclose(runs[0]["sigma"][k], sd.numpy(), atol=1e-4)


def test_two_processes_split_the_subtrees_with_the_same_numbers(tiny_gpt2, monkeypatch):
    from auditkit.models import ModelHandle
    from tests.test_passes_generation import split_locals
    rows = _rows(seed=7)

    def run():
        h = ModelHandle(model=tiny_gpt2.model, tokenizer=tiny_gpt2.tokenizer, task="causal-lm", source="t")
        return h.prefix_tree_logprobs(_table(rows))

    one, two = split_locals(monkeypatch, run)
    assert len(one) >= 2 and sorted(one) == sorted(two)
    for k in one:
        np.testing.assert_allclose(one[k], two[k], atol=1e-6, rtol=0)
