"""Multiple choice on the engine (issue 10, speed): continuation log-probs read ``(ctx + cont)[:-1]``, the LM
head runs only where a log-prob is needed, no KV cache is built; the numbers equal a plain full-logits loop
written here and lm-eval's own HFLM, for any batch size; lm-eval tasks run through the engine (EngineLM)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from auditkit.models import ModelHandle

PAIRS = [
    ("Question: What is the capital of France?\nAnswer:", " Paris"),                     # single token (shared)
    ("Question: What is the capital of France?\nAnswer:", " Berlin"),
    ("Question: What is the capital of France?\nAnswer:", " a city of stone and light"),  # multi-token
    ("The opposite of day is ", "night"),                                               # trailing space moves
    ("", "Scored from the prefix."),                                                    # empty context
    ("", "x"),
    ("Count: one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen",
     " sixteen seventeen"),                                                            # truncated when short
    ("Colours:", ""),                                                                  # empty continuation
]


@pytest.fixture(scope="module", params=["builtin:tiny-gpt2", "builtin:tiny-llama"])
def lm(request, registry):
    from auditkit.models import load_model
    return load_model(request.param, "causal-lm", registry, device="cpu")


def fresh(h: ModelHandle, *, batch_size: int = 32, max_length: int = 256) -> ModelHandle:
    return ModelHandle(model=h.model, tokenizer=h.tokenizer, task=h.task, source=h.source, device=h.device,
                       batch_size=batch_size, max_length=max_length)


def reference(h: ModelHandle, pairs, max_length: int):
    """A plain loop: lm-eval's tokenization, one unpadded full-logits forward per pair, log-softmax everywhere."""
    tok, model = h.tokenizer, h.model
    prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    out = []
    for ctx, cont in pairs:
        if ctx == "":
            c = tok.encode(cont, add_special_tokens=False)
            ctx_ids, cont_ids = ([prefix], c) if c[:1] != [prefix] else (c[:1], c[1:])
        else:
            n = len(ctx) - len(ctx.rstrip())
            if n:
                ctx, cont = ctx[:-n], ctx[-n:] + cont
            ctx_ids = tok.encode(ctx)
            cont_ids = tok.encode(ctx + cont)[len(ctx_ids):]
        if not cont_ids:
            out.append((np.zeros(0), True))
            continue
        inp = (ctx_ids + cont_ids)[-(max_length + 1):][:-1]
        with torch.no_grad():
            logits = model(torch.tensor([inp])).logits[0].float()
        lp = torch.log_softmax(logits, -1)[-len(cont_ids):]
        t = torch.tensor(cont_ids)
        out.append((lp.gather(-1, t[:, None])[:, 0].numpy(), bool((lp.argmax(-1) == t).all())))
    return out


@pytest.mark.parametrize("max_length", [256, 12])
def test_fast_path_equals_a_plain_full_logits_loop(lm, max_length):
    h = fresh(lm, max_length=max_length)
    got = h.continuation_logprobs(PAIRS, greedy=True)
    want = reference(lm, PAIRS, max_length)
    for (lp, g), (wlp, wg), pair in zip(got, want, PAIRS):
        assert lp.shape == wlp.shape, pair
        np.testing.assert_allclose(lp, wlp, rtol=1e-5, atol=1e-5, err_msg=str(pair))
        assert g == wg, pair
    # truncation really happened at 12 tokens: the long pair reads fewer tokens than it has
    if max_length == 12:
        ctx, cont = PAIRS[6]
        assert len(lm.tokenizer.encode(ctx + cont)) > 13
    # without greedy: the same arrays from the same cached pass
    passes = h.stats["forward_passes"]
    plain = h.continuation_logprobs(PAIRS)
    assert h.stats["forward_passes"] == passes
    assert all(np.array_equal(a, b) for a, (b, _) in zip(plain, got))


