"""Every ready suite in suites/ parses and validates against the installed checks (no model loads)."""
from __future__ import annotations

from pathlib import Path

import pytest

from auditkit.suite import load_suite

SUITES = sorted((Path(__file__).resolve().parents[1] / "suites").glob("*.yaml"))


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
