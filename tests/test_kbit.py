"""bitsandbytes k-bit loading and QLoRA, end to end on CPU (no GPU in CI).

``model.quantization`` and ``finetune.method: qlora`` were written for CUDA; auditkit refuses them without
a CUDA GPU (``backends.preflight``, ``finetune._kbit_base``). bitsandbytes (0.50.2, requirements.lock)
also runs 4-bit NF4 and LLM.int8 on CPU, so these tests pretend this machine has CUDA
(``backends._cuda_available``) and let preflight judge the suite as if the run were on ``cuda`` while it
runs on ``--device cpu``. Nothing here reaches a GPU.

- a QLoRA fine-tune on builtin:tiny-llama with checks that read the model, the baseline and gradients:
  no check errors, results.json says the audited model and its baseline are 4-bit NF4, and
  ``model.parameters`` counts the 4-bit weights unpacked (the plain model's count plus the LoRA
  parameters; 37cbc64 fixed a count of the packed bytes);
- the same suite again into the same ``--out`` reuses the saved fine-tune and gives the same model
  fingerprint and every metric within 1e-6 (a7d5fdf fixed a reused QLoRA fine-tune that differed:
  layers left in fp32 by ``prepare_model_for_kbit_training``, a base loaded in another dtype);
- an 8-bit (LLM.int8) audit-only run: bitsandbytes 0.50.2 serves int8 on CPU (``Linear8bitLt``), so it is
  asserted to run, not skipped.

Without the fake, k-bit and qlora on this machine are exit 2 with one line naming CUDA before any model
loads: tests/test_backends.py (test_quantization_without_cuda, test_qlora_without_cuda) covers that.
"""
from __future__ import annotations

import json

import pytest

pytest.importorskip("bitsandbytes")

from auditkit import backends  # noqa: E402
from auditkit.cli import main  # noqa: E402
from tests.conftest import assert_same_results, write_jsonl, write_suite  # noqa: E402

BASE = "builtin:tiny-llama"

QLORA = f"""
name: kbit-qlora
seed: 3
model: {{base: "{BASE}", task: causal-lm, max_length: 32, batch_size: 8, quantization: {{bits: 4}}}}
finetune:
  data: train.jsonl
  method: qlora
  max_steps: 3
  batch_size: 4
  max_length: 32
  seed: 0
  lora: {{r: 4, alpha: 8}}
checks:
  - {{uses: accuracy, data: mc.jsonl, bootstrap: 100, gates: []}}
  - {{uses: forgetting, max_examples: 16, gates: []}}
  - {{uses: explainability, data: mc.jsonl, max_examples: 2, ig_steps: 4, gates: []}}
"""

INT8 = f"""
name: kbit-int8
seed: 3
model: {{base: "{BASE}", task: causal-lm, max_length: 32, batch_size: 8, quantization: {{bits: 8}}, baseline: "{BASE}"}}
checks:
  - {{uses: accuracy, data: mc.jsonl, bootstrap: 100, gates: []}}
  - {{uses: forgetting, max_examples: 16, gates: []}}
"""


@pytest.fixture
def cpu_as_cuda(monkeypatch):
    """This machine "has" CUDA, and preflight judges the suite as if the run were on cuda (it runs on cpu)."""
    real = backends.preflight

    def preflight(model, device, checks, **kw):
        return real(model, "cuda", checks, **kw)
    monkeypatch.setattr(backends, "_cuda_available", lambda: True)
    monkeypatch.setattr(backends, "preflight", preflight)


def _write_data(folder):
    words = ["tea", "bread", "film", "park", "hotel", "desk", "radio", "boat"]
    write_jsonl(folder / "mc.jsonl", [{"question": f"Question: Where is the {w}?\nAnswer:",
                                       "choices": ["here", "over there", "nowhere at all", "in the old town"],
                                       "label": i % 4} for i, w in enumerate(words)])
    write_jsonl(folder / "train.jsonl", [{"text": f"The {w} is {where}."} for w in words
                                         for where in ("here", "over there")])


def _run(suite, out) -> dict:
    code = main(["run", str(suite), "--out", str(out), "--device", "cpu"])
    assert code in (0, 1), code
    res = json.loads((out / "results.json").read_text())
    for c in res["checks"]:
        assert c["status"] != "error", (c["id"], c.get("error"))
    return res


def _plain_parameters(registry) -> int:
    from auditkit.models import load_model, parameter_count
    return parameter_count(load_model(BASE, "causal-lm", registry, device="cpu").model)


def test_qlora_on_cpu_and_its_reuse(tmp_path, cpu_as_cuda, registry):
    _write_data(tmp_path)
    suite = write_suite(tmp_path, QLORA)
    out = tmp_path / "out"
    first = _run(suite, out)

    assert first["training"]["method"] == "qlora" and first["training"]["reused"] is False
    assert first["model"]["quantization"] == "4-bit NF4"
    assert first["baseline"]["quantization"] == "4-bit NF4"
    lora = first["training"]["trainable_parameters"]
    assert lora > 0
    plain = _plain_parameters(registry)
    # 4-bit weights counted unpacked: the base as trained plus the adapter (the packed count is far less)
    assert first["baseline"]["parameters"] == plain
    assert first["model"]["parameters"] == plain + lora
    assert {c["id"] for c in first["checks"]} >= {"accuracy", "forgetting", "explainability"}

    # the same suite into the same folder: the saved adapter is reused and is the model that was audited
    second = _run(suite, out)
    assert second["training"]["reused"] is True
    assert second["model"]["quantization"] == "4-bit NF4"
    assert second["model"]["fingerprint"] == first["model"]["fingerprint"]
    assert second["baseline"]["fingerprint"] == first["baseline"]["fingerprint"]
    assert second["model"]["parameters"] == first["model"]["parameters"]
    assert_same_results(first, second)


def test_int8_audit_on_cpu(tmp_path, cpu_as_cuda, registry):
    _write_data(tmp_path)
    suite = write_suite(tmp_path, INT8)
    res = _run(suite, tmp_path / "out")
    assert res["model"]["quantization"] == "8-bit LLM.int8"
    assert res["baseline"]["quantization"] == "8-bit LLM.int8"
    assert res["model"]["parameters"] == _plain_parameters(registry)


def test_cost_counts_4bit_parameters_unpacked(cpu_as_cuda, registry):
    """cost's ``parameters`` (and the Kaplan FLOPs built on the non-embedding count) read the model as
    trained, not bitsandbytes' packed bytes; its ``weights_mb`` is what the 4-bit weights really take."""
    from auditkit.models import load_model
    from auditkit.suite import ModelSpec
    from auditkit_plugins.cost import parameter_counts
    plain = parameter_counts(load_model(BASE, "causal-lm", registry, device="cpu").model)
    spec = ModelSpec(base=BASE, task="causal-lm", quantization_bits=4)
    kbit = parameter_counts(load_model(BASE, "causal-lm", registry, device="cpu", model_spec=spec).model)
    assert kbit["parameters"] == plain["parameters"]
    assert kbit["non_embedding_parameters"] == plain["non_embedding_parameters"]
    assert kbit["weights_mb"] < plain["weights_mb"]