@pytest.mark.parametrize("mode", ["hidden", "full"])
def test_every_head_mode_gives_the_same_numbers(lm, mode):
    """The fallbacks (backbone + output embeddings; all logits) equal the logits_to_keep path."""
    key = fresh(lm)._head_key()
    assert fresh(lm)._head_mode() == "keep"
    want = fresh(lm, max_length=12).continuation_logprobs(PAIRS)
    tl_want = fresh(lm).token_logprobs([p[0] + p[1] for p in PAIRS])
    saved = ModelHandle._head_modes.get(key)
    ModelHandle._head_modes[key] = mode
    try:
        got = fresh(lm, max_length=12).continuation_logprobs(PAIRS)
        tl_got = fresh(lm).token_logprobs([p[0] + p[1] for p in PAIRS])
    finally:
        ModelHandle._head_modes[key] = saved
    for a, b in zip(got + tl_got, want + tl_want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_head_mode_is_decided_per_class_and_logit_post_processing(lm):
    """A model whose config scales or soft-caps its logits never reuses the head mode decided for another
    model of its class without it (the "hidden" shortcut would skip the post-processing)."""
    import copy
    plain = fresh(lm)
    scaled_model = copy.copy(lm.model)
    scaled_model.config = copy.deepcopy(lm.model.config)
    scaled_model.config.logit_scale = 2.0
    scaled = ModelHandle(model=scaled_model, tokenizer=lm.tokenizer, task="causal-lm", source="scaled")
    assert plain._head_key()[0] is scaled._head_key()[0]
    assert plain._head_key() != scaled._head_key()


def test_batch_size_invariance(lm):
    from auditkit.data import load_dataset
    from auditkit.plugins import registry
    rows = load_dataset("builtin:mc-general", registry()).rows[:12]
    pairs = [(r["question"], " " + c) for r in rows for c in r["choices"]] + PAIRS
    runs = {bs: fresh(lm, batch_size=bs, max_length=24).continuation_logprobs(pairs, greedy=True)
            for bs in (1, 7, 32)}
    texts = [a + b for a, b in pairs]
    tls = {bs: fresh(lm, batch_size=bs).token_logprobs(texts) for bs in (1, 7, 32)}
    for bs in (7, 32):
        for (a, ga), (b, gb) in zip(runs[1], runs[bs]):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
            assert ga == gb
        for a, b in zip(tls[1], tls[bs]):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_scoring_passes_skip_the_kv_cache_and_head_sees_only_needed_positions(lm):
    h = fresh(lm)
    seen_kwargs, head_rows = [], []

    def pre(module, args, kwargs):
        seen_kwargs.append(dict(kwargs))

    def head_hook(module, args):
        head_rows.append(int(np.prod(args[0].shape[:-1])))

    hooks = [h.model.register_forward_pre_hook(pre, with_kwargs=True),
             h.model.get_output_embeddings().register_forward_pre_hook(head_hook)]
    try:
        from auditkit.data import load_dataset
        from auditkit.plugins import registry
        rows = load_dataset("builtin:mc-general", registry()).rows[:8]
        pairs = [(r["question"], " " + c) for r in rows for c in r["choices"]]
        h.continuation_logprobs(pairs)
        n_mc = len(seen_kwargs)
        mc_head = sum(head_rows)
        h.token_logprobs(["A short text to score.", "Another, somewhat longer, text to score here."])
        h.score_ids([[1, 2, 3], [4, 5]])
        h.next_token_logprobs([[1, 2, 3], [4, 5]], [[7, 8], [9]])
    finally:
        for hk in hooks:
            hk.remove()
    assert n_mc >= 1 and seen_kwargs
    assert all(kw.get("use_cache") is False for kw in seen_kwargs)
    # multiple choice: the head ran on the continuation positions only, far fewer rows than tokens read
    enc = h.encode_pairs(pairs)
    distinct_inputs = {tuple((c + x)[:-1]) for c, x in enc}
    tokens_read = sum(len(i) for i in distinct_inputs)
    assert mc_head == sum(max(len(x) for c, x in enc if tuple((c + x)[:-1]) == i) for i in distinct_inputs)
    assert mc_head < tokens_read / 4
    # choices sharing a context and a single token share one row: fewer rows than pairs
    assert len(distinct_inputs) < len(pairs)
    # token log-probs: the head skips the last position of each row and the padding
    assert head_rows[-3] == (len(h._encode(["A short text to score."])[0]) - 1
                             + len(h._encode(["Another, somewhat longer, text to score here."])[0]) - 1)
    assert head_rows[-2] == 2 + 1 and head_rows[-1] == 2


def test_empty_context_reads_the_prefix_token(lm):
    h = fresh(lm)
    (ctx, cont), = h.encode_pairs([("", "hello world")])
    assert ctx == [h._prefix_token_id()]
    assert cont == lm.tokenizer.encode("hello world", add_special_tokens=False)


def test_too_long_continuation_is_bad_input(lm):
    from auditkit.errors import AuditInputError
    h = fresh(lm, max_length=4)
    with pytest.raises(AuditInputError, match="max_length"):
        h.continuation_logprobs([("Context here", " a continuation of many many tokens indeed")])


# ---------------------------------------------------------------------- lm-eval on the engine

def _instances(kind, args_list):
    from lm_eval.api.instance import Instance
    return [Instance(request_type=kind, doc={}, arguments=a, idx=0) for a in args_list]


def test_engine_lm_equals_hflm(lm):
    """EngineLM answers loglikelihood and loglikelihood_rolling with HFLM's numbers (same max_length),
    including left truncation and rolling windows beyond max_length."""
    from lm_eval.models.huggingface import HFLM

    from auditkit_plugins.lm_eval_adapter import EngineLM
    max_length = 16
    hf = HFLM(pretrained=lm.model, tokenizer=lm.tokenizer, batch_size=3, max_length=max_length)
    ours = EngineLM(fresh(lm, batch_size=5, max_length=max_length))
    pairs = [p for p in PAIRS if p[1]]
    want = hf.loglikelihood(_instances("loglikelihood", pairs), disable_tqdm=True)
    got = ours.loglikelihood(_instances("loglikelihood", pairs))
    for (a, ga), (b, gb), pair in zip(got, want, pairs):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-5), pair
        assert ga == gb, pair
    texts = [("The staff were friendly and helpful, and the food arrived quickly. " * 3,), ("Short.",)]
    want = hf.loglikelihood_rolling(_instances("loglikelihood_rolling", texts), disable_tqdm=True)
    got = ours.loglikelihood_rolling(_instances("loglikelihood_rolling", texts))
    assert len(lm.tokenizer.encode(texts[0][0])) > 2 * max_length  # several windows
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_engine_lm_generate_until(lm):
    if not hasattr(lm, "generate"):
        pytest.skip("ModelHandle.generate is not there yet")
    from lm_eval.models.huggingface import HFLM

    from auditkit_plugins.lm_eval_adapter import EngineLM
    hf = HFLM(pretrained=lm.model, tokenizer=lm.tokenizer, batch_size=2, max_length=64)
    args = [("Question: What colour is the sky?\nAnswer:", {"until": ["\n"], "max_gen_toks": 8, "do_sample": False}),
            ("Once upon a time", {"until": ["."], "max_gen_toks": 6})]
    want = hf.generate_until(_instances("generate_until", args), disable_tqdm=True)
    got = EngineLM(fresh(lm, max_length=64)).generate_until(_instances("generate_until", args))
    assert got == want


