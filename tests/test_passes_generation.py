"""The generation request: greedy equals plain model.generate, batch-size invariant sampling, stops, chat."""
from __future__ import annotations

import copy

import pytest

PROMPTS = ["the lighthouse keeper", "my PIN is", "a", "once upon a time there was a", "", "x y z",
           "the quick brown fox jumps over", "to be", "she said that the", "1 2 3 4"]


def _handle(tiny_gpt2, **kw):
    from auditkit.models import ModelHandle
    fields = dict(model=tiny_gpt2.model, tokenizer=tiny_gpt2.tokenizer, task="causal-lm", source="gen-test")
    fields.update(kw)
    return ModelHandle(**fields)


def _plain(handle, prompt: str, n: int) -> list[int]:
    """One prompt alone through a plain greedy model.generate."""
    import torch
    tok = handle.tokenizer
    ids = tok(prompt)["input_ids"] or [tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id]
    out = handle.model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                do_sample=False, max_new_tokens=n, pad_token_id=tok.pad_token_id)
    new = out[0, len(ids):].tolist()
    eos = tok.eos_token_id
    return new[:new.index(eos) + 1] if eos in new else new


def test_greedy_equals_plain_generate_one_prompt_at_a_time(tiny_gpt2):
    h = _handle(tiny_gpt2, batch_size=4)
    gens = h.generate(PROMPTS, max_new_tokens=9)
    assert len(gens) == len(PROMPTS) and all(len(g) == 1 for g in gens)
    for p, (g,) in zip(PROMPTS, gens):
        assert g.token_ids == _plain(h, p, 9)
        assert g.text == h.tokenizer.decode(g.token_ids, skip_special_tokens=True)
        assert g.finish_reason in ("eos", "length")
        if g.finish_reason == "length":
            assert len(g.token_ids) == 9


def test_greedy_on_llama_equals_plain_generate(registry):
    from auditkit.models import load_model
    llama = load_model("builtin:tiny-llama", "causal-lm", registry, device="cpu")
    llama.batch_size = 3
    for p, (g,) in zip(PROMPTS, llama.generate(PROMPTS, max_new_tokens=6)):
        assert g.token_ids == _plain(llama, p, 6)


@pytest.mark.parametrize("temperature,top_p", [(0.0, 1.0), (1.0, 1.0), (0.7, 0.9)])
def test_batch_size_does_not_change_generations(tiny_gpt2, temperature, top_p):
    runs = []
    for bs in (1, 7, 32):
        h = _handle(tiny_gpt2, batch_size=bs)
        runs.append(h.generate(PROMPTS, max_new_tokens=7, temperature=temperature, top_p=top_p, samples=3, seed=5))
    assert runs[0] == runs[1] == runs[2]
    assert all(len(g) == 3 for g in runs[0])
    if temperature == 0:
        assert all(g[0] == g[1] == g[2] for g in runs[0])
    else:  # three different draws (a random 2k-vocabulary model almost never repeats itself)
        assert sum(g[0].token_ids != g[1].token_ids for g in runs[0]) >= len(PROMPTS) - 1


def test_a_prompts_samples_do_not_depend_on_the_other_prompts_of_its_batch(tiny_gpt2):
    h = _handle(tiny_gpt2, batch_size=32)
    full = h.generate(PROMPTS, max_new_tokens=6, temperature=1.0, samples=2, seed=3)
    # the same prompt at the same index, among other prompts of other lengths
    other = PROMPTS[:4] + ["a much longer prompt than any of the others in this list"] + PROMPTS[5:]
    again = h.generate(other, max_new_tokens=6, temperature=1.0, samples=2, seed=3)
    assert [g for k, g in enumerate(full) if k != 4] == [g for k, g in enumerate(again) if k != 4]


def test_same_seed_same_samples_other_seed_other_samples(tiny_gpt2):
    a = _handle(tiny_gpt2).generate(PROMPTS, max_new_tokens=6, temperature=1.0, samples=2, seed=11)
    b = _handle(tiny_gpt2).generate(PROMPTS, max_new_tokens=6, temperature=1.0, samples=2, seed=11)
    c = _handle(tiny_gpt2).generate(PROMPTS, max_new_tokens=6, temperature=1.0, samples=2, seed=12)
    assert a == b
    assert sum(x[0].token_ids != y[0].token_ids for x, y in zip(a, c)) >= len(PROMPTS) - 1


