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
