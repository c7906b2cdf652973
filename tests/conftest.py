"""Shared fixtures: offline settings, a cache for the tiny random models, loaded tiny handles."""
from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("AUDITKIT_CACHE", str(ROOT / ".cache" / "auditkit"))
for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")
# every pass is computed by the code under test, never read from an older run's disk cache
# (the tests of the disk cache itself switch it on, in a temporary folder)
os.environ.setdefault("AUDITKIT_DISK_CACHE", "0")
# the suite tests auditkit's own plugins: a third-party `auditkit_*` plugin installed in the environment
# (a user's, or one `auditkit new-plugin` scaffolded) must not change what the tests see; the tests of
# entry-point plugins set their own allowlist
os.environ.setdefault("AUDITKIT_PLUGINS", "")


def pytest_collection_modifyitems(config, items):
    """The few real-model tests take minutes each: start them first, so that under pytest-xdist (``make test``
    runs ``-n auto``) one worker runs them while the others take the many short tests."""
    items.sort(key=lambda item: 0 if item.get_closest_marker("real_model") else 1)


def pytest_configure(config):
    """Tiny models on 2 cores: one intra-op thread beats two (thread start-up dominates)."""
    import torch
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def registry():
    from auditkit.plugins import registry as get
    return get()


@pytest.fixture(scope="session")
def tiny_bert(registry):
    """A 2-layer, 128-dim random BERT classifier with 2 labels (seed 0)."""
    import torch
    from auditkit.models import load_model
    torch.manual_seed(0)
    return load_model("builtin:tiny-bert", "sequence-classification", registry, device="cpu", num_labels=2)


@pytest.fixture(scope="session")
def tiny_gpt2(registry):
    """A 2-layer, 128-dim random GPT-2 causal LM with a 2k byte-level BPE."""
    from auditkit.models import load_model
    return load_model("builtin:tiny-gpt2", "causal-lm", registry, device="cpu")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_suite(folder: Path, text: str, name: str = "suite.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


@pytest.fixture
def run_cli(capsys):
    """Run the CLI in-process: returns (exit code, stdout, stderr)."""
    from auditkit.cli import main

    def run(*args: str):
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err
    return run


def assert_same_results(a: dict, b: dict, tol: float = 1e-6) -> None:
    """Two results.json: the same statuses and gate results, every metric's value and interval within ``tol``."""
    import math
    assert a["status"] == b["status"]
    assert [c["id"] for c in a["checks"]] == [c["id"] for c in b["checks"]]
    for ca, cb in zip(a["checks"], b["checks"]):
        assert ca["status"] == cb["status"], (ca["id"], ca.get("error"), cb.get("error"))
        assert ca["status"] != "error", ca.get("error")
        assert [(g["expr"], g["status"]) for g in ca["gates"]] == [(g["expr"], g["status"]) for g in cb["gates"]]
        assert set(ca["metrics"]) == set(cb["metrics"]), ca["id"]
        for name, m in ca["metrics"].items():
            for field in ("value", "ci_low", "ci_high"):
                x, y = m.get(field), cb["metrics"][name].get(field)
                if isinstance(x, float) and isinstance(y, float) and not (math.isnan(x) and math.isnan(y)):
                    assert abs(x - y) <= tol, (ca["id"], name, field, x, y)
                else:
                    assert x == y, (ca["id"], name, field, x, y)


@pytest.fixture(scope="module")
def server(tiny_gpt2):
    """A local OpenAI-compatible server serving builtin:tiny-gpt2 (tests/openai_server.py), one per module."""
    from tests.openai_server import OpenAIServer
    srv = OpenAIServer(tiny_gpt2.model, tiny_gpt2.tokenizer, name="tiny-gpt2").start()
    yield srv
    srv.stop()


@pytest.fixture
def srv(server):
    """The server with every failure switched off and its counters cleared, before and after the test."""
    server.reset()
    yield server
    server.reset()
