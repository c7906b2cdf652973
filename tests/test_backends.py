"""Backends and big-model options (issue 10, sections 2-4 and Bad input), on a machine without a GPU.

- Every option this machine (or this suite) cannot serve is exit 2 with one line, before any model
  loads: k-bit quantization and device_map without CUDA or bitsandbytes, vLLM without CUDA or vLLM, vLLM
  for a classifier / a fine-tune / a check that needs gradients, device_map for a class without
  ``_no_split_modules``, qlora without a 4-bit base. CUDA and the packages are faked where a test must
  get past the machine check.
- ``load_kwargs`` builds transformers' ``BitsAndBytesConfig`` (NF4 + bf16 compute, or 8-bit).
- ``VLLMHandle`` against a fake ``vllm`` module that records the calls: its prompt log-probs are computed
  by the tiny GPT-2 itself, so the handle's lm-eval tokenization and read-out are checked against the hf
  handle; generation maps stop sequences, finish reasons, samples and per-prompt seeds.
- DDP fine-tuning: ``--processes 2`` on CPU trains the same weights as one process.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from auditkit import backends
from auditkit.errors import AuditInputError
from auditkit.suite import ModelSpec
from tests.conftest import write_jsonl, write_suite

CLASSIFIER = 'model: {{base: "builtin:tiny-bert", max_length: 32{extra}}}'
CAUSAL = 'model: {{base: "builtin:tiny-gpt2", task: causal-lm, max_length: 32{extra}}}'


@pytest.fixture
def no_load(monkeypatch):
    """Fail the test if any model's weights start loading."""
    from transformers import PreTrainedModel

    def boom(cls, *a, **k):
        raise AssertionError("a model was loaded")
    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(boom))


@pytest.fixture
def fake_cuda(monkeypatch):
    """Pretend this machine has a CUDA GPU (nothing may reach it: every case below stops before loading)."""
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


def _suite(tmp_path, model_line: str, *, finetune: str = "", checks: str = "") -> Path:
    write_jsonl(tmp_path / "val.jsonl", [{"text": f"the film was {'good' if i % 2 else 'bad'}", "label": i % 2}
                                         for i in range(8)])
    write_jsonl(tmp_path / "lm.jsonl", [{"text": f"a short line number {i}"} for i in range(8)])
    checks = checks or "  - {uses: accuracy, data: val.jsonl, bootstrap: 100, gates: []}"
    text = f"name: t\nseed: 0\n{model_line}\n{finetune}checks:\n{checks}\n"
    return write_suite(tmp_path, text)


def _exit2(run_cli, suite, *args) -> str:
    code, out, err = run_cli("run", suite, "--out", suite.parent / "out", *args)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("auditkit: error: "), err
    assert not (suite.parent / "out" / "results.json").exists()
    return lines[0]


# ---------------------------------------------------------------------- exit 2 before anything loads

def test_quantization_without_cuda(tmp_path, run_cli, no_load):
    suite = _suite(tmp_path, CLASSIFIER.format(extra=", quantization: {bits: 4}"))
    line = _exit2(run_cli, suite, "--device", "cpu")
    assert "model.quantization needs a CUDA GPU (bitsandbytes); this machine has none" in line
    assert "suite.yaml:line 3 (model.quantization)" in line


def test_device_map_without_cuda(tmp_path, run_cli, no_load):
    suite = _suite(tmp_path, CAUSAL.format(extra=", device_map: auto"),
                   checks="  - {uses: bias.pairs, gates: []}")
    line = _exit2(run_cli, suite, "--device", "cpu")
    assert "device_map" in line and "this machine has none" in line


def test_vllm_without_cuda(tmp_path, run_cli, no_load):
    suite = _suite(tmp_path, CAUSAL.format(extra=", backend: vllm"),
                   checks="  - {uses: bias.pairs, gates: []}")
    line = _exit2(run_cli, suite, "--device", "cpu")
    assert "backend: vllm needs a CUDA GPU; this machine has none" in line


def test_bitsandbytes_missing(tmp_path, run_cli, no_load, fake_cuda, monkeypatch):
    monkeypatch.setattr(backends, "_importable", lambda name: name != "bitsandbytes")
    suite = _suite(tmp_path, CLASSIFIER.format(extra=", quantization: {bits: 8}"))
    line = _exit2(run_cli, suite, "--device", "cuda")
    assert "needs bitsandbytes, which is not installed" in line
    assert "pip install 'auditkit[gpu]'" in line


