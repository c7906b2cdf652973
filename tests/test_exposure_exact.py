"""Exact canary exposure (issue 13, item 11): every secret of a small space scored through the token trie
with a shared KV cache, checked against brute force (each candidate text run whole through the model,
ranked by counting) on tiny GPT-2 and tiny Llama; the estimate (the larger of rank and skew-normal)
where the space is not enumerated.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest

TEMPLATE = "my PIN is {digits}"


def _texts(template: str, digits: int) -> list[str]:
    return [template.format(digits="-".join(f"{i:0{digits}d}")) for i in range(10 ** digits)]


def brute_force_logprob(handle, texts: list[str]) -> np.ndarray:
    """Sum of log p(token | prefix) over every token but the first: each text run whole, on its own."""
    import torch
    out = []
    with torch.inference_mode():
        for text in texts:
            ids = torch.tensor([handle.tokenizer(text)["input_ids"]])
            logp = torch.log_softmax(handle.model(input_ids=ids).logits[0, :-1].double(), -1)
            out.append(float(logp.gather(-1, ids[0, 1:, None]).sum()))
    return np.array(out)


def brute_force_rank(lp: np.ndarray, i: int) -> float:
    """Rank 1 = the most likely secret; ties (none expected) as mid-ranks."""
    return 1.0 + float(np.sum(lp > lp[i])) + (float(np.sum(lp == lp[i])) - 1.0) / 2.0


def _well_separated(lp: np.ndarray, i: int, tol: float = 1e-4) -> bool:
    d = np.abs(lp - lp[i])
    d[i] = np.inf
    return bool(d.min() > tol)


@pytest.fixture(scope="module")
def canary_model(tiny_gpt2):
    """tiny-gpt2 trained a little on one 3-digit canary (so it ranks near the top of its 1000)."""
    import torch
    from auditkit.finetune import make_canaries
    from auditkit.models import ModelHandle
    cans = make_canaries({"count": 2, "repeats": [1, 50], "template": TEMPLATE, "references": 200, "digits": 3}, 0)
    target = cans["canaries"][2]["text"]  # canary-r50-0
    model = copy.deepcopy(tiny_gpt2.model)
    model.train()
    torch.manual_seed(0)
    ids = torch.tensor([tiny_gpt2.token_ids([target])[0]])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(12):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    handle = ModelHandle(model=model, tokenizer=tiny_gpt2.tokenizer, task="causal-lm", source="canary-trained")
    return handle, cans, brute_force_logprob(handle, _texts(TEMPLATE, 3))


def test_trie_scores_equal_brute_force_on_every_3_digit_secret(canary_model):
    from auditkit_plugins.memorization.exposure import exact_rank, space_logprobs
    handle, _, bf = canary_model
    sp = space_logprobs(handle, TEMPLATE, 3, "-")
    assert sp["scoring"] == "token trie with a shared KV cache" and sp["tokens"].startswith("composed")
    np.testing.assert_allclose(sp["logprob"], bf, atol=1e-4)
    rank, exposure = exact_rank(sp["logprob"], range(1000))
    checked = [i for i in range(1000) if _well_separated(bf, i)]
    assert len(checked) > 950
    for i in checked:
        assert rank[i] == brute_force_rank(bf, i), i
        assert exposure[i] == pytest.approx(math.log2(1000) - math.log2(brute_force_rank(bf, i)))


def test_canary_exposure_is_the_exact_rank_among_all_secrets(canary_model):
    from auditkit_plugins.memorization.exposure import canary_exposures, secret_index
    handle, cans, bf = canary_model
    exp = canary_exposures(handle, cans, unseen=20)
    assert exp["method"] == "exact" and exp["max_possible"] == pytest.approx(math.log2(1000))
    for c, rank, e in zip(cans["canaries"], exp["exact_rank"], exp["exposure"]):
        i = secret_index(c["secret"], "-")
        assert _texts(TEMPLATE, 3)[i] == c["text"]
        assert rank == brute_force_rank(bf, i)
        assert e == pytest.approx(math.log2(1000) - math.log2(rank))
    trained = exp["exposure"][2]
    assert trained == pytest.approx(math.log2(1000))  # rank 1 of 1000: the most likely secret
    # the references cap the rank-based estimate at log2 |R| = log2 180; the exact figure goes beyond it
    assert exp["exposure_rank"][2] <= math.log2(180) + 1e-9 < trained
    assert exp["unseen_exposure"].shape == (20,) and exp["unseen_exposure"].mean() < 3  # chance: log2 e


def test_estimate_when_the_space_is_not_enumerated_is_the_larger_of_rank_and_fit(canary_model):
    from auditkit_plugins.memorization.exposure import canary_exposures
    handle, cans, _ = canary_model
    exp = canary_exposures(handle, cans, unseen=20, exact_max=999)
    assert exp["method"] == "max(rank, skew-normal)" and exp["exact"] is None
    np.testing.assert_allclose(exp["exposure"], np.maximum(exp["exposure_rank"], exp["exposure_fit"]))
    assert (exp["exposure"] <= math.log2(1000) + 1e-9).all()


def test_trie_on_llama_and_the_full_sequence_fallback(registry):
    import torch
    from auditkit.models import load_model
    from auditkit_plugins.memorization.exposure import candidate_ids, full_logprobs, trie_logprobs
    torch.manual_seed(0)
    llama = load_model("builtin:tiny-llama", "causal-lm", registry, device="cpu")
    ids, _ = candidate_ids(llama, "PIN: {digits}.", 2, "-")
    bf = brute_force_logprob(llama, _texts("PIN: {digits}.", 2))
    np.testing.assert_allclose(trie_logprobs(llama, ids, budget_bytes=1), bf, atol=1e-4)  # tiny chunks
    np.testing.assert_allclose(full_logprobs(llama, ids, chunk=7), bf, atol=1e-4)


class _EosAtTheEnd:
    """A tokenizer that appends EOS to every text it encodes with special tokens: per-digit pieces
    then no longer compose into the text's tokens, so the texts are tokenized one by one."""

    def __init__(self, tok):
        self._tok = tok

    def __getattr__(self, name):
        return getattr(self._tok, name)

    def __call__(self, text, add_special_tokens=True, **kw):
        enc = dict(self._tok(text, add_special_tokens=add_special_tokens, **kw))
        if add_special_tokens:
            ids = enc["input_ids"]
            enc["input_ids"] = [x + [0] for x in ids] if ids and isinstance(ids[0], list) else ids + [0]
        return enc


