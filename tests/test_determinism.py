"""Two runs of the same suite with the same seed write byte-identical results.json, except for the
one `run` block that holds times."""
from __future__ import annotations

import json

import pytest

from auditkit.cli import main
from auditkit.results import dumps
from tests.conftest import write_jsonl, write_suite


SUITES = {
    "classifier-lora": """
        name: det-bert
        seed: 7
        model: {base: "builtin:tiny-bert", max_length: 32}
        finetune:
          data: train.jsonl
          validation: val.jsonl
          method: lora
          epochs: 2
          batch_size: 8
          learning_rate: 1e-3
          seed: 7
        checks:
          - {uses: accuracy, data: val.jsonl, bootstrap: 100, gates: ["accuracy >= baseline.accuracy - 1"]}
          - {uses: overfitting, gates: ["loss_gap <= 10"]}
        """,
    "causal-full": """
        name: det-gpt2
        seed: 3
        model: {base: "builtin:tiny-gpt2", task: causal-lm, max_length: 32}
        finetune:
          data: text.jsonl
          validation: text-val.jsonl
          method: full
          epochs: 2
          batch_size: 4
          learning_rate: 1e-3
          seed: 3
        checks:
          - {uses: accuracy, data: mc.jsonl}
          - {uses: overfitting}
        """,
}


def write_data(folder):
    words = ["tea", "bread", "film", "park", "hotel", "desk", "radio", "boat"]
    write_jsonl(folder / "train.jsonl", [{"text": f"the {w} was {'good' if i % 2 else 'bad'} {i}", "label": i % 2}
                                          for i, w in enumerate(words * 3)])
    write_jsonl(folder / "val.jsonl", [{"text": f"a {w} felt {'fine' if i % 2 else 'poor'}", "label": i % 2}
                                        for i, w in enumerate(words)])
    write_jsonl(folder / "text.jsonl", [{"text": f"the {w} opens at {i} in the morning"} for i, w in enumerate(words)])
    write_jsonl(folder / "text-val.jsonl", [{"text": f"the {w} closes late"} for w in words[:4]])
    write_jsonl(folder / "mc.jsonl", [{"question": f"Question: Where is the {w}?\nAnswer:",
                                       "choices": ["here", "over there", "nowhere at all"], "label": i % 3}
                                      for i, w in enumerate(words)])


@pytest.mark.parametrize("kind", list(SUITES))
def test_same_seed_gives_byte_identical_results(tmp_path, kind):
    write_data(tmp_path)
    suite = write_suite(tmp_path, SUITES[kind])
    texts = []
    for out in ("first", "second"):
        code = main(["run", str(suite), "--out", str(tmp_path / out), "--device", "cpu"])
        assert code in (0, 1)  # the causal suite runs the default gates, which a random model may fail
        texts.append((tmp_path / out / "results.json").read_text(encoding="utf-8"))
    a, b = (json.loads(t) for t in texts)
    assert a["training"]["reused"] is False and b["training"]["reused"] is False  # both really trained
    assert a["run"]["started"] and "duration_s" in a["run"]
    assert list(a)[-1] == "run"  # the run block comes last, so everything before it must match byte for byte
    head = [t[: t.index('\n  "run": ')] for t in texts]
    assert head[0] == head[1]
    assert a["status"] == b["status"] and a["status"] != "error"
    a.pop("run"), b.pop("run")
    assert dumps(a) == dumps(b)
    assert a["model"]["fingerprint"] != a["baseline"]["fingerprint"]
    # the same report text too (it holds the run block's times, so compare what precedes them)
    html = [(tmp_path / out / "report.html").read_text() for out in ("first", "second")]
    assert html[0].split("<h2>Environment</h2>")[0] == html[1].split("<h2>Environment</h2>")[0]