def test_quantization_on_cpu_of_a_cuda_machine(tmp_path, run_cli, no_load, fake_cuda):
    suite = _suite(tmp_path, CLASSIFIER.format(extra=", quantization: {bits: 4}"))
    line = _exit2(run_cli, suite, "--device", "cpu")
    assert "but this run is on cpu" in line and "--device auto or --device cuda" in line


def test_vllm_missing(tmp_path, run_cli, no_load, fake_cuda, monkeypatch):
    monkeypatch.delitem(sys.modules, "vllm", raising=False)
    monkeypatch.setattr(backends, "_importable", lambda name: name != "vllm")
    suite = _suite(tmp_path, CAUSAL.format(extra=", backend: vllm, tensor_parallel_size: 1"),
                   checks="  - {uses: bias.pairs, gates: []}")
    line = _exit2(run_cli, suite, "--device", "cuda")
    assert "backend: vllm needs vLLM, which is not installed" in line and "pip install 'auditkit[vllm]'" in line


@pytest.mark.parametrize("extra, words", [
    (", vllm_args: {enforce_eager: true}", ["vllm_args is a vLLM setting", "add backend: vllm"]),
    (", backend: vllm, vllm_args: [enforce_eager]", ["model.vllm_args must be a mapping"]),
    (", backend: vllm, vllm_args: {dtype: float16}", ["vllm_args.dtype is set by auditkit", "set model.dtype"]),
    (", backend: vllm, vllm_args: {seed: 3}", ["vllm_args.seed is set by auditkit", "seed"]),
])
def test_vllm_args_mistakes_are_exit_2_before_anything_loads(tmp_path, run_cli, no_load, extra, words):
    line = _exit2(run_cli, _suite(tmp_path, CAUSAL.format(extra=extra)), "--device", "cpu")
    assert all(w in line for w in words), line


def test_vllm_args_reach_the_engine_and_a_name_it_refuses_is_exit_2(registry, monkeypatch):
    mod, calls = _fake_vllm(None, None)
    monkeypatch.setitem(sys.modules, "vllm", mod)
    spec = ModelSpec(base="builtin:tiny-gpt2", task="causal-lm", backend="vllm",
                     vllm_args={"enforce_eager": True, "attention_backend": "TRITON_ATTN",
                                "gpu_memory_utilization": 0.3})
    backends.VLLMHandle.load(spec, registry, gpu_memory_utilization=0.45)
    kw = calls["init"][-1]
    assert kw["enforce_eager"] is True and kw["attention_backend"] == "TRITON_ATTN"
    assert kw["gpu_memory_utilization"] == 0.3  # the suite's own setting wins over the two-engine share

    class Strict(mod.LLM):
        def __init__(self, *, no_such_argument=None, **kw):
            raise TypeError("EngineArgs.__init__() got an unexpected keyword argument 'enforce_eagre'")
    monkeypatch.setattr(mod, "LLM", Strict)
    spec.vllm_args = {"enforce_eagre": True}
    with pytest.raises(AuditInputError, match="vLLM refused model.vllm_args: .*enforce_eagre") as err:
        backends.VLLMHandle.load(spec, registry)
    assert err.value.place == "model.vllm_args"


def test_vllm_for_a_classifier(tmp_path, run_cli, no_load):
    suite = _suite(tmp_path, CLASSIFIER.format(extra=", backend: vllm"))
    line = _exit2(run_cli, suite, "--device", "cpu")
    assert "vLLM serves causal LMs; a classifier needs backend: hf" in line
    assert "line 3 (model.backend)" in line


def test_vllm_cannot_fine_tune(tmp_path, run_cli, no_load):
    ft = "finetune: {data: lm.jsonl, method: lora, epochs: 1}\n"
    suite = _suite(tmp_path, CAUSAL.format(extra=", backend: vllm"), finetune=ft,
                   checks="  - {uses: bias.pairs, gates: []}")
    line = _exit2(run_cli, suite, "--device", "cpu")
    assert "backend: vllm cannot fine-tune" in line and "(finetune.method)" in line


def test_vllm_refuses_a_check_that_needs_gradients(tmp_path, run_cli, no_load, registry, monkeypatch):
    from auditkit.api import Check
    from auditkit.plugins import registry as get_registry

    class NeedsGrad(Check):
        name = "needs-grad"
        description = "test: needs gradients"
        tasks = ("causal-lm",)
        needs_data = False
        needs = frozenset({"gradients", "attentions"})

    monkeypatch.setitem(get_registry().checks, "needs-grad", NeedsGrad)
    suite = _suite(tmp_path, CAUSAL.format(extra=", backend: vllm"),
                   checks="  - {uses: bias.pairs, gates: []}\n  - {uses: needs-grad, gates: []}")
    line = _exit2(run_cli, suite, "--device", "cpu")
    assert "check 'needs-grad' needs attentions, gradients, which backend vllm cannot serve" in line
    assert "line 6 (checks[1].uses)" in line


