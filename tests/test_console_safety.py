"""Text from a suite, a dataset or a model is shown literally, never interpreted: on the console it is
never rich markup and never a terminal escape sequence or a bidi override; in report.html, summary.md,
junit.xml and the SVG figures it never lands as a raw control character. One model-free suite run end
to end (data_quality, seconds), on the plain and the rich console, plus hand-built results."""
from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from tests.conftest import write_jsonl, write_suite

BIDI = re.compile("[\u202a-\u202e\u2066-\u2069]")
RAW_C0 = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")  # every C0/C1 control but \t \n \r
MARKUP_NAME = "[link=https://evil.example]click[/link] [bold red]PASS"


def _suite(tmp_path: Path) -> Path:
    """A model-free suite whose name and check ids hold rich markup, ESC/OSC/clear-screen and a bidi
    override, over data whose texts and groups hold ESC, NUL and U+202E."""
    rows = [{"text": f"row {i} \x1b[31mRED\x1b]0;pwned\x07 ctl\x00\x01 \u202eevil end", "label": i % 2,
             "group": ["\x1b[31mg3", "g\u202e1", "<b>g2</b>"][i % 3]} for i in range(12)]
    write_jsonl(tmp_path / "train.jsonl", rows)
    write_jsonl(tmp_path / "test.jsonl", rows[:6] + [{"text": "fresh \x1b[2J text", "label": 0, "group": "g"}])
    # YAML double-quoted escapes: the parsed suite holds the raw ESC, BEL and U+202E
    return write_suite(tmp_path, r'''
        name: "[link=https://evil.example]click[/link] [bold red]PASS \x1b[31mRED\x1b]0;pwned\x07 \x1b[2J \u202eevil"
        seed: 0
        checks:
          - uses: data_quality
            id: "a[/]b"
            train: train.jsonl
            data: test.jsonl
          - uses: data_quality
            id: "q\x1b[2J\u202e[bold]x"
            train: train.jsonl
            data: test.jsonl
        ''')


def _assert_console_literal(text: str) -> None:
    assert "\x1b" not in text and "\x07" not in text and "\x00" not in text
    assert not BIDI.search(text)
    assert "MarkupError" not in text and "internal error" not in text


def _assert_reports_clean(out: Path) -> None:
    for name in ("report.html", "results.json", "junit.xml", "summary.md"):
        assert (out / name).is_file(), name
    html = (out / "report.html").read_text(encoding="utf-8")
    assert not RAW_C0.search(html), RAW_C0.findall(html)[:5]
    assert not BIDI.search(html)
    assert "\\x1b[31mRED" in html and "\\u202e" in html  # shown, as written
    svgs = re.findall(r"data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)", html)
    assert svgs
    for s in svgs:
        svg = base64.b64decode(s).decode("utf-8")
        ET.fromstring(svg)  # well-formed: the image is not broken
        assert not RAW_C0.search(svg) and not BIDI.search(svg)
    md = (out / "summary.md").read_text(encoding="utf-8")
    assert not BIDI.search(md) and not RAW_C0.search(md)
    assert "\\\\u202e" in md  # a backslash-escaped backslash: renders as the literal \u202e
    junit = (out / "junit.xml").read_bytes()
    ET.fromstring(junit)
    assert not BIDI.search(junit.decode("utf-8"))