def test_sampling_follows_the_model_distribution(tiny_gpt2):
    """The first sampled token's frequencies match softmax(logits / T) (Gumbel-max is exact)."""
    import numpy as np
    import torch
    h = _handle(tiny_gpt2)
    prompt = "my PIN is"
    ids = h.tokenizer(prompt)["input_ids"]
    with torch.no_grad():
        logits = h.model(input_ids=torch.tensor([ids])).logits[0, -1].float()
    p = torch.softmax(logits / 0.5, dim=-1).numpy()
    n = 400
    gens = h.generate([prompt], max_new_tokens=1, temperature=0.5, samples=n, seed=0)[0]
    top = np.argsort(p)[::-1][:3]
    freq = np.array([sum(g.token_ids[0] == t for g in gens) / n for t in top])
    assert np.all(np.abs(freq - p[top]) < 4 * np.sqrt(p[top] * (1 - p[top]) / n) + 0.01)


def test_top_p_keeps_only_the_nucleus(tiny_gpt2):
    import numpy as np
    import torch
    h = _handle(tiny_gpt2)
    prompt = "the lighthouse keeper"
    ids = h.tokenizer(prompt)["input_ids"]
    with torch.no_grad():
        logits = h.model(input_ids=torch.tensor([ids])).logits[0, -1].float()
    p = torch.softmax(logits, dim=-1).numpy()
    order = np.argsort(p)[::-1]
    keep = order[:int(np.searchsorted(np.cumsum(p[order]), 0.3)) + 1]
    gens = h.generate([prompt], max_new_tokens=1, temperature=1.0, top_p=0.3, samples=200, seed=1)[0]
    assert {g.token_ids[0] for g in gens} <= set(keep.tolist())


def test_stop_sequences_cut_the_text_and_end_the_row(tiny_gpt2):
    h = _handle(tiny_gpt2)
    free = h.generate(PROMPTS, max_new_tokens=12, temperature=1.0, samples=2, seed=2)
    stopped = h.generate(PROMPTS, max_new_tokens=12, temperature=1.0, samples=2, seed=2, stop=["e", "\n"])
    n_stop = 0
    for fs, ss in zip(free, stopped):
        for f, s in zip(fs, ss):
            cut = min([i for i in (f.text.find("e"), f.text.find("\n")) if i >= 0], default=None)
            if s.finish_reason == "stop":
                n_stop += 1
                assert cut is not None and s.text == f.text[:cut] and "e" not in s.text
                # the row ended with the token that completed the stop sequence
                assert s.token_ids == f.token_ids[:len(s.token_ids)]
                assert "e" in h.tokenizer.decode(s.token_ids) or "\n" in h.tokenizer.decode(s.token_ids)
                assert "e" not in h.tokenizer.decode(s.token_ids[:-1])
            else:
                assert s == f and (cut is None)
    assert n_stop >= 5
    # a stop that never occurs changes nothing; a single string works as a one-item list
    assert h.generate(PROMPTS, max_new_tokens=5, stop=["\x07never"]) == h.generate(PROMPTS, max_new_tokens=5)
    assert h.generate(PROMPTS, max_new_tokens=5, stop="e") == h.generate(PROMPTS, max_new_tokens=5, stop=["e"])


def test_results_are_memoized_on_prompts_and_every_keyword(tiny_gpt2):
    h = _handle(tiny_gpt2)
    first = h.generate(PROMPTS[:3], max_new_tokens=4, temperature=1.0, seed=1)
    hits = h.stats["cache_hits"]
    assert h.generate(PROMPTS[:3], max_new_tokens=4, temperature=1.0, seed=1) == first
    assert h.stats["cache_hits"] == hits + 1
    h.generate(PROMPTS[:3], max_new_tokens=4, temperature=1.0, seed=2)
    h.generate(PROMPTS[:3], max_new_tokens=4, temperature=1.0, seed=1, top_p=0.5)
    assert h.stats["cache_hits"] == hits + 1