def test_lm_eval_check_runs_on_the_engine(tiny_gpt2, registry):
    """The lm_eval check asks the handle (its passes are counted and cached there), never HFLM; its acc equals
    HFLM's on the same task."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from auditkit.api import CheckContext
    from auditkit.data import load_dataset
    from auditkit_plugins.lm_eval_task import LmEvalTask, write_mc_task
    h = fresh(tiny_gpt2, max_length=64)
    data = load_dataset("builtin:mc-general", registry)
    data.rows = data.rows[:10]
    params = {k: p.default for k, p in LmEvalTask.params.items()} | {"task": "builtin:mc-general", "limit": 10}
    ctx = CheckContext(model=h, params=params, seed=0, device="cpu", data=None, check_id="lm_eval")
    ctx.load_data = lambda spec, c=None: data
    res = LmEvalTask().run(ctx)
    assert h.stats["forward_passes"] >= 1
    assert h.batch_size == 32  # restored after the check
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as tmp:
        yml = write_mc_task(data.rows, Path(tmp), "h4_mc")
        out = lm_eval.simple_evaluate(
            model=HFLM(pretrained=tiny_gpt2.model, tokenizer=tiny_gpt2.tokenizer, batch_size=4, max_length=64),
            tasks=["h4_mc"], task_manager=TaskManager(include_path=str(yml.parent), include_defaults=False),
            limit=10, random_seed=0, numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0,
            verbosity="ERROR")
    theirs = out["results"]["h4_mc"]
    assert res.metrics["acc"].value == theirs["acc,none"]
    assert res.metrics["acc_norm"].value == theirs["acc_norm,none"]
