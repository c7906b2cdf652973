"""The accuracy check: classifier accuracy/macro-F1 as sklearn computes them, and multiple-choice
acc/acc_norm exactly equal to lm-eval's on the same causal model and rows."""
from __future__ import annotations

import json

import numpy as np
import pytest

from auditkit.api import CheckContext
from auditkit.data import Dataset
from auditkit.cli import main
from tests.conftest import write_jsonl, write_suite


N_MC = 24


def test_classification_matches_sklearn(tiny_bert, registry):
    from sklearn.metrics import accuracy_score, f1_score
    rows = [{"text": f"item {i} is {'fine' if i % 3 else 'poor'} and {'cheap' if i % 2 else 'dear'}",
             "label": i % 2} for i in range(30)]
    cls = registry.checks["accuracy"]
    params = {k: p.default for k, p in cls.params.items()} | {"bootstrap": 200}
    res = cls().run(CheckContext(model=tiny_bert, params=params, seed=0, device="cpu", data=Dataset("d", rows, "d")))
    pred = tiny_bert.class_logits([r["text"] for r in rows]).argmax(-1)
    y = [r["label"] for r in rows]
    acc, f1 = res.metrics["accuracy"], res.metrics["macro_f1"]
    assert acc.value == pytest.approx(accuracy_score(y, pred)) and acc.n == 30
    assert f1.value == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))
    assert acc.ci_low <= acc.value <= acc.ci_high and f1.ci_low <= f1.value <= f1.ci_high
    assert acc.ci_high - acc.ci_low > 0
    assert res.records["pred"] == pred.tolist()
    # chance = the majority-class rate, i.e. sklearn's most-frequent dummy classifier
    from sklearn.dummy import DummyClassifier
    dummy = DummyClassifier(strategy="most_frequent").fit(np.zeros((30, 1)), y)
    assert res.metrics["chance"].value == pytest.approx(dummy.score(np.zeros((30, 1)), y))
    assert res.metrics["chance"].higher_is_better is None
    assert "confusion matrix" in res.figures and res.figures["confusion matrix"].lstrip().startswith("<?xml")
    mistakes = res.evidence[0]["rows"]
    assert len(mistakes) == min(10, int((pred != np.array(y)).sum()))
    assert all(m["label"] != m["predicted"] for m in mistakes)


def test_multiple_choice_scores_follow_the_lm_eval_definition(tiny_gpt2):
    """acc = argmax of summed log-likelihood of " "+choice; acc_norm divides by len(choice) in characters."""
    from auditkit_plugins.accuracy import multiple_choice_scores
    rows = [{"question": "Question: Which is a colour?\nAnswer:", "choices": ["red", "a very long distractor"],
             "label": 0},
            {"question": "Question: Opposite of up?\nAnswer:", "choices": ["down", "left", "sideways"], "label": 0}]
    acc, acc_norm, lls = multiple_choice_scores(tiny_gpt2, rows)
    for row, a, an, ll in zip(rows, acc, acc_norm, lls):
        want = [float(np.sum(tiny_gpt2.continuation_logprobs([(row["question"], " " + c)])[0])) for c in row["choices"]]
        np.testing.assert_allclose(ll, want, rtol=1e-6)
        assert a == float(np.argmax(want) == row["label"])
        assert an == float(np.argmax(np.array(want) / [len(c) for c in row["choices"]]) == row["label"])


