"""API models (auditkit.remote) against an OpenAI-compatible server on 127.0.0.1 serving the tiny GPT-2:
the numbers equal the same model's in-process ones, the request cache, concurrency, retries, bad input
and the key never written."""
from __future__ import annotations

import socket
import time

import numpy as np
import pytest
import torch

from auditkit.errors import AuditInputError
from auditkit.remote import APIModelHandle, APIRequestError, open_api_model
from auditkit.suite import ModelSpec
from tests.openai_server import OpenAIServer, chat_prompt

KEY = "sk-test-Zq8rVb3LkP0wXy7NsecretKEY"
PAIRS = [("The cat sat on the", " mat"), ("Paris is the capital of", " France and more"),
         ("Answer:", " yes"), ("Answer: ", "no"), ("a b c", " d e f g"), ("One two", " three")]


@pytest.fixture
def disk_cache(tmp_path, monkeypatch):
    """The request cache on, in a folder of its own."""
    monkeypatch.setenv("AUDITKIT_DISK_CACHE", "1")
    monkeypatch.setenv("AUDITKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def spec(url: str, **kw) -> ModelSpec:
    return ModelSpec(base="openai-compatible", task="causal-lm", endpoint=url, name=kw.pop("name", "tiny-gpt2"), **kw)


def api(srv: OpenAIServer, **kw) -> APIModelHandle:
    handle_kw = {k: kw.pop(k) for k in ("retries", "backoff_s", "backoff_max_s", "timeout_s") if k in kw}
    handle_kw.setdefault("backoff_s", 0.01)
    return open_api_model(spec(srv.url, **kw), file="suite.yaml", **handle_kw)


def greedy_reference(model, tok, prompt: str, n: int) -> str:
    """transformers' own greedy decoding of the same model, in process."""
    ids = torch.tensor([tok(prompt)["input_ids"]])
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    gen = out[0, ids.shape[1]:].tolist()
    if tok.eos_token_id in gen:
        gen = gen[:gen.index(tok.eos_token_id)]
    return tok.decode(gen)


# ---------------------------------------------------------------------- the numbers

def test_continuation_logprobs_equal_in_process(srv, tiny_gpt2):
    h = api(srv)
    got = h.continuation_logprobs(PAIRS)
    want = tiny_gpt2.continuation_logprobs(PAIRS)
    # independently: one plain forward over the whole text, the continuation's tokens by offset
    tok, model = tiny_gpt2.tokenizer, tiny_gpt2.model
    for (ctx, cont), g, w in zip(PAIRS, got, want):
        assert g.shape == w.shape and g.dtype == np.float32
        np.testing.assert_allclose(g, w, atol=1e-5)
        n_sp = len(ctx) - len(ctx.rstrip())
        ctx, cont = ctx[:len(ctx) - n_sp], ctx[len(ctx) - n_sp:] + cont
        ids = tok(ctx + cont)["input_ids"]
        with torch.inference_mode():
            lp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, :-1].float(), -1)
        lp = lp.gather(-1, torch.tensor(ids[1:]).unsqueeze(-1)).squeeze(-1).numpy()
        k = len(tok(ctx)["input_ids"])
        np.testing.assert_allclose(g, lp[k - 1:], atol=1e-5)


def test_token_logprobs_equal_in_process(srv, tiny_gpt2):
    texts = ["hello world, this is a test", "x", "The quick brown fox jumps over the lazy dog."]
    got = api(srv).token_logprobs(texts)
    want = tiny_gpt2.token_logprobs(texts)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, atol=1e-5)


def test_server_refusing_max_tokens_zero_is_asked_for_one(srv, tiny_gpt2):
    srv.reject_max_tokens_zero = True
    got = api(srv).continuation_logprobs(PAIRS[:3])
    for g, w in zip(got, tiny_gpt2.continuation_logprobs(PAIRS[:3])):
        np.testing.assert_allclose(g, w, atol=1e-5)
    assert any(b and b.get("max_tokens") == 1 for _, _, _, b in srv.log)


