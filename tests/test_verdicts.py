"""Verdicts a release engineer can trust: default gates, the info status, strict suite files, the output
folder checked before anything loads, and plugins called through pluggy's hook callers."""
from __future__ import annotations

import json
import os
import resource
import time

import pluggy
import pytest

from auditkit import plugins
from auditkit.api import Check, CheckResult, MetricSpec, Param
from auditkit.hookspecs import hookimpl
from auditkit.plugins import build_registry
from tests.conftest import write_jsonl, write_suite
from tests.test_suite_validation import assert_bad_input

ROWS = [{"text": f"review {i}: the service was {'great' if i % 2 else 'awful'}", "label": i % 2} for i in range(12)]


class Constant(Check):
    """A check with declared defaults, per task kind (registered by these tests only)."""

    name = "const"
    description = "constant metrics"
    params = {"value": Param("float", 0.9, "the metric's value", ge=0, le=1),
              "names": Param("list", ["a"], "names", members=("a", "b", "c"))}
    metrics = {"score": MetricSpec("the value"), "per_group.{group}": MetricSpec("by group")}
    needs_data = False
    default_gates = {"sequence-classification": ["score >= 0.5", {"when": "score >= 0.95", "severity": "warn"}],
                     "causal-lm": ["score >= 0.99"]}

    def run(self, ctx):
        res = CheckResult()
        res.add("score", ctx.params["value"])
        res.add("per_group.sexual-orientation", ctx.params["value"])
        return res


class Versus(Check):
    """A default gate that compares with the base model."""

    name = "versus"
    metrics = {"score": MetricSpec("constant")}
    needs_data = False
    default_gates = ["score >= baseline.score", "score >= 0.5"]

    def run(self, ctx):
        res = CheckResult()
        res.add("score", 0.7)
        return res


class Misspelt(Constant):
    """Returns its declared metric under a misspelt name (a plugin's bug)."""

    name = "misspelt"

    def run(self, ctx):
        res = CheckResult()
        res.add("scroe", 0.1)
        return res


class AsksLogProbs(Constant):
    """Asks a classifier for token log-probs without saying in ``tasks`` that it needs an LM."""

    name = "asks-logprobs"

    def run(self, ctx):
        ctx.model.token_logprobs(["some text"])
        return super().run(ctx)


class Exits(Constant):
    """Calls sys.exit(0) from inside the check, as some libraries do."""

    name = "exits"

    def run(self, ctx):
        raise SystemExit(0)


@pytest.fixture
def checks(registry, monkeypatch):
    for cls in (Constant, Versus, Misspelt, AsksLogProbs, Exits):
        monkeypatch.setitem(registry.checks, cls.name, cls)
        monkeypatch.setitem(registry.check_plugin, cls.name, "tests")


def run(run_cli, tmp_path, checks_yaml: str, *extra):
    write_jsonl(tmp_path / "data.jsonl", ROWS)
    suite = write_suite(tmp_path, "name: v\nmodel: {base: 'builtin:tiny-bert', max_length: 32}\nchecks:\n"
                        + checks_yaml)
    out = tmp_path / "out"
    code, stdout, err = run_cli("run", suite, "--out", out, "--device", "cpu", *extra)
    results = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else None
    return code, stdout, err, results


# ---------------------------------------------------------------------- default gates and info

def test_default_gates_apply_without_a_gates_key(run_cli, tmp_path, checks):
    code, out, err, res = run(run_cli, tmp_path, "  - {uses: const, value: 0.3}\n")
    check = res["checks"][0]
    assert code == 1 and check["status"] == "fail" and res["status"] == "fail"
    assert check["default_gates"] is True
    assert [(g["expr"], g["severity"], g["status"], g["default"]) for g in check["gates"]] == [
        ("score >= 0.5", "fail", "fail", True), ("score >= 0.95", "warn", "warn", True)]
    assert "(default)" in out


def test_empty_gates_list_means_none_and_the_status_is_info(run_cli, tmp_path, checks):
    code, out, err, res = run(run_cli, tmp_path, "  - {uses: const, value: 0.3, gates: []}\n")
    check = res["checks"][0]
    assert check["status"] == "info" and check["gates"] == []
    assert res["status"] == "info"  # never pass: nothing was decided
    assert code == 0
    assert "INFO" in out and "PASS" not in out
    code, out, err, res = run(run_cli, tmp_path, "  - {uses: const, value: 0.3, gates: []}\n", "--strict")
    assert code == 1  # --strict: a run that decided nothing fails


