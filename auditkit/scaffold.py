"""``auditkit new-plugin NAME``: an installable plugin package that works on first ``pip install -e``.

The package has a pyproject with an entry point in group ``auditkit``, one example check and one test.
"""
from __future__ import annotations

import re
from pathlib import Path

from auditkit.errors import AuditInputError

PYPROJECT = '''[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "{dist}"
version = "0.1.0"
description = "An auditkit plugin: {name}"
requires-python = ">=3.10"
dependencies = ["auditkit"]

[project.entry-points.auditkit]
{module} = "{module}.plugin"

[tool.setuptools]
packages = ["{module}"]
'''

PLUGIN = '''"""{name}: an auditkit plugin.

A check subclasses auditkit.Check, declares its parameters and metrics, and returns a CheckResult.
It is registered through the ``auditkit_register_checks`` hook, found via the entry point in
pyproject.toml (group "auditkit").

``default_gates`` apply when a suite lists the check without ``gates:`` (``gates: []`` means none);
without any gate a check reports status info, never pass. Declare them per task kind with a dict
``{{"sequence-classification": [...], "causal-lm": [...]}}`` where they differ.
"""
from __future__ import annotations

import numpy as np

from auditkit import Check, CheckContext, CheckResult, MetricSpec, Param, hookimpl
from auditkit.stats import mean_ci


class {cls}(Check):
    name = "{check}"
    description = "Example: share of texts whose predicted class (or mean token log-prob) passes a threshold."
    params = {{"max_words": Param("int", 64, "texts longer than this many words count as long", ge=1)}}
    metrics = {{
        "long_text_rate": MetricSpec("share of texts longer than max_words", higher_is_better=False),
        "mean_score": MetricSpec("mean top-class probability (classifiers) or mean token log-prob (LMs)"),
    }}
    # what a careful reviewer starts from: fail on a clear excess, warn earlier
    default_gates = ["long_text_rate.ci_low <= 0.5", {{"when": "long_text_rate <= 0.2", "severity": "warn"}}]

    def run(self, ctx: CheckContext) -> CheckResult:
        texts = [row["text"] for row in ctx.data.require("text").rows]
        long = np.array([len(t.split()) > ctx.params["max_words"] for t in texts], dtype=float)
        if ctx.model.task == "causal-lm":
            scores = np.array([lp.mean() if len(lp) else 0.0 for lp in ctx.model.token_logprobs(texts)])
        else:
            logits = ctx.model.class_logits(texts)  # shared, cached pass
            p = np.exp(logits - logits.max(-1, keepdims=True))
            scores = (p / p.sum(-1, keepdims=True)).max(-1)
        result = CheckResult()
        result.add("long_text_rate", long.mean(), mean_ci(long, ctx.seed), len(texts), higher_is_better=False)
        result.add("mean_score", scores.mean(), mean_ci(scores, ctx.seed), len(texts))
        result.evidence = [{{"title": "Longest texts", "rows": [
            {{"text": t[:200], "words": len(t.split())}} for t in sorted(texts, key=len, reverse=True)[:5]]}}]
        return result


@hookimpl
def auditkit_register_checks(register):
    register({cls})
'''

TEST = '''"""The example check runs from a suite, end to end, on a tiny random model."""
import json
import textwrap

from auditkit.cli import main


def test_{module}_runs_from_a_suite(tmp_path):
    data = tmp_path / "texts.jsonl"
    data.write_text("".join(json.dumps({{"text": f"sample text number {{i}}", "label": i % 2}}) + "\\n" for i in range(12)))
    suite = tmp_path / "suite.yaml"
    suite.write_text(textwrap.dedent(\'\'\'
        name: {module}-test
        model: {{base: "builtin:tiny-bert", task: sequence-classification}}
        checks:
          - uses: {check}
            data: texts.jsonl
            gates: ["long_text_rate <= 0.5"]
    \'\'\'))
    code = main(["run", str(suite), "--out", str(tmp_path / "out"), "--device", "cpu"])
    assert code == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    check = results["checks"][0]
    assert check["uses"] == "{check}"
    assert check["metrics"]["long_text_rate"]["value"] == 0.0


def test_{module}_default_gates_apply_without_gates(tmp_path):
    data = tmp_path / "texts.jsonl"
    data.write_text("".join(json.dumps({{"text": " ".join(["word"] * 80), "label": 0}}) + "\\n" for _ in range(8)))
    suite = tmp_path / "suite.yaml"
    suite.write_text(textwrap.dedent(\'\'\'
        name: {module}-defaults
        model: {{base: "builtin:tiny-bert", task: sequence-classification}}
        checks:
          - uses: {check}
            data: texts.jsonl
    \'\'\'))
    code = main(["run", str(suite), "--out", str(tmp_path / "out"), "--device", "cpu"])
    check = json.loads((tmp_path / "out" / "results.json").read_text())["checks"][0]
    assert code == 1 and check["status"] == "fail"
    assert all(g["default"] for g in check["gates"])
'''

README = '''# {dist}

An [auditkit](https://pypi.org/project/auditkit/) plugin providing the check `{check}`.

    pip install -e .
    auditkit checks {check}
    pytest
'''


def check_name(name: str) -> str:
    """The check name a plugin called ``name`` gets: lower case, runs of other characters as ``_``."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def new_plugin(name: str, directory: Path | None = None, taken=()) -> Path:
    """Write the plugin package for ``name`` into ``directory`` (default ./auditkit-NAME). ``taken``: the
    check names already registered, which the new check may not reuse (it would never load)."""
    slug = check_name(name)
    if not slug or not slug[0].isalpha():
        raise AuditInputError(f"plugin name {name!r} must start with a letter", place="NAME",
                              fix="use letters, digits, - or _")
    if slug in taken:
        raise AuditInputError(f"a check named {slug!r} is already provided (built-in or installed): a plugin with "
                              "the same check name would fail to load", place="NAME", fix="choose another name")
    module = f"auditkit_{slug}" if not slug.startswith("auditkit") else slug
    dist = module.replace("_", "-")
    check = slug
    cls = "".join(part.capitalize() for part in slug.split("_")) + "Check"
    root = Path(directory) if directory else Path(dist)
    if root.exists() and not root.is_dir():
        raise AuditInputError(f"{root} is a file, not a folder", place="--dir", fix="choose another folder")
    if root.exists() and any(root.iterdir()):
        raise AuditInputError(f"{root} already exists and is not empty", place="--dir", fix="choose another folder")
    (root / module).mkdir(parents=True, exist_ok=True)
    (root / "tests").mkdir(exist_ok=True)
    fields = {"name": name, "dist": dist, "module": module, "check": check, "cls": cls}
    (root / "pyproject.toml").write_text(PYPROJECT.format(**fields))
    (root / module / "__init__.py").write_text(f'"""{name}: an auditkit plugin."""\n')
    (root / module / "plugin.py").write_text(PLUGIN.format(**fields))
    (root / "tests" / f"test_{module}.py").write_text(TEST.format(**fields))
    (root / "README.md").write_text(README.format(**fields))
    return root
