"""``model.dtype``: the dtype weights load and run in (auto: bf16 on CUDA, fp32 elsewhere)."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from auditkit.suite import ModelSpec
from tests.conftest import write_suite

SUITE = """
name: dtype
seed: 1
model: {{base: "builtin:tiny-gpt2", baseline: "builtin:tiny-gpt2", task: causal-lm, max_length: 32, batch_size: 4{extra}}}
checks:
  - {{uses: forgetting, max_examples: 8}}
"""


@pytest.mark.parametrize("extra, words", [
    (", dtype: float16", ["model.dtype must be one of auto, float32, bfloat16", "float16"]),
    (", dtype: bf16", ["model.dtype", "bfloat16"]),
    (", dtype: 32", ["model.dtype", "e.g. dtype: float32"]),
])
def test_an_unknown_dtype_is_exit_2_before_anything_loads(tmp_path, run_cli, extra, words):
    suite = write_suite(tmp_path, SUITE.format(extra=extra))
    code, _, err = run_cli("run", suite, "--out", tmp_path / "o", "--device", "cpu")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert all(w in err for w in words), err
    assert not (tmp_path / "o").exists()


def test_dtype_does_not_apply_to_an_api_model(tmp_path, run_cli):
    suite = write_suite(tmp_path, """
name: api
model: {base: openai-compatible, task: causal-lm, endpoint: "http://127.0.0.1:9/v1", name: m, dtype: float32}
checks: [{uses: generation, data: "builtin:qa"}]
""")
    code, _, err = run_cli("run", suite, "--out", tmp_path / "o")
    assert code == 2 and "dtype do not apply" in err


def test_bfloat16_on_cpu_loads_runs_and_keys_its_own_passes(registry):
    """The handle loads in the asked dtype, says so in describe() (results.json's model block), and its
    scores are the bf16 model's: close to fp32's, not equal, and never read back from fp32's cache."""
    import torch

    from auditkit.models import load_model
    texts = ["The river was cold and the morning was quiet.", "A short one."]
    f32 = load_model("builtin:tiny-gpt2", "causal-lm", registry, model_spec=ModelSpec(
        base="builtin:tiny-gpt2", task="causal-lm"))
    b16 = load_model("builtin:tiny-gpt2", "causal-lm", registry, model_spec=ModelSpec(
        base="builtin:tiny-gpt2", task="causal-lm", dtype="bfloat16"))
    assert next(f32.model.parameters()).dtype == torch.float32
    assert next(b16.model.parameters()).dtype == torch.bfloat16
    assert f32.describe()["dtype"] == "float32" and b16.describe()["dtype"] == "bfloat16"
    assert f32.fingerprint != b16.fingerprint or f32._pass_config() != b16._pass_config()
    a, b = f32.token_logprobs(texts), b16.token_logprobs(texts)
    for x, y in zip(a, b):
        assert x.shape == y.shape and np.abs(x - y).max() < 0.2 and not np.array_equal(x, y)


def test_float32_reaches_the_quantization_compute_dtype_and_vllm(monkeypatch, registry):
    import torch

    from auditkit import backends
    kw = backends.load_kwargs(ModelSpec(base="x", task="causal-lm", quantization_bits=4, dtype="float32"), "cuda")
    assert kw["quantization_config"].bnb_4bit_compute_dtype == torch.float32
    kw = backends.load_kwargs(ModelSpec(base="x", task="causal-lm", quantization_bits=4), "cuda")
    assert kw["quantization_config"].bnb_4bit_compute_dtype == torch.bfloat16  # QLoRA's recipe by default

    from tests.test_backends import _fake_vllm
    mod, calls = _fake_vllm(None, None)
    monkeypatch.setitem(sys.modules, "vllm", mod)
    h = backends.VLLMHandle.load(ModelSpec(base="builtin:tiny-gpt2", task="causal-lm", backend="vllm",
                                           dtype="float32"), registry)
    assert calls["init"][0]["dtype"] == "float32" and h.describe()["dtype"] == "float32"
    plain = backends.VLLMHandle.load(ModelSpec(base="builtin:tiny-gpt2", task="causal-lm", backend="vllm"), registry)
    assert calls["init"][1]["dtype"] == "bfloat16"
    assert h._disk_path("op", "k", "{}") != plain._disk_path("op", "k", "{}")  # fp32 passes are not bf16's


def test_results_json_and_the_report_name_the_dtype(tmp_path, run_cli):
    suite = write_suite(tmp_path, SUITE.format(extra=", dtype: float32"))
    code, _, err = run_cli("run", suite, "--out", tmp_path / "o", "--device", "cpu")
    assert code in (0, 1), err
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert res["model"]["dtype"] == res["baseline"]["dtype"] == "float32"  # the baseline loads alike
    assert "<th>dtype</th>" in (tmp_path / "o" / "report.html").read_text()


FT = """
name: dtype-ft
seed: 2
model: {{base: "builtin:tiny-gpt2", task: causal-lm, max_length: 32, batch_size: 8{extra}}}
finetune: {{data: train.jsonl, validation: train.jsonl, method: {method}, max_steps: 2, batch_size: 4, max_length: 32}}
checks:
  - {{uses: forgetting, max_examples: 8}}
"""


@pytest.mark.parametrize("method", ["lora", "full"])
def test_a_bf16_fine_tune_trains_under_autocast_and_is_audited_and_reused_in_bf16(tmp_path, run_cli, method):
    """model.dtype: bfloat16 on CPU: the fine-tune trains (fp32 master weights, bf16 autocast), the fresh
    model is audited in bf16 like its reload, and a switch of dtype is never served the other's fine-tune."""
    from tests.conftest import write_jsonl
    write_jsonl(tmp_path / "train.jsonl", [{"text": f"The {w} was cold this morning."} for w in
                                           ("river", "tea", "bread", "train", "lamp", "desk", "boat", "shop")])
    out = tmp_path / "o"

    def run(extra):
        suite = write_suite(tmp_path, FT.format(extra=extra, method=method))
        code, _, err = run_cli("run", suite, "--out", out, "--device", "cpu")
        assert code in (0, 1), err
        return json.loads((out / "results.json").read_text())

    fresh = run(", dtype: bfloat16")
    assert fresh["model"]["dtype"] == fresh["baseline"]["dtype"] == "bfloat16"
    assert not fresh["training"]["reused"]
    again = run(", dtype: bfloat16")
    assert again["training"]["reused"] and again["model"]["dtype"] == "bfloat16"
    from tests.conftest import assert_same_results
    assert_same_results(fresh, again)  # the fresh model is audited as its reload is
    other = run("")  # auto on CPU is fp32: another fine-tune, not the bf16 one
    assert not other["training"]["reused"] and other["model"]["dtype"] == "float32"


def test_for_audit_casts_to_the_dtype_it_is_given():
    import torch

    from auditkit.finetune import for_audit
    m = torch.nn.Linear(3, 2)
    assert next(for_audit(m, "cpu", torch.bfloat16).parameters()).dtype == torch.bfloat16
    assert next(for_audit(torch.nn.Linear(3, 2), "cpu").parameters()).dtype == torch.float32