def test_info_never_counts_as_pass_next_to_a_passing_check(run_cli, tmp_path, checks):
    code, out, err, res = run(run_cli, tmp_path, "  - {uses: const, id: a, gates: []}\n"
                                                 "  - {uses: const, id: b, value: 0.99}\n")
    assert [c["status"] for c in res["checks"]] == ["info", "pass"]
    assert res["status"] == "pass" and code == 0
    assert "1 info" in out and "1 pass" in out


def test_a_metric_the_check_does_not_declare_is_an_error_not_a_dropped_gate(run_cli, tmp_path, checks):
    """A misspelt metric name would leave the default gate's metric unmeasured, the gate dropped with a note,
    and the check PASS: the check is ERROR instead, naming the metric, and the other checks still run."""
    code, out, err, res = run(run_cli, tmp_path, "  - {uses: misspelt}\n  - {uses: const, value: 0.99}\n")
    bad, good = res["checks"]
    assert code == 3 and bad["status"] == "error" and good["status"] == "pass"
    assert "'scroe'" in bad["error"]["message"] and "did you mean 'score'?" in bad["error"]["message"]
    assert all(g["status"] == "error" for g in bad["gates"]) and bad["gates"]


def test_a_request_the_model_cannot_serve_is_the_checks_error_not_a_lost_run(run_cli, tmp_path, checks):
    """A plugin that asks a classifier for token log-probs (its `tasks` did not say it needs an LM): that
    check is ERROR with the handle's message, the other checks still run and the reports are written."""
    code, out, err, res = run(run_cli, tmp_path, "  - {uses: const, value: 0.99}\n  - {uses: asks-logprobs}\n")
    assert code == 3 and res is not None
    good, bad = res["checks"]
    assert good["status"] == "pass" and bad["status"] == "error"
    assert "token_logprobs needs a causal-lm model" in bad["error"]["message"]


def test_a_check_that_calls_sys_exit_is_error_and_the_run_goes_on(run_cli, tmp_path, checks):
    """sys.exit(0) inside a check ended the whole run green: exit 0, no reports, later checks never ran."""
    code, out, err, res = run(run_cli, tmp_path, "  - {uses: exits}\n  - {uses: const, value: 0.99}\n")
    assert code == 3 and res is not None
    assert [c["status"] for c in res["checks"]] == ["error", "pass"]
    assert res["checks"][0]["error"]["type"] == "SystemExit"


@pytest.mark.parametrize("flag", ["--model", "--baseline"])
def test_an_empty_model_flag_is_exit_2_not_the_suites_model(run_cli, tmp_path, checks, flag):
    """`--model "$CANDIDATE"` with the variable unset must not audit the suite's own model instead."""
    code, out, err, res = run(run_cli, tmp_path, "  - {uses: const, value: 0.99}\n", flag, "")
    assert code == 2 and res is None and f"{flag} is empty" in err


def test_a_refused_run_removes_the_reports_of_an_earlier_run(run_cli, tmp_path, checks):
    """An earlier PASS's summary.md must not stand beside a run that was refused as bad input."""
    code, out, err, res = run(run_cli, tmp_path, "  - {uses: const, value: 0.99}\n")
    assert code == 0 and (tmp_path / "out" / "summary.md").exists()
    (tmp_path / "out" / "mine.txt").write_text("a user's file")
    bad = write_suite(tmp_path, "name: v\nmodel: {base: builtin:tiny-bert}\nchecks: [{uses: const, valeu: 1}]\n",
                      name="bad.yaml")
    code, _, err = run_cli("run", bad, "--out", tmp_path / "out")
    assert code == 2
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["mine.txt"]


def test_a_refused_resume_keeps_the_results_it_resumes_from(run_cli, tmp_path, checks):
    code, out, err, res = run(run_cli, tmp_path, "  - {uses: const, value: 0.99}\n")
    assert code == 0
    code, _, err = run_cli("run", tmp_path / "suite.yaml", "--out", tmp_path / "out", "--resume", "--only", "nope")
    assert code == 2 and (tmp_path / "out" / "results.json").exists()