def test_greedy_generation_equals_in_process(srv, tiny_gpt2):
    prompts = ["The cat sat on the", "Once upon a time", "1 2 3 4"]
    out = api(srv).generate(prompts, max_new_tokens=12)
    assert [len(o) for o in out] == [1, 1, 1]
    for p, (g,) in zip(prompts, out):
        assert g.text == greedy_reference(tiny_gpt2.model, tiny_gpt2.tokenizer, p, 12)
        assert g.finish_reason in ("length", "eos")
    # the in-process generation request of the same model
    local = tiny_gpt2.generate(prompts, max_new_tokens=12)
    assert [(g[0].text, g[0].finish_reason) for g in local] == [(g[0].text, g[0].finish_reason) for g in out]


def test_finish_reasons_in_the_request_terms():
    fr = APIModelHandle._finish_reason
    assert fr({"finish_reason": "length"}, ["x"]) == "length"
    assert fr({"finish_reason": "stop", "stop_reason": "\n"}, ["\n"]) == "stop"
    assert fr({"finish_reason": "stop", "stop_reason": None}, ["\n"]) == "eos"  # vLLM: an EOS token
    assert fr({"finish_reason": "stop", "stop_reason": 50256}, []) == "eos"
    assert fr({"finish_reason": "stop"}, []) == "eos"  # OpenAI without stop sequences
    assert fr({"finish_reason": "stop"}, ["\n"]) == "stop"


def test_generation_params_reach_the_server(srv):
    h = api(srv)
    out = h.generate(["Hello there"], max_new_tokens=5, temperature=0.7, top_p=0.9, seed=3, samples=3,
                     stop=["\n"])
    assert len(out[0]) == 3
    body = [b for m, p, _, b in srv.log if p == "/v1/completions"][-1]
    assert body["n"] == 3 and body["seed"] == 3 and body["temperature"] == 0.7 and body["top_p"] == 0.9
    assert body["stop"] == ["\n"] and body["max_tokens"] == 5 and body["model"] == "tiny-gpt2"
    # seeded sampling is reproducible (and different seeds differ somewhere)
    again = api(srv).generate(["Hello there"], max_new_tokens=5, temperature=0.7, top_p=0.9, seed=3, samples=3,
                              stop=["\n"])
    assert [g.text for g in again[0]] == [g.text for g in out[0]]


def test_stop_sequence_cuts_the_text(srv, tiny_gpt2):
    free = api(srv).generate(["The cat sat on the"], max_new_tokens=12)[0][0].text
    assert len(free) > 3
    stop = free[2:4]
    cut = api(srv).generate(["The cat sat on the"], max_new_tokens=12, stop=stop)[0][0]
    assert cut.text == free[:free.find(stop)] and cut.finish_reason == "stop"
    local = tiny_gpt2.generate(["The cat sat on the"], max_new_tokens=12, stop=[stop])[0][0]
    assert (local.text, local.finish_reason) == (cut.text, cut.finish_reason)
    with pytest.raises(ValueError):
        api(srv).generate(["x"], top_p=0.0)
    assert api(srv).generate([]) == []


def test_chat_messages_go_to_chat_completions(srv, tiny_gpt2):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi"}]
    (g,), = api(srv).generate([msgs], max_new_tokens=6)
    assert srv.log[-1][1] == "/v1/chat/completions"
    assert g.text == greedy_reference(tiny_gpt2.model, tiny_gpt2.tokenizer, chat_prompt(msgs), 6)
    with pytest.raises(TypeError):
        api(srv).generate([42])
    with pytest.raises(TypeError):
        api(srv).generate("one string")


def test_chat_template_the_server_lacks_is_bad_input(srv):
    srv.no_chat_template = True
    h = api(srv)
    assert h.has_chat_template
    with pytest.raises(AuditInputError) as e:
        h.generate([[{"role": "user", "content": "hi"}]], max_new_tokens=2)
    assert "model.chat_template" in e.value.line() and "chat_template: false" in e.value.line()
    assert not api(srv, chat_template=False).has_chat_template


