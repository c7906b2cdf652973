"""The CLI end to end on a tiny random BERT: exit codes 0/1/2/3, --strict, --only, a crashing check,
and the `plugins` / `checks` listings."""
from __future__ import annotations

import json

import pytest

from auditkit.api import Check, CheckResult, MetricSpec, Param
from tests.conftest import write_jsonl, write_suite


ROWS = [{"text": f"review {i}: the service was {'great' if i % 2 else 'awful'}", "label": i % 2} for i in range(12)]


class Boom(Check):
    """A check that always crashes (registered by the tests only)."""

    name = "boom"
    description = "raises"
    params = {"message": Param("str", "kaboom", "what to raise")}
    metrics = {"x": MetricSpec("never produced")}
    needs_data = False

    def run(self, ctx):
        raise RuntimeError(ctx.params["message"])


class Nanny(Check):
    """A check whose metric is NaN and which omits a declared metric."""

    name = "nanny"
    description = "NaN metric"
    metrics = {"nan_metric": MetricSpec("NaN"), "absent": MetricSpec("never added")}
    needs_data = False

    def run(self, ctx):
        res = CheckResult()
        res.add("nan_metric", float("nan"))
        return res


@pytest.fixture
def extra_checks(registry, monkeypatch):
    for cls in (Boom, Nanny):
        monkeypatch.setitem(registry.checks, cls.name, cls)
        monkeypatch.setitem(registry.check_plugin, cls.name, "tests")


