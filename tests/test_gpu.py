"""Issue 10's checks that need a CUDA GPU; skipped everywhere else (CI has none). On a GPU machine:

    pytest -m gpu tests/test_gpu.py       # AUDITKIT_GPU_MODEL=DIR or builtin:NAME picks the causal LM

The tolerances below are this project's statement of how far the GPU paths may move; each test asserts its
own. Both backends run the model in bf16; auditkit takes every log-softmax in fp32, vLLM in its kernels.

- ``VLLM_LOGLIK_TOL``: per multiple-choice continuation, |log p_vllm - log p_hf| in nats.
- ``VLLM_ANSWER_AGREEMENT``: share of items whose best-scoring choice is the same on both backends.
- ``VLLM_GREEDY_AGREEMENT``: share of prompts whose greedy continuation (16 tokens) is the same.
- ``BF16_ABS`` / ``BF16_REL``: how far any metric of a causal suite may move between ``model.batch_size``
  1, 7 and 32 in bf16: ``|a - b| <= max(BF16_ABS, BF16_REL * |a|)`` (statuses and gate results must be
  equal). bf16 kernels reduce in another order when the padding changes. On CPU in bf16, SmolLM2-135M moved
  by 0.0167 in accuracy (2 of 120 answers) and 3.7e-4 relative in perplexity between batch sizes 1 and 32
  (``benchmarks/bench_batch_drift.py benchmarks/drift-lm.yaml --device cpu --dtypes float32,bfloat16``); in
  fp32 by at most 3.5e-6 (a perplexity of 35: 1e-7 relative).
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from tests.conftest import write_suite

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

MODEL = os.environ.get("AUDITKIT_GPU_MODEL", "builtin:smollm2-135m")
VLLM_LOGLIK_TOL = 0.25
VLLM_ANSWER_AGREEMENT = 0.95
VLLM_GREEDY_AGREEMENT = 0.9
BF16_ABS, BF16_REL = 0.03, 0.01


def _mc_pairs(registry, n: int = 120) -> tuple[list[tuple[str, str]], list[int]]:
    from auditkit.data import load_dataset
    rows = load_dataset("builtin:mc-general", registry).rows[:n]
    pairs = [(r["question"], " " + c) for r in rows for c in r["choices"]]
    return pairs, [len(r["choices"]) for r in rows]


def test_vllm_agrees_with_the_hf_backend(registry):
    pytest.importorskip("vllm")
    from auditkit.backends import VLLMHandle
    from auditkit.models import load_model
    from auditkit.suite import ModelSpec

    spec = ModelSpec(base=MODEL, task="causal-lm", backend="vllm", max_length=256, batch_size=32)
    vl = VLLMHandle.load(spec, registry, seed=0, gpu_memory_utilization=0.3)
    hf = load_model(MODEL, "causal-lm", registry, device="cuda", model_spec=ModelSpec(
        base=MODEL, task="causal-lm", max_length=256, batch_size=32))
    pairs, sizes = _mc_pairs(registry)
    a = np.array([float(x.sum()) for x in hf.continuation_logprobs(pairs)])
    b = np.array([float(x.sum()) for x in vl.continuation_logprobs(pairs)])
    diff = np.abs(a - b)
    ends = np.cumsum(sizes)
    same = [int(np.argmax(a[e - k:e]) == np.argmax(b[e - k:e])) for e, k in zip(ends, sizes)]
    print(f"vLLM vs hf: max |d loglik| {diff.max():.4f}, mean {diff.mean():.4f}, "
          f"same answer {np.mean(same):.3f} of {len(sizes)} items")
    assert diff.max() <= VLLM_LOGLIK_TOL
    assert np.mean(same) >= VLLM_ANSWER_AGREEMENT

    prompts = [p for p, _ in pairs[::4][:48]]
    ga = [g[0].text for g in hf.generate(prompts, max_new_tokens=16)]
    gb = [g[0].text for g in vl.generate(prompts, max_new_tokens=16)]
    agree = np.mean([x == y for x, y in zip(ga, gb)])
    print(f"greedy generations equal on {agree:.3f} of {len(prompts)} prompts")
    assert agree >= VLLM_GREEDY_AGREEMENT


CAUSAL_BF16 = """
name: gpu-drift
seed: 5
model: {{base: "{model}", task: causal-lm, max_length: 128, batch_size: {bs}, baseline: "{model}"}}
checks:
  - {{uses: accuracy, data: "builtin:mc-general", max_examples: 100, bootstrap: 200}}
  - {{uses: forgetting, max_examples: 32}}
  - {{uses: bias.pairs, max_examples: 48}}
  - {{uses: generation, data: "builtin:qa", max_examples: 24, max_new_tokens: 12, bootstrap: 200}}
  - {{uses: explainability, data: "builtin:mc-general", max_examples: 8, ig_steps: 16}}
"""


def test_bf16_scores_move_with_batch_size_within_the_stated_tolerance(tmp_path):
    from auditkit.cli import main
    results = {}
    for bs in (32, 7, 1):
        suite = write_suite(tmp_path, CAUSAL_BF16.format(model=MODEL, bs=bs), name=f"s{bs}.yaml")
        code = main(["run", str(suite), "--out", str(tmp_path / f"o{bs}"), "--device", "cuda"])
        assert code in (0, 1), code
        results[bs] = json.loads((tmp_path / f"o{bs}" / "results.json").read_text())
    ref = results[32]
    worst = 0.0  # the largest share of its allowance a metric used
    for bs in (7, 1):
        for ca, cb in zip(ref["checks"], results[bs]["checks"]):
            assert ca["status"] == cb["status"] != "error", (ca["id"], ca.get("error"), cb.get("error"))
            assert [g["status"] for g in ca["gates"]] == [g["status"] for g in cb["gates"]]
            for name, m in ca["metrics"].items():
                x, y = m.get("value"), cb["metrics"][name].get("value")
                if isinstance(x, float) and isinstance(y, float) and np.isfinite(x) and np.isfinite(y):
                    worst = max(worst, abs(x - y) / max(BF16_ABS, BF16_REL * abs(x)))
                    if x != y:
                        print(f"bs {bs} vs 32: {ca['id']}.{name}: {abs(x - y):.3g}")
    print(f"bf16 batch-size drift (1, 7, 32): {worst:.2f} of the stated tolerance used")
    assert worst <= 1.0