def test_preflight_refuses_what_an_api_cannot_do():
    from types import SimpleNamespace as NS
    from auditkit.api import Check
    from auditkit.remote import preflight_api

    class Weights(Check):
        needs = frozenset({"weights"})

    class Grads(Check):
        needs = frozenset({"gradients"})

        @classmethod
        def needs_for(cls, params, task):
            return frozenset() if params.get("method") == "none" else cls.needs

    class Plain(Check):
        needs = frozenset({"logprobs"})

    ok = [NS(id="a", cls=Plain, params={}, line=3), NS(id="g", cls=Grads, params={"method": "none"}, line=4)]
    preflight_api(ok, file="s.yaml")
    for bad in (NS(id="w", cls=Weights, params={}, line=7), NS(id="g2", cls=Grads, params={}, line=8)):
        with pytest.raises(AuditInputError) as e:
            preflight_api(ok + [bad], file="s.yaml")
        line = e.value.line()
        assert line.startswith(f"s.yaml:line {bad.line} (checks[2].uses): check {bad.id!r} needs the model's weights; "
                               "an API model has none")
    with pytest.raises(AuditInputError, match="fine-tuning needs the model's weights"):
        preflight_api(ok, finetune=True, file="s.yaml")
    with pytest.raises(AuditInputError, match="one process"):
        preflight_api(ok, processes=2, file="s.yaml")
    with pytest.raises(AuditInputError, match="causal-lm"):
        preflight_api(ok, task="sequence-classification", file="s.yaml")


def test_no_prompt_logprobs_is_bad_input(srv):
    srv.no_logprobs = True
    h = api(srv)
    with pytest.raises(AuditInputError) as e:
        h.continuation_logprobs(PAIRS[:2])
    assert "returns no prompt log-probs" in e.value.line() and "multiple-choice accuracy needs them" in e.value.line()
    with pytest.raises(AuditInputError, match="returns no prompt log-probs"):
        h.token_logprobs(["some text"])
    assert h.generate(["still generates"], max_new_tokens=3)[0][0].finish_reason in ("length", "eos")


def test_describe_and_capabilities(srv):
    h = api(srv)
    d = h.describe()
    assert d == {"id": f"openai-compatible:tiny-gpt2@{srv.url}", "fingerprint": h.fingerprint, "task": "causal-lm",
                 "architecture": "api", "parameters": None}
    assert h.capabilities == frozenset({"generate", "logprobs"}) and h.task == "causal-lm"
    # the fingerprint is stable across opens (vLLM's /models stamps `created` with the time)
    time.sleep(1.05)
    assert api(srv).fingerprint == h.fingerprint
    other = APIModelHandle(srv.url, "another", model_card={"id": "another"})
    assert other.fingerprint != h.fingerprint
    for op in ("token_ids", "class_logits", "hidden_states", "attentions"):
        with pytest.raises(AuditInputError, match="an API model has neither"):
            getattr(h, op)(["x"])


# ---------------------------------------------------------------------- cache, concurrency, retries

def test_second_run_makes_no_requests(srv, disk_cache):
    prompts = [f"prompt number {i}" for i in range(6)]
    first = api(srv).generate(prompts, max_new_tokens=4)
    lp1 = api(srv).continuation_logprobs(PAIRS)
    n = srv.posts
    assert n == len(prompts) + len(PAIRS)
    h2 = api(srv)
    assert [g[0].text for g in h2.generate(prompts, max_new_tokens=4)] == [g[0].text for g in first]
    for a, b in zip(h2.continuation_logprobs(PAIRS), lp1):
        np.testing.assert_array_equal(a, b)
    assert srv.posts == n and h2.stats["requests"] == 0
    assert h2.stats["request_cache_hits"] + h2.stats["disk_hits"] >= 2
    assert list((disk_cache / "requests" / h2.fingerprint).rglob("*.json"))
    # another sampling parameter is another request
    api(srv).generate(prompts[:1], max_new_tokens=5)
    assert srv.posts == n + 1


