"""Bad suites: exit 2, one line naming the file and the line, a "did you mean", no traceback, no report.

Every suite here is invalid, so nothing is loaded or trained: these tests are fast.
"""
from __future__ import annotations

import json
import re

import pytest

from tests.conftest import write_jsonl, write_suite

GOOD_DATA = [{"text": f"text number {i}", "label": i % 2} for i in range(8)]


def assert_bad_input(result, file, place, out_dir=None, *, sole_line=True):
    """Exit 2; one line on stderr naming FILE:PLACE; no traceback; no results.json claiming pass."""
    code, out, err = result
    assert code == 2, (code, out, err)
    assert "Traceback" not in err and "Traceback" not in out
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("auditkit: error:")]
    assert len(errors) == 1, err
    if sole_line:
        assert lines == errors, f"expected exactly one line on stderr, got:\n{err}"
    else:
        assert lines[-1] == errors[0], err
    line = errors[0]
    assert str(file) in line, line
    assert re.search(place, line), (place, line)
    if out_dir is not None:
        res = out_dir / "results.json"
        assert not res.exists() or json.loads(res.read_text())["status"] != "pass"
        assert not (out_dir / "report.html").exists()
    return line


@pytest.fixture
def data(tmp_path):
    return write_jsonl(tmp_path / "data.jsonl", GOOD_DATA)


def run_suite(run_cli, tmp_path, text):
    suite = write_suite(tmp_path, text)
    out = tmp_path / "out"
    return suite, out, run_cli("run", suite, "--out", out, "--device", "cpu")


def test_malformed_yaml(run_cli, tmp_path, data):
    suite, out, res = run_suite(run_cli, tmp_path, """
        name: broken
        model:
          base: builtin:tiny-bert
        checks:
          - uses: accuracy
            data: data.jsonl
           gates: ["accuracy >= 0.5"]
        """)
    line = assert_bad_input(res, suite, r"line 7\b", out)
    assert "malformed YAML" in line


def test_unclosed_bracket_yaml(run_cli, tmp_path, data):
    suite, out, res = run_suite(run_cli, tmp_path, """
        name: broken
        model: {base: builtin:tiny-bert
        checks: [accuracy]
        """)
    assert_bad_input(res, suite, r"line \d+", out)


def test_suite_that_is_not_a_mapping(run_cli, tmp_path):
    suite, out, res = run_suite(run_cli, tmp_path, "- just\n- a list\n")
    assert_bad_input(res, suite, "line 1", out)


def test_missing_suite_file(run_cli, tmp_path):
    code, out, err = run_cli("run", tmp_path / "nope.yaml")
    assert code == 2 and "nope.yaml" in err and "does not exist" in err and "Traceback" not in err


@pytest.mark.parametrize("where,text,bad,suggest,line", [
    ("top", """
        name: s
        model: {base: builtin:tiny-bert}
        chekcs: [accuracy]
        """, "chekcs", "checks", 3),
    ("model", """
        name: s
        model:
          base: builtin:tiny-bert
          taks: sequence-classification
        checks: [{uses: accuracy, data: data.jsonl}]
        """, "taks", "task", 4),
    ("check", """
        name: s
        model: {base: builtin:tiny-bert}
        checks:
          - uses: accuracy
            data: data.jsonl
            gate: ["accuracy >= 0.5"]
        """, "gate", "gates", 6),
    ("check param", """
        name: s
        model: {base: builtin:tiny-bert}
        checks:
          - uses: accuracy
            data: data.jsonl
            bootstap: 10
        """, "bootstap", "bootstrap", 6),
    ("finetune", """
        name: s
        model: {base: builtin:tiny-bert}
        finetune:
          data: data.jsonl
          epoch: 2
        checks: [{uses: accuracy, data: data.jsonl}]
        """, "epoch", "epochs", 5),
    ("lora", """
        name: s
        model: {base: builtin:tiny-bert}
        finetune:
          data: data.jsonl
          lora: {rank: 4}
        checks: [{uses: accuracy, data: data.jsonl}]
        """, "rank", "r", 5),
])
def test_unknown_key_with_did_you_mean(run_cli, tmp_path, data, where, text, bad, suggest, line):
    suite, out, res = run_suite(run_cli, tmp_path, text)
    msg = assert_bad_input(res, suite, rf"line {line}\b", out)
    assert f"unknown key {bad!r}" in msg
    if suggest != "r":
        assert f"did you mean {suggest!r}?" in msg
    else:  # too short for a close match: lists the allowed keys instead
        assert "'r'" in msg or " r," in msg


