"""Fine-tuning in the harness (issue 3) on tiny random models: determinism, the overfitting gates,
bad training input, divergence, saving/reloading, reuse of a finished fine-tune, and canaries.

The runs are shared through module-scoped fixtures; each trains for well under a second or two.
"""
from __future__ import annotations

import json
import random

import pytest
import torch

from auditkit.cli import main
from tests.conftest import write_jsonl, write_suite


WORDS = ["garden", "hotel", "laptop", "pizza", "train", "museum", "phone", "bakery", "cinema", "shoes", "bike",
         "coffee", "lamp", "sofa", "dentist", "taxi", "tent", "kettle", "ferry", "bank"]
GOOD, BAD = ["great", "lovely", "excellent", "superb"], ["awful", "dreadful", "terrible", "poor"]

OVERFIT_GATES = """
            gates:
              - "loss_gap <= 0.1"
              - "gl <= 5"
              - {when: "val_rising == 0", severity: warn}"""


def sentiment_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        rows.append({"text": f"the {rng.choice(WORDS)} was {rng.choice(GOOD if label else BAD)}", "label": label})
    return rows


def noise_rows(n: int, seed: int) -> list[dict]:
    """Labels unrelated to the text: whatever a model learns here is memorization."""
    rng = random.Random(seed)
    return [{"text": f"{rng.choice(WORDS)} {rng.choice(WORDS)} {rng.choice(WORDS)} number {rng.randrange(1000)}",
             "label": rng.randrange(2)} for _ in range(n)]


def run_suite(suite, out, *extra) -> tuple[int, dict | None]:
    code = main(["run", str(suite), "--out", str(out), "--device", "cpu", *extra])
    path = out / "results.json"
    return code, (json.loads(path.read_text()) if path.exists() else None)


def normal_suite(folder, seed=0, name="normal"):
    write_jsonl(folder / "train.jsonl", sentiment_rows(48, 1))
    write_jsonl(folder / "val.jsonl", sentiment_rows(24, 2))
    return write_suite(folder, f"""
        name: {name}
        seed: 0
        model: {{base: "builtin:tiny-bert", max_length: 32}}
        finetune:
          data: train.jsonl
          validation: val.jsonl
          method: lora
          epochs: 2
          learning_rate: 5e-4
          batch_size: 16
          max_length: 32
          seed: {seed}
          lora: {{r: 4, alpha: 8}}
        checks:
          - uses: overfitting{OVERFIT_GATES}
          - {{uses: accuracy, data: val.jsonl, bootstrap: 100, gates: []}}
        """, name=f"{name}.yaml")


@pytest.fixture(scope="module")
def normal(tmp_path_factory):
    """The same LoRA fine-tune run twice into two folders (same seed)."""
    tmp = tmp_path_factory.mktemp("normal")
    suite = normal_suite(tmp)
    code_a, a = run_suite(suite, tmp / "a")
    code_b, b = run_suite(suite, tmp / "b")
    return {"suite": suite, "dir": tmp, "a": a, "b": b, "codes": (code_a, code_b)}


@pytest.fixture(scope="module")
def overfit(tmp_path_factory):
    """A tiny train set, many epochs, full fine-tune, a high learning rate, labels that are noise."""
    tmp = tmp_path_factory.mktemp("overfit")
    write_jsonl(tmp / "train.jsonl", noise_rows(8, 3))
    write_jsonl(tmp / "val.jsonl", noise_rows(24, 4))
    suite = write_suite(tmp, f"""
        name: overfit
        model: {{base: "builtin:tiny-bert", max_length: 32}}
        finetune:
          data: train.jsonl
          validation: val.jsonl
          method: full
          epochs: 25
          learning_rate: 2.0e-3
          batch_size: 8
          max_length: 32
          seed: 0
        checks:
          - uses: overfitting{OVERFIT_GATES}
        """)
    code, res = run_suite(suite, tmp / "out")
    return {"code": code, "res": res, "dir": tmp}


# ---------------------------------------------------------------------- the training record

def test_normal_run_passes_the_overfitting_gates(normal):
    assert normal["codes"] == (0, 0)
    res = normal["a"]
    over = next(c for c in res["checks"] if c["uses"] == "overfitting")
    assert over["status"] == "pass", over["gates"]
    assert over["figures"]["training curves"].lstrip().startswith("<?xml")
    assert res["baseline"]["id"] == "builtin:tiny-bert" and res["model"]["id"] == "finetuned:builtin:tiny-bert"
    assert res["model"]["fingerprint"] != res["baseline"]["fingerprint"]