def test_qlora_needs_a_4bit_base(tmp_path, run_cli, no_load):
    ft = "finetune: {data: lm.jsonl, method: qlora, epochs: 1}\n"
    suite = _suite(tmp_path, CAUSAL.format(extra=""), finetune=ft,
                   checks="  - {uses: bias.pairs, gates: []}")
    line = _exit2(run_cli, suite, "--device", "cpu")
    assert "qlora trains LoRA on a 4-bit base, but model.quantization is not set" in line
    suite = _suite(tmp_path, CAUSAL.format(extra=", quantization: {bits: 8}"), finetune=ft,
                   checks="  - {uses: bias.pairs, gates: []}")
    assert "model.quantization is 8-bit" in _exit2(run_cli, suite, "--device", "cpu")


def test_qlora_without_cuda(tmp_path, run_cli, no_load):
    ft = "finetune: {data: lm.jsonl, method: qlora, epochs: 1}\n"
    suite = _suite(tmp_path, CAUSAL.format(extra=", quantization: {bits: 4}"), finetune=ft,
                   checks="  - {uses: bias.pairs, gates: []}")
    line = _exit2(run_cli, suite, "--device", "cpu")
    assert "model.quantization needs a CUDA GPU (bitsandbytes); this machine has none" in line


def test_device_map_needs_no_split_modules(tmp_path, run_cli, no_load, fake_cuda, monkeypatch):
    monkeypatch.setattr(backends, "_importable", lambda name: True)
    # BertForSequenceClassification declares no _no_split_modules
    suite = _suite(tmp_path, CLASSIFIER.format(extra=", device_map: auto"))
    line = _exit2(run_cli, suite, "--device", "cuda")
    assert "cannot spread BertForSequenceClassification over GPUs" in line and "_no_split_modules" in line


def test_device_map_class_resolution(registry, fake_cuda, monkeypatch, no_load):
    """The class comes from config.json through the task's auto mapping, without loading weights."""
    monkeypatch.setattr(backends, "_importable", lambda name: True)
    assert backends.model_class("builtin:tiny-gpt2", "causal-lm", registry).__name__ == "GPT2LMHeadModel"
    assert backends.model_class("builtin:tiny-bert", "sequence-classification",
                                registry).__name__ == "BertForSequenceClassification"
    spec = ModelSpec(base="builtin:tiny-gpt2", task="causal-lm", device_map="auto")
    backends.preflight(spec, "cuda", [], finetune_method=None, file="s.yaml", registry=registry)  # GPT2Block


def test_preflight_direct_cases(registry):
    """Cases the CLI cannot reach on one CPU process: vLLM or device_map under data parallel."""
    spec = ModelSpec(base="builtin:tiny-gpt2", task="causal-lm", backend="vllm")
    with pytest.raises(AuditInputError, match="runs in one process, not 2"):
        backends.preflight(spec, "cuda", [], finetune_method=None, file="s.yaml", processes=2)
    spec = ModelSpec(base="builtin:tiny-gpt2", task="causal-lm", device_map="auto")
    with pytest.raises(AuditInputError, match="cannot run in 2 data-parallel processes"):
        backends.preflight(spec, "cuda", [], finetune_method=None, file="s.yaml", processes=2)
    spec = ModelSpec(base="builtin:tiny-gpt2", task="causal-lm", backend="vllm", quantization_bits=4)
    with pytest.raises(AuditInputError, match="model.quantization is a setting of backend hf"):
        backends.preflight(spec, "cuda", [], finetune_method=None, file="s.yaml")
    # a plain hf model on the CPU is always servable
    backends.preflight(ModelSpec(base="builtin:tiny-bert"), "cpu", [], finetune_method="lora", file="s.yaml",
                       registry=registry)


def test_capabilities():
    assert backends.capabilities(ModelSpec(base="x")) == {"logits", "logprobs", "generate", "hidden_states",
                                                          "attentions", "gradients", "weights"}
    assert backends.capabilities(ModelSpec(base="x", task="causal-lm", backend="vllm")) == {"logprobs", "generate"}