def test_cache_off_asks_again(srv, monkeypatch, tmp_path):
    monkeypatch.setenv("AUDITKIT_DISK_CACHE", "0")
    monkeypatch.setenv("AUDITKIT_CACHE", str(tmp_path))
    api(srv).generate(["a"], max_new_tokens=2)
    api(srv).generate(["a"], max_new_tokens=2)
    assert srv.posts == 2 and not (tmp_path / "requests").exists()


@pytest.mark.parametrize("concurrency", [1, 8])
def test_run_cut_off_midway_resumes_from_the_cache(srv, disk_cache, concurrency):
    prompts = [f"resume test {i}" for i in range(10)]
    srv.fail_after = 4
    cut = api(srv, concurrency=concurrency, retries=1)
    with pytest.raises(APIRequestError, match="failed after"):
        cut.generate(prompts, max_new_tokens=3)
    cut.close()  # the requests already under way finish (and are cached)
    assert srv.posts == 4
    srv.fail_after = None
    done = srv.posts
    h = api(srv, concurrency=concurrency)
    out = h.generate(prompts, max_new_tokens=3)
    assert srv.posts - done == 6 and h.stats["request_cache_hits"] == 4 and h.stats["requests"] == 6
    fresh = APIModelHandle(srv.url, "tiny-gpt2", model_card={"id": "x"})  # another fingerprint: no cache
    assert [g[0].text for g in fresh.generate(prompts, max_new_tokens=3)] == [g[0].text for g in out]


def test_concurrency_overlaps(srv):
    srv.delay_s = 0.2
    h1 = api(srv, concurrency=1)
    t0 = time.perf_counter()
    h1.generate(["one request"], max_new_tokens=1)
    one = time.perf_counter() - t0
    h8 = api(srv, concurrency=8)
    t0 = time.perf_counter()
    out = h8.generate([f"request {i}" for i in range(8)], max_new_tokens=1)
    eight = time.perf_counter() - t0
    assert len(out) == 8 and srv.posts == 9
    assert eight < 2 * one, (one, eight)


def test_identical_requests_go_once(srv):
    api(srv).generate(["same", "same", "other", "same"], max_new_tokens=2)
    assert srv.posts == 2


def test_retries_recover_from_two_500s(srv):
    srv.fail_next = [500, 503]
    h = api(srv, backoff_s=0.01)
    out = h.generate(["retry me"], max_new_tokens=3)
    assert out[0][0].finish_reason in ("length", "eos") and h.stats["retries"] == 2
    srv.fail_next = [429]
    assert api(srv).generate(["rate limited"], max_new_tokens=2)


def test_retries_recover_from_a_dropped_connection_and_bound_timeouts(srv):
    srv.drop_next = 1
    h = api(srv)
    assert h.generate(["dropped once"], max_new_tokens=2)[0][0].text is not None and h.stats["retries"] == 1
    srv.delay_s = 0.5
    slow = api(srv, timeout_s=0.1, retries=1)
    with pytest.raises(APIRequestError, match="no answer within 0.1 s"):
        slow.generate(["too slow"], max_new_tokens=1)
    assert slow.stats["retries"] == 1


def test_retries_are_bounded(srv):
    srv.fail_next = [500] * 10
    h = api(srv, retries=2, backoff_s=0.01)
    with pytest.raises(APIRequestError, match="failed after 3 tries"):
        h.generate(["never"], max_new_tokens=1)
    assert h.stats["retries"] == 2 and len(srv.fail_next) == 7