def test_secrets_tokenized_one_by_one_where_pieces_do_not_compose(tiny_gpt2):
    from auditkit.models import ModelHandle
    from auditkit_plugins.memorization.exposure import candidate_ids, space_logprobs
    handle = ModelHandle(model=tiny_gpt2.model, tokenizer=_EosAtTheEnd(tiny_gpt2.tokenizer), task="causal-lm",
                         source="eos")
    texts = _texts("code {digits} ok", 2)
    ids, how = candidate_ids(handle, "code {digits} ok", 2, "-")
    assert how == "tokenized one by one"
    assert [list(r[r >= 0]) for r in ids] == handle.token_ids(texts)
    want = np.array([float(np.sum(lp, dtype=np.float64)) for lp in handle.token_logprobs(texts)])
    np.testing.assert_allclose(space_logprobs(handle, "code {digits} ok", 2, "-")["logprob"], want, atol=1e-4)


def test_template_parts_and_secret_index():
    from auditkit_plugins.memorization.exposure import secret_format, secret_index, template_parts
    assert template_parts("{{PIN}} is {digits}!") == ("{PIN} is ", "!")
    assert secret_index("0-4-2", "-") == 42 and secret_index("9-9-9", "-") == 999
    rec = {"canaries": [{"secret": "1-2-3"}], "separator": "-"}
    assert secret_format(rec) == (3, "-")
    assert secret_format({"canaries": [{"secret": "12-3"}], "separator": "-", "digits": 2}) is None


@pytest.mark.slow
def test_a_space_of_10_to_the_5_scores_through_the_trie(tiny_gpt2):
    """10^5 secrets: composed token ids and trie scores match the texts scored whole on a sample."""
    from auditkit_plugins.memorization.exposure import candidate_ids, trie_logprobs
    ids, how = candidate_ids(tiny_gpt2, TEMPLATE, 5, "-")
    assert ids.shape[0] == 10 ** 5 and how.startswith("composed")
    lp = trie_logprobs(tiny_gpt2, ids)
    sample = np.random.default_rng(1).choice(10 ** 5, 200, replace=False)
    texts = [TEMPLATE.format(digits="-".join(f"{i:05d}")) for i in sample]
    np.testing.assert_allclose(lp[sample], brute_force_logprob(tiny_gpt2, texts), atol=1e-4)