def test_kbit_base_guard_without_cuda(tiny_gpt2):
    """The fine-tune's own guard (reached only if the preflight was skipped)."""
    from auditkit.finetune import _kbit_base
    with pytest.raises(AuditInputError, match="qlora needs a CUDA GPU"):
        _kbit_base(tiny_gpt2, "s.yaml")


# ---------------------------------------------------------------------- load_kwargs

def test_load_kwargs():
    import torch
    assert backends.load_kwargs(ModelSpec(base="x"), "cpu") == {}
    assert backends.load_kwargs(ModelSpec(base="x", device_map="auto"), "cuda") == {"device_map": "auto"}
    kw = backends.load_kwargs(ModelSpec(base="x", quantization_bits=4), "cuda")
    q = kw["quantization_config"]
    assert kw["device_map"] == {"": "cuda:0"}
    assert q.load_in_4bit and not q.load_in_8bit and q.bnb_4bit_quant_type == "nf4"
    assert q.bnb_4bit_compute_dtype == torch.bfloat16
    kw = backends.load_kwargs(ModelSpec(base="x", quantization_bits=8, device_map="auto"), "cuda:1")
    assert kw["device_map"] == "auto" and kw["quantization_config"].load_in_8bit
    kw = backends.load_kwargs(ModelSpec(base="x", quantization_bits=8), "cuda:1")
    assert kw["device_map"] == {"": "cuda:1"}  # each data-parallel process on its own GPU


def test_placed_and_for_audit(tiny_gpt2):
    from auditkit.finetune import for_audit
    assert not backends.placed(tiny_gpt2.model)
    assert backends.input_device(tiny_gpt2.model) == "cpu"

    class Quantized:
        is_loaded_in_4bit = True
        def eval(self):
            return self
        def merge_and_unload(self):  # must not be called: merging into NF4 rounds the update away
            raise AssertionError
    q = Quantized()
    assert backends.placed(q) and for_audit(q, "cuda") is q


# ---------------------------------------------------------------------- VLLMHandle on a fake vllm

@dataclass
class _Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class _Completion:
    text: str
    token_ids: list
    finish_reason: str
    stop_reason: object = None
    index: int = 0


@dataclass
class _RequestOutput:
    prompt_token_ids: list
    prompt_logprobs: list | None
    outputs: list = field(default_factory=list)


def _fake_vllm(model, tokenizer, canned=None):
    """A ``vllm`` module whose LLM scores prompts with ``model`` (a torch causal LM) and returns
    ``canned(prompt_ids, params)`` completions; every call is recorded."""
    import torch
    calls = {"init": [], "generate": []}

    class SamplingParams:
        def __init__(self, **kw):
            self.__dict__.update(kw)
            self.kw = kw

    def TokensPrompt(prompt_token_ids):  # vLLM's is a TypedDict
        return {"prompt_token_ids": prompt_token_ids}

    class LLM:
        def __init__(self, **kw):
            calls["init"].append(kw)

        def generate(self, prompts, params, use_tqdm=True):
            calls["generate"].append((prompts, params))
            plist = params if isinstance(params, list) else [params] * len(prompts)
            outs = []
            for p, sp in zip(prompts, plist):
                ids = p["prompt_token_ids"]
                plp = None
                if getattr(sp, "prompt_logprobs", None) is not None:
                    with torch.inference_mode():
                        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
                    lp = torch.log_softmax(logits, -1)
                    plp = [None]
                    for t in range(1, len(ids)):
                        top = int(lp[t - 1].argmax())
                        d = {ids[t]: _Logprob(float(lp[t - 1, ids[t]]))}
                        d.setdefault(top, _Logprob(float(lp[t - 1, top]), 1))
                        plp.append(d)
                comps = canned(ids, sp) if canned else [_Completion("", [0], "length")]
                outs.append(_RequestOutput(list(ids), plp, comps))
            return outs

    mod = types.ModuleType("vllm")
    mod.LLM, mod.SamplingParams, mod.TokensPrompt = LLM, SamplingParams, TokensPrompt
    return mod, calls


