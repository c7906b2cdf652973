"""The demo audit end to end on the real MiniLM shipped in a package (what `make demo` runs)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.real_model
@pytest.mark.slow
def test_demo_suite_fine_tunes_minilm_and_passes(tmp_path, run_cli):
    out = tmp_path / "demo"
    code, stdout, err = run_cli("run", ROOT / "suites" / "demo.yaml", "--out", out, "--device", "cpu")
    assert code == 0, err[-2000:]
    for name in ("report.html", "results.json", "junit.xml", "summary.md"):
        assert (out / name).stat().st_size > 0
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "pass"
    assert results["training"]["method"] == "lora"
    acc = next(c for c in results["checks"] if c["uses"] == "accuracy")
    assert acc["metrics"]["accuracy"]["value"] >= 0.85
    assert acc["baseline_metrics"]["accuracy"]["value"] < 0.75  # the untrained head is near chance
    # the saved adapter is small and loads back as a model
    assert (out / "model" / "adapter_model.safetensors").exists()
    assert (out / "model" / "adapter_config.json").exists()
    assert "overall: PASS" in stdout