@pytest.fixture(scope="module")
def mc_run(tmp_path_factory, registry):
    """One suite: our accuracy check and lm-eval (via a jsonl-backed task YAML and via builtin:) on the
    same rows of the same tiny causal model."""
    from auditkit.data import load_dataset
    tmp = tmp_path_factory.mktemp("mc")
    rows = load_dataset("builtin:mc-general", registry).rows[:N_MC]
    # a few items whose choices differ a lot in length, so acc and acc_norm can disagree
    rows += [{"question": "Question: Pick the animal.\nAnswer:", "choices": ["cat", "a carpet of moss and stone"],
              "label": 0},
             {"question": "Question: Pick the long one.\nAnswer:", "choices": ["x", "an extraordinarily lengthy answer"],
              "label": 1}]
    data = write_jsonl(tmp / "mc.jsonl", [{k: r[k] for k in ("question", "choices", "label")} for r in rows])
    (tmp / "task.yaml").write_text(f"""task: auditkit_test_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {json.dumps(str(data.resolve()))}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
  - metric: acc_norm
""")
    suite = write_suite(tmp, f"""
        name: mc
        model: {{base: "builtin:tiny-gpt2", task: causal-lm, max_length: 64}}
        checks:  # a random model: no gates (the default ones would fail it for guessing)
          - {{uses: accuracy, id: ours, data: mc.jsonl, gates: []}}
          - {{uses: lm_eval, id: theirs, task: task.yaml, limit: {len(rows)}}}
          - {{uses: accuracy, id: ours-builtin, data: "builtin:mc-general", max_examples: 8, gates: []}}
          - {{uses: lm_eval, id: theirs-builtin, task: "builtin:mc-general", limit: 8}}
        """)
    code = main(["run", str(suite), "--out", str(tmp / "out"), "--device", "cpu"])
    results = json.loads((tmp / "out" / "results.json").read_text())
    assert code == 0, [c.get("error") for c in results["checks"]]
    return {c["id"]: c for c in results["checks"]}, len(rows)


def test_native_acc_equals_lm_eval_on_a_task_yaml(mc_run):
    checks, n = mc_run
    ours, theirs = checks["ours"], checks["theirs"]
    for metric in ("acc", "acc_norm"):
        assert ours["metrics"][metric]["value"] == theirs["metrics"][metric]["value"], metric
        assert ours["metrics"][metric]["n"] == theirs["metrics"][metric]["n"] == n
    assert ours["records"]["correct"] == theirs["records"]["correct"]  # per item, not just on average
    stderr = theirs["metrics"]["acc"]
    assert ours["metrics"]["acc_stderr"]["value"] == pytest.approx((stderr["ci_high"] - stderr["ci_low"]) / 3.92)


def test_chance_and_lm_eval_metric_names(mc_run, registry):
    from auditkit.api import find_metric
    from auditkit.data import load_dataset
    checks, _ = mc_run
    # chance of multiple choice: the mean over items of 1 / number of choices
    rows = load_dataset("builtin:mc-general", registry).rows[:8]
    want = sum(1 / len(r["choices"]) for r in rows) / len(rows)
    assert checks["ours-builtin"]["metrics"]["chance"]["value"] == pytest.approx(want)
    theirs = checks["theirs"]
    # lm-eval's bookkeeping is not a metric; every metric it reports can be gated
    assert "sample_len" not in theirs["metrics"] and "alias" not in theirs["metrics"]
    spec = registry.checks["lm_eval"].metrics
    assert all(find_metric(spec, name) is not None for name in theirs["metrics"])
    assert theirs["metrics"]["acc"]["higher_is_better"] is True
    assert theirs["metrics"]["score"]["value"] == theirs["metrics"]["acc"]["value"]  # the first metric it reports
    # its default gate compares with a base model: none here, so it is dropped and the check is info
    assert theirs["gates"] == [] and theirs["status"] == "info"
    assert any("not applied" in note for note in theirs["notes"])


def test_native_acc_equals_lm_eval_on_builtin_data(mc_run):
    checks, _ = mc_run
    ours, theirs = checks["ours-builtin"], checks["theirs-builtin"]
    for metric in ("acc", "acc_norm"):
        assert ours["metrics"][metric]["value"] == theirs["metrics"][metric]["value"], metric
    assert ours["records"]["correct"] == theirs["records"]["correct"]
    assert ours["metrics"]["acc"]["n"] == 8


def test_lm_eval_missing_task_file_is_bad_input(run_cli, tmp_path):
    suite = write_suite(tmp_path, """
        name: s
        model: {base: "builtin:tiny-gpt2", task: causal-lm}
        checks: [{uses: lm_eval, task: missing.yaml}]
        """)
    code, out, err = run_cli("run", suite, "--out", tmp_path / "out", "--device", "cpu")
    assert code == 2 and "missing.yaml" in err and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"auditkit: error: {suite}:line 3") and "does not exist" in last