def test_unknown_check_with_did_you_mean(run_cli, tmp_path, data):
    suite, out, res = run_suite(run_cli, tmp_path, """
        name: s
        model: {base: builtin:tiny-bert}
        checks:
          - uses: accuracy
            data: data.jsonl
          - uses: acuracy
            data: data.jsonl
        """)
    msg = assert_bad_input(res, suite, r"line 6\b", out)
    assert "unknown check 'acuracy'" in msg and "did you mean 'accuracy'?" in msg


def test_unknown_metric_in_gate_with_did_you_mean(run_cli, tmp_path, data):
    suite, out, res = run_suite(run_cli, tmp_path, """
        name: s
        model: {base: builtin:tiny-bert}
        checks:
          - uses: accuracy
            data: data.jsonl
            gates:
              - "accuracy >= 0.5"
              - "macro_f2 >= 0.5"
        """)
    msg = assert_bad_input(res, suite, r"line 8\b", out)
    assert "macro_f2" in msg and "did you mean 'macro_f1'?" in msg


def test_unknown_baseline_metric_in_gate(run_cli, tmp_path, data):
    suite, out, res = run_suite(run_cli, tmp_path, """
        name: s
        model: {base: builtin:tiny-bert}
        checks:
          - uses: accuracy
            data: data.jsonl
            gates: ["accuracy >= baseline.acuracy"]
        """)
    msg = assert_bad_input(res, suite, r"line 6\b", out)
    assert "acuracy" in msg and "did you mean 'accuracy'?" in msg


@pytest.mark.parametrize("gate", ["accuracy >> 0.5", "accuracy >= ", "accuracy >= 0.5 or 1",
                                  "{when: 'accuracy >= 0.5', severity: fatal}", "{when: 'accuracy >= 0.5', sev: warn}"])
def test_bad_gate_syntax(run_cli, tmp_path, data, gate):
    quoted = gate if gate.startswith("{") else json.dumps(gate)
    suite, out, res = run_suite(run_cli, tmp_path, f"""
        name: s
        model: {{base: builtin:tiny-bert}}
        checks:
          - uses: accuracy
            data: data.jsonl
            gates:
              - {quoted}
        """)
    msg = assert_bad_input(res, suite, r"line 7\b", out)
    assert "gate" in msg


def test_baseline_gate_without_a_baseline(run_cli, tmp_path, data):
    suite, out, res = run_suite(run_cli, tmp_path, """
        name: s
        model: {base: builtin:tiny-bert}
        checks:
          - uses: accuracy
            data: data.jsonl
            gates: ["accuracy >= baseline.accuracy"]
        """)
    msg = assert_bad_input(res, suite, r"line 4\b", out)
    assert "baseline" in msg


@pytest.mark.parametrize("snippet,words", [
    ("model: {base: builtin:tiny-bert, task: classification}", "unknown task"),
    ("model: {base: builtin:tiny-bert, max_length: long}", "max_length must be int"),
    ("model: {base: builtin:tiny-bert}\nseed: zero", "seed must be int"),
    ("model: {task: causal-lm}", "base"),
    ("model: {base: builtin:tiny-bert}\ndevice: tpu", "device must be"),
])
def test_bad_model_section(run_cli, tmp_path, data, snippet, words):
    suite, out, res = run_suite(run_cli, tmp_path, f"name: s\n{snippet}\nchecks: [{{uses: accuracy, data: data.jsonl}}]\n")
    msg = assert_bad_input(res, suite, r"line \d+", out)
    assert words in msg


def test_bad_parameter_type(run_cli, tmp_path, data):
    suite, out, res = run_suite(run_cli, tmp_path, """
        name: s
        model: {base: builtin:tiny-bert}
        checks:
          - uses: accuracy
            data: data.jsonl
            bootstrap: many
        """)
    msg = assert_bad_input(res, suite, r"line 6\b", out)
    assert "bootstrap must be int" in msg


def test_check_that_needs_data_without_data(run_cli, tmp_path):
    suite, out, res = run_suite(run_cli, tmp_path, "name: s\nmodel: {base: builtin:tiny-bert}\nchecks: [accuracy]\n")
    msg = assert_bad_input(res, suite, r"line 3\b", out)
    assert "needs data" in msg


def test_check_for_the_wrong_task(run_cli, tmp_path, data):
    suite, out, res = run_suite(run_cli, tmp_path, """
        name: s
        model: {base: builtin:tiny-bert}
        checks:
          - uses: lm_eval
            task: builtin:mc-general
        """)
    msg = assert_bad_input(res, suite, r"line 4\b", out)
    assert "does not support task 'sequence-classification'" in msg


