"""Planted faults and clean controls through the checks' default gates (issue 13), and parameter values
that are out of range or not allowed: exit 2 at suite load, before any model loads.

Every suite here has ``- uses: X`` with no ``gates:`` key, so what decides is the check's declared
``default_gates``. Each fault and its control share the model (tiny-bert / tiny-gpt2, random) and the
recipe; only the planted cause differs:

- overfitting: full fine-tuning for many epochs on labels that are noise (the model can only memorise)
  fails; the same recipe on labels a word decides (learnable) passes;
- forgetting: full fine-tuning with a learning rate 300x too high fails; the same recipe at 1e-4 passes.
"""
from __future__ import annotations

import json
import random

import pytest

from auditkit.cli import main
from tests.conftest import write_jsonl, write_suite

WORDS = ["garden", "hotel", "laptop", "pizza", "train", "museum", "phone", "bakery", "cinema", "shoes", "bike",
         "coffee", "lamp", "sofa", "dentist", "taxi", "tent", "kettle", "ferry", "bank"]
GOOD, BAD = ["great", "lovely", "excellent", "superb"], ["awful", "dreadful", "terrible", "poor"]


def review_rows(n: int, seed: int, noise: bool) -> list[dict]:
    """'the X near the Y was GOOD|BAD': the sentiment word decides the label, or (noise) nothing does."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        text = f"the {rng.choice(WORDS)} near the {rng.choice(WORDS)} was {rng.choice(GOOD if label else BAD)}"
        rows.append({"text": text, "label": rng.randrange(2) if noise else label})
    return rows


def run(suite, out) -> tuple[int, dict]:
    code = main(["run", str(suite), "--out", str(out), "--device", "cpu"])
    return code, {c["id"]: c for c in json.loads((out / "results.json").read_text())["checks"]}


def gate_status(check: dict) -> dict[str, str]:
    assert check["default_gates"] is True and all(g["default"] for g in check["gates"])
    return {g["expr"]: g["status"] for g in check["gates"]}


# ---------------------------------------------------------------------- overfitting

def overfit_suite(folder, noise: bool, n_train: int):
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", review_rows(n_train, 1, noise))
    write_jsonl(folder / "val.jsonl", review_rows(32, 2, noise))
    return write_suite(folder, """
        name: overfit
        seed: 0
        model: {base: "builtin:tiny-bert", max_length: 24}
        finetune: {data: train.jsonl, validation: val.jsonl, method: full, epochs: 20, learning_rate: 2.0e-3,
                   batch_size: 8, max_length: 24}
        checks:
          - uses: overfitting
          - {uses: accuracy, data: val.jsonl, bootstrap: 100}
        """)


@pytest.mark.slow
def test_noise_fails_overfitting_and_learnable_data_passes(tmp_path):
    # 16 rows of noise labels: memorised within 20 epochs, nothing to generalise
    code, checks = run(overfit_suite(tmp_path / "noise", True, 16), tmp_path / "noise" / "out")
    over = checks["overfitting"]
    m = {k: v["value"] for k, v in over["metrics"].items()}
    assert code == 1 and over["status"] == "fail", over["gates"]
    assert gate_status(over) == {"loss_gap <= 0.5": "fail", "gl <= 20": "warn", "val_rising == 0": "warn"}
    assert m["final_train_loss"] < 0.1 and m["loss_gap"] > 1.0 and m["gl"] > 100 and m["val_rising"] == 1
    # ... and it shows no skill on validation data either
    assert gate_status(checks["accuracy"])["accuracy.ci_low > chance"] == "fail"

    # the same recipe on data where the sentiment word decides the label: both losses go to ~0 together
    code, checks = run(overfit_suite(tmp_path / "clean", False, 64), tmp_path / "clean" / "out")
    over = checks["overfitting"]
    assert code == 0 and over["status"] == "pass", over["gates"]
    assert set(gate_status(over).values()) == {"pass"}
    acc = checks["accuracy"]
    assert acc["status"] == "pass", acc["gates"]
    assert acc["metrics"]["chance"]["value"] == 0.5 and acc["metrics"]["accuracy"]["value"] == 1.0
    # the fine-tune's base model is there, so the baseline gates applied (not dropped)
    assert {"accuracy.ci_high >= baseline.accuracy", "accuracy >= baseline.accuracy - 0.01"} <= set(gate_status(acc))


# ---------------------------------------------------------------------- forgetting

REVIEWS = [{"text": f"The {thing} was {word}.", "label": lab}
           for thing in ("coffee", "hotel room", "delivery", "service", "pizza", "phone", "cinema seat", "haircut")
           for word, lab in (("wonderful and friendly", 1), ("slow and rude", 0), ("excellent value", 1),
                             ("awful", 0))]


def forgetting_suite(folder, model: str, task: str, lr: float):
    folder.mkdir()
    rows = REVIEWS if task != "causal-lm" else [{"text": r["text"]} for r in REVIEWS]
    write_jsonl(folder / "train.jsonl", rows[:24])
    write_jsonl(folder / "val.jsonl", rows[24:])
    labels = "num_labels: 2" if task != "causal-lm" else ""
    return write_suite(folder, f"""
        name: forgetting
        model: {{base: "{model}", task: {task}, {labels}}}
        finetune: {{data: train.jsonl, validation: val.jsonl, method: full, learning_rate: {lr}, epochs: 3,
                    batch_size: 8, max_length: 32}}
        checks:
          - uses: forgetting
            max_examples: 40
            bootstrap: 200
        """)


@pytest.mark.parametrize("model, task", [("builtin:tiny-bert", "sequence-classification"),
                                         ("builtin:tiny-gpt2", "causal-lm")])
def test_high_learning_rate_fails_forgetting_and_a_gentle_one_passes(tmp_path, model, task):
    code, checks = run(forgetting_suite(tmp_path / "gentle", model, task, 1e-4), tmp_path / "gentle" / "out")
    gentle = checks["forgetting"]
    assert code == 0 and gentle["status"] == "pass", gentle["gates"]

    code, checks = run(forgetting_suite(tmp_path / "harsh", model, task, 3e-2), tmp_path / "harsh" / "out")
    harsh = checks["forgetting"]
    assert code == 1 and harsh["status"] == "fail", harsh["gates"]
    status = gate_status(harsh)
    mg, mh = ({k: v["value"] for k, v in c["metrics"].items()} for c in (gentle, harsh))
    if task == "causal-lm":
        assert status["ppl_ratio.ci_low <= 1.1"] == status["kl_neutral.ci_low <= 0.1"] == "fail"
        assert mh["kl_neutral"] > 100 * mg["kl_neutral"] and mh["ppl_ratio"] > 2
    else:
        assert status["retention.ci_high >= 0.8"] == status["cka_min >= 0.5"] == "fail"
        assert mh["cka_min"] < 0.5 < 0.99 < mg["cka_min"] and mh["retention"] < 0.5


# ---------------------------------------------------------------------- bad values: exit 2 before loading

@pytest.mark.parametrize("entry, words", [
    ("{uses: accuracy, data: d.jsonl, bootstrap: 0}", ["bootstrap must be >= 100, got 0"]),
    ("{uses: accuracy, data: d.jsonl, max_examples: -5}", ["max_examples must be >= 0"]),
    ("{uses: calibration, data: d.jsonl, bins: 0}", ["bins must be >= 1"]),
    ("{uses: overfitting, k: 0}", ["k must be >= 1"]),
    ("{uses: forgetting, bootstrap: -1}", ["bootstrap must be >= 100"]),
    ("{uses: forgetting, max_examples: -1}", ["max_examples must be >= 0"]),
    ("{uses: explainability, data: d.jsonl, methods: [ig, rolout]}", ["unknown member 'rolout'",
                                                                       "did you mean 'rollout'"]),
    ("{uses: explainability, data: d.jsonl, primary: grad_rolout}", ["primary must be one of",
                                                                      "did you mean 'grad_rollout'"]),
    ("{uses: explainability, data: d.jsonl, rationale_sizes: [0.1, 1.5]}", ["each item of rationale_sizes",
                                                                             "<= 1, got 1.5"]),
    ("{uses: explainability, data: d.jsonl, rationale_sizes: [0]}", ["> 0"]),
    ("{uses: explainability, data: d.jsonl, ig_steps: 0}", ["ig_steps must be >= 2"]),
    ("{uses: explainability, data: d.jsonl, ig_batch_size: -8}", ["ig_batch_size must be >= 1"]),
    ("{uses: explainability, data: d.jsonl, topk: 0}", ["topk must be >= 1"]),
    ("{uses: explainability, data: d.jsonl, examples: [-1]}", ["each item of examples must be >= 0"]),
    ("{uses: explainability, data: d.jsonl, special_threshold: 2}", ["special_threshold must be", "<= 1"]),
    ("{uses: explainability, data: d.jsonl, heatmaps: -1}", ["heatmaps must be >= 0"]),
])
def test_out_of_range_parameters_are_exit_2_naming_the_line(tmp_path, run_cli, monkeypatch, entry, words):
    import auditkit.runner

    def no_loading(*a, **k):
        raise AssertionError("a model was loaded before the suite's values were checked")
    monkeypatch.setattr(auditkit.runner, "load_model", no_loading)
    write_jsonl(tmp_path / "d.jsonl", [{"text": "fine", "label": 1}, {"text": "poor", "label": 0}])
    suite = write_suite(tmp_path, f"""
        name: bad
        model: {{base: "builtin:tiny-bert", num_labels: 2}}
        finetune: {{data: d.jsonl, epochs: 1}}
        checks:
          - {entry}
        """)
    code, out, err = run_cli("run", suite, "--out", tmp_path / "out", "--device", "cpu")
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"auditkit: error: {suite}:line 5"), lines[0]
    for w in words:
        assert w in lines[0], (w, lines[0])


@pytest.mark.parametrize("entry, words", [
    ("{uses: lm_eval, task: t.yaml, batch_size: -1}", ["batch_size must be >= 1"]),
    ("{uses: lm_eval, task: t.yaml, limit: -3}", ["limit must be >= 0"]),
    ("{uses: lm_eval, task: t.yaml, num_fewshot: -1}", ["num_fewshot must be >= 0"]),
    ("{uses: accuracy, data: d.jsonl, bootstrap: 0}", ["bootstrap must be >= 100"]),
])
def test_out_of_range_parameters_of_causal_lm_checks(tmp_path, run_cli, monkeypatch, entry, words):
    import auditkit.runner
    monkeypatch.setattr(auditkit.runner, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    suite = write_suite(tmp_path, f"""
        name: bad
        model: {{base: "builtin:tiny-gpt2", task: causal-lm}}
        checks:
          - {entry}
        """)
    code, out, err = run_cli("run", suite, "--out", tmp_path / "out", "--device", "cpu")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"auditkit: error: {suite}:line 4") and all(w in err for w in words), err
