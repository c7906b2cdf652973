"""Every applicable check on tiny random models of the architectures people bring (issue 11, item 5).

Encoders (BERT, RoBERTa, DistilBERT, ELECTRA, XLNet, DeBERTa-v2) as classifiers, decoders (GPT-2, Llama,
Qwen2, Mistral) as causal LMs: each is LoRA fine-tuned for a few steps (default target modules for
its family) and audited by every check that applies to its task, with small data. A check may not
ERROR: it runs, or the suite is refused with exit 2 and one line before anything loads. The
encoder-decoders (T5, BART) are fine-tuned and audited the same way in tests/test_seq2seq.py.
"""
from __future__ import annotations

import json

import pytest

from auditkit.cli import main
from tests.conftest import write_jsonl, write_suite
from tests.tiny_models import DECODERS, ENCODERS, build

CLASSIFIER_SUITE = """
name: arch-{arch}
seed: 0
model: {{base: "{path}", max_length: 32, batch_size: 16}}
finetune: {{data: "builtin:reviews", method: lora, max_steps: 3, batch_size: 8, max_length: 32}}
checks:
  - {{uses: accuracy, data: "builtin:reviews#test", max_examples: 40, bootstrap: 100}}
  - {{uses: calibration, data: "builtin:reviews#test"}}
  - {{uses: overfitting}}
  - {{uses: forgetting, max_examples: 16, bootstrap: 100}}
  - {{uses: bias.groups, data: "builtin:reviews#test", min_group_size: 5, bootstrap: 100}}
  - {{uses: bias.counterfactual, data: "builtin:reviews#test", max_examples: 30, bootstrap: 100}}
  - {{uses: memorization, parts: [membership], max_members: 40}}
  - {{uses: explainability, data: "builtin:reviews#test", max_examples: 3, ig_steps: 4}}
  - {{uses: robustness, data: "builtin:reviews#test", max_examples: 30, bootstrap: 100, perturbations: [typos, names]}}
  - {{uses: cost, batch_sizes: [1], repeats: 3, warmup: 1}}
"""

CAUSAL_SUITE = """
name: arch-{arch}
seed: 0
model: {{base: "{path}", task: causal-lm, max_length: 32, batch_size: 16}}
finetune: {{data: text.jsonl, validation: text.jsonl, method: lora, max_steps: 3, batch_size: 4, max_length: 32}}
checks:
  - {{uses: accuracy, data: mc.jsonl, bootstrap: 100}}
  - {{uses: overfitting}}
  - {{uses: forgetting, max_examples: 8, bootstrap: 100}}
  - {{uses: bias.pairs, max_examples: 12}}
  - {{uses: bias.counterfactual, max_examples: 12, bootstrap: 100}}
  - {{uses: memorization, parts: [extraction, membership], max_members: 20, max_extraction: 6, samples: 2}}
  - {{uses: explainability, data: mc.jsonl, max_examples: 2, ig_steps: 4}}
  - {{uses: robustness, data: mc.jsonl, bootstrap: 100, perturbations: [typos, names]}}
  - {{uses: cost, batch_sizes: [1], repeats: 3, warmup: 1}}
"""


def _data(folder):
    words = ["tea", "bread", "film", "park", "hotel", "desk"]
    write_jsonl(folder / "text.jsonl", [{"text": f"the {w} opens at {i} in the morning and closes late"}
                                         for i, w in enumerate(words * 4)])
    write_jsonl(folder / "mc.jsonl", [{"question": f"Question: Where is the {w}?\nAnswer:",
                                       "choices": ["here", "over there", "nowhere"], "label": i % 3}
                                      for i, w in enumerate(words)])


@pytest.mark.parametrize("arch", ENCODERS + DECODERS)
def test_every_applicable_check_runs(tmp_path, arch):
    _data(tmp_path)
    path = build(arch, tmp_path / arch)
    template = CLASSIFIER_SUITE if arch in ENCODERS else CAUSAL_SUITE
    suite = write_suite(tmp_path, template.format(arch=arch, path=path))
    out = tmp_path / "out"
    code = main(["run", str(suite), "--out", str(out), "--device", "cpu"])
    res = json.loads((out / "results.json").read_text())
    errors = {c["id"]: c["error"]["message"] for c in res["checks"] if c["status"] == "error"}
    assert not errors, errors
    assert code in (0, 1)
    assert res["model"]["architecture"].lower().startswith(arch.replace("-", "").replace("v2", "")[:4])


def test_xlnet_classifier_is_never_fed_padding(tmp_path, registry):
    """XLNet's head reads the last position whatever the mask: the engine batches equal lengths only, so
    its logits equal one-text-at-a-time forwards at any batch size."""
    import numpy as np
    import torch
    from auditkit.models import load_model
    path = build("xlnet", tmp_path / "xlnet")
    h = load_model(str(path), "sequence-classification", registry, device="cpu", num_labels=2)
    texts = ["a short one", "a much longer sentence about the hotel and the park", "mid length text here", "x"]
    plain = []
    with torch.inference_mode():
        for t in texts:
            ids = h.tokenizer(t, return_tensors="pt")
            plain.append(h.model(**ids).logits[0].float().numpy())
    for bs in (1, 32):
        h.invalidate()
        h.batch_size = bs
        np.testing.assert_allclose(h.class_logits(texts), np.stack(plain), atol=1e-5)
