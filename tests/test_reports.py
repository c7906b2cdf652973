"""Reports from one run: a self-contained, escaped, offline report.html; junit.xml with one testcase
per gate; summary.md; and `auditkit report` re-rendering from results.json."""
from __future__ import annotations

import base64
import json
import re
from html.parser import HTMLParser
from xml.etree import ElementTree as ET

import pytest

from auditkit.api import Check, CheckResult, MetricSpec
from auditkit.cli import main
from tests.conftest import write_jsonl, write_suite


XSS = "<script>alert('xss')</script>"
ROWS = [{"text": f"{XSS} review {i} was {'lovely' if i % 2 else 'dreadful'}", "label": i % 2} for i in range(16)]


class Evil(Check):
    """Puts markup everywhere a check can put text: evidence, token heat maps, figures, notes."""

    name = "evil"
    description = "markup in every output"
    metrics = {"x": MetricSpec("a number")}
    needs_data = False

    def run(self, ctx):
        res = CheckResult()
        res.add("x", 1.0, (0.5, 1.5), 3)
        res.evidence = [
            {"title": f"table {XSS}", "rows": [{"col <b>": f"cell {XSS}", "n": 1}]},
            {"kind": "tokens", "title": "heat", "caption": f"cap {XSS}",
             "tokens": [{"text": "<img src=x onerror=alert(1)>", "score": 0.7}, {"text": "ok", "score": -0.3}]},
            {"plain": f"loose row {XSS}"},
        ]
        res.figures = {f"fig {XSS}": '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
                                     '<script>alert(2)</script><rect width="10" height="10"/></svg>'}
        res.notes = [f"note {XSS}"]
        return res


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, registry):
    tmp = tmp_path_factory.mktemp("reports")
    write_jsonl(tmp / "data.jsonl", ROWS)
    suite = write_suite(tmp, f"""
        name: report-test
        description: "suite description {XSS}"
        model: {{base: "builtin:tiny-bert", max_length: 32}}
        checks:
          - uses: accuracy
            id: acc
            data: data.jsonl
            bootstrap: 100
            gates:
              - "accuracy >= 0"
              - "accuracy > 1"
              - {{when: "macro_f1 > 1", severity: warn}}
          - uses: evil
            gates: ["x >= 0"]
        """)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(registry.checks, "evil", Evil)
        mp.setitem(registry.check_plugin, "evil", "tests")
        code = main(["run", str(suite), "--out", str(tmp / "out"), "--device", "cpu"])
    assert code == 1
    return tmp / "out"


class Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def parse(html: str) -> list[tuple[str, dict]]:
    p = Tags()
    p.feed(html)
    return p.tags


@pytest.fixture(scope="module")
def html(run_dir):
    return (run_dir / "report.html").read_text(encoding="utf-8")


# ---------------------------------------------------------------------- HTML

def test_html_has_a_strict_content_security_policy(html):
    metas = [a for t, a in parse(html) if t == "meta" and a.get("http-equiv", "").lower() == "content-security-policy"]
    assert len(metas) == 1
    csp = metas[0]["content"]
    assert "default-src 'none'" in csp and "img-src data:" in csp
    assert "script-src" not in csp  # falls back to default-src 'none': no script at all


def test_html_makes_no_network_request_and_runs_no_script(html):
    tags = parse(html)
    assert not [t for t, _ in tags if t in ("script", "link", "iframe", "object", "embed", "base", "form")]
    for tag, attrs in tags:
        for key in ("src", "href", "srcset", "action", "poster", "data"):
            if key in attrs:
                assert attrs[key].startswith(("data:", "#")), (tag, key, attrs[key][:60])
        assert not [k for k in attrs if k.startswith("on")], (tag, attrs)
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
    assert not re.search(r"url\(\s*['\"]?(https?:)?//|@import", html, re.I)


