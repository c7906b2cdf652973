"""No suite Python without an opt-in: an lm-eval task YAML whose ``!function`` tag would make lm-eval import a
module from the suite's folder is exit 2 when the suite loads unless its entry sets ``allow_code: true``; lm-eval's
own task YAMLs (by name, or included from the lm_eval package) need no opt-in."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import write_jsonl, write_suite

CAUSAL = 'model: {base: "builtin:tiny-gpt2", task: causal-lm, max_length: 64}'
TASK = """task: auditkit_code_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
process_docs: !function evil.process_docs
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
"""
EVIL = """from pathlib import Path
Path({marker!r}).write_text("imported")

def process_docs(dataset):
    return dataset
"""


def evil_task(tmp_path: Path) -> Path:
    """task/t.yaml, a 4-item multiple-choice task whose process_docs is task/evil.py's, which writes
    tmp_path/MARKER when imported; returns the marker's path."""
    (tmp_path / "task").mkdir()
    marker = tmp_path / "MARKER"
    data = write_jsonl(tmp_path / "mc.jsonl", [{"question": f"Q{i}: pick one.\nAnswer:", "choices": ["yes", "no"],
                                                 "label": i % 2} for i in range(4)])
    (tmp_path / "task" / "t.yaml").write_text(TASK.format(data=json.dumps(str(data.resolve()))))
    (tmp_path / "task" / "evil.py").write_text(EVIL.format(marker=str(marker)))
    return marker


def run_suite(run_cli, tmp_path: Path, extra: str = ""):
    suite = write_suite(tmp_path, f"name: s\n{CAUSAL}\nchecks:\n  - uses: lm_eval\n    limit: 4\n"
                                  f"    task: task/t.yaml\n{extra}")
    return suite, run_cli("run", suite, "--out", tmp_path / "out", "--device", "cpu")


def test_function_tag_is_refused_without_opt_in(run_cli, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the task was refused")
    monkeypatch.setattr("auditkit.runner.load_model", refuse)
    marker = evil_task(tmp_path)
    suite, (code, out, err) = run_suite(run_cli, tmp_path)
    assert code == 2, (code, out, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    line = lines[0]
    assert line.startswith(f"auditkit: error: {suite}:line 6: checks[0].task: "), line
    for words in ("task/t.yaml line 8 has !function evil.process_docs",
                  "set allow_code: true on this entry to let lm-eval import task/evil.py"):
        assert words in line, (words, line)
    assert not marker.exists()
    assert not (tmp_path / "out" / "results.json").exists()


def test_allow_code_runs_the_task(run_cli, tmp_path):
    marker = evil_task(tmp_path)
    _, (code, out, err) = run_suite(run_cli, tmp_path, "    allow_code: true\n")
    assert code == 0, (code, out, err)
    assert marker.read_text() == "imported"  # lm-eval imported task/evil.py, as asked
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["checks"][0]["metrics"]["acc"]["n"] == 4


def refusal(tmp_path: Path, task: str = "task/t.yaml") -> str:
    from auditkit.errors import AuditInputError
    from auditkit_plugins.lm_eval_task import LmEvalTask
    LmEvalTask.validate_params({"task": task, "allow_code": True}, str(tmp_path))  # the opt-in lets it through
    with pytest.raises(AuditInputError) as exc:
        LmEvalTask.validate_params({"task": task}, str(tmp_path))
    assert exc.value.place == "task"
    return exc.value.line()


def test_included_yaml_with_function_tag_is_refused(tmp_path):
    """``include:`` is followed (here out of the task's folder, and from an inline group entry)."""
    (tmp_path / "task").mkdir()
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "base.yaml").write_text("dataset_path: json\nprocess_docs: !function helpers.prep\n")
    (tmp_path / "task" / "t.yaml").write_text("include: ../shared/base.yaml\ntask: mine\n")
    line = refusal(tmp_path)
    assert "shared/base.yaml line 2 has !function helpers.prep" in line
    assert "let lm-eval import shared/helpers.py" in line
    (tmp_path / "task" / "t.yaml").write_text("group: g\ntask:\n  - task: inner\n    include: ../shared/base.yaml\n")
    assert "shared/base.yaml line 2" in refusal(tmp_path)


def test_yaml_beside_the_task_with_function_tag_is_refused(tmp_path):
    """lm-eval indexes every YAML under the task's folder and may load any of them (a group's subtask)."""
    (tmp_path / "task" / "sub").mkdir(parents=True)
    (tmp_path / "task" / "t.yaml").write_text("group: g\ntask: [inner]\n")
    (tmp_path / "task" / "sub" / "inner.yaml").write_text("task: inner\n\ndoc_to_text: !function x.y.fmt\n")
    line = refusal(tmp_path)
    assert "task/sub/inner.yaml line 3 has !function x.y.fmt" in line and "every YAML under" in line
    assert "let lm-eval import task/sub/x/y.py" in line


def test_lm_eval_code_needs_no_opt_in(tmp_path):
    """A task by name, a YAML without tags, and a YAML that includes a task file shipped with lm-eval (whose
    ``!function`` names lm-eval's own module) validate without allow_code."""
    import importlib.util

    from auditkit_plugins.lm_eval_task import LmEvalTask
    shipped = Path(importlib.util.find_spec("lm_eval").submodule_search_locations[0]) / "tasks" / "hellaswag"
    assert "!function" in (shipped / "hellaswag.yaml").read_text()
    (tmp_path / "plain.yaml").write_text("task: plain\ndataset_path: json\ndoc_to_text: '{{q}}'\n")
    (tmp_path / "mine.yaml").write_text(f"include: {json.dumps(str(shipped / 'hellaswag.yaml'))}\ntask: mine\n")
    for task in ("hellaswag", "arc_easy", "plain.yaml", "mine.yaml"):
        LmEvalTask.validate_params({"task": task}, str(tmp_path))
    assert LmEvalTask.params["allow_code"].default is False and LmEvalTask.params["allow_code"].help


def test_template_reaching_python_is_refused_without_opt_in(run_cli, tmp_path):
    """lm-eval renders templates in a plain jinja2 Environment, from which a template reaches ``os``: without
    allow_code they render in a sandbox, and one that tries is exit 2."""
    evil_task(tmp_path)
    marker = tmp_path / "JINJA"
    task = (tmp_path / "task" / "t.yaml").read_text().replace("process_docs: !function evil.process_docs\n", "")
    (tmp_path / "task" / "t.yaml").write_text(task.replace(
        '"{{question}}"', f"\"{{{{ cycler.__init__.__globals__.os.makedirs({str(marker)!r}, exist_ok=True) }}}}{{{{question}}}}\""))
    _, (code, out, err) = run_suite(run_cli, tmp_path)
    assert code == 2 and not marker.exists(), (code, out, err)
    assert "reaches into Python" in err and "allow_code: true" in err and "Traceback" not in err, err
    _, (code, out, err) = run_suite(run_cli, tmp_path, "    allow_code: true\n")
    assert code == 0 and marker.is_dir(), (code, out, err)