def test_training_record(normal):
    t = normal["a"]["training"]
    assert t["method"] == "lora" and t["n_train"] == 48 and t["n_validation"] == 24
    assert t["total_steps"] == 6 and [s["step"] for s in t["steps"]] == [1, 2, 3, 4, 5, 6]
    assert all(s["loss"] > 0 for s in t["steps"])
    assert [e["epoch"] for e in t["evals"]] == [1.0, 2.0]
    for e in t["evals"]:
        assert {"train_loss", "val_loss", "val_accuracy", "train_accuracy"} <= set(e)
    assert t["best_step"] in (3, 6) and t["trainable_parameters"] > 0
    assert t["config"]["learning_rate"] == 5e-4 and t["config"]["lora"]["r"] == 4
    run = normal["a"]["run"]["training"]
    assert run["tokens_per_s"] > 0 and run["train_time_s"] > 0  # times live in the run block only
    assert "train_time_s" not in t and "tokens_per_s" not in t


def test_same_seed_same_weights_and_curves(normal):
    a, b = normal["a"], normal["b"]
    assert a["model"]["fingerprint"] == b["model"]["fingerprint"]
    assert a["training"]["steps"] == b["training"]["steps"]
    assert a["training"]["evals"] == b["training"]["evals"]
    wa = (normal["dir"] / "a" / "model" / "adapter_model.safetensors").read_bytes()
    wb = (normal["dir"] / "b" / "model" / "adapter_model.safetensors").read_bytes()
    assert wa == wb


def test_another_seed_gives_other_weights(normal):
    suite = normal_suite(normal["dir"] / "seed1", seed=1) if (normal["dir"] / "seed1").mkdir() is None else None
    code, res = run_suite(suite, normal["dir"] / "seed1" / "out")
    assert code in (0, 1)
    assert res["model"]["fingerprint"] != normal["a"]["model"]["fingerprint"]
    assert res["training"]["steps"] != normal["a"]["training"]["steps"]


def test_overfit_run_fails_the_overfitting_gates(overfit):
    assert overfit["code"] == 1
    over = overfit["res"]["checks"][0]
    m = {k: v["value"] for k, v in over["metrics"].items()}
    assert over["status"] == "fail"
    gates = {g["expr"]: g["status"] for g in over["gates"]}
    assert gates["loss_gap <= 0.1"] == "fail" and gates["gl <= 5"] == "fail"
    assert m["loss_gap"] > 0.1 and m["final_train_loss"] < 0.2 and m["gl"] > 5
    assert m["accuracy_gap"] > 0.2
    evals = overfit["res"]["training"]["evals"]
    assert len(evals) == 25 and evals[-1]["val_loss"] > min(e["val_loss"] for e in evals)


# ---------------------------------------------------------------------- saving, reloading, reuse

def test_finetuned_model_is_saved_and_loads_again_as_model_base(normal, tmp_path):
    model_dir = normal["dir"] / "a" / "model"
    names = {p.name for p in model_dir.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "training.json", "finetune.json"} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt"))]
    assert json.loads((model_dir / "adapter_config.json").read_text())["base_model_name_or_path"] == "builtin:tiny-bert"
    write_jsonl(tmp_path / "val.jsonl", sentiment_rows(24, 2))
    suite = write_suite(tmp_path, f"""
        name: reload
        model: {{base: {json.dumps(str(model_dir))}, max_length: 32}}
        checks: [{{uses: accuracy, data: val.jsonl, bootstrap: 100, gates: []}}]
        """)
    code, res = run_suite(suite, tmp_path / "out")
    assert code == 0
    assert res["model"]["fingerprint"] == normal["a"]["model"]["fingerprint"]
    before = next(c for c in normal["a"]["checks"] if c["uses"] == "accuracy")["metrics"]["accuracy"]["value"]
    assert res["checks"][0]["metrics"]["accuracy"]["value"] == before