def test_vllm_handle_logprobs_match_the_hf_handle(tiny_gpt2, monkeypatch):
    mod, calls = _fake_vllm(tiny_gpt2.model, tiny_gpt2.tokenizer)
    monkeypatch.setitem(sys.modules, "vllm", mod)
    h = backends.VLLMHandle(mod.LLM(model="x"), tiny_gpt2.tokenizer, source="builtin:tiny-gpt2", location="/nowhere",
                            max_length=tiny_gpt2.max_length)
    pairs = [("The capital of France is", " Paris"), ("The capital of France is ", "Paris"),
             ("", "hello world"), ("a b", ""), ("one two three", " four five six seven")]
    want = tiny_gpt2.continuation_logprobs(pairs)
    got = h.continuation_logprobs(pairs)
    for w, g in zip(want, got):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, atol=1e-5)
    # lm-eval's tokenization: the continuation of a context with a trailing space keeps the space
    from auditkit.models import encode_pairs
    [(ctx_ids, cont_ids)] = encode_pairs(tiny_gpt2.tokenizer, "causal-lm", [("The capital of France is ", "Paris")])
    assert cont_ids == tiny_gpt2.tokenizer("The capital of France is Paris")["input_ids"][len(ctx_ids):]
    # the scoring request is lm-eval's: greedy, one token, prompt log-probs, no detokenization
    prompts, params = calls["generate"][-1]
    assert params.kw == {"temperature": 0.0, "max_tokens": 1, "prompt_logprobs": 1, "detokenize": False}
    texts = ["a short sentence to score", "x"]
    for w, g in zip(tiny_gpt2.token_logprobs(texts), h.token_logprobs(texts)):
        np.testing.assert_allclose(g, w, atol=1e-5)
    n = len(calls["generate"])
    h.token_logprobs(texts)  # memoized
    assert len(calls["generate"]) == n and h.stats["cache_hits"] >= 1


def test_vllm_handle_tokenizes_as_the_hf_handle_with_a_bos_tokenizer(registry, monkeypatch):
    """Llama's tokenizer adds BOS: an empty context reads it once, and a context that starts with the BOS text
    gets no second one (the vLLM handle once had its own tokenization, without lm-eval's tok_encode rule)."""
    import copy

    from tokenizers.processors import TemplateProcessing

    from auditkit.models import ModelHandle, load_model
    base = load_model("builtin:tiny-llama", "causal-lm", registry)
    tok = copy.deepcopy(base.tokenizer)  # tiny-llama's tokenizer adds no BOS; this one does, as Llama's
    bos = tok.bos_token
    tok.backend_tokenizer.post_processor = TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, tok.bos_token_id)])
    assert tok("x")["input_ids"][0] == tok.bos_token_id and tok("x", add_special_tokens=False)["input_ids"][0] != 0
    llama = ModelHandle(model=base.model, tokenizer=tok, task="causal-lm", source="bos")
    mod, _ = _fake_vllm(llama.model, llama.tokenizer)
    monkeypatch.setitem(sys.modules, "vllm", mod)
    h = backends.VLLMHandle(mod.LLM(model="x"), llama.tokenizer, source="builtin:tiny-llama", location="/nowhere",
                            max_length=llama.max_length)
    # a context that already starts with the BOS text gets no second BOS (lm-eval's tok_encode)
    pairs = [("", "hello world"), ("The capital of France is ", "Paris"), ("a b", " c d"), (bos + "Hello", " world")]
    for w, g in zip(llama.continuation_logprobs(pairs), h.continuation_logprobs(pairs)):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, atol=1e-5)


def test_vllm_handle_generate(tiny_gpt2, monkeypatch):
    tok = tiny_gpt2.tokenizer
    eos = tok.eos_token_id

    def canned(ids, sp):
        n = sp.n
        if ids == tok("stop here")["input_ids"]:  # vLLM cut at the stop string, stop_reason = the string
            return [_Completion(" yes", [5, 6], "stop", "\n")] * n
        if ids == tok("the end")["input_ids"]:
            return [_Completion(" done", [7, eos], "stop", None)] * n  # EOS
        # vLLM did not see the stop (e.g. across a detokenization boundary): cut after the fact
        return [_Completion(f" sample {k}\nmore", [8, 9, 10], "length") for k in range(n)]

    mod, calls = _fake_vllm(tiny_gpt2.model, tok, canned)
    monkeypatch.setitem(sys.modules, "vllm", mod)
    h = backends.VLLMHandle(mod.LLM(model="x"), tok, source="builtin:tiny-gpt2", location="/nowhere", max_length=64)
    with pytest.raises(TypeError, match="a list of prompts"):
        h.generate("stop here")  # one string is not three one-letter prompts
    res = h.generate(["stop here", "the end", "go on"], max_new_tokens=5, stop=["\n"])
    assert [[(g.text, g.finish_reason) for g in r] for r in res] == \
        [[(" yes", "stop")], [(" done", "eos")], [(" sample 0", "stop")]]
    assert res[1][0].token_ids == [7, eos]
    prompts, params = calls["generate"][-1]
    assert [p["prompt_token_ids"] for p in prompts] == [tok(t)["input_ids"] for t in ["stop here", "the end", "go on"]]
    assert all(p.kw["temperature"] == 0.0 and p.kw["max_tokens"] == 5 and p.kw["stop"] == ["\n"] and p.kw["n"] == 1
               and p.kw["seed"] is None for p in params)
    # sampling: n samples per prompt, a seed per prompt (independent of the other prompts in the call)
    res = h.generate(["go on", "go on again"], temperature=0.7, top_p=0.9, samples=3, seed=5)
    assert [len(r) for r in res] == [3, 3] and res[0][2].text == " sample 2\nmore"
    _, params = calls["generate"][-1]
    seeds = [p.kw["seed"] for p in params]
    assert len(set(seeds)) == 2 and all(p.kw["n"] == 3 and p.kw["top_p"] == 0.9 for p in params)
    h.invalidate()
    h.generate(["go on again"], temperature=0.7, top_p=0.9, samples=3, seed=5)
    assert calls["generate"][-1][1][0].kw["seed"] == seeds[0]  # from (seed, index in the call), as the hf rows
    # greedy with several samples: one completion asked for, copied
    res = h.generate(["go on"], samples=2)
    assert [(g.text, g.finish_reason) for g in res[0]] == [(" sample 0\nmore", "length")] * 2
    assert calls["generate"][-1][1][0].kw["n"] == 1