def test_markup_from_data_and_checks_is_escaped(html):
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(&#39;xss&#39;)&lt;/script&gt; review" in html  # misclassified-row evidence
    assert "&lt;img src=x onerror=alert(1)&gt;" in html  # a token of a heat map
    for text in ("table ", "cell ", "cap ", "loose row ", "note ", "suite description "):
        assert f"{text}&lt;script&gt;" in html, text
    assert "col &lt;b&gt;" in html


def test_figures_are_inline_svg(html):
    images = [a for t, a in parse(html) if t == "img"]
    assert len(images) >= 2  # the confusion matrix and the check's own figure
    for a in images:
        assert a["src"].startswith("data:image/svg+xml;base64,")
        svg = base64.b64decode(a["src"].split(",", 1)[1]).decode()
        assert "<svg" in svg
        # links inside the SVG are internal (#id) or inline data: (namespaces and RDF metadata are no requests)
        links = re.findall(r"""(?:\s|:)(?:href|src)\s*=\s*["']\s*([^"']{0,12})""", svg)
        assert all(v.startswith(("#", "data:")) for v in links), links


def test_summary_first_then_every_check_with_gates_and_metrics(html, run_dir):
    res = json.loads((run_dir / "results.json").read_text())
    assert html.index('id="summary"') < html.index('id="check-1"')
    assert 'id="overall-status">fail<' in html
    for c in res["checks"]:
        assert f">{c['id']} <span class=\"badge {c['status']}\">" in html
    acc = res["checks"][0]
    assert [g["status"] for g in acc["gates"]] == ["pass", "fail", "warn"]
    assert "accuracy &gt; 1" in html and "Most confident mistakes" in html
    value = acc["metrics"]["accuracy"]["value"]
    from auditkit.report.common import fmt
    assert f'<td class="num">{fmt(value)}</td>' in html


# ---------------------------------------------------------------------- JUnit and Markdown

def test_junit_one_testcase_per_gate(run_dir):
    root = ET.parse(run_dir / "junit.xml").getroot()
    res = json.loads((run_dir / "results.json").read_text())
    cases = root.findall(".//testcase")
    n_gates = sum(len(c["gates"]) for c in res["checks"])
    assert len(cases) == n_gates == 4
    assert root.get("tests") == "4" and root.get("failures") == "1" and root.get("errors") == "0"
    names = [c.get("name") for c in cases]
    assert names == ["accuracy >= 0", "accuracy > 1", "macro_f1 > 1", "x >= 0"]
    failed = [c for c in cases if c.find("failure") is not None]
    assert [c.get("name") for c in failed] == ["accuracy > 1"]
    assert "observed" in failed[0].find("failure").get("message")
    warned = [c for c in cases if c.find("system-out") is not None]
    assert [c.get("name") for c in warned] == ["macro_f1 > 1"]
    assert {c.get("classname") for c in cases} == {"report-test.acc", "report-test.evil"}


def test_junit_crashed_check_is_an_error_case():
    from auditkit.report.junit import render_junit
    results = {"suite": {"name": "s"}, "checks": [
        {"id": "c", "uses": "boom", "status": "error", "gates": [{"expr": "x >= 1", "status": "error"}],
         "error": {"type": "RuntimeError", "message": "m", "traceback": "Traceback ...\nRuntimeError: m"}}]}
    root = ET.fromstring(render_junit(results))
    case = root.find(".//testcase")
    assert root.get("errors") == "1" and case.find("error").text.startswith("Traceback")


def test_markdown_summary(run_dir):
    md = (run_dir / "summary.md").read_text(encoding="utf-8")
    assert md.startswith("# auditkit: report-test") and "FAIL" in md.splitlines()[0]
    assert "| check | status | gates | key metrics |" in md
    assert re.search(r"^\| acc \| .*FAIL", md, re.M) and re.search(r"^\| evil \| .*PASS", md, re.M)
    assert "accuracy &gt; 1" in md and "Gates: 2 pass, 1 warn, 1 fail, 0 error" in md
    assert "<script" not in md


# ---------------------------------------------------------------------- auditkit report

def test_report_command_re_renders(run_dir, tmp_path, run_cli):
    out = tmp_path / "again"
    code, stdout, err = run_cli("report", run_dir / "results.json", "--format", "html,md,junit", "--out", out)
    assert code == 0, err
    for name in ("report.html", "summary.md", "junit.xml", "results.json"):
        assert (out / name).exists(), name
        assert (out / name).read_bytes() == (run_dir / name).read_bytes(), name


def test_report_command_in_place_and_single_format(run_dir, tmp_path, run_cli):
    import shutil
    d = tmp_path / "copy"
    shutil.copytree(run_dir, d)
    (d / "summary.md").unlink()
    code, stdout, err = run_cli("report", d / "results.json", "--format", "markdown")
    assert code == 0, err
    assert (d / "summary.md").read_text() == (run_dir / "summary.md").read_text()


@pytest.mark.parametrize("setup,words", [
    (lambda p: None, "does not exist"),
    (lambda p: p.write_text("{not json"), "not valid JSON"),
    (lambda p: p.write_text('{"hello": 1}'), "not an auditkit results file"),
    (lambda p: p.write_text('{"schema": "auditkit.results/99"}'), "not supported"),
])
def test_report_command_bad_input(tmp_path, run_cli, setup, words):
    path = tmp_path / "results.json"
    setup(path)
    code, out, err = run_cli("report", path)
    assert code == 2 and words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_report_command_unknown_format(run_dir, tmp_path, run_cli):
    code, out, err = run_cli("report", run_dir / "results.json", "--format", "pdf", "--out", tmp_path)
    assert code == 2 and "unknown report format 'pdf'" in err and "html" in err


def test_results_json_shape(run_dir):
    text = (run_dir / "results.json").read_text()
    res = json.loads(text)
    assert list(res)[:4] == ["schema", "suite", "status", "error"]
    assert res["schema"] == "auditkit.results/1"
    assert set(res["model"]) >= {"id", "fingerprint"} and res["environment"]["seed"] == 0
    m = res["checks"][1]["metrics"]["x"]
    assert m == {"value": 1.0, "ci_low": 0.5, "ci_high": 1.5, "n": 3, "higher_is_better": True}
    assert {"expr", "severity", "status", "observed"} <= set(res["checks"][0]["gates"][0])
    assert not list(run_dir.glob(".results-*"))  # atomic write left no temporary file
