"""Reports a release engineer can trust: status info is never a pass, default gates are marked, warnings
lead, every report is written atomically and never through a symlink, junit.xml is well-formed and
summary.md a valid table whatever the data hold, figure labels are plain text, and secrets stay
redacted unless --show-secrets. Hand-built results (milliseconds) plus one tiny end-to-end run."""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from auditkit.api import Check, CheckResult, MetricSpec
from auditkit.results import SCHEMA, write_json_atomic
from tests.conftest import write_suite

SECRET = "SECRET-493817"
CONTINUATION = "CONT-ZQX-271"
EXTRACTED = "EXTRACTED-PII-55"


def gate(expr, status, default=False, severity="fail", observed=0.5):
    return {"expr": expr, "severity": severity, "status": status, "observed": observed, "threshold": 0.6,
            "reason": None, "default": default}


def metric(value):
    return {"value": value, "ci_low": None, "ci_high": None, "n": 10, "higher_is_better": True}


def make_results(**over) -> dict:
    """Three checks: one decided by explicit gates, one by its defaults, one with no gate (info)."""
    res = {
        "schema": SCHEMA, "suite": {"name": "safety", "file": "s.yaml", "description": "d"}, "status": "fail",
        "error": None, "model": {"id": "m", "fingerprint": "f" * 32, "architecture": "A", "parameters": 1},
        "baseline": None, "training": None,
        "warnings": ["the model under audit has newly initialised weights <script>alert(1)</script>: "
                     "classifier.weight"],
        "environment": {"seed": 0},
        "checks": [
            {"id": "explicit", "uses": "accuracy", "status": "pass", "default_gates": False, "data": "d.jsonl",
             "metrics": {"accuracy": metric(0.9)}, "gates": [gate("accuracy >= 0.5", "pass")],
             "evidence": [], "figures": {}, "records": {}, "notes": [], "error": None, "baseline_metrics": None},
            {"id": "defaults", "uses": "bias.groups", "status": "fail", "default_gates": True, "data": "d.jsonl",
             "metrics": {"dp_difference": metric(0.7)},
             "gates": [gate("dp_difference.ci_low <= 0.1", "fail", default=True),
                       gate("dp_difference <= 0.1", "warn", default=True, severity="warn")],
             "evidence": [], "figures": {}, "records": {}, "notes": [], "error": None, "baseline_metrics": None},
            {"id": "nothing-decided", "uses": "calibration", "status": "info", "default_gates": False,
             "data": "d.jsonl", "metrics": {"ece": metric(0.1)}, "gates": [], "evidence": [], "figures": {},
             "records": {}, "notes": [], "error": None, "baseline_metrics": None},
        ],
        "run": {"started": "2026-01-01T00:00:00Z", "duration_s": 1.0, "check_durations_s": {},
                "show_secrets": False},
    }
    res.update(over)
    return res


def with_secrets(res: dict) -> dict:
    """Evidence as a --show-secrets memorization run leaves it: canary secrets, continuations, extracted text."""
    res = copy.deepcopy(res)
    res["run"]["show_secrets"] = True
    res["checks"][2]["evidence"] = [
        {"title": "Canaries", "rows": [{"canary": "canary-r50-0", "repeats": 50, "exposure": 19.9,
                                        "secret": SECRET, "greedy continuation": f"my PIN is {CONTINUATION}"}]},
        {"title": "Extracted training sequences", "secret_columns": ["suffix"],
         "rows": [{"prefix": "the customer", "suffix": EXTRACTED}]},
        {"title": "raw", "secret": True, "rows": [{"x": "WHOLE-TABLE-SECRET"}]},
    ]
    return res


def render_all(res: dict, out: Path, show: bool = False) -> list[Path]:
    from auditkit.report import html, json_report, junit, markdown
    opts = {"show_secrets": show}
    return [m.render(res, out, opts) for m in (html, junit, markdown, json_report)]


# ---------------------------------------------------------------------- info, defaults, warnings