def test_backoff_is_deterministic_and_exponential(srv, monkeypatch):
    waits = []
    monkeypatch.setattr("auditkit.remote.time.sleep", waits.append)
    for _ in range(2):
        srv.fail_next = [500] * 3
        api(srv, backoff_s=0.5, backoff_max_s=100).generate(["backoff"], max_new_tokens=1)
    assert len(waits) == 6 and waits[:3] == waits[3:]
    for k, w in enumerate(waits[:3]):
        assert 0.5 * 2 ** k * 0.5 <= w <= 0.5 * 2 ** k * 1.5


def test_client_error_is_not_retried(srv):
    h = APIModelHandle(srv.url, "not-served", model_card={"id": "not-served"}, backoff_s=0.01)
    with pytest.raises(APIRequestError, match="HTTP 404"):
        h.generate(["x"], max_new_tokens=1)
    assert h.stats["retries"] == 0


# ---------------------------------------------------------------------- bad input

def _one_line(exc: AuditInputError) -> str:
    line = exc.line()
    assert "\n" not in line and line.startswith("suite.yaml:")
    return line


def test_refused_connection():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(AuditInputError) as e:
        open_api_model(spec(f"http://127.0.0.1:{port}/v1"), file="suite.yaml")
    line = _one_line(e.value)
    assert "model.endpoint" in line and "refused" in line and "start the server" in line


def test_silent_endpoint_times_out():
    with socket.socket() as s:  # listens, never answers
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        url = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
        with pytest.raises(AuditInputError) as e:
            open_api_model(spec(url), file="suite.yaml", connect_timeout_s=0.3)
    line = _one_line(e.value)
    assert "did not answer within 0.3 s" in line and "model.endpoint" in line


@pytest.mark.parametrize("status,words", [(401, ["HTTP 401", "model.api_key_env"]),
                                          (404, ["HTTP 404", "/v1"]),
                                          (500, ["HTTP 500", "model.endpoint"])])
def test_bad_status(srv, status, words):
    srv.fail_status = status
    with pytest.raises(AuditInputError) as e:
        api(srv)
    line = _one_line(e.value)
    for w in words:
        assert w in line


def test_wrong_path_is_404(srv):
    with pytest.raises(AuditInputError, match="HTTP 404"):
        open_api_model(spec(srv.url.rsplit("/v1", 1)[0] + "/api"), file="suite.yaml")


def test_unknown_model_name(srv):
    with pytest.raises(AuditInputError) as e:
        api(srv, name="tiny-gtp2")
    line = _one_line(e.value)
    assert "model.name" in line and "it serves: tiny-gpt2" in line and "did you mean 'tiny-gpt2'?" in line


def test_key_env_unset(srv, monkeypatch):
    monkeypatch.delenv("AUDITKIT_TEST_KEY", raising=False)
    with pytest.raises(AuditInputError) as e:
        api(srv, api_key_env="AUDITKIT_TEST_KEY")
    line = _one_line(e.value)
    assert "AUDITKIT_TEST_KEY" in line and "not set" in line and "model.api_key_env" in line


def test_key_required_and_wrong_key(srv, monkeypatch):
    srv.api_key = KEY
    with pytest.raises(AuditInputError, match="HTTP 401"):
        api(srv)  # no key sent
    monkeypatch.setenv("AUDITKIT_TEST_KEY", "sk-wrong")
    with pytest.raises(AuditInputError) as e:
        api(srv, api_key_env="AUDITKIT_TEST_KEY")
    assert "sk-wrong" not in e.value.line()


# ---------------------------------------------------------------------- the key

def test_key_is_sent_and_never_written(srv, disk_cache, monkeypatch, tmp_path):
    srv.api_key = KEY
    monkeypatch.setenv("AUDITKIT_TEST_KEY", KEY)
    h = api(srv, api_key_env="AUDITKIT_TEST_KEY")
    h.generate(["the key test", [{"role": "user", "content": "hi"}]], max_new_tokens=3, samples=2,
               temperature=1.0, seed=1)
    h.continuation_logprobs(PAIRS[:2])
    h.token_logprobs(["key test text"])
    assert all(hdr.get("Authorization") == f"Bearer {KEY}" for _, _, hdr, _ in srv.log)
    assert KEY not in repr(h) and KEY not in repr(h.describe()) and KEY not in h.fingerprint
    files = [p for p in disk_cache.rglob("*") if p.is_file()]
    assert len(files) >= 5
    for p in files:
        assert KEY.encode() not in p.read_bytes(), p
    # a mid-run 401 names the key's variable, not the key
    srv.api_key = "sk-rotated"
    with pytest.raises(AuditInputError) as e:
        h.generate(["after rotation"], max_new_tokens=1)
    assert KEY not in e.value.line() and "api_key_env" in e.value.line()