def test_vllm_handle_load_and_describe(registry, monkeypatch, tmp_path):
    from auditkit.models import cache_dir
    mod, calls = _fake_vllm(None, None)
    monkeypatch.setitem(sys.modules, "vllm", mod)
    spec = ModelSpec(base="builtin:tiny-gpt2", task="causal-lm", backend="vllm", tensor_parallel_size=2,
                     max_length=64, batch_size=8)
    monkeypatch.setenv("VLLM_USE_FLASHINFER_SAMPLER", "unset")  # recorded, so the variable is removed after
    monkeypatch.delenv("VLLM_USE_FLASHINFER_SAMPLER")
    real_find_spec = backends.importlib.util.find_spec
    monkeypatch.setattr(backends.importlib.util, "find_spec",
                        lambda name, *a: None if name == "flashinfer" else real_find_spec(name, *a))
    h = backends.VLLMHandle.load(spec, registry, seed=3)
    assert os.environ["VLLM_USE_FLASHINFER_SAMPLER"] == "0"  # without FlashInfer, vLLM samples with PyTorch
    kw = calls["init"][0]
    location = str(registry.model_sources["tiny-gpt2"].fn(cache_dir()))
    assert kw["model"] == location and kw["tensor_parallel_size"] == 2 and kw["dtype"] == "bfloat16" \
        and kw["seed"] == 3
    d = h.describe()
    assert d["backend"] == "vllm" and d["architecture"] == "GPT2LMHeadModel" and d["task"] == "causal-lm"
    from transformers import AutoModelForCausalLM
    n = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(location).parameters())
    assert d["parameters"] >= n  # tied embeddings are stored once but may be counted by safetensors names
    assert h.fingerprint == backends.safetensors_fingerprint(location) and len(h.fingerprint) == 32
    copy = tmp_path / "copy"
    shutil.copytree(location, copy)
    assert backends.safetensors_fingerprint(copy) == h.fingerprint  # the content, not the path
    from auditkit.models import UnservedRequest
    with pytest.raises(UnservedRequest, match="needs a sequence-classification model"):
        h._require("sequence-classification", "class_logits")


# ---------------------------------------------------------------------- DDP fine-tune