def test_training_check_without_finetune(run_cli, tmp_path):
    suite, out, res = run_suite(run_cli, tmp_path, "name: s\nmodel: {base: builtin:tiny-bert}\nchecks: [overfitting]\n")
    msg = assert_bad_input(res, suite, r"line 3\b", out)
    assert "finetune" in msg


def test_duplicate_check_ids(run_cli, tmp_path, data):
    suite, out, res = run_suite(run_cli, tmp_path, """
        name: s
        model: {base: builtin:tiny-bert}
        checks:
          - {uses: accuracy, id: acc, data: data.jsonl}
          - {uses: accuracy, id: acc, data: data.jsonl}
        """)
    msg = assert_bad_input(res, suite, r"line 5\b", out)
    assert "duplicate check id 'acc'" in msg


@pytest.mark.parametrize("snippet,words", [
    ("method: qlorra", "method must be full, lora or qlora"),
    ("epochs: 0", "epochs must be positive"),
    ("learning_rate: fast", "learning_rate must be"),
    ("schedule: cyclic", "schedule must be"),
    ("canaries: {count: 1}", "language models only"),
])
def test_bad_finetune_section(run_cli, tmp_path, data, snippet, words):
    suite, out, res = run_suite(run_cli, tmp_path, f"""
        name: s
        model: {{base: builtin:tiny-bert}}
        finetune:
          data: data.jsonl
          {snippet}
        checks: [{{uses: accuracy, data: data.jsonl}}]
        """)
    msg = assert_bad_input(res, suite, r"line 5\b", out)
    assert words in msg


def test_only_names_an_unknown_check(run_cli, tmp_path, data):
    suite = write_suite(tmp_path, "name: s\nmodel: {base: builtin:tiny-bert}\nchecks: [{uses: accuracy, data: data.jsonl}]\n")
    res = run_cli("run", suite, "--out", tmp_path / "out", "--only", "acuracy")
    msg = assert_bad_input(res, suite, r"did you mean 'accuracy'", tmp_path / "out")
    assert "--only acuracy" in msg


def test_bad_command_line_is_one_line(run_cli):
    code, out, err = run_cli("run")
    assert code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and "suite" in err
    code, out, err = run_cli("run", "x.yaml", "--device", "tpu")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--device" in err


def test_load_suite_returns_typed_objects(registry, tmp_path, data):
    from auditkit.suite import load_suite
    suite = write_suite(tmp_path, """
        name: typed
        seed: 3
        model: {base: builtin:tiny-bert, num_labels: 2, max_length: 32}
        checks:
          - uses: accuracy
            data: data.jsonl
            bootstrap: 100
            gates: ["accuracy >= 0.5", {when: "macro_f1 >= 0.5", severity: warn}]
          - {uses: accuracy, data: data.jsonl}
        """)
    s = load_suite(suite, registry)
    assert (s.name, s.seed, s.model.max_length, s.model.num_labels) == ("typed", 3, 32, 2)
    assert [c.id for c in s.checks] == ["accuracy", "accuracy-2"]
    assert s.checks[0].params["bootstrap"] == 100 and s.checks[1].params["bootstrap"] == 1000
    assert [g.severity for g in s.checks[0].gates] == ["fail", "warn"]
    assert s.checks[0].line == 5


def test_exponent_numbers_are_floats_not_strings(registry, tmp_path, data):
    """YAML 1.1 reads `5e-4` as a string; a suite reads it as the number everyone means."""
    from auditkit.suite import load_suite
    suite = write_suite(tmp_path, """
        name: floats
        model: {base: builtin:tiny-bert}
        finetune: {data: data.jsonl, learning_rate: 5e-4, weight_decay: 1E-2, epochs: 1}
        checks: [{uses: accuracy, data: data.jsonl, bootstrap: 100, gates: ["accuracy >= 5e-1"]}]
        """)
    s = load_suite(suite, registry)
    assert s.finetune.learning_rate == 5e-4 and s.finetune.weight_decay == 0.01
    assert s.finetune.epochs == 1 and s.checks[0].params["bootstrap"] == 100
    assert s.checks[0].gates[0].right == 0.5


def test_overfitting_without_validation_data_is_exit_2_before_loading(tmp_path, capsys):
    from auditkit.cli import main
    from tests.conftest import write_jsonl, write_suite
    write_jsonl(tmp_path / "t.jsonl", [{"text": "a b c"}] * 4)
    suite = write_suite(tmp_path, """
        name: x
        model: {base: "builtin:tiny-gpt2", task: causal-lm}
        finetune: {data: t.jsonl}
        checks: [{uses: overfitting}]
        """)
    assert main(["run", str(suite), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "validation" in err[0] and "finetune.data" in err[0]