# ---------------------------------------------------------------------- through the runner

def test_audit_through_the_api_equals_in_process(srv, disk_cache, monkeypatch, tmp_path, run_cli):
    import json
    from tests.conftest import write_suite
    srv.api_key = KEY
    monkeypatch.setenv("AUDITKIT_TEST_KEY", KEY)
    check = '{uses: accuracy, id: mc, data: "builtin:mc-general", max_examples: 8, gates: []}'
    api_suite = write_suite(tmp_path, f"""
        name: api
        model: {{base: openai-compatible, task: causal-lm, endpoint: "{srv.url}", name: tiny-gpt2,
                 api_key_env: AUDITKIT_TEST_KEY, concurrency: 4}}
        checks:
          - {check}
        """, "api.yaml")
    local_suite = write_suite(tmp_path, f"""
        name: local
        model: {{base: "builtin:tiny-gpt2", task: causal-lm}}
        checks:
          - {check}
        """, "local.yaml")
    code, out, err = run_cli("run", api_suite, "--out", tmp_path / "out-api", "--device", "cpu")
    assert code == 0, err
    code, _, err = run_cli("run", local_suite, "--out", tmp_path / "out-local", "--device", "cpu")
    assert code == 0, err
    got = json.loads((tmp_path / "out-api" / "results.json").read_text())
    want = json.loads((tmp_path / "out-local" / "results.json").read_text())
    assert got["checks"][0]["metrics"]["acc"] == want["checks"][0]["metrics"]["acc"]
    assert got["checks"][0]["records"] == want["checks"][0]["records"]
    files = [p for d in (tmp_path / "out-api", disk_cache) for p in d.rglob("*") if p.is_file()]
    for p in files:
        assert KEY.encode() not in p.read_bytes(), p
    assert KEY not in out + err
    # a second run is answered from the request cache
    before = srv.posts
    code, _, _ = run_cli("run", api_suite, "--out", tmp_path / "out-api2", "--device", "cpu")
    assert code == 0 and srv.posts == before


@pytest.mark.parametrize("check", ["{uses: explainability, data: \"builtin:reviews\"}", "{uses: cost}"])
def test_checks_needing_weights_exit_2_before_anything_runs(srv, tmp_path, run_cli, check):
    from tests.conftest import write_suite
    suite = write_suite(tmp_path, f"""
        name: api
        model: {{base: openai-compatible, task: causal-lm, endpoint: "{srv.url}", name: tiny-gpt2}}
        checks:
          - {check}
        """)
    code, out, err = run_cli("run", suite, "--out", tmp_path / "out", "--device", "cpu")
    assert code == 2 and "needs the model's weights; an API model has none" in err
    assert len(err.strip().splitlines()) == 1 and srv.posts == 0


def test_bad_endpoint_exits_2_through_the_cli(tmp_path, run_cli):
    from tests.conftest import write_suite
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    suite = write_suite(tmp_path, f"""
        name: api
        model: {{base: openai-compatible, task: causal-lm, endpoint: "http://127.0.0.1:{port}/v1", name: m}}
        checks:
          - {{uses: accuracy, data: "builtin:mc-general", gates: []}}
        """)
    code, out, err = run_cli("run", suite, "--out", tmp_path / "out", "--device", "cpu")
    assert code == 2 and "refused" in err and "model.endpoint" in err and "Traceback" not in err