def test_a_seed_numpy_cannot_take_is_exit_2(run_cli, tmp_path, checks):
    suite = write_suite(tmp_path, "name: v\nseed: 99999999999999999999\nmodel: {base: builtin:tiny-bert}\n"
                                  "checks: [{uses: const}]\n")
    line = assert_bad_input(run_cli("run", suite, "--out", tmp_path / "out"), suite, r"line 2\b")
    assert "seed must be >= 0 and < 2**32" in line


def test_a_suite_gate_list_replaces_the_defaults(run_cli, tmp_path, checks):
    code, out, err, res = run(run_cli, tmp_path, "  - {uses: const, value: 0.3, gates: ['score >= 0.1']}\n")
    check = res["checks"][0]
    assert code == 0 and check["status"] == "pass" and check["default_gates"] is False
    assert [g["default"] for g in check["gates"]] == [False]


def test_default_gates_per_task_kind(registry, checks):
    assert Constant.default_gates_for("causal-lm") == [("score >= 0.99", "fail")]
    assert Constant.default_gates_for("sequence-classification")[1] == ("score >= 0.95", "warn")


def test_a_default_gate_needing_a_base_model_is_dropped_with_a_note_when_there_is_none(run_cli, tmp_path, checks):
    code, out, err, res = run(run_cli, tmp_path, "  - {uses: versus}\n")
    check = res["checks"][0]
    assert code == 0 and [g["expr"] for g in check["gates"]] == ["score >= 0.5"]
    assert any("baseline.score" in n and "no base model" in n for n in check["notes"])


def test_every_builtin_check_declares_valid_default_gates(registry):
    from auditkit.suite import default_gates
    for name, cls in registry.checks.items():
        if registry.check_plugin[name].startswith("auditkit_plugins"):
            assert any(cls.default_gates_for(t) for t in cls.tasks), f"{name} declares no default gates"
            for task in cls.tasks:
                default_gates(cls, task)  # parses, and names only metrics the check declares


