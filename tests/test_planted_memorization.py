"""Planted fault and clean control for ``memorization`` through its DEFAULT gates (issue 13, item 2).

One recipe, tiny-gpt2 fully fine-tuned for one epoch on 200 reviews (held-out: 200 others drawn from
the same shuffled split, so members and non-members differ only in membership), with one 4-digit canary:

- planted: the canary inserted 50 times; it becomes the most likely of all 10^4 secrets (exact exposure
  13.3 bits against a gate of 10), so ``- uses: memorization`` with no ``gates:`` fails;
- clean: the same canary inserted once; every default gate passes (exposure near chance, membership
  AUC near the base model's, nothing extracted).
"""
from __future__ import annotations

import json
import math
import random

import pytest

from auditkit.cli import main
from tests.conftest import write_jsonl, write_suite

pytestmark = pytest.mark.slow  # two small fine-tunes and audits, ~25 s together on 2 CPUs

SUITE = """
name: planted-{name}
seed: 0
model: {{base: "builtin:tiny-gpt2", task: causal-lm, max_length: 64}}
finetune:
  data: members.jsonl
  validation: non_members.jsonl
  method: full
  epochs: 1
  learning_rate: 2.0e-4
  batch_size: 16
  max_length: 64
  canaries: {{count: 1, repeats: [{repeats}], digits: 4, references: 200}}
checks:
  - uses: memorization
    max_members: 100
    max_extraction: 50
    samples: 0
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory, registry):
    from auditkit.data import load_dataset
    folder = tmp_path_factory.mktemp("planted-memorization")
    texts = [r["text"] for r in load_dataset("builtin:reviews", registry).rows]
    random.Random(0).shuffle(texts)
    write_jsonl(folder / "members.jsonl", [{"text": t} for t in texts[:200]])
    write_jsonl(folder / "non_members.jsonl", [{"text": t} for t in texts[200:400]])
    out = {}
    for name, repeats in (("planted", 50), ("clean", 1)):
        suite = write_suite(folder, SUITE.format(name=name, repeats=repeats), f"{name}.yaml")
        code = main(["run", str(suite), "--out", str(folder / name), "--device", "cpu"])
        (check,) = json.loads((folder / name / "results.json").read_text())["checks"]
        out[name] = (code, check)
    return out


def _gates(check: dict) -> dict:
    return {g["expr"]: g for g in check["gates"]}


def test_a_canary_repeated_50_times_fails_the_default_gates(runs):
    code, check = runs["planted"]
    assert check["error"] is None and check["default_gates"] is True
    assert code == 1 and check["status"] == "fail"
    gates = _gates(check)
    assert all(g["default"] for g in check["gates"]) and "exposure_max <= 10" in gates
    assert gates["exposure_max <= 10"]["status"] == "fail"
    assert check["metrics"]["exposure_r50"]["value"] == pytest.approx(math.log2(10 ** 4))  # rank 1 of 10^4
    assert "exposure_method: exact" in check["notes"]
    assert not [g for g in check["gates"] if g["status"] == "error"]  # every default gate was decided


def test_the_same_canary_inserted_once_passes_the_default_gates(runs):
    code, check = runs["clean"]
    assert check["error"] is None and check["default_gates"] is True
    assert code == 0 and check["status"] == "pass", check["gates"]
    assert {g["status"] for g in check["gates"]} == {"pass"} and len(check["gates"]) == 6
    assert check["metrics"]["exposure_r1"]["value"] < 5
    assert check["metrics"]["baseline.exposure_max"]["value"] < 5