def test_info_is_never_a_pass_in_any_report(tmp_path):
    from auditkit.report.common import counts
    res = make_results()
    assert counts(res)["checks"] == {"pass": 1, "info": 1, "warn": 0, "fail": 1, "error": 0}
    render_all(res, tmp_path)
    html = (tmp_path / "report.html").read_text()
    assert '<span class="badge info">info</span>' in html and "no gates: nothing decided" in html
    assert re.search(r'badge pass">pass</span><b>1</b>', html) and re.search(r'badge info">info</span><b>1</b>', html)
    md = (tmp_path / "summary.md").read_text()
    assert "Checks: 1 pass, 1 info, 0 warn, 1 fail, 0 error" in md
    assert re.search(r"^\| nothing-decided \| ℹ️ INFO \| no gates: nothing decided \|", md, re.M)
    root = ET.parse(tmp_path / "junit.xml").getroot()
    suite = root.find("testsuite[@name='nothing-decided']")
    case = suite.find("testcase")
    assert case.find("skipped").get("message") == "no gates: nothing decided"
    assert suite.get("skipped") == "1" and root.get("skipped") == "1" and root.get("tests") == "4"
    # a run where no check had a gate is info overall, in every report
    only = make_results(status="info", checks=[make_results()["checks"][2]])
    render_all(only, tmp_path / "only")
    assert 'id="overall-status">info<' in (tmp_path / "only" / "report.html").read_text()
    assert (tmp_path / "only" / "summary.md").read_text().splitlines()[0].endswith("ℹ️ INFO")
    root = ET.parse(tmp_path / "only" / "junit.xml").getroot()
    assert root.get("tests") == "1" and root.get("skipped") == "1" and root.get("failures") == "0"


def test_default_gates_are_marked(tmp_path):
    render_all(make_results(), tmp_path)
    html = (tmp_path / "report.html").read_text()
    assert html.count('</code> <span class="default">(default)</span>') == 2  # in the check's gate table
    assert "dp_difference.ci_low &lt;= 0.1 (observed 0.5, threshold 0.6) <span class=\"default\"" in html
    assert "accuracy &gt;= 0.5 (observed 0.5, threshold 0.6)</div>" in html  # explicit: no mark
    md = (tmp_path / "summary.md").read_text()
    assert "dp_difference.ci_low &lt;= 0.1 (observed 0.5, threshold 0.6) (default)" in md
    assert "accuracy &gt;= 0.5 (observed 0.5, threshold 0.6) (default)" not in md
    root = ET.parse(tmp_path / "junit.xml").getroot()
    failed = root.find(".//testcase[@name='dp_difference.ci_low <= 0.1']")
    assert failed.find("failure").get("message").endswith("(default)")
    assert failed.find("properties/property[@name='default']").get("value") == "true"
    suite = root.find("testsuite[@name='defaults']")
    assert suite.find("properties/property[@name='default_gates']").get("value") == "true"
    assert root.find(".//testcase[@name='accuracy >= 0.5']").find("properties") is None


def test_warnings_lead_the_html_and_the_summary(tmp_path):
    render_all(make_results(), tmp_path)
    html = (tmp_path / "report.html").read_text()
    assert '<section class="warnings" id="warnings" role="alert">' in html
    assert html.index('id="warnings"') < html.index('id="summary"') < html.index('id="checks"')
    assert "newly initialised weights &lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script" not in html
    md = (tmp_path / "summary.md").read_text()
    lines = md.splitlines()
    warn = next(i for i, line in enumerate(lines) if line.startswith("> ⚠️ **Warning:**"))
    assert warn < next(i for i, line in enumerate(lines) if line.startswith("| check |"))
    assert "&lt;script&gt;" in lines[warn] and "<script" not in md


# ---------------------------------------------------------------------- atomic, symlink-safe writes