def test_ddp_finetune_matches_one_process(tmp_path, registry):
    """``--processes 2`` on CPU (gloo, DDP through accelerate): each process runs its share of every batch,
    so the fine-tuned weights match one process within 1e-5 and the training record (losses, evals) within
    1e-6. tiny-bert has dropout 0.1: ``finetune.dropout: 0`` turns it off (with it on, each process draws its
    own masks, and the run says so: see the dropout warning test)."""
    from safetensors.torch import load_file

    from auditkit.cli import main
    from auditkit.models import cache_dir
    from tests.test_finetune import sentiment_rows
    src = Path(registry.model_sources["tiny-bert"].fn(cache_dir()))
    model_dir = tmp_path / "tiny-bert"
    shutil.copytree(src, model_dir)
    assert json.loads((model_dir / "config.json").read_text())["hidden_dropout_prob"] > 0
    write_jsonl(tmp_path / "train.jsonl", sentiment_rows(20, 1))
    write_jsonl(tmp_path / "val.jsonl", sentiment_rows(12, 2))
    # 20 rows in batches of 7: 7, 7, 6 -> shares of 4+3, 4+3, 3+3 rows
    suite = write_suite(tmp_path, f"""
        name: ddp
        seed: 0
        model: {{base: "{model_dir}", max_length: 32}}
        finetune:
          data: train.jsonl
          validation: val.jsonl
          method: full
          epochs: 1
          learning_rate: 1e-3
          batch_size: 7
          max_length: 32
          dropout: 0
        checks:
          - {{uses: accuracy, data: val.jsonl, bootstrap: 100, gates: []}}
        """)
    outs = {}
    for n in (1, 2):
        out = tmp_path / f"out{n}"
        code = main(["run", str(suite), "--out", str(out), "--device", "cpu"] +
                    (["--processes", "2"] if n == 2 else []))
        assert code == 0
        outs[n] = (json.loads((out / "results.json").read_text()), load_file(str(out / "model" / "model.safetensors")))
    (r1, w1), (r2, w2) = outs[1], outs[2]
    assert set(w1) == set(w2)
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) < 1e-5
    assert max(float((w1[k] - src_w).abs().max()) for k, src_w in
               ((k, v) for k, v in load_file(str(src / "model.safetensors")).items() if k in w1)) > 1e-4  # it trained
    s1, s2 = r1["training"]["steps"], r2["training"]["steps"]
    assert len(s1) == len(s2) == 3
    for a, b in zip(s1, s2):
        assert abs(a["loss"] - b["loss"]) < 1e-6 and a["lr"] == b["lr"]
    for a, b in zip(r1["training"]["evals"], r2["training"]["evals"]):
        for key in ("train_loss", "val_loss", "train_accuracy", "val_accuracy"):
            assert abs(a[key] - b[key]) < 1e-6, key
    assert r1["checks"][0]["metrics"]["accuracy"]["value"] == r2["checks"][0]["metrics"]["accuracy"]["value"]


# ---------------------------------------------------------------------- QLoRA's training path on CPU

def test_qlora_training_path(tiny_gpt2, monkeypatch):
    """``method: qlora`` runs peft's ``prepare_model_for_kbit_training`` and LoRA on the base that
    ``_kbit_base`` loads (faked here by an fp32 copy: bitsandbytes needs CUDA); the handle's model stays the
    untouched baseline, and only LoRA factors train. The update equals a plain LoRA run's from the same start
    (same seed, same data), within 1e-5, since the k-bit preparation changes nothing on an fp32 model but
    gradient checkpointing, which recomputes the same activations."""
    import copy

    import torch

    from auditkit import finetune as ft
    from auditkit.data import Dataset
    calls = []

    def fake_kbit(handle, suite_file=None):
        calls.append(handle.source)
        return copy.deepcopy(handle.model)

    monkeypatch.setattr(ft, "_kbit_base", fake_kbit)
    import peft
    prepared = []
    real_prepare = peft.prepare_model_for_kbit_training

    def spy(model, **kw):
        prepared.append(kw)
        return real_prepare(model, **kw)
    monkeypatch.setattr(peft, "prepare_model_for_kbit_training", spy)
    before = {k: v.clone() for k, v in tiny_gpt2.model.state_dict().items()}
    ds = Dataset("mem", [{"text": f"line {i} of a short training text"} for i in range(8)], "mem.jsonl")
    lora = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": None}
    results = {}
    for method in ("qlora", "lora"):
        cfg = ft.FinetuneConfig(data="mem", method=method, epochs=1, batch_size=4, max_length=16, lora=dict(lora),
                                train_eval_size=4)
        results[method] = ft.train(tiny_gpt2, ds, None, cfg)
    assert calls == ["builtin:tiny-gpt2"] and prepared == [
        {"use_gradient_checkpointing": True, "gradient_checkpointing_kwargs": {"use_reentrant": False}}]
    q, lo = results["qlora"], results["lora"]
    assert q.record["method"] == "qlora" and q.record["config"]["learning_rate"] == 5e-4
    assert q.record["trainable_parameters"] == lo.record["trainable_parameters"] > 0
    for k, v in tiny_gpt2.model.state_dict().items():  # the baseline is untouched
        assert torch.equal(v, before[k])
    qs = {k: v for k, v in q.model.state_dict().items() if "lora_" in k}
    ls = {k: v for k, v in lo.model.state_dict().items() if "lora_" in k}
    assert qs.keys() == ls.keys() and qs
    assert max(float((qs[k] - ls[k]).abs().max()) for k in qs) < 1e-5
    assert [s["loss"] for s in q.record["steps"]] == pytest.approx([s["loss"] for s in lo.record["steps"]], abs=1e-5)