def test_checks_name_lists_the_default_gates(run_cli, checks, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    code, out, err = run_cli("checks", "const")
    assert code == 0 and "default gates" in out and "score >= 0.95" in out and "warn" in out
    code, out, err = run_cli("checks")
    assert "default gates: score >= 0.5 (fail)" in out


# ---------------------------------------------------------------------- values checked before loading

@pytest.mark.parametrize("entry, place, words", [
    ("{uses: const, value: 1.5}", r"line 4\b", "must be >= 0 and <= 1"),
    ("{uses: const, names: [a, d]}", r"line 4\b", "unknown member 'd'"),
    ("{uses: const, gates: ['per_group.sexual-orientation >= 0.5', 'per_grp.x >= 1']}", r"line 4\b",
     "no metric 'per_grp.x'"),
])
def test_parameter_values_are_checked_before_loading(run_cli, tmp_path, checks, entry, place, words):
    suite = write_suite(tmp_path, f"name: v\nmodel: {{base: 'builtin:tiny-bert'}}\nchecks:\n  - {entry}\n")
    line = assert_bad_input(run_cli("run", suite, "--out", tmp_path / "out"), suite, place, tmp_path / "out")
    assert words in line


def test_a_pattern_metric_can_be_gated(run_cli, tmp_path, checks):
    code, out, err, res = run(run_cli, tmp_path,
                              "  - {uses: const, gates: ['per_group.sexual-orientation.value >= 0.5']}\n")
    assert code == 0 and res["checks"][0]["gates"][0]["status"] == "pass"


@pytest.mark.parametrize("model, words", [
    ("{base: builtin:tiny-bert, batch_size: -1}", "model.batch_size must be >= 1"),
    ("{base: builtin:tiny-bert, max_length: 0}", "model.max_length must be >= 1"),
    ("{base: builtin:tiny-bert, num_labels: 0}", "num_labels must be >= 1"),
])
def test_model_values_are_checked_before_loading(run_cli, tmp_path, model, words):
    suite = write_suite(tmp_path, f"name: v\nmodel: {model}\nchecks: [overfitting]\n")
    line = assert_bad_input(run_cli("run", suite), suite, r"line 2\b")
    assert words in line


# ---------------------------------------------------------------------- the suite file is read strictly

def test_a_duplicated_gates_key_is_exit_2_naming_both_lines(run_cli, tmp_path):
    suite = write_suite(tmp_path, """
        name: dup
        model: {base: builtin:tiny-bert}
        checks:
          - uses: accuracy
            data: builtin:reviews#test
            gates: ["accuracy >= 0.99"]
            gates: ["accuracy >= 0.0"]
        """)
    line = assert_bad_input(run_cli("run", suite, "--out", tmp_path / "out"), suite, r"line 7\b", tmp_path / "out")
    assert "'gates' appears twice" in line and "lines 6 and 7" in line


def test_a_duplicated_checks_key_is_exit_2(run_cli, tmp_path):
    suite = write_suite(tmp_path, "name: dup\nmodel: {base: builtin:tiny-bert}\n"
                                  "checks: [{uses: overfitting}]\nchecks: [{uses: calibration, data: x.jsonl}]\n")
    line = assert_bad_input(run_cli("run", suite), suite, r"line 4\b")
    assert "'checks' appears twice (lines 3 and 4)" in line


def test_billion_laughs_is_refused_fast_and_small(run_cli, tmp_path):
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    suite = tmp_path / "laughs.yaml"
    suite.write_text("\n".join(lines) + "\nname: *a9\nmodel: {base: builtin:tiny-bert}\nchecks: [overfitting]\n")
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    res = run_cli("run", suite)
    elapsed = time.perf_counter() - t0
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    line = assert_bad_input(res, suite, r"line 1\b")
    assert "expands to more than" in line
    assert elapsed < 1.0 and grown_mb < 100


def test_a_suite_over_the_size_limit_is_refused(run_cli, tmp_path):
    from auditkit.suite import MAX_SUITE_BYTES
    suite = tmp_path / "big.yaml"
    suite.write_text("name: big\n# " + "x" * MAX_SUITE_BYTES + "\n")
    line = assert_bad_input(run_cli("run", suite), suite, "")
    assert "over the limit" in line


def test_undecodable_bytes_name_the_file_and_the_byte_offset(run_cli, tmp_path):
    suite = tmp_path / "latin1.yaml"
    suite.write_bytes(b"name: caf\xe9\nmodel: {base: builtin:tiny-bert}\nchecks: [overfitting]\n")
    line = assert_bad_input(run_cli("run", suite), suite, r"line 1\b")
    assert "not valid UTF-8" in line and "offset 9" in line and "e9" in line
    suite.write_bytes(b"\xef\xbb\xbfname: caf\xe9\nmodel: {base: builtin:tiny-bert}\n")  # a BOM first: absolute offset
    line = assert_bad_input(run_cli("run", suite), suite, r"line 1\b")
    assert "offset 12" in line


def test_deeply_nested_suite_and_data_are_exit_2(run_cli, tmp_path):
    suite = tmp_path / "deep.yaml"
    suite.write_text("name: " + "[" * 5000 + "]" * 5000 + "\n")
    line = assert_bad_input(run_cli("run", suite), suite, "")
    assert "nested too deeply" in line
    (tmp_path / "deep.jsonl").write_text('{"text": ' + "[" * 100000 + "]" * 100000 + "}\n")
    suite = write_suite(tmp_path, "name: v\nmodel: {base: builtin:tiny-bert}\n"
                                  "checks: [{uses: accuracy, data: deep.jsonl}]\n", name="s.yaml")
    line = assert_bad_input(run_cli("run", suite), "deep.jsonl", r"line 1\b")
    assert "nested too deeply" in line


def test_a_uses_that_is_not_a_name_is_exit_2(run_cli, tmp_path):
    suite = write_suite(tmp_path, "name: v\nmodel: {base: builtin:tiny-bert}\nchecks: [{uses: [accuracy]}]\n")
    line = assert_bad_input(run_cli("run", suite), suite, r"line 3\b")
    assert "uses must be a check name" in line


def test_a_bom_and_anchors_within_bounds_still_work(run_cli, tmp_path, checks):
    suite = tmp_path / "bom.yaml"
    suite.write_text("\ufeffname: bom\nmodel: {base: 'builtin:tiny-bert', max_length: 32}\n"
                     "checks:\n  - {uses: const, id: a, gates: &g ['score >= 0.5']}\n  - {uses: const, id: b, gates: *g}\n",
                     encoding="utf-8")
    code, out, err = run_cli("run", suite, "--out", tmp_path / "out", "--device", "cpu")
    assert code == 0, err
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [c["status"] for c in res["checks"]] == ["pass", "pass"]


# ---------------------------------------------------------------------- the output folder and the device

def test_an_unwritable_out_is_exit_2_before_any_model_loads(run_cli, tmp_path, monkeypatch):
    import auditkit.runner as runner
    loaded = []
    monkeypatch.setattr(runner, "load_model", lambda *a, **k: loaded.append(a) or (_ for _ in ()).throw(AssertionError))
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    write_jsonl(tmp_path / "data.jsonl", ROWS)
    suite = write_suite(tmp_path, "name: v\nmodel: {base: builtin:tiny-bert}\n"
                                  "checks: [{uses: accuracy, data: data.jsonl}]\n")
    line = assert_bad_input(run_cli("run", suite, "--out", blocker / "out"), "--out", "not writable")
    assert not loaded and "--out" in line


def test_an_out_that_is_a_symlink_is_exit_2_and_its_target_untouched(run_cli, tmp_path, monkeypatch):
    """The reports would land, and the stale ones be removed, wherever the link points."""
    import auditkit.runner as runner
    loaded = []
    monkeypatch.setattr(runner, "load_model", lambda *a, **k: loaded.append(a) or (_ for _ in ()).throw(AssertionError))
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "results.json").write_text("keep me")
    (tmp_path / "out-link").symlink_to(victim)
    write_jsonl(tmp_path / "data.jsonl", ROWS)
    suite = write_suite(tmp_path, "name: v\nmodel: {base: builtin:tiny-bert}\n"
                                  "checks: [{uses: accuracy, data: data.jsonl}]\n")
    line = assert_bad_input(run_cli("run", suite, "--out", tmp_path / "out-link"), "--out", "symbolic link")
    assert not loaded and "real folder" in line
    assert (victim / "results.json").read_text() == "keep me" and sorted(p.name for p in victim.iterdir()) == [
        "results.json"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_out_is_exit_2(run_cli, tmp_path):  # pragma: no cover - CI runs as root
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    write_jsonl(tmp_path / "data.jsonl", ROWS)
    suite = write_suite(tmp_path, "name: v\nmodel: {base: builtin:tiny-bert}\n"
                                  "checks: [{uses: accuracy, data: data.jsonl}]\n")
    assert_bad_input(run_cli("run", suite, "--out", out), "--out", "not writable")


def test_stale_reports_of_an_earlier_run_are_removed_first(run_cli, tmp_path, checks, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("report.html", "summary.md", "junit.xml"):
        (out / name).write_text("OVERALL: PASS")
    import auditkit.runner as runner

    def no_reports(results, out_dir, registry, formats, options, progress=None, write_json=True):
        from auditkit.results import write_json_atomic
        return [write_json_atomic(out_dir / "results.json", results)]
    monkeypatch.setattr(runner, "render_reports", no_reports)  # as if every reporter failed
    code, stdout, err, res = run(run_cli, tmp_path, "  - {uses: const, value: 0.1}\n")
    assert res["status"] == "fail"
    assert not any((out / n).exists() for n in ("report.html", "summary.md", "junit.xml"))


def test_device_cuda_in_the_suite_names_its_line(run_cli, tmp_path, monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    suite = write_suite(tmp_path, "name: v\nseed: 1\ndevice: cuda\nmodel: {base: builtin:tiny-bert}\n"
                                  "checks: [{uses: accuracy, data: builtin:reviews#test}]\n")
    line = assert_bad_input(run_cli("run", suite), suite, r"line 3\b")
    assert "no CUDA device" in line


# ---------------------------------------------------------------------- plugins through pluggy

class _Early:
    """A plugin whose implementation is ordered first by pluggy (tryfirst)."""

    def __init__(self, log):
        self.log = log

    @hookimpl(tryfirst=True)
    def auditkit_register_reporters(self, register):
        self.log.append("early")


class _Raiser:
    @hookimpl
    def auditkit_register_checks(self, register):
        register(Constant)  # registered, then the hook raises: nothing of this plugin is kept
        raise RuntimeError("plugin bug")


class _LateClasher:
    @hookimpl(trylast=True)
    def auditkit_register_checks(self, register):
        register(type("Acc", (Check,), {"name": "accuracy", "needs_data": False}))


class _Clasher:
    @hookimpl
    def auditkit_register_checks(self, register):
        register(type("Acc", (Check,), {"name": "accuracy", "needs_data": False}))
        register(Versus)


_INSTANCES: dict = {}


def _registry_with(monkeypatch, *extra):
    """Build the registry with these plugin objects installed as third-party entry points extra0, extra1..."""
    import importlib.metadata as md
    eps = []
    for i, plugin in enumerate(extra):
        _INSTANCES[f"extra{i}"] = plugin
        eps.append(md.EntryPoint(f"extra{i}", f"tests.test_verdicts:_INSTANCES.extra{i}", "auditkit"))
    load = md.EntryPoint.load
    monkeypatch.setattr(md.EntryPoint, "load", lambda self: _INSTANCES.get(self.name) or load(self))
    real = md.entry_points
    monkeypatch.setattr(plugins.md, "entry_points", lambda **kw: eps if kw.get("group") == "auditkit" else real(**kw))
    monkeypatch.setenv("AUDITKIT_PLUGINS", ",".join(f"extra{i}" for i in range(len(extra))))
    return build_registry()


def test_hooks_go_through_pluggy_callers_with_tryfirst_and_tracing(monkeypatch, capsys):
    log: list = []
    seen = []
    orig = pluggy.HookCaller.__call__

    def spy(self, *a, **k):
        seen.append(self.name)
        if self.name == "auditkit_register_reporters":
            log.append("call")
        return orig(self, *a, **k)
    monkeypatch.setattr(pluggy.HookCaller, "__call__", spy)
    monkeypatch.setenv("AUDITKIT_TRACE_HOOKS", "1")
    reg = _registry_with(monkeypatch, _Early(log))
    assert set(seen) >= {"auditkit_register_checks", "auditkit_register_reporters"}
    assert log == ["call", "early"] and "html" in reg.reporters
    assert "auditkit_register_checks" in capsys.readouterr().err  # pluggy's tracing writes each call


def test_a_plugin_whose_hook_raises_is_isolated(monkeypatch):
    reg = _registry_with(monkeypatch, _Raiser())
    failures = dict(reg.failures)
    assert "extra0" in failures and "plugin bug" in failures["extra0"]
    assert "const" not in reg.checks  # its partial registration is dropped
    assert {"accuracy", "overfitting", "memorization"} <= set(reg.checks)  # the others all registered


@pytest.mark.parametrize("clasher", [_Clasher, _LateClasher])
def test_a_plugin_cannot_silently_replace_a_builtin_check(monkeypatch, clasher):
    reg = _registry_with(monkeypatch, clasher())
    assert reg.check_plugin["accuracy"] == "auditkit_plugins.accuracy"
    assert "already provided by auditkit_plugins.accuracy" in dict(reg.failures)["extra0"]
    if clasher is _Clasher:
        assert reg.check_plugin["versus"] == "extra0"  # its other check still registers


def test_an_installed_third_party_auditkit_plugin_does_not_change_what_the_tests_see(monkeypatch):
    import importlib.metadata as md
    ep = md.EntryPoint("auditkit_someone_elses", "tests.test_verdicts:_Clasher", "auditkit")
    real = md.entry_points
    monkeypatch.setattr(plugins.md, "entry_points", lambda **kw: [ep] if kw.get("group") == "auditkit" else real(**kw))
    assert os.environ.get("AUDITKIT_PLUGINS") == ""  # conftest's allowlist: no third-party plugin
    reg = build_registry()
    assert not reg.failures and "versus" not in reg.checks


# ---------------------------------------------------------------------- checks that read data only

class DataOnly(Check):
    """A check that needs no model (like data quality)."""

    name = "data_only"
    metrics = {"rows": MetricSpec("rows", None)}
    needs_model = False
    default_gates = ["rows >= 1"]

    def run(self, ctx):
        assert ctx.model is None
        res = CheckResult()
        res.add("rows", len(ctx.data), higher_is_better=None)
        return res


def test_a_run_of_data_only_checks_loads_no_model_and_needs_no_model_section(run_cli, tmp_path, registry,
                                                                             monkeypatch):
    import auditkit.runner as runner
    monkeypatch.setitem(registry.checks, "data_only", DataOnly)
    monkeypatch.setitem(registry.check_plugin, "data_only", "tests")
    monkeypatch.setattr(runner, "load_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    write_jsonl(tmp_path / "data.jsonl", ROWS)
    suite = write_suite(tmp_path, "name: d\nchecks: [{uses: data_only, data: data.jsonl}]\n")
    code, out, err = run_cli("run", suite, "--out", tmp_path / "out")
    assert code == 0, err
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["model"] is None and res["checks"][0]["status"] == "pass"
    assert (tmp_path / "out" / "report.html").exists() and (tmp_path / "out" / "summary.md").exists()


def test_resume_never_carries_a_result_over_to_another_base_model_or_model(run_cli, tmp_path, checks):
    code, out, err, first = run(run_cli, tmp_path, "  - {uses: versus}\n")
    assert [g["expr"] for g in first["checks"][0]["gates"]] == ["score >= 0.5"]  # no base model: dropped
    code, out, err, second = run(run_cli, tmp_path, "  - {uses: versus}\n", "--resume", "--baseline",
                                 "builtin:tiny-bert")
    assert "reusing the result" not in err
    assert [g["expr"] for g in second["checks"][0]["gates"]] == ["score >= baseline.score", "score >= 0.5"]
    code, out, err, third = run(run_cli, tmp_path, "  - {uses: versus}\n", "--resume", "--baseline",
                                "builtin:tiny-bert")
    assert "reusing the result" in err  # same models, same gates: reused
    code, out, err, fourth = run(run_cli, tmp_path, "  - {uses: versus}\n", "--resume", "--baseline",
                                 "builtin:tiny-bert", "--model", "builtin:tiny-gpt2")
    assert "reusing the result" not in err


def test_a_bounded_list_refuses_items_that_are_not_numbers():
    from auditkit.api import Param
    with pytest.raises(ValueError, match="must be a number"):
        Param("list", [0.1], ge=0, le=1).coerce([0.2, "a"], "rationale_sizes")
    assert Param("list", ["x"]).coerce(["y"], "names") == ["y"]  # unbounded lists take any items


def test_a_diverged_fine_tune_never_leaves_an_earlier_fine_tune_to_be_reused_with_its_record(run_cli, tmp_path):
    rows = [{"text": f"the {w} was {'good' if i % 2 else 'bad'}", "label": i % 2}
            for i, w in enumerate(["tea", "film", "park", "desk"] * 4)]
    write_jsonl(tmp_path / "train.jsonl", rows)
    write_jsonl(tmp_path / "val.jsonl", rows[:8])

    def suite(lr):
        return write_suite(tmp_path, f"""
            name: ft
            model: {{base: builtin:tiny-bert, max_length: 16}}
            finetune: {{data: train.jsonl, validation: val.jsonl, method: full, epochs: 1, batch_size: 8,
                        learning_rate: {lr}}}
            checks: [{{uses: overfitting, gates: []}}]
            """, name=f"ft-{lr}.yaml")
    out = tmp_path / "out"
    code, _, err = run_cli("run", suite(0.0001), "--out", out, "--device", "cpu")
    assert code == 0, err
    code, _, err = run_cli("run", suite("1.0e+6"), "--out", out, "--device", "cpu")
    assert code == 3 and any(w in err.lower() for w in ("diverg", "explod", "nan")), err
    assert not (out / "model" / "finetune.json").exists()  # the earlier marker went before training began
    code, _, err = run_cli("run", suite(0.0001), "--out", out, "--device", "cpu")
    res = json.loads((out / "results.json").read_text())
    assert code == 0 and res["training"]["reused"] is False  # trained again, not paired with the diverged record