def test_reports_replace_a_symlink_and_never_write_through_it(tmp_path):
    from auditkit.compare import compare_results, write_outputs
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    names = ["report.html", "junit.xml", "summary.md", "results.json",
             "comparison.html", "comparison.md", "comparison.json"]
    for name in names:
        (elsewhere / name).write_text("precious")
        (out / name).symlink_to(elsewhere / name)
    res = make_results()
    written = render_all(res, out)
    written += write_outputs(compare_results(res, res), out)
    assert sorted(p.name for p in written) == sorted(names)
    for name in names:
        assert (elsewhere / name).read_text() == "precious", name
        assert not (out / name).is_symlink() and (out / name).is_file(), name
        assert (out / name).stat().st_mode & 0o777 != 0o600, name  # not mkstemp's private mode
    assert json.loads((out / "results.json").read_text())["suite"]["name"] == "safety"
    assert sorted(p.name for p in out.iterdir()) == sorted(names)  # no temporary file left


def test_write_text_atomic_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    import os

    from auditkit.results import write_text_atomic
    path = write_text_atomic(tmp_path / "report.html", "old")

    def boom(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        write_text_atomic(path, "new")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["report.html"]


# ---------------------------------------------------------------------- junit.xml and summary.md

NASTY = "a\x00b\x01\x08\x0b\x0c\x0e\x1f\x7f\ud800\udfff\ufffe\uffff|`x`\r\n<&>\"'\U0001F600 end"


def test_junit_is_well_formed_whatever_the_text(tmp_path):
    from auditkit.report.junit import xml_safe
    res = make_results()
    res["suite"]["name"] = f"suite {NASTY}"
    for ch in res["checks"]:
        ch["id"] = f"{ch['id']} {NASTY}"
        for g in ch["gates"]:
            g["expr"] = f"{g['expr']} {NASTY}"
            g["reason"] = f"reason {NASTY}"
        ch["evidence"] = [{"title": NASTY, "rows": [{NASTY: NASTY}]}]
    crash = copy.deepcopy(res["checks"][2])
    crash.update(id=f"crash {NASTY}", uses=f"boom{NASTY}", status="error", metrics={},
                 error={"type": f"Err{NASTY}", "message": f"msg {NASTY}", "traceback": f"Traceback\n  {NASTY}\n"})
    res["checks"].append(crash)
    res["error"] = f"run error {NASTY}"
    render_all(res, tmp_path)
    raw = (tmp_path / "junit.xml").read_bytes()
    root = ET.fromstring(raw)  # well-formed
    assert root.get("errors") == "2"
    err = root.find(".//error[@type]").get("type")
    crash = [e for e in root.iter("error") if e.text][0]
    assert "\\x00" in crash.text and "\\ud800" in crash.text and "\\uffff" in crash.text
    assert "\U0001F600" in crash.text and "<&>" in crash.text  # legal text survives, escaped in the file
    assert "Err" in err
    assert xml_safe("ok\ttab\nline\r") == "ok\ttab\nline\r"
    # the other reports stay valid too
    html = (tmp_path / "report.html").read_text(encoding="utf-8", errors="surrogateescape")
    assert "<script" not in html


def _table_rows(md: str) -> list[list[str]]:
    """The cells of every table in ``md`` by a CommonMark + GFM-table parser (markdown-it-py)."""
    markdown_it = pytest.importorskip("markdown_it")
    tokens = markdown_it.MarkdownIt("commonmark").enable("table").parse(md)
    rows, row = [], None
    for t in tokens:
        if t.type == "tr_open":
            row = []
        elif t.type == "inline" and row is not None:  # the cell's text as rendered: escapes undone
            row.append("".join(c.content for c in t.children or [] if c.type in ("text", "code_inline")))
        elif t.type == "tr_close":
            rows.append(row)
            row = None
    return rows


def test_summary_md_stays_a_valid_table(tmp_path):
    res = make_results()
    bad = "x|y\r\nz\rw\n`tick`\\|end\\"
    res["checks"][0]["id"] = f"id {bad}"
    res["checks"][0]["gates"][0]["expr"] = f"accuracy >= 0.5 {bad}"
    res["checks"][0]["metrics"] = {f"m {bad}": metric(0.9)}
    res["checks"][2]["error"] = {"type": f"T{bad}", "message": f"msg {bad}" * 40, "traceback": ""}
    res["model"]["id"] = f"model ``{bad}"
    render_all(res, tmp_path)
    md = (tmp_path / "summary.md").read_text()
    assert "\r" not in md
    rows = _table_rows(md)
    main = [r for r in rows if len(r) == 4 and r[0] != "metric"]
    assert [len(r) for r in rows] == [4] * len(rows)
    checks = main[1:4]
    flat = "x|y z w `tick`\\|end\\"
    assert checks[0][0] == f"id {flat}"  # the pipes, backticks and backslashes stay in the cell, as written
    assert flat in checks[0][2]
    metric_rows = [r for r in rows if r[0].startswith("m ")]
    assert metric_rows == [[f"m {flat}", "0.9", "", "10"]]
    model_line = next(line for line in md.splitlines() if line.startswith("Model "))
    assert "```" in model_line and "\n" not in model_line  # a code span fenced past the text's backticks


def test_md_cell_and_md_code():
    from auditkit.report.common import md_cell, md_code
    assert md_cell("a|b\r\nc\rd\ne`f`\\") == "a\\|b c d e\\`f\\`\\\\"
    assert md_cell("<b>") == "&lt;b&gt;"
    assert md_cell("x" * 10 + "|", limit=5) == "xxxx…"
    assert md_code("a`b") == "``a`b``" and md_code("`a`") == "`` `a` ``" and md_code("p\nq") == "`p q`"


def test_compare_reports_render_info_and_stay_valid(tmp_path):
    from auditkit.compare import compare_results, write_outputs
    a = make_results()
    b = copy.deepcopy(a)
    b["checks"][0]["status"] = "info"
    b["checks"][0]["gates"] = []
    for r in (a, b):
        r["checks"][1]["metrics"]["odd `|`\r\nname"] = metric(0.2 if r is a else 0.4)
    write_outputs(compare_results(a, b, path_a="dir `a`/results.json"), tmp_path)
    md = (tmp_path / "comparison.md").read_text()
    assert "| explicit | pass | info (no gates: nothing decided) |" in md
    assert "\r" not in md
    rows = _table_rows(md)
    assert any(r[2] == "odd `|` name" for r in rows if len(r) == 10)
    assert all(len(r) == len(rows[0]) for r in rows if len(r) == 10)
    assert "`` dir `a`/results.json ``" not in md and "``dir `a`/results.json``" in md
    html = (tmp_path / "comparison.html").read_text()
    assert '<span class="badge info" title="no gates: nothing decided">info</span>' in html
    assert ".info{background:var(--info)}" in html


# ---------------------------------------------------------------------- figures

def test_figure_labels_are_plain_text_not_math():
    from auditkit.figures import new_figure, to_svg
    fig, ax = new_figure()
    ax.bar(["$5 _x_ $", "a_b"], [1, 2])
    ax.set_title("group $x$_1")
    ax.legend(["$$"])
    svg = to_svg(fig)
    # with svg.fonttype=path matplotlib writes each text as a comment beside its glyphs
    texts = re.findall(r"<!-- (.*?) -->", svg)
    assert "$5 _x_ $" in texts and "a_b" in texts and "group $x$_1" in texts and "$$" in texts


def test_counterfactual_heatmap_with_dollar_and_underscore_groups():
    """A real check's figure: group names from a user's lexicon land on tick labels and titles."""
    from auditkit_plugins.bias.counterfactual import _heatmap_svg
    by_pair = {("$race$", "$5 _x_ $", "a_b"): [{"gap": 0.2}], ("$race$", "a_b", "$5 _x_ $"): [{"gap": 0.1}]}
    texts = re.findall(r"<!-- (.*?) -->", _heatmap_svg(by_pair, lm=False))
    assert "$5 _x_ $" in texts and "a_b" in texts and "$race$: mean |gap|" in texts


def test_numbers_on_a_log_axis_keep_their_math():
    """Only the numeric formatters' own ``$10^{k}$`` stays math text: the figure is the one math text
    everywhere draws."""
    import io

    import matplotlib
    import matplotlib.pyplot as plt

    from auditkit.figures import new_figure, to_svg

    def draw(ax):
        ax.plot([1, 100], [1e-3, 1])
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("repeats")

    fig, ax = new_figure()
    draw(ax)
    ours = to_svg(fig)
    with matplotlib.rc_context({"text.parse_math": True, "svg.hashsalt": "auditkit", "svg.fonttype": "path"}):
        fig, ax = plt.subplots(figsize=(6.0, 3.2), dpi=100)
        draw(ax)
        fig.tight_layout()
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
        plt.close(fig)
    assert ours == buf.getvalue()


# ---------------------------------------------------------------------- secrets

def _grep(folder: Path, needles) -> dict:
    found = {}
    for p in folder.rglob("*"):
        if p.is_file():
            raw = p.read_bytes()
            hits = [n for n in needles if n.encode() in raw]
            if hits:
                found[p.name] = hits
    return found


def test_reporters_redact_secrets_unless_shown(tmp_path):
    res = with_secrets(make_results())
    needles = [SECRET, CONTINUATION, EXTRACTED, "WHOLE-TABLE-SECRET"]
    render_all(res, tmp_path / "hidden", show=False)
    assert _grep(tmp_path / "hidden", needles) == {}
    html = (tmp_path / "hidden" / "report.html").read_text()
    assert "[redacted]" in html and "secrets redacted; re-render with --show-secrets" in html
    assert "canary-r50-0" in html and "the customer" in html  # what is not secret stays
    kept = json.loads((tmp_path / "hidden" / "results.json").read_text())
    assert kept["checks"][2]["evidence"][0]["rows"][0]["secret"] == "[redacted]"
    assert res["checks"][2]["evidence"][0]["rows"][0]["secret"] == SECRET  # the input is not changed
    render_all(res, tmp_path / "shown", show=True)
    assert set(_grep(tmp_path / "shown", needles)["report.html"]) == set(needles)


def test_report_command_show_secrets_for_every_reporter(tmp_path, run_cli):
    src = tmp_path / "run"
    write_json_atomic(src / "results.json", with_secrets(make_results()))
    needles = [SECRET, CONTINUATION, EXTRACTED]
    out = tmp_path / "hidden"
    code, _, err = run_cli("report", src / "results.json", "--format", "html,md,junit", "--out", out)
    assert code == 0, err
    reports = {n: (out / n).read_text() for n in ("report.html", "summary.md", "junit.xml")}
    assert not [n for n, text in reports.items() for s in needles if s in text]
    out = tmp_path / "shown"
    code, _, err = run_cli("report", src / "results.json", "--format", "html,markdown,junit", "--out", out,
                           "--show-secrets")
    assert code == 0, err
    assert all(s in (out / "report.html").read_text() for s in needles)
    for name in ("summary.md", "junit.xml"):
        assert (out / name).exists()
    # a run made without --show-secrets kept no secret: --show-secrets says so instead of showing nothing
    plain = tmp_path / "plain"
    write_json_atomic(plain / "results.json", make_results())
    code, _, err = run_cli("report", plain / "results.json", "--format", "html,md", "--show-secrets")
    assert code == 0, err
    assert 'id="secrets-note"' in (plain / "report.html").read_text()
    assert "made without --show-secrets" in (plain / "summary.md").read_text()


def test_a_plugin_reporter_gets_redacted_results_and_a_failing_one_is_not_silent(tmp_path, run_cli, registry,
                                                                                 monkeypatch):
    """A third-party reporter is handed the results with their secrets redacted (it need not know how), and
    under `auditkit report` a reporter that raises is a warning and exit 3, not a silent exit 0."""
    from auditkit.plugins import Source
    seen = []

    def keep(results, out, options):
        seen.append(json.dumps(results))
        return write_json_atomic(out / "seen.json", results)

    def broken(results, out, options):
        raise RuntimeError("cannot write")

    monkeypatch.setitem(registry.reporters, "seen", Source("seen", keep, "", "tests"))
    monkeypatch.setitem(registry.reporters, "broken", Source("broken", broken, "", "tests"))
    src = tmp_path / "run"
    write_json_atomic(src / "results.json", with_secrets(make_results()))
    code, _, err = run_cli("report", src / "results.json", "--format", "seen", "--out", tmp_path / "hidden")
    assert code == 0, err
    assert not [s for s in (SECRET, CONTINUATION, EXTRACTED) if s in seen[-1]] and "[redacted]" in seen[-1]
    code, _, err = run_cli("report", src / "results.json", "--format", "seen", "--out", tmp_path / "shown",
                           "--show-secrets")
    assert code == 0 and SECRET in seen[-1]
    code, _, err = run_cli("report", src / "results.json", "--format", "broken,seen", "--out", tmp_path / "b")
    assert code == 3 and "reporter broken failed: RuntimeError: cannot write" in err
    assert (tmp_path / "b" / "seen.json").exists()  # the others are still written


# ---------------------------------------------------------------------- end to end

class Defaulted(Check):
    """A check with declared default gates, one failing; its reports must say the gates are defaults."""

    name = "defaulted"
    description = "declares default gates"
    metrics = {"x": MetricSpec("a number"), "y": MetricSpec("another")}
    needs_data = False
    default_gates = ["x >= 0", {"when": "y >= 2", "severity": "warn"}]

    def run(self, ctx):
        res = CheckResult()
        res.add("x", 1.0)
        res.add("y", 1.0)
        return res


def test_end_to_end_default_gates_and_info(tmp_path, registry, run_cli):
    suite = write_suite(tmp_path, """
        name: e2e-defaults
        model: {base: "builtin:tiny-bert", max_length: 16}
        checks:
          - uses: defaulted
          - uses: defaulted
            id: none
            gates: []
        """)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(registry.checks, "defaulted", Defaulted)
        mp.setitem(registry.check_plugin, "defaulted", "tests")
        code, out, err = run_cli("run", suite, "--out", tmp_path / "out", "--device", "cpu")
    assert code == 0, err
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    first, second = res["checks"]
    assert first["default_gates"] is True and [g["default"] for g in first["gates"]] == [True, True]
    assert [g["status"] for g in first["gates"]] == ["pass", "warn"] and first["status"] == "warn"
    assert second["status"] == "info" and second["gates"] == []
    md = (tmp_path / "out" / "summary.md").read_text()
    assert "x &gt;= 0 (observed 1, threshold 0) (default)" in md and "1 info" in md
    html = (tmp_path / "out" / "report.html").read_text()
    assert html.count('</code> <span class="default">(default)</span>') == 2
    root = ET.parse(tmp_path / "out" / "junit.xml").getroot()
    assert root.get("skipped") == "1" and root.get("tests") == "3"


def test_summary_md_makes_no_link_or_image_from_data_text(tmp_path):
    """A GitHub job summary renders summary.md: text from a model or a crash must not become a link that
    shows one thing and points elsewhere, or an image that calls out."""
    from auditkit.report import markdown
    res = make_results()
    res["checks"][0]["id"] = "[release notes](http://evil.example/a)"
    res["warnings"] = ["see ![x](http://tracker.example/p.png)"]
    text = markdown.render(res, tmp_path, {}).read_text()
    assert "](http" not in text.replace("\\](http", "")
    assert "\\[release notes\\](http://evil.example/a)" in text and "!\\[x\\]" in text