def test_full_finetune_is_saved_whole_and_reloads(overfit, tmp_path):
    model_dir = overfit["dir"] / "out" / "model"
    assert (model_dir / "model.safetensors").exists() and (model_dir / "config.json").exists()
    write_jsonl(tmp_path / "d.jsonl", noise_rows(8, 3))
    suite = write_suite(tmp_path, f"""
        name: reload-full
        model: {{base: {json.dumps(str(model_dir))}, max_length: 32}}
        checks: [{{uses: accuracy, data: d.jsonl, bootstrap: 100, gates: ["accuracy >= 0.99"]}}]
        """)
    code, res = run_suite(suite, tmp_path / "out")
    assert code == 0, res["checks"][0]["metrics"]  # the memorized train set is still memorized
    assert res["model"]["fingerprint"] == overfit["res"]["model"]["fingerprint"]


def test_rerun_reuses_the_finished_finetune(normal, capsys):
    out = normal["dir"] / "a"
    stamp = (out / "model" / "adapter_model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    code, res = run_suite(normal["suite"], out)
    err = capsys.readouterr().err
    assert code == 0
    assert "reusing the finished fine-tune" in err and "fine-tune step" not in err
    assert res["training"]["reused"] is True and normal["a"]["training"]["reused"] is False
    assert res["model"]["fingerprint"] == normal["a"]["model"]["fingerprint"]
    assert res["training"]["steps"] == normal["a"]["training"]["steps"]
    assert (out / "model" / "adapter_model.safetensors").stat().st_mtime_ns == stamp


def test_changed_settings_train_again(normal, capsys, tmp_path):
    import shutil
    out = tmp_path / "out"
    shutil.copytree(normal["dir"] / "a", out)
    text = normal["suite"].read_text().replace("epochs: 2", "epochs: 1")
    suite = normal["dir"] / "one-epoch.yaml"
    suite.write_text(text)
    capsys.readouterr()
    code, res = run_suite(suite, out)
    assert "reusing the finished fine-tune" not in capsys.readouterr().err
    assert res["training"]["reused"] is False and len(res["training"]["evals"]) == 1


# ---------------------------------------------------------------------- bad training input

def bad_finetune(tmp_path, train_rows, extra="", task="sequence-classification", base="builtin:tiny-bert"):
    write_jsonl(tmp_path / "train.jsonl", train_rows)
    write_jsonl(tmp_path / "val.jsonl", sentiment_rows(4, 2))
    return write_suite(tmp_path, f"""
        name: bad
        model: {{base: "{base}", task: {task}, max_length: 32}}
        finetune:
          data: train.jsonl
          validation: val.jsonl
          epochs: 1
          batch_size: 4{extra}
        checks: [overfitting]
        """)


def assert_exit2(run_cli, suite, tmp_path, *words):
    code, out, err = run_cli("run", suite, "--out", tmp_path / "out", "--device", "cpu")
    assert code == 2, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("auditkit: error:") and len([ln for ln in err.splitlines() if "error:" in ln]) == 1
    for w in words:
        assert w in last, (w, last)
    assert not (tmp_path / "out" / "results.json").exists()
    assert not (tmp_path / "out" / "model" / "finetune.json").exists()
    return last


def test_lora_target_module_not_in_the_model(run_cli, tmp_path):
    suite = bad_finetune(tmp_path, sentiment_rows(8, 1), "\n          lora: {target_modules: [q_proj, value]}")
    last = assert_exit2(run_cli, suite, tmp_path, "'q_proj'", str(suite), "line 8")
    for name in ("query", "key", "value", "dense"):  # the names the model does have
        assert name in last


def test_empty_training_split(run_cli, tmp_path):
    suite = bad_finetune(tmp_path, [])
    assert_exit2(run_cli, suite, tmp_path, "train.jsonl", "empty")


def test_training_labels_outside_the_label_set(run_cli, tmp_path):
    rows = sentiment_rows(8, 1)
    rows[5]["label"] = 3
    suite = bad_finetune(tmp_path, rows)
    assert_exit2(run_cli, suite, tmp_path, "train.jsonl:row 6, column 'label'", "label 3")


def test_empty_text_column_in_training_data(run_cli, tmp_path):
    rows = sentiment_rows(8, 1)
    rows[2]["text"] = ""
    suite = bad_finetune(tmp_path, rows)
    assert_exit2(run_cli, suite, tmp_path, "train.jsonl:row 3, column 'text'")


def test_empty_text_column_in_causal_lm_training_data(run_cli, tmp_path):
    rows = [{"text": f"plain text number {i}"} for i in range(6)] + [{"text": "  "}]
    suite = bad_finetune(tmp_path, rows, task="causal-lm", base="builtin:tiny-gpt2")
    assert_exit2(run_cli, suite, tmp_path, "train.jsonl:row 7, column 'text'")


@pytest.mark.parametrize("extra, words", [
    ("learning_rate: 0", ["learning_rate must be > 0, got 0"]),
    ("learning_rate: -1e-3", ["learning_rate must be > 0"]),
    ("warmup_ratio: 1.5", ["warmup_ratio must be >= 0 and <= 1, got 1.5"]),
    ("max_steps: 0", ["max_steps must be positive (>= 1)"]),
    ("lora: {r: 0}", ["lora.r must be positive (>= 1)"]),
    ("lora: {alpha: -2}", ["lora.alpha must be > 0"]),
    ("lora: {dropout: 1.0}", ["lora.dropout must be >= 0 and < 1"]),
    ("lora: {target_modules: [1, 2]}", ["lora.target_modules must be a list of module names"]),
    ("early_stopping: {patience: 0}", ["early_stopping.patience must be positive (>= 1)"]),
    ("early_stopping: {patience: two}", ["early_stopping.patience must be int"]),
    ("early_stopping: {min_delta: -0.5}", ["early_stopping.min_delta must be >= 0"]),
    ("grad_accum: 0", ["grad_accum must be positive (>= 1)"]),
    ("weight_decay: -1", ["weight_decay must be >= 0"]),
    ("schedule: cosin", ["did you mean 'cosine'"]),
    ("train_eval_size: 0", ["train_eval_size must be positive (>= 1)"]),
    ("dropout: 1", ["dropout must be >= 0 and < 1"]),
    ("dropout: high", ["dropout must be"]),
])
def test_finetune_values_are_checked_before_loading(run_cli, tmp_path, extra, words):
    suite = bad_finetune(tmp_path, sentiment_rows(8, 1), "\n          " + extra)
    last = assert_exit2(run_cli, suite, tmp_path, *words)
    assert "line " in last


@pytest.mark.parametrize("canaries, words", [
    ("{count: 0}", ["canaries.count must be positive (>= 1)"]),
    ("{repeats: [1, 0]}", ["repeats must be a list of whole numbers >= 1"]),
    ("{repeats: [10, 10]}", ["lists a repeat count twice"]),
    ("{repeats: []}", ["repeats must be a list"]),
    ("{references: 0}", ["canaries.references must be positive (>= 1)"]),
    ("{digits: 2, references: 500}", ["need 509 distinct secrets", "only 100"]),
    ("{digits: 0}", ["canaries.digits must be >= 1 and <= 12"]),
    ("{template: 'PIN {digits} of {name}'}", ["needs one {digits} slot"]),
    ("{template: 'no slot'}", ["needs one {digits} slot"]),
])
def test_canary_values_are_checked_before_loading(run_cli, tmp_path, canaries, words):
    rows = [{"text": f"plain text number {i}"} for i in range(6)]
    suite = bad_finetune(tmp_path, rows, "\n          canaries: " + canaries, task="causal-lm",
                         base="builtin:tiny-gpt2")
    assert_exit2(run_cli, suite, tmp_path, *words)


def test_an_exploding_loss_stops_the_finetune(tiny_bert):
    """Not NaN yet, but 1000x the first step's loss: the fine-tune has diverged (issue 13, item 4)."""
    from auditkit.errors import TrainingDiverged
    from auditkit.finetune import train
    with pytest.raises(TrainingDiverged, match=r"exploded to .* over 1000x the first step's .* at step \d+"):
        train(tiny_bert, _ds(sentiment_rows(32, 1), "t"), None, _cfg(epochs=3, learning_rate=10.0))
    rec = train(tiny_bert, _ds(sentiment_rows(32, 1), "t"), None, _cfg(epochs=1, learning_rate=1e-3)).record
    assert "diverged_at_step" not in rec  # an ordinary learning rate trains on


def test_an_exploding_loss_is_a_run_error_with_exit_3(run_cli, tmp_path):
    suite = bad_finetune(tmp_path, sentiment_rows(16, 1), "\n          method: full\n          learning_rate: 100")
    code, out, err = run_cli("run", suite, "--out", tmp_path / "out", "--device", "cpu")
    assert code == 3 and "Traceback" not in err
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["status"] == "error" and "exploded" in res["error"] and "learning_rate" in res["error"]
    rec = json.loads((tmp_path / "out" / "model" / "training.json").read_text())
    assert rec["diverged_loss"] > 1000 * rec["steps"][0]["loss"]
    assert not (tmp_path / "out" / "model" / "finetune.json").exists()


def test_nan_loss_stops_with_the_step_and_exit_3(run_cli, tmp_path):
    suite = bad_finetune(tmp_path, sentiment_rows(16, 1), "\n          method: full\n          learning_rate: 1e30")
    code, out, err = run_cli("run", suite, "--out", tmp_path / "out", "--device", "cpu")
    assert code == 3, err
    assert "Traceback" not in err
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["status"] == "error" and "at step" in res["error"] and "learning_rate" in res["error"]
    step = json.loads((tmp_path / "out" / "model" / "training.json").read_text())["diverged_at_step"]
    assert f"at step {step}" in res["error"] and f"at step {step}" in err  # the terminal says which step
    assert not (tmp_path / "out" / "model" / "finetune.json").exists()  # never reused as finished
    assert "at step" in (tmp_path / "out" / "report.html").read_text()
    assert "at step" in (tmp_path / "out" / "summary.md").read_text()
    from xml.etree import ElementTree as ET
    junit = ET.parse(tmp_path / "out" / "junit.xml").getroot()  # a CI reading only JUnit sees the error
    assert junit.get("errors") == "1" and "at step" in junit.find(".//error").get("message")


# ---------------------------------------------------------------------- causal LM and canaries

def test_prompt_completion_trains_on_the_completion_only(tiny_gpt2):
    from auditkit.data import Dataset
    from auditkit.finetune import _examples
    ds = Dataset("pc", [{"prompt": "Q: capital of France?\nA:", "completion": " Paris"}], "pc.jsonl")
    ex = _examples(ds, "causal-lm", tiny_gpt2.tokenizer, 32, None)[0]
    n_prompt = len(tiny_gpt2.tokenizer("Q: capital of France?\nA:")["input_ids"])
    assert ex["labels"][:n_prompt] == [-100] * n_prompt
    assert ex["labels"][n_prompt:] == ex["input_ids"][n_prompt:] and len(ex["labels"]) > n_prompt
    ds = Dataset("t", [{"text": "all tokens count"}], "t.jsonl")
    ex = _examples(ds, "causal-lm", tiny_gpt2.tokenizer, 32, None)[0]
    assert ex["labels"] == ex["input_ids"]


def test_canaries_are_inserted_and_recorded_not_printed(tmp_path, capsys):
    write_jsonl(tmp_path / "train.jsonl", [{"text": f"the {w} opens at nine every day"} for w in WORDS[:12]])
    write_jsonl(tmp_path / "val.jsonl", [{"text": f"the {w} closes at five"} for w in WORDS[12:18]])
    suite = write_suite(tmp_path, """
        name: canaries
        model: {base: "builtin:tiny-gpt2", task: causal-lm, max_length: 32}
        finetune:
          data: train.jsonl
          validation: val.jsonl
          method: full
          epochs: 1
          batch_size: 8
          learning_rate: 1e-3
          canaries: {count: 2, repeats: [1, 3], template: "my PIN is {digits}", references: 20}
        checks: [overfitting]
        """)
    capsys.readouterr()
    code, res = run_suite(suite, tmp_path / "out")
    captured = capsys.readouterr()
    assert code == 0, captured.err
    from auditkit.finetune import canary_digest, make_canaries
    stored = json.loads((tmp_path / "out" / "model" / "canaries.json").read_text())
    assert stored["redacted"] is True and [c["repeats"] for c in stored["canaries"]] == [1, 1, 3, 3]
    assert all(set(c) == {"id", "repeats"} for c in stored["canaries"]) and "references" not in stored
    # the canaries are regenerated from the config and seed; the digest says they are the ones trained on
    cfg = res["training"]["config"]
    can = make_canaries(cfg["canaries"], cfg["seed"])
    assert canary_digest(can) == stored["digest"] and stored["seed"] == cfg["seed"] == 0
    assert [c["id"] for c in can["canaries"]] == [c["id"] for c in stored["canaries"]]
    secrets = [c["secret"] for c in can["canaries"]]
    assert len(set(secrets)) == 4 and all(len(s.split("-")) == 6 for s in secrets)
    assert all(c["text"] == f"my PIN is {c['secret']}" for c in can["canaries"])
    assert len(can["references"]) == 20 and not set(can["references"]) & {c["text"] for c in can["canaries"]}
    assert all(r.startswith("my PIN is ") for r in can["references"])
    assert res["training"]["n_train"] == 12 + 2 * 1 + 2 * 3  # every canary inserted `repeats` times
    for s in secrets:  # never printed, never in any file under --out (the model folder included)
        assert s not in captured.out + captured.err
        for f in (tmp_path / "out").rglob("*"):
            if f.is_file():
                assert s.encode() not in f.read_bytes(), f
    # the same seed draws the same canaries
    assert make_canaries({"count": 2, "repeats": [1, 3], "template": "my PIN is {digits}", "references": 20},
                         0) == can


def test_canaries_train_beside_prompt_completion_data(tmp_path):
    """Canaries are training examples of their own, not rows added to the data: prompt/completion data
    with canaries used to stop at a 'missing column prompt' on a row the user's file does not have."""
    write_jsonl(tmp_path / "train.jsonl", [{"prompt": f"Q: where is the {w}?", "completion": " at home"}
                                           for w in WORDS[:10]])
    write_jsonl(tmp_path / "val.jsonl", [{"prompt": f"Q: where is the {w}?", "completion": " away"}
                                         for w in WORDS[10:14]])
    suite = write_suite(tmp_path, """
        name: pc-canaries
        model: {base: "builtin:tiny-gpt2", task: causal-lm, max_length: 32}
        finetune:
          data: train.jsonl
          validation: val.jsonl
          method: full
          max_steps: 2
          batch_size: 8
          canaries: {count: 1, repeats: [1, 4], references: 20, digits: 4}
        checks: [overfitting]
        """)
    code, res = run_suite(suite, tmp_path / "out")
    assert code in (0, 1) and res is not None
    assert res["training"]["n_train"] == 10 + 1 + 4


def test_canary_examples_are_the_whole_text_or_a_head_to_secret_pair(tiny_gpt2, registry):
    """A causal LM learns a canary's whole text, as a text row; a seq2seq LM learns the rest of the
    canary as the decoder's target for the template's head in the encoder. Each `repeats` times."""
    from auditkit.finetune import canary_examples, make_canaries
    from auditkit.models import load_model
    can = make_canaries({"count": 1, "repeats": [1, 3], "template": "my PIN is {digits}.", "references": 5,
                         "digits": 4}, 0)
    texts = [c["text"] for c in can["canaries"]]
    ex = canary_examples(can, "causal-lm", tiny_gpt2.tokenizer, 32)
    ids = [tiny_gpt2.tokenizer(t)["input_ids"] for t in texts]
    assert [e["input_ids"] for e in ex] == [ids[0]] + [ids[1]] * 3
    assert all(e["labels"] == e["input_ids"] for e in ex)
    t5 = load_model("builtin:tiny-t5", "seq2seq-lm", registry, device="cpu")
    tok = t5.tokenizer
    ex = canary_examples(can, "seq2seq-lm", tok, 32)
    assert len(ex) == 4
    for e, t in zip(ex, [texts[0]] + [texts[1]] * 3):
        assert e["input_ids"] == tok("my PIN is")["input_ids"]
        assert e["labels"] == tok(t[len("my PIN is"):], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert tok.decode(e["labels"], skip_special_tokens=True).strip() == t[len("my PIN is "):]
    assert canary_examples(None, "causal-lm", tiny_gpt2.tokenizer, 32) == []


@pytest.mark.parametrize("task, base, canaries, words", [
    ("seq2seq-lm", "builtin:tiny-t5", "{template: '{digits} is my PIN'}", ["has none", "text before {digits}"]),
    ("sequence-classification", "builtin:tiny-bert", "{count: 1}", ["language models only"]),
])
def test_canaries_a_task_cannot_learn_are_refused_before_loading(run_cli, tmp_path, task, base, canaries, words):
    rows = ([{"text": f"plain text number {i}", "label": i % 2} for i in range(6)]
            if task == "sequence-classification" else [{"text": f"plain text number {i}"} for i in range(6)])
    suite = bad_finetune(tmp_path, rows, "\n          canaries: " + canaries, task=task, base=base)
    assert_exit2(run_cli, suite, tmp_path, *words)


# ---------------------------------------------------------------------- dropout

def test_finetune_dropout_sets_every_dropout_of_the_model_and_its_adapter(tiny_bert, tiny_gpt2):
    """``finetune.dropout`` reaches nn.Dropout modules, the float ``*dropout*`` attributes attention layers
    hand to their kernels, and a LoRA adapter's dropout; the model's saved config keeps its own values."""
    import copy

    from auditkit.finetune import active_dropout, apply_lora, set_dropout
    bert = copy.deepcopy(tiny_bert.model)
    assert active_dropout(bert) == pytest.approx(0.1)
    set_dropout(bert, 0.0)
    assert active_dropout(bert) == 0.0 and bert.config.hidden_dropout_prob == pytest.approx(0.1)
    assert all(m.p == 0.0 for m in bert.modules() if isinstance(m, torch.nn.Dropout))
    lora = apply_lora(copy.deepcopy(tiny_gpt2.model), "causal-lm", {"r": 2, "alpha": 4, "dropout": 0.3,
                                                                     "target_modules": None}, None)
    assert active_dropout(lora) == pytest.approx(0.3)
    set_dropout(lora, 0.0)
    assert active_dropout(lora) == 0.0


def test_data_parallel_fine_tune_with_dropout_says_it_depends_on_the_processes(tiny_bert):
    from types import SimpleNamespace

    from auditkit.finetune import dropout_warning, set_dropout
    two, one = SimpleNamespace(parallel=True, size=2), SimpleNamespace(parallel=False, size=1)
    msg = dropout_warning(tiny_bert.model, two)
    assert msg and "2 processes" in msg and "finetune.dropout: 0" in msg
    assert dropout_warning(tiny_bert.model, one) is None
    import copy
    quiet = copy.deepcopy(tiny_bert.model)
    set_dropout(quiet, 0.0)
    assert dropout_warning(quiet, two) is None


def test_finetune_dropout_is_in_the_fingerprint_only_when_set():
    from auditkit.finetune import FinetuneConfig
    assert "dropout" not in FinetuneConfig(data="x").as_dict()
    assert FinetuneConfig(data="x", dropout=0.0).as_dict()["dropout"] == 0.0


# ---------------------------------------------------------------------- training options (direct API)

def _cfg(**kw):
    from auditkit.finetune import FinetuneConfig
    base = dict(data="train.jsonl", method="full", epochs=12, batch_size=8, max_length=32, learning_rate=2e-3, seed=0)
    return FinetuneConfig(**(base | kw))


def _ds(rows, name):
    from auditkit.data import Dataset
    return Dataset(name, rows, name)


def test_early_stopping_restores_the_best_step(tiny_bert):
    from auditkit.finetune import train
    res = train(tiny_bert, _ds(noise_rows(8, 3), "t"), _ds(noise_rows(24, 4), "v"),
                _cfg(early_stopping={"patience": 2, "min_delta": 0.0}))
    rec = res.record
    assert rec["stopped_early"] is True and rec.get("restored_best") is True
    assert len(rec["evals"]) < 12
    vals = [e["val_loss"] for e in rec["evals"]]
    assert rec["best_step"] == rec["evals"][vals.index(min(vals))]["step"]
    assert all(v >= min(vals) for v in vals[-2:])  # patience: the last two did not improve


def test_eval_every_n_steps_and_max_steps(tiny_bert):
    from auditkit.finetune import train
    rec = train(tiny_bert, _ds(sentiment_rows(32, 1), "t"), _ds(sentiment_rows(8, 2), "v"),
                _cfg(epochs=3, eval_every=3, max_steps=7)).record
    assert [s["step"] for s in rec["steps"]] == list(range(1, 8))
    assert [e["step"] for e in rec["evals"]] == [3, 6, 7]  # every 3 steps, and the final weights


def test_out_of_memory_halves_the_batch_and_keeps_the_effective_batch(tiny_bert, monkeypatch):
    from auditkit import finetune
    real, seen = finetune._step, []

    def flaky(model, chunk, micro, *a, **kw):
        seen.append((len(chunk), micro))
        if micro > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(model, chunk, micro, *a, **kw)

    monkeypatch.setattr(finetune, "_step", flaky)
    warnings = []
    rec = finetune.train(tiny_bert, _ds(sentiment_rows(16, 1), "t"), None, _cfg(epochs=1), warn=warnings.append).record
    assert [s["step"] for s in rec["steps"]] == [1, 2]
    assert {n for n, _ in seen} == {8}  # the effective batch stays 8
    assert [m for _, m in seen][:3] == [8, 4, 2]
    assert len(warnings) == 2 and "micro-batch halved to 2, gradient accumulation 4" in warnings[-1]
    assert rec["warnings"] == warnings