@pytest.mark.parametrize("n_rows,micro", [(7, 2), (1, 4)])
def test_ddp_step_shares_average_to_the_one_process_gradient(tiny_gpt2, n_rows, micro):
    """``_step_ddp`` on a causal LM, both ranks run in this process: the mean of the two ranks' gradients
    (what DDP's all-reduce gives) equals ``_step``'s one-process gradient of the whole chunk, and the
    ranks' losses sum to its loss. Labels mask a prompt (token-weighted denominators); with one row, rank 1
    has no rows and joins with a zero-weight row."""
    import contextlib
    import copy

    import torch

    from auditkit import finetune as ft
    from auditkit.distributed import World
    model = copy.deepcopy(tiny_gpt2.model).train()
    for mod in model.modules():  # no dropout: the ranks must see the same function
        if isinstance(mod, torch.nn.Dropout):
            mod.p = 0.0
    tok = tiny_gpt2.tokenizer
    chunk = []
    for i in range(n_rows):
        ids = tok(f"question {i}: what is {i} plus one? answer {i + 1}")["input_ids"]
        chunk.append({"input_ids": ids, "labels": [-100] * 5 + ids[5:]})
    pad = tok.pad_token_id

    class FakeDDP(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, **kw):
            return self.m(**kw)

        def no_sync(self):
            return contextlib.nullcontext()

    def grads():
        return {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for n, p in model.named_parameters()}

    model.zero_grad()
    loss_one, ntok_one = ft._step(model, chunk, micro, "causal-lm", pad, "cpu", ft._null)
    want = grads()
    total, ntok, acc = 0.0, 0, None
    for rank in (0, 1):
        model.zero_grad()
        loss, nt = ft._step_ddp(FakeDDP(model), chunk, micro, "causal-lm", pad, "cpu", ft._null, World(rank, 2, rank))
        total, ntok = total + loss, ntok + nt
        g = grads()
        acc = g if acc is None else {k: acc[k] + g[k] for k in acc}
    assert total == pytest.approx(loss_one, abs=1e-6) and ntok == ntok_one
    for k in want:
        torch.testing.assert_close(acc[k] / 2, want[k], atol=1e-6, rtol=1e-5)


def test_runner_gives_the_vllm_handle_the_suites_settings(registry, monkeypatch):
    """``model.chat_template: false``, batch_size and max_length reach a vLLM handle as they reach an hf one
    (the vLLM branch once returned before they were set, so chat templates were applied regardless)."""
    from auditkit.runner import Runner
    mod, _ = _fake_vllm(None, None)
    monkeypatch.setitem(sys.modules, "vllm", mod)
    spec = ModelSpec(base="builtin:tiny-gpt2", task="causal-lm", backend="vllm", max_length=48, batch_size=5,
                     chat_template=False)
    runner = types.SimpleNamespace(suite=types.SimpleNamespace(model=spec, seed=0), opts=types.SimpleNamespace(
        model=None, baseline=None), progress=types.SimpleNamespace(stage=lambda *a: None), registry=registry,
        file=None, device="cuda", _api=None)
    h = Runner._load(runner, "builtin:tiny-gpt2", "model.base")
    assert isinstance(h, backends.VLLMHandle)
    assert (h.chat_template, h.batch_size, h.max_length) == (False, 5, 48)


def test_an_unservable_check_is_numbered_in_the_whole_suite_under_only(tmp_path, run_cli, no_load, monkeypatch):
    """With --only, the refused check is still named by its place in the suite file (checks[1], its line),
    not by its place in the selected subset."""
    from auditkit.api import Check
    from auditkit.plugins import registry as get_registry

    class NeedsGrad(Check):
        name = "needs-grad"
        description = "test: needs gradients"
        tasks = ("causal-lm",)
        needs_data = False
        needs = frozenset({"gradients"})

    monkeypatch.setitem(get_registry().checks, "needs-grad", NeedsGrad)
    suite = _suite(tmp_path, CAUSAL.format(extra=", backend: vllm"),
                   checks="  - {uses: bias.pairs, gates: []}\n  - {uses: needs-grad, gates: []}")
    line = _exit2(run_cli, suite, "--device", "cpu", "--only", "needs-grad")
    assert "line 6 (checks[1].uses)" in line, line