def test_generate_ids_matches_generate_on_the_same_tokens(tiny_gpt2):
    h = _handle(tiny_gpt2)
    ids = [h.tokenizer(p)["input_ids"] for p in PROMPTS if p]
    assert h.generate_ids(ids, max_new_tokens=5, temperature=0.8, samples=2, seed=4) == \
        h.generate([p for p in PROMPTS if p], max_new_tokens=5, temperature=0.8, samples=2, seed=4)


def test_generations_survive_the_disk_cache(tiny_gpt2, tmp_path, monkeypatch):
    monkeypatch.setenv("AUDITKIT_DISK_CACHE", "1")
    monkeypatch.setenv("AUDITKIT_CACHE", str(tmp_path))
    h = _handle(tiny_gpt2)
    first = h.generate(PROMPTS, max_new_tokens=5, temperature=1.0, samples=2, stop=["e"])
    h2 = _handle(tiny_gpt2)
    again = h2.generate(PROMPTS, max_new_tokens=5, temperature=1.0, samples=2, stop=["e"])
    assert h2.stats["disk_hits"] == 1 and h2.stats["forward_passes"] == 0 and again == first


TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def test_chat_messages_are_rendered_with_the_chat_template(tiny_gpt2):
    tok = copy.deepcopy(tiny_gpt2.tokenizer)
    tok.chat_template = TEMPLATE
    h = _handle(tiny_gpt2, tokenizer=tok)
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "my PIN is"}]
    rendered = "<|system|>be brief\n<|user|>my PIN is\n<|assistant|>"
    assert h.render_prompts([msgs, "plain"]) == [rendered, "plain"]
    assert h.generate([msgs], max_new_tokens=6) == h.generate([rendered], max_new_tokens=6)


def test_a_chat_template_that_fails_or_is_missing_is_bad_input(tiny_gpt2):
    from auditkit.errors import AuditInputError
    msgs = [{"role": "user", "content": "hi"}]
    tok = copy.deepcopy(tiny_gpt2.tokenizer)
    tok.chat_template = "{{ raise_exception('roles must alternate') }}"
    with pytest.raises(AuditInputError) as err:
        _handle(tiny_gpt2, tokenizer=tok).generate([msgs])
    assert err.value.place == "chat_template" and "roles must alternate" in err.value.line()
    assert "\n" not in err.value.line()
    tok.chat_template = "{% for m in messages %}{{ m.content }"  # does not parse
    with pytest.raises(AuditInputError) as err:
        _handle(tiny_gpt2, tokenizer=tok).generate([msgs])
    assert err.value.place == "chat_template"
    tok.chat_template = None
    with pytest.raises(AuditInputError) as err:
        _handle(tiny_gpt2, tokenizer=tok).generate([msgs])
    assert err.value.place == "chat_template" and "no chat template" in err.value.line()


def test_a_classifier_cannot_generate(tiny_bert):
    from auditkit.models import UnservedRequest
    with pytest.raises(UnservedRequest, match="generate needs a causal-lm model"):
        tiny_bert.generate(["hello"])


class _Gathered(Exception):
    pass


def split_locals(monkeypatch, run, sizes=(1, 2)) -> list[dict]:
    """What each process of a data-parallel run computes: ``run()`` under worlds of each size, every rank,
    recording the ``{index: value}`` each rank would send to the gather; returns one merged dict a size."""
    import auditkit.distributed as dist
    merged = []
    for size in sizes:
        got: dict = {}
        for rank in range(size):
            w = dist.World(rank=rank, size=size)

            def gather(local, got=got):
                assert not set(local) & set(got)  # every batch runs in exactly one process
                got.update(local)
                raise _Gathered

            w.gather = gather
            monkeypatch.setattr(dist, "_WORLD", w)
            with pytest.raises(_Gathered):
                run()
        merged.append(got)
    monkeypatch.setattr(dist, "_WORLD", dist.World())
    return merged


def test_two_processes_split_the_prompts_and_draw_the_same_samples(tiny_gpt2, monkeypatch):
    one, two = split_locals(monkeypatch, lambda: _handle(tiny_gpt2, batch_size=3).generate(
        PROMPTS, max_new_tokens=5, temperature=1.0, samples=2, seed=9, stop=["e"]))
    assert sorted(one) == list(range(len(PROMPTS))) and one == two
