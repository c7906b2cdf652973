"""The plugin system: built-ins through the same hooks as third parties, the allow/block lists, a
broken plugin reported by name and skipped, and a scaffolded plugin that works after `pip install -e`."""
from __future__ import annotations

import importlib.metadata as md
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from auditkit import plugins
from auditkit.plugins import build_registry
from tests.conftest import write_jsonl, write_suite

GOOD_PLUGIN = '''
from auditkit import Check, CheckResult, MetricSpec, hookimpl

class Const(Check):
    name = "akt_const"
    description = "a constant metric"
    metrics = {"one": MetricSpec("always 1")}
    needs_data = False
    def run(self, ctx):
        r = CheckResult()
        r.add("one", 1.0)
        return r

@hookimpl
def auditkit_register_checks(register):
    register(Const)
'''

BAD_HOOK_PLUGIN = '''
from auditkit import hookimpl

@hookimpl
def auditkit_register_checks(register):
    register(object)
'''


@pytest.fixture
def plugin_modules(tmp_path, monkeypatch):
    """Importable modules: a good plugin, one whose import fails, one whose hook registers junk."""
    (tmp_path / "akt_good_plugin.py").write_text(GOOD_PLUGIN)
    (tmp_path / "akt_broken_plugin.py").write_text("import akt_dependency_that_is_not_installed\n")
    (tmp_path / "akt_bad_hook_plugin.py").write_text(BAD_HOOK_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    for mod in ("akt_good_plugin", "akt_broken_plugin", "akt_bad_hook_plugin"):
        monkeypatch.delitem(sys.modules, mod, raising=False)
    return tmp_path


@pytest.fixture
def entry_points(monkeypatch, plugin_modules):
    """Pretend three distributions registered entry points in group "auditkit"."""
    eps = [md.EntryPoint("good", "akt_good_plugin", "auditkit"),
           md.EntryPoint("broken", "akt_broken_plugin", "auditkit"),
           md.EntryPoint("badhook", "akt_bad_hook_plugin", "auditkit")]
    real = md.entry_points

    def fake(**kw):
        return eps if kw.get("group") == "auditkit" else real(**kw)
    monkeypatch.setattr(plugins.md, "entry_points", fake)
    monkeypatch.delenv("AUDITKIT_PLUGINS", raising=False)
    monkeypatch.delenv("AUDITKIT_DISABLE_PLUGINS", raising=False)


@pytest.fixture
def fresh_registry(monkeypatch):
    """Let the CLI build its registry anew (env and entry points as the test set them)."""
    monkeypatch.setattr(plugins, "_REGISTRY", None)
    monkeypatch.setenv("COLUMNS", "250")


def test_builtins_register_through_the_same_hooks(registry):
    names = {p["name"]: p for p in registry.plugins}
    assert names["auditkit_plugins.accuracy"]["checks"] == ["accuracy"]
    assert names["auditkit_plugins.overfitting"]["checks"] == ["overfitting"]
    assert "html" in names["auditkit.report.html"]["reporters"]
    assert {"tiny-bert", "minilm"} <= set(names["auditkit_plugins.builtin_models"]["model_sources"])
    assert "reviews" in names["auditkit_plugins.builtin_datasets"]["dataset_sources"]
    assert all(p["source"] == "built-in" for p in names.values() if p["name"].startswith("auditkit"))
    assert registry.check_plugin["accuracy"] == "auditkit_plugins.accuracy"


@pytest.mark.parametrize("block", ["overfitting", "auditkit_plugins.overfitting"])
def test_disable_plugins_hides_a_builtin_check(monkeypatch, block):
    monkeypatch.setenv("AUDITKIT_DISABLE_PLUGINS", f"{block}, something-else")
    reg = build_registry()
    assert "overfitting" not in reg.checks and "accuracy" in reg.checks
    assert not [p for p in reg.plugins if p["name"] == "auditkit_plugins.overfitting"]


def test_disabled_check_is_unknown_to_the_cli(monkeypatch, fresh_registry, run_cli, tmp_path):
    monkeypatch.setenv("AUDITKIT_DISABLE_PLUGINS", "overfitting")
    code, out, err = run_cli("checks")
    assert code == 0 and "overfitting (" not in out and "accuracy (" in out
    code, out, err = run_cli("checks", "overfitting")
    assert code == 2 and "unknown check 'overfitting'" in err
    suite = write_suite(tmp_path, "name: s\nmodel: {base: builtin:tiny-bert}\nfinetune: {data: builtin:reviews}\n"
                                  "checks: [overfitting]\n")
    code, out, err = run_cli("run", suite, "--out", tmp_path / "out")
    assert code == 2 and "unknown check 'overfitting'" in err and "line 4" in err


def test_a_default_plugin_that_fails_to_import_is_reported_and_skipped(monkeypatch, plugin_modules):
    monkeypatch.setattr(plugins, "DEFAULT_PLUGINS", plugins.DEFAULT_PLUGINS + ("akt_broken_plugin", "akt_good_plugin"))
    reg = build_registry()
    failures = dict(reg.failures)
    assert "akt_broken_plugin" in failures
    assert "akt_dependency_that_is_not_installed" in failures["akt_broken_plugin"]
    assert "akt_const" in reg.checks and "accuracy" in reg.checks  # the rest load


def test_an_optional_builtin_that_is_absent_is_skipped_silently(monkeypatch):
    monkeypatch.setattr(plugins, "DEFAULT_PLUGINS", plugins.DEFAULT_PLUGINS + ("auditkit_plugins.not_written_yet",))
    reg = build_registry()
    assert not reg.failures or all(name != "auditkit_plugins.not_written_yet" for name, _ in reg.failures)


def test_entry_point_plugins_load_and_broken_ones_are_reported(entry_points):
    reg = build_registry()
    assert "akt_const" in reg.checks and reg.check_plugin["akt_const"] == "good"
    good = next(p for p in reg.plugins if p["name"] == "good")
    assert good["source"] == "entry point akt_good_plugin" and good["checks"] == ["akt_const"]
    failures = dict(reg.failures)
    assert "ModuleNotFoundError" in failures["broken"]
    assert "badhook" in failures and "not a named Check subclass" in failures["badhook"]
    assert "accuracy" in reg.checks


def test_allowlist_and_blocklist_for_entry_points(entry_points, monkeypatch):
    monkeypatch.setenv("AUDITKIT_PLUGINS", "good")
    reg = build_registry()
    assert "akt_const" in reg.checks and not reg.failures  # the others were never imported
    assert "accuracy" in reg.checks  # the allowlist is for third-party plugins
    monkeypatch.setenv("AUDITKIT_DISABLE_PLUGINS", "good")
    assert "akt_const" not in build_registry().checks


def test_allowlist_takes_the_package_name_and_says_when_a_name_matches_nothing(entry_points, monkeypatch):
    """AUDITKIT_PLUGINS takes a plugin's entry-point name or the name pip installed it under (compared as pip
    does); a name that matches no installed plugin is reported, not silently ignored."""
    from types import SimpleNamespace
    eps = [md.EntryPoint("good", "akt_good_plugin", "auditkit")._for(SimpleNamespace(name="Auditkit_Good",
                                                                                    version="1.2"))]
    monkeypatch.setattr(plugins.md, "entry_points", lambda **kw: eps if kw.get("group") == "auditkit" else [])
    monkeypatch.setenv("AUDITKIT_PLUGINS", "auditkit-good")
    reg = build_registry()
    assert "akt_const" in reg.checks and not reg.failures
    monkeypatch.setenv("AUDITKIT_PLUGINS", "auditkit-god,good")
    reg = build_registry()
    assert "akt_const" in reg.checks
    assert [n for n, _ in reg.failures] == ["auditkit-god"]
    assert "no installed plugin has that entry-point or package name" in reg.failures[0][1]
    assert "good" in reg.failures[0][1]
    monkeypatch.setenv("AUDITKIT_PLUGINS", "good")
    monkeypatch.setenv("AUDITKIT_DISABLE_PLUGINS", "good")  # blocked, not missing: no "matches nothing"
    reg = build_registry()
    assert "akt_const" not in reg.checks and not reg.failures


def test_cli_reports_broken_plugins_by_name(entry_points, fresh_registry, run_cli, tmp_path):
    code, out, err = run_cli("plugins")
    assert code == 0
    assert "good" in out and "checks: akt_const" in out
    assert "plugin broken failed to load and was skipped" in err
    assert "plugin badhook failed to load and was skipped" in err
    suite = write_suite(tmp_path, "name: s\nmodel: {base: builtin:tiny-bert}\nchecks: [{uses: akt_const, gates: ['one >= 1']}]\n")
    code, out, err = run_cli("run", suite, "--out", tmp_path / "out", "--device", "cpu")
    assert code == 0, err
    assert "warning: plugin broken failed to load and was skipped" in err
    assert json.loads((tmp_path / "out" / "results.json").read_text())["checks"][0]["plugin"] == "good"


# ---------------------------------------------------------------------- new-plugin

def test_new_plugin_refuses_a_non_empty_folder_and_a_bad_name(run_cli, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    code, out, err = run_cli("new-plugin", "thing", "--dir", tmp_path / "taken")
    assert code == 2 and "not empty" in err
    code, out, err = run_cli("new-plugin", "123", "--dir", tmp_path / "new")
    assert code == 2 and "must start with a letter" in err
    # a check name that is already provided: the installed plugin would never load
    code, out, err = run_cli("new-plugin", "Accuracy", "--dir", tmp_path / "acc")
    assert code == 2 and "a check named 'accuracy' is already provided" in err and not (tmp_path / "acc").exists()
    code, out, err = run_cli("new-plugin", "bad name!", "--dir", tmp_path / "ok")
    assert code == 0 and "the check is named 'bad_name'" in out


def _env() -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", NO_COLOR="1", COLUMNS="250",
               PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    env.pop("AUDITKIT_PLUGINS", None)
    env.pop("AUDITKIT_DISABLE_PLUGINS", None)
    return env


def _sh(*args, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


def test_scaffolded_plugin_installs_and_runs(run_cli, tmp_path):
    """new-plugin -> pip install -e -> shows in `auditkit checks` -> runs from a suite -> its own test passes."""
    pkg = tmp_path / "akt-scaffold-probe"
    code, out, err = run_cli("new-plugin", "akt scaffold probe", "--dir", pkg)
    assert code == 0, err
    assert (pkg / "pyproject.toml").exists() and (pkg / "auditkit_akt_scaffold_probe" / "plugin.py").exists()
    assert '[project.entry-points.auditkit]' in (pkg / "pyproject.toml").read_text()
    write_jsonl(tmp_path / "texts.jsonl", [{"text": f"a short text {i}", "label": i % 2} for i in range(6)]
                + [{"text": " ".join(["word"] * 80), "label": 0}])
    suite = write_suite(tmp_path, textwrap.dedent("""
        name: probe
        model: {base: "builtin:tiny-bert", max_length: 32}
        checks:
          - uses: akt_scaffold_probe
            data: texts.jsonl
            max_words: 64
            gates: ["long_text_rate <= 0.5", "mean_score >= 0.5"]
        """))
    # a new process re-reads the entry points: `auditkit checks`, then `auditkit run` on the suite
    script = (f"import sys; from auditkit.cli import main; main(['checks']); print('::run::'); "
              f"sys.exit(main(['run', {str(suite)!r}, '--out', {str(tmp_path / 'out')!r}, '--device', 'cpu']))")
    try:
        pip = _sh(sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
                  "--no-build-isolation", "-e", pkg)
        assert pip.returncode == 0, pip.stderr
        ran = _sh(sys.executable, "-c", script)
        assert ran.returncode == 0, ran.stderr
        listing = ran.stdout.split("::run::")[0]
        assert "akt_scaffold_probe (auditkit_akt_scaffold_probe)" in listing and "accuracy (" in listing
        check = json.loads((tmp_path / "out" / "results.json").read_text())["checks"][0]
        assert check["plugin"] == "auditkit_akt_scaffold_probe" and check["status"] == "pass"
        assert check["metrics"]["long_text_rate"]["value"] == pytest.approx(1 / 7)

        own = _sh(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", pkg / "tests", cwd=pkg)
        assert own.returncode == 0, own.stdout + own.stderr
        assert "2 passed" in own.stdout
    finally:
        _sh(sys.executable, "-m", "pip", "uninstall", "-y", "-q", "auditkit-akt-scaffold-probe")
    gone = _sh(sys.executable, "-c", "import importlib.metadata as m; print([e.name for e in m.entry_points(group='auditkit')])")
    assert "auditkit_akt_scaffold_probe" not in gone.stdout