def test_markup_escapes_and_bidi_are_shown_literally_plain_console(tmp_path, run_cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")  # the table's cells on one line each, to find them whole
    suite = _suite(tmp_path)
    out = tmp_path / "out"
    code, stdout, stderr = run_cli("run", suite, "--out", out)
    assert code in (0, 1), stderr
    _assert_console_literal(stdout + stderr)
    assert "a[/]b" in stdout and "a[/]b: running" in stderr  # the id as written, in the table and progress
    assert MARKUP_NAME in stdout  # the suite name is text, not a link and a red PASS
    assert "q\\x1b[2J\\u202e[bold]x" in stdout and "q\\x1b[2J\\u202e[bold]x: running" in stderr
    assert "\\x1b[31mRED\\x1b]0;pwned\\x07 \\x1b[2J \\u202eevil" in stdout
    assert all(line.startswith(("auditkit:", "reports written")) for line in stderr.splitlines())
    _assert_reports_clean(out)
    results = json.loads((out / "results.json").read_text())
    assert [c["id"] for c in results["checks"]] == ["a[/]b", "q\x1b[2J\u202e[bold]x"]  # the data itself kept


def test_rich_console_on_a_terminal_shows_suite_text_literally(tmp_path, run_cli, monkeypatch):
    """The rich path (bars on a terminal): no MarkupError, no hyperlink (OSC 8), no clear screen, and
    the only escape sequences are rich's own styling."""
    from rich.console import Console

    from auditkit import cli
    monkeypatch.setattr(cli, "_fancy", lambda: True)
    monkeypatch.setattr(cli, "_console", lambda stderr=True: Console(
        stderr=stderr, force_terminal=True, color_system="standard", highlight=False, soft_wrap=not stderr,
        width=300))
    suite = _suite(tmp_path)
    out = tmp_path / "out"
    code, stdout, stderr = run_cli("run", suite, "--out", out)
    both = stdout + stderr
    assert code in (0, 1), both
    assert "MarkupError" not in both and "internal error" not in both
    assert "\x1b]" not in both  # no OSC: neither a hyperlink from [link=...] nor a title from the data
    assert "\x1b[2J" not in both and "\x1b[31mRED" not in both and "\x07" not in both
    assert not BIDI.search(both)
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", both)  # rich's own styles and cursor moves removed
    assert MARKUP_NAME in plain and "a[/]b" in plain and "q\\x1b[2J\\u202e[bold]x" in plain
    _assert_reports_clean(out)


def test_error_line_is_one_literal_line(tmp_path, run_cli):
    code, stdout, stderr = run_cli("run", tmp_path / "no\x1b[2Jsuch\u202e\x1b]0;t\x07.yaml")
    assert code == 2
    assert stderr.count("\n") == 1 and stderr.startswith("auditkit: error: ")
    _assert_console_literal(stderr)
    assert "no\\x1b[2Jsuch\\u202e\\x1b]0;t\\x07.yaml" in stderr


def test_audit_input_error_line_shows_controls():
    from auditkit.errors import AuditInputError
    err = AuditInputError("groups found \x1b[31mg3\nand \u202eg4\u2028x", file="d\x1b.jsonl", place=3,
                          fix="rename \x9b1m")
    assert err.line() == "d\\x1b.jsonl:3: groups found \\x1b[31mg3 and \\u202eg4 x; rename \\x9b1m"


def test_visible_helper():
    from auditkit.report.common import visible
    assert visible("a\x1b[2J\x00\x7f\x9b\u202a\u202e\u2066\u2069\ud800\uffff\tb\n") == \
        "a\\x1b[2J\\x00\\x7f\\x9b\\u202a\\u202e\\u2066\\u2069\\ud800\\uffff\\x09b\\x0a"
    assert visible("a\tb\nc\r\x1b", keep="\t\n\r") == "a\tb\nc\r\\x1b"
    assert visible("é ü 😀 ‏ [bold]") == "é ü 😀 ‏ [bold]"  # ordinary text untouched
    once = visible("x\x1b\u202e")
    assert visible(once) == once  # idempotent


def test_result_table_never_reads_markup(capsys):
    from auditkit.cli import print_result_table
    res = {"suite": {"name": "[/]"}, "status": "fail", "warnings": ["[/] \x1b[2J warn"],
           "checks": [{"id": "a[/]b", "status": "error", "gates": [], "metrics": {},
                       "error": {"type": "E[/]", "message": "[red]boom\x1b[31m"}},
                      {"id": "[bold]x", "status": "fail", "metrics": {"m[/]": {"value": 1.0}},
                       "gates": [{"expr": "m[/] >= 2 \u202e", "status": "fail", "observed": 1.0, "threshold": 2.0,
                                  "reason": "[/] why"}]}]}
    print_result_table(res)
    out, err = capsys.readouterr()
    _assert_console_literal(out + err)
    for literal in ("a[/]b", "E[/]: [red]boom\\x1b[31m", "[bold]x", "m[/] >= 2 \\u202e", "[/] why",
                    "auditkit: [/]", "warning: [/] \\x1b[2J warn"):
        assert literal in out, literal


def test_html_md_junit_from_results_with_controls_and_bidi(tmp_path):
    from auditkit.figures import new_figure, to_svg
    from tests.test_report_safety import make_results, render_all
    res = make_results()
    nasty = "n\x1b[31m\x00\x01\x9b\u202eevil\u2066"
    res["suite"]["name"] = f"suite {nasty}"
    res["warnings"].append(f"w {nasty}")
    res["checks"][0]["id"] = f"id {nasty}"
    res["checks"][0]["gates"][0]["reason"] = f"r {nasty}"
    res["checks"][0]["evidence"] = [{"title": f"t {nasty}", "rows": [{f"g {nasty}": f"v {nasty}"}]}]
    fig, ax = new_figure()
    ax.bar(["ok", "g3"], [1, 2])
    res["checks"][0]["figures"] = {f"f {nasty}": to_svg(fig).replace(">g3<", f">{nasty}<").replace(
        "<!-- g3 -->", f"<!-- {nasty} -->")}  # an SVG as an older run stored it: raw ESC in a comment
    render_all(res, tmp_path)
    _assert_reports_clean_text(tmp_path)


def _assert_reports_clean_text(out: Path) -> None:
    html = (out / "report.html").read_text(encoding="utf-8")
    assert not RAW_C0.search(html) and not BIDI.search(html)
    assert "n\\x1b[31m\\x00\\x01\\x9b\\u202eevil\\u2066" in html
    for s in re.findall(r"data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)", html):
        ET.fromstring(base64.b64decode(s))
    md = (out / "summary.md").read_text(encoding="utf-8")
    assert not BIDI.search(md) and "# auditkit: suite n" in md
    junit = (out / "junit.xml").read_text(encoding="utf-8")
    ET.fromstring(junit.encode())
    assert not BIDI.search(junit) and "\\u202eevil" in junit


def test_md_cell_and_code_neutralise_bidi():
    from auditkit.report.common import md_cell, md_code
    assert md_cell("a\u202eb\u2066c") == "a\\\\u202eb\\\\u2066c"  # renders as a\u202eb\u2066c
    assert md_code("a\u202eb") == "`a\\u202eb`"
    assert md_cell("x\u202e" * 10, limit=5).endswith("…")


def test_figure_labels_with_control_characters_are_well_formed_svg():
    from auditkit.figures import new_figure, to_svg
    fig, ax = new_figure()
    ax.bar(["\x1b[31mg3", "g\u202e1", "a\x00b"], [1, 2, 3])
    ax.set_title("title \x1b]0;t\x07")
    ax.set_ylabel("y\x0c")
    ax.legend(["leg\x1b"])
    svg = to_svg(fig)
    ET.fromstring(svg)
    assert not RAW_C0.search(svg) and not BIDI.search(svg)
    texts = re.findall(r"<!-- (.*?) -->", svg)
    for t in ("\\x1b[31mg3", "g\\u202e1", "a\\x00b", "title \\x1b]0;t\\x07", "y\\x0c", "leg\\x1b"):
        assert t in texts, (t, texts)


def test_bias_groups_figure_with_escape_in_a_group_name():
    """The real check's figure: group names from the data land on its tick labels."""
    pytest.importorskip("auditkit_plugins")
    from auditkit_plugins.bias.groups import _bars_svg
    bars = [("\x1b[31mg3", True, 0.5, (0.4, 0.6), 0.7, (0.6, 0.8)),
            ("g\u202e1", False, 0.2, (0.1, 0.3), 0.6, (0.5, 0.7))]
    svg = _bars_svg(bars)
    ET.fromstring(svg)
    texts = re.findall(r"<!-- (.*?) -->", svg)
    assert "\\x1b[31mg3" in texts and "g\\u202e1*" in texts


@pytest.mark.parametrize("name, folder", [("../../escape", "escape"), ("a/b", "a_b"), ("\x1b[31mred", "31mred"),
                                          ("..", "suite"), ("release-gate v2", "release-gate_v2")])
def test_the_default_output_folder_cannot_leave_reports(name, folder):
    """Without --out, reports go to reports/<suite name>: a name with '/', '..' or control characters must not
    place them anywhere else."""
    from auditkit.cli import _folder_name
    assert _folder_name(name) == folder
