"""Parameter values that Param ranges cannot express, checked when the suite loads (``Check.validate_params``):
forgetting's ``retention`` entries, explainability's ``methods``/``primary``, the lm_eval check's ``task``.

Each bad suite is exit 2 with one stderr line naming the suite file and the parameter's line, and no model is
loaded (``auditkit.runner.load_model`` raises if called), so these tests are fast.
"""
from __future__ import annotations

import pytest

from tests.conftest import write_jsonl, write_suite

CLASSIFIER = ("model: {base: builtin:tiny-bert, task: sequence-classification, num_labels: 2, "
              "baseline: builtin:tiny-bert}")
CAUSAL = "model: {base: builtin:tiny-gpt2, task: causal-lm}"


@pytest.fixture(autouse=True)
def no_model(monkeypatch):
    """Validation happens before any model: loading one fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the suite's parameters were checked")
    monkeypatch.setattr("auditkit.runner.load_model", refuse)


def bad_input(run_cli, tmp_path, model: str, entry: str, param: str, param_line: int, *words: str) -> str:
    """Run a suite whose one check is ``entry`` (``param`` on line ``param_line``); assert exit 2, one stderr
    line naming the suite, that line and the parameter, and no report; return the line."""
    suite = write_suite(tmp_path, f"name: s\n{model}\nchecks:\n{entry}")
    out = tmp_path / "out"
    code, stdout, err = run_cli("run", suite, "--out", out, "--device", "cpu")
    assert code == 2, (code, stdout, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    line = lines[0]
    assert line.startswith(f"auditkit: error: {suite}:line {param_line}: checks[0].{param}: "), line
    for w in words:
        assert w in line, (w, line)
    assert not (out / "results.json").exists()
    return line


# ---------------------------------------------------------------------- forgetting: retention entries

@pytest.mark.parametrize("entries, words", [
    ('["builtin:general-text"]', ["does not say what kind", "{text: builtin:general-text}"]),
    ('[{txt: builtin:general-text}]', ["unknown key 'txt'", "did you mean 'text'?"]),
    ('[{text: builtin:general-txt}]', ["unknown built-in dataset 'builtin:general-txt'",
                                       "did you mean 'builtin:general-text'?"]),
    ('[{pairs: missing.jsonl}]', ["missing.jsonl does not exist"]),
    ('[{text: sub}]', ["is a directory"]),
    ('[{text: a.jsonl, pairs: b.jsonl}]', ["more than one kind"]),
    ('[{text: data.jsonl, limit: 3}]', ["key 'limit' besides 'text'"]),
    ('[{text: 3}]', ["must be builtin:NAME or a file path"]),
    ('[[1, 2]]', ["must be 'default' or mappings"]),
    ('[{lm_eval: builtin:mc-general, limits: 3}]', ["unknown key 'limits'", "did you mean 'limit'?"]),
    ('[{lm_eval: builtin:mc-generl}]', ["did you mean 'builtin:mc-general'?"]),
    ('[{lm_eval: tasks/missing.yaml}]', ["tasks/missing.yaml does not exist"]),
    ('[{lm_eval: builtin:mc-general, limit: -1}]', ["limit must be >= 0"]),
    ('[{lm_eval: builtin:mc-general, batch_size: many}]', ["batch_size must be int"]),
])
def test_bad_retention_entries_are_caught_before_any_model(run_cli, tmp_path, entries, words):
    (tmp_path / "sub").mkdir()
    write_jsonl(tmp_path / "data.jsonl", [{"text": "a sentence"}])
    entry = ("  - uses: forgetting\n"
             "    bootstrap: 100\n"
             f"    retention: {entries}\n")
    bad_input(run_cli, tmp_path, CLASSIFIER, entry, "retention", 6, *words)


def test_good_retention_entries_pass_validation(tmp_path):
    """Every shape the check takes validates (files relative to the suite's folder)."""
    from auditkit.plugins import registry
    write_jsonl(tmp_path / "pairs.jsonl", [{"text_a": "a", "text_b": "b"}])
    (tmp_path / "task.yaml").write_text("task: mine\nprocess_docs: !function utils.process_docs\n")
    check = registry().checks["forgetting"]
    check.validate_params({"retention": ["default", {"text": "builtin:general-text"}, {"pairs": "pairs.jsonl"},
                                         {"mc": "builtin:mc-general#test"},
                                         {"lm_eval": "task.yaml", "limit": 4, "num_fewshot": 0, "allow_code": True},
                                         {"lm_eval": "arc_easy"}]}, str(tmp_path))
    check.validate_params({"retention": None}, str(tmp_path))
    # a retention task that would import the suite's Python needs the entry's opt-in, as the lm_eval check does
    from auditkit.errors import AuditInputError
    with pytest.raises(AuditInputError, match="would run Python"):
        check.validate_params({"retention": [{"lm_eval": "task.yaml"}]}, str(tmp_path))


# ---------------------------------------------------------------------- explainability

@pytest.mark.parametrize("params, param, line, words", [
    ("    methods: []\n", "methods", 6, ["methods is empty"]),
    ("    methods: [rollout, grad_rollout]\n    primary: ig\n", "primary", 7,
     ["primary method 'ig' is not among", "rollout, grad_rollout"]),
    ("    primary: rollout\n    methods: [ig]\n", "primary", 6, ["primary method 'rollout'"]),
    ("    rationale_sizes: []\n", "rationale_sizes", 6, ["rationale_sizes is empty"]),
])
def test_bad_explainability_params_are_caught_before_any_model(run_cli, tmp_path, params, param, line, words):
    entry = "  - uses: explainability\n    max_examples: 2\n" + params
    bad_input(run_cli, tmp_path, CLASSIFIER, entry, param, line, *words)


def test_primary_among_methods_passes_validation():
    from auditkit.plugins import registry
    check = registry().checks["explainability"]
    check.validate_params({"methods": ["rollout", "ig"], "primary": "rollout", "rationale_sizes": [0.5]})
    check.validate_params({"methods": ["rollout"], "primary": None, "rationale_sizes": [0.5]})


# ---------------------------------------------------------------------- lm_eval

@pytest.mark.parametrize("task, words", [
    ("tasks/missing.yaml", ["lm-eval task file tasks/missing.yaml does not exist"]),
    ("folder.yaml", ["is a directory"]),
    ("broken.yaml", ["cannot be read"]),
    ("list.yaml", ["holds no mapping"]),
    ('"builtin:mc-generl"', ["unknown built-in dataset 'builtin:mc-generl'", "did you mean 'builtin:mc-general'?"]),
    ('" "', ["must be a task name"]),
])
def test_bad_lm_eval_task_is_caught_before_any_model(run_cli, tmp_path, task, words):
    (tmp_path / "folder.yaml").mkdir()
    (tmp_path / "broken.yaml").write_text("task: [unclosed\n")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    entry = f"  - uses: lm_eval\n    limit: 2\n    task: {task}\n"
    bad_input(run_cli, tmp_path, CAUSAL, entry, "task", 6, *words)


def test_task_yaml_with_lm_eval_tags_validates(tmp_path):
    """lm-eval task files use ``!function``; reading the task name must not choke on it. Such a file makes
    lm-eval import the suite's Python, so it validates only with allow_code (tests/test_lm_eval_code.py)."""
    from auditkit.errors import AuditInputError
    from auditkit_plugins.lm_eval_task import LmEvalTask, read_task_file
    (tmp_path / "t.yaml").write_text("task: mine\nprocess_docs: !function utils.process_docs\n")
    LmEvalTask.validate_params({"task": "t.yaml", "allow_code": True}, str(tmp_path))
    with pytest.raises(AuditInputError, match="would run Python"):
        LmEvalTask.validate_params({"task": "t.yaml"}, str(tmp_path))
    assert read_task_file("t.yaml", str(tmp_path), "task")["task"] == "mine"
    LmEvalTask.validate_params({"task": "arc_easy"}, str(tmp_path))  # a plain name is looked up at run time
