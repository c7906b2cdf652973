"""Every ready suite in suites/ validates, and gives the verdict the README says it gives.

The suites on MiniLM share one fine-tune (the same settings), so one test runs them in a row in one output
folder: the first trains, the others reuse it. SmolLM2 suites need a wheel that tests cannot fetch; their
tiny-model twins (the same suite on builtin:tiny-llama, shortened) run instead and keep their own verdicts.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from auditkit.suite import load_suite

ROOT = Path(__file__).resolve().parents[1]
SUITES = sorted((ROOT / "suites").glob("*.yaml"))


def readme_verdicts() -> dict[str, str]:
    """The `verdict` column of the README's ready-suites table: suite -> pass|warn|fail|info."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("| suite | what it does | verdict |"):]
    table = table[:table.index("\n\n")]
    out = {}
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        m = re.search(r"\*\*(PASS|WARN|FAIL|INFO)\*\*", cells[2])
        out[cells[0].strip("`")] = m.group(1).lower() if m else None
    return out


def run_suite(run_cli, suite, out, *extra) -> dict:
    code, stdout, err = run_cli("run", suite, "--out", out, "--device", "cpu", *extra)
    results = json.loads((out / "results.json").read_text())
    assert code == {"pass": 0, "warn": 0, "info": 0, "fail": 1}.get(results["status"], 3), err[-3000:]
    assert not [c["id"] for c in results["checks"] if c["status"] == "error"], err[-3000:]
    return results


def test_every_shipped_suite_has_a_readme_verdict():
    verdicts = readme_verdicts()
    assert set(verdicts) == {p.stem for p in SUITES}


def test_the_design_suites_exist():
    names = {p.stem for p in SUITES}
    assert {"demo", "quick", "release-gate", "lm-release", "lm-demo"} <= names


@pytest.mark.parametrize("path", SUITES, ids=[p.stem for p in SUITES])
def test_shipped_suite_validates(path, registry):
    suite = load_suite(path, registry)
    assert suite.checks and all(c.gates for c in suite.checks)
    assert suite.name == path.stem


def test_the_readme_check_table_lists_every_default_gate(registry):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("| check | for | key metrics"):]
    table = table[:table.index("\n\n")]
    for name, cls in registry.checks.items():
        if not registry.check_plugin[name].startswith("auditkit_plugins"):
            continue
        row = next((ln for ln in table.splitlines() if ln.startswith(f"| `{name}` |")), None)
        assert row is not None, f"README check table has no row for {name}"
        for task in cls.tasks:
            for expr, _ in cls.default_gates_for(task):
                assert f"`{expr}`" in row, f"README row of {name} does not list its default gate {expr!r}"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["quick", "memorization"])
def test_tiny_shipped_suite_gives_its_readme_verdict(name, run_cli, tmp_path):
    results = run_suite(run_cli, ROOT / "suites" / f"{name}.yaml", tmp_path / name)
    assert results["status"] == readme_verdicts()[name]


@pytest.mark.real_model
@pytest.mark.slow
def test_minilm_suites_give_their_readme_verdicts(run_cli, tmp_path):
    """demo, release-gate, bias and explain on MiniLM (one fine-tune, reused), then candidate on demo's model."""
    verdicts = readme_verdicts()
    out = tmp_path / "minilm"
    demo = run_suite(run_cli, ROOT / "suites" / "demo.yaml", out)
    assert demo["status"] == verdicts["demo"]
    assert demo["training"]["method"] == "lora" and demo["training"]["reused"] is False
    families = {c["uses"] for c in demo["checks"]}
    assert {"accuracy", "calibration", "overfitting", "forgetting", "bias.groups", "bias.counterfactual",
            "memorization", "explainability", "robustness", "data_quality", "cost"} <= families
    assert all(c["default_gates"] and c["gates"] for c in demo["checks"])  # every family gated by its defaults
    acc = next(c for c in demo["checks"] if c["uses"] == "accuracy")
    assert acc["metrics"]["accuracy"]["value"] >= 0.85
    assert acc["baseline_metrics"]["accuracy"]["value"] < 0.75  # the untrained head is near chance
    for name in ("report.html", "results.json", "junit.xml", "summary.md"):
        assert (out / name).stat().st_size > 0
    assert (out / "model" / "adapter_model.safetensors").exists()
    for name in ("release-gate", "bias", "explain"):
        results = run_suite(run_cli, ROOT / "suites" / f"{name}.yaml", out)
        assert results["training"]["reused"] is True, name  # the same fine-tune
        assert results["status"] == verdicts[name], name
    # the README's CI example: audit a given candidate against its base, no fine-tuning
    cand = run_suite(run_cli, ROOT / "suites" / "candidate.yaml", tmp_path / "candidate",
                     "--model", out / "model", "--baseline", "builtin:minilm")
    assert cand["training"] is None and cand["model"]["id"] == str(out / "model")
    assert cand["model"]["fingerprint"] == demo["model"]["fingerprint"]
    assert cand["status"] == verdicts["candidate"]


def _twin(path: Path, folder: Path) -> Path:
    """The suite on builtin:tiny-llama, shortened to seconds (a SmolLM2 suite cannot run offline in tests)."""
    raw = yaml.safe_load(path.read_text())
    raw["model"]["base"] = "builtin:tiny-llama"
    if raw.get("finetune"):
        raw["finetune"]["max_steps"] = 10
        if raw["finetune"].get("canaries"):
            raw["finetune"]["canaries"].update(digits=4, references=200)
    for check in raw["checks"]:
        if check["uses"] == "memorization":
            check.update(max_members=40, samples=2)
        if check.get("uses") in ("bias.counterfactual",):
            check["max_examples"] = 40
    twin = folder / path.name
    twin.write_text(yaml.safe_dump(raw))
    return twin


#: the verdicts of the tiny-model twins (a random model: what matters is that each runs end to end and
#: decides every gate; the SmolLM2 verdicts are in the README)
TWIN_VERDICTS = {"lm-demo": "fail", "lm-release": "pass"}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TWIN_VERDICTS))
def test_smollm2_suite_twins_run_and_decide(name, run_cli, tmp_path):
    results = run_suite(run_cli, _twin(ROOT / "suites" / f"{name}.yaml", tmp_path), tmp_path / "out")
    assert results["status"] == TWIN_VERDICTS[name]
    assert all(g["status"] != "error" for c in results["checks"] for g in c["gates"])