@pytest.fixture
def wide(monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # rich tables: no folding of names in the captured output


def make_suite(tmp_path, checks: str, name="cli"):
    write_jsonl(tmp_path / "data.jsonl", ROWS)
    return write_suite(tmp_path, f"name: {name}\nmodel: {{base: 'builtin:tiny-bert', max_length: 32}}\nchecks:\n{checks}")


def run(run_cli, suite, out, *extra):
    code, stdout, err = run_cli("run", suite, "--out", out, "--device", "cpu", *extra)
    results = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else None
    return code, stdout, err, results


ACC = "  - {{uses: accuracy, id: {id}, data: data.jsonl, bootstrap: 100, gates: {gates}}}\n"


def test_exit_0_when_every_gate_passes(run_cli, tmp_path):
    suite = make_suite(tmp_path, ACC.format(id="acc", gates='["accuracy >= 0", "macro_f1 >= 0"]'))
    code, stdout, err, res = run(run_cli, suite, tmp_path / "out")
    assert code == 0, err
    assert res["status"] == "pass" and res["checks"][0]["status"] == "pass"
    assert [g["status"] for g in res["checks"][0]["gates"]] == ["pass", "pass"]
    assert "overall: PASS" in stdout and "acc" in stdout
    assert "Traceback" not in err
    # not a terminal: plain progress lines on stderr, no bars or escape codes
    assert "auditkit: acc: running" in err and "auditkit: acc: PASS" in err and "\x1b[" not in err
    for f in ("report.html", "results.json", "junit.xml", "summary.md"):
        assert (tmp_path / "out" / f).exists()


def test_exit_1_when_a_gate_fails(run_cli, tmp_path):
    suite = make_suite(tmp_path, ACC.format(id="ok", gates='["accuracy >= 0"]')
                       + ACC.format(id="bad", gates='["accuracy > 1"]'))
    code, stdout, err, res = run(run_cli, suite, tmp_path / "out")
    assert code == 1, err
    assert res["status"] == "fail"
    assert [c["status"] for c in res["checks"]] == ["pass", "fail"]
    assert res["checks"][1]["gates"][0]["observed"] == res["checks"][1]["metrics"]["accuracy"]["value"]
    assert "overall: FAIL" in stdout


def test_warn_gate_exit_0_and_strict_exit_1(run_cli, tmp_path):
    suite = make_suite(tmp_path, ACC.format(id="acc", gates='[{when: "accuracy > 1", severity: warn}]'))
    code, _, err, res = run(run_cli, suite, tmp_path / "a")
    assert code == 0, err
    assert res["status"] == "warn" and res["checks"][0]["gates"][0]["status"] == "warn"
    code, _, err, res = run(run_cli, suite, tmp_path / "b", "--strict")
    assert code == 1, err
    assert res["status"] == "warn"


def test_crashing_check_is_error_with_traceback_and_others_still_run(run_cli, tmp_path, extra_checks):
    suite = make_suite(tmp_path, ACC.format(id="before", gates='["accuracy >= 0"]')
                       + "  - {uses: boom, message: 'kaboom <script>alert(1)</script>', gates: ['x >= 1']}\n"
                       + ACC.format(id="after", gates='["accuracy >= 0"]'))
    out = tmp_path / "out"
    code, stdout, err, res = run(run_cli, suite, out)
    assert code == 3, err
    assert "Traceback" not in err  # the traceback goes to the report, not the terminal
    by_id = {c["id"]: c for c in res["checks"]}
    assert by_id["before"]["status"] == by_id["after"]["status"] == "pass"
    boom = by_id["boom"]
    assert boom["status"] == "error"
    assert boom["error"]["type"] == "RuntimeError" and "kaboom" in boom["error"]["message"]
    tb = boom["error"]["traceback"]
    assert tb.startswith("Traceback") and "in run" in tb and "RuntimeError: kaboom" in tb
    assert [g["status"] for g in boom["gates"]] == ["error"]
    assert res["status"] == "error"
    html = (out / "report.html").read_text()
    assert "RuntimeError: kaboom &lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script>alert(1)" not in html
    assert "Traceback (most recent call last)" in html and "in run" in html
    assert "ERROR" in (out / "summary.md").read_text()


def test_nan_or_missing_metric_makes_the_gate_error_not_pass(run_cli, tmp_path, extra_checks):
    suite = make_suite(tmp_path, "  - {uses: nanny, gates: ['nan_metric >= 0', {when: 'absent <= 1', severity: warn}]}\n")
    code, _, err, res = run(run_cli, suite, tmp_path / "out")
    check = res["checks"][0]
    assert [g["status"] for g in check["gates"]] == ["error", "error"]
    assert check["status"] == "error" and check["error"] is None
    assert check["metrics"]["nan_metric"]["value"] is None  # NaN stored as null, JSON stays valid
    assert code == 1 and res["status"] != "pass"


def test_only_runs_the_named_checks(run_cli, tmp_path):
    suite = make_suite(tmp_path, ACC.format(id="one", gates="[]") + ACC.format(id="two", gates='["accuracy > 1"]'))
    code, _, err, res = run(run_cli, suite, tmp_path / "out", "--only", "one")
    assert code == 0, err
    assert [c["id"] for c in res["checks"]] == ["one"]


def test_resume_reuses_finished_checks(run_cli, tmp_path, extra_checks, registry, monkeypatch):
    suite = make_suite(tmp_path, ACC.format(id="acc", gates='["accuracy >= 0"]'))
    out = tmp_path / "out"
    code, _, err, first = run(run_cli, suite, out)
    assert code == 0, err

    class Fail(Check):
        name = "accuracy"
        params = registry.checks["accuracy"].params
        metrics = registry.checks["accuracy"].metrics

        def run(self, ctx):
            raise AssertionError("the finished check must not run again")

    monkeypatch.setitem(registry.checks, "accuracy", Fail)
    code, _, err, second = run(run_cli, suite, out, "--resume")
    assert "reusing the result of the previous run" in err
    assert code == 0 and second["checks"] == first["checks"]


def test_plugins_listing(run_cli, wide):
    code, out, err = run_cli("plugins")
    assert code == 0, err
    assert "auditkit_plugins.accuracy" in out and "checks: accuracy" in out
    assert "auditkit_plugins.overfitting" in out and "auditkit.report.html" in out
    assert "reporters: html" in out and "model sources: minilm" in out and "built-in" in out
    from auditkit import __version__
    assert __version__ in out


def test_checks_listing(run_cli, wide):
    code, out, err = run_cli("checks")
    assert code == 0, err
    for name in ("accuracy", "lm_eval", "overfitting"):
        assert f"{name} (" in out
    assert "metrics: accuracy, macro_f1, acc, acc_norm" in out


def test_checks_accuracy_details(run_cli, wide):
    code, out, err = run_cli("checks", "accuracy")
    assert code == 0, err
    assert "accuracy (auditkit_plugins.accuracy)" in out
    assert "sequence-classification, causal-lm" in out
    assert "bootstrap" in out and "1000" in out and "max_examples" in out  # parameters with defaults
    for metric in ("accuracy", "macro_f1", "acc_norm", "acc_stderr"):
        assert metric in out
    assert "higher" in out


def test_checks_unknown_name_did_you_mean(run_cli):
    code, out, err = run_cli("checks", "acuracy")
    assert code == 2 and "did you mean 'accuracy'?" in err and len(err.strip().splitlines()) == 1


def test_version(run_cli, capsys):
    from auditkit import __version__
    with pytest.raises(SystemExit) as exc:
        run_cli("--version")
    assert exc.value.code == 0 and __version__ in capsys.readouterr().out


def test_default_output_folder_is_reports_slash_suite_name(run_cli, tmp_path, monkeypatch):
    suite = make_suite(tmp_path, ACC.format(id="acc", gates="[]"), name="named-suite")
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli("run", suite, "--device", "cpu")
    assert code == 0, err
    assert (tmp_path / "reports" / "named-suite" / "results.json").exists()
    assert "reports/named-suite/" in err


def test_folders_and_files_in_the_wrong_place_are_exit_2_not_internal_errors(run_cli, tmp_path):
    """compare/report given a folder for a results.json, an --out that is a file, new-plugin --dir a file:
    one line and exit 2, never a traceback and exit 3."""
    from auditkit.results import write_json_atomic
    from tests.test_report_safety import make_results
    run = tmp_path / "run"
    write_json_atomic(run / "results.json", make_results())
    afile = tmp_path / "afile"
    afile.write_text("x")
    for argv, words in [(("compare", run / "results.json", run), "is a folder"),
                        (("report", run), "is a folder"),
                        (("compare", run / "results.json", run / "results.json", "--out", afile), "not writable"),
                        (("report", run / "results.json", "--out", afile), "not writable"),
                        (("new-plugin", "toxicity2", "--dir", afile), "is a file, not a folder")]:
        code, out, err = run_cli(*argv)
        assert code == 2 and words in err and "Traceback" not in err, (argv, err)


def test_compare_and_report_write_beside_results_read_through_a_link(run_cli, tmp_path):
    """`latest -> runs/r1`: compare and report without --out write where the results are, link or not;
    only a --out that is itself a link is refused."""
    from auditkit.results import write_json_atomic
    from tests.test_report_safety import make_results
    real = tmp_path / "runs" / "r1"
    write_json_atomic(real / "results.json", make_results())
    (tmp_path / "latest").symlink_to(real)
    code, out, err = run_cli("compare", real / "results.json", tmp_path / "latest" / "results.json")
    assert code in (0, 1), err
    assert (real / "comparison.md").exists()
    code, out, err = run_cli("report", tmp_path / "latest" / "results.json", "--format", "md")
    assert code == 0, err
    code, out, err = run_cli("report", real / "results.json", "--format", "md", "--out", tmp_path / "latest")
    assert code == 2 and "symbolic link" in err
