"""report.html and comparison.html in a real headless browser: Debian's Chromium through Playwright.

The reports are built by the reporters from results whose data carry a script, an ``onerror`` image
and a remote image; the test checks that the page renders (title, heading, the check table visible),
that no script runs (``window.__pwned`` stays undefined, no ``<script>`` element, no console error) and
that the page makes no request but for the file:// document itself.

Needs ``apt-get install -y --no-install-recommends chromium`` and ``pip install playwright==1.65.2``
(Playwright's own browser download is not used); skipped with the reason when either is absent.
"""
from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
SCRIPT = "<script>window.__pwned=1</script>"
ONERROR = "<img src=x onerror=\"window.__pwned=2\">"
REMOTE = '<img src="http://example.invalid/x.png">'
EVIL = f"{SCRIPT} {ONERROR} {REMOTE}"

if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
    pytest.skip(f"{CHROMIUM} is absent (apt-get install -y --no-install-recommends chromium)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install "
                                                              "playwright==1.65.2)")


def _results() -> dict:
    from auditkit.figures import new_figure, to_svg
    from tests.test_report_safety import make_results
    res = make_results()
    res["suite"]["description"] = f"suite {EVIL}"
    res["warnings"] = [f"warning {EVIL}"]
    fig, ax = new_figure()
    ax.bar([f"group {SCRIPT}", "$5 _x_ $"], [0.2, 0.4])
    ax.set_title(REMOTE)
    ch = res["checks"][1]
    ch["figures"] = {f"figure {EVIL}": to_svg(fig),
                     "svg with script": '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10" '
                                        'onload="window.__pwned=3"><script>window.__pwned=4</script>'
                                        '<image href="http://example.invalid/y.png" width="5" height="5"/></svg>'}
    ch["evidence"] = [
        {"title": f"rows {EVIL}", "rows": [{"text": f"row {EVIL}", f"col {ONERROR}": REMOTE}]},
        {"kind": "tokens", "title": f"tokens {SCRIPT}", "caption": REMOTE,
         "tokens": [{"text": ONERROR, "score": 0.9}, {"text": SCRIPT, "score": -0.5}]},
        {"plain": f"loose {EVIL}"},
    ]
    ch["notes"] = [f"note {EVIL}"]
    ch["error"] = None
    res["checks"][0]["id"] = f"acc {SCRIPT}"
    return res


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict:
    from auditkit.compare import compare_results, write_outputs
    from auditkit.report import html
    out = tmp_path_factory.mktemp("browser")
    res = _results()
    html.render(res, out, {"show_secrets": False})
    b = copy.deepcopy(res)
    b["checks"][0]["metrics"]["accuracy"]["value"] = 0.8
    b["checks"][1]["metrics"][f"m {EVIL}"] = res["checks"][1]["metrics"]["dp_difference"]
    res["checks"][1]["metrics"][f"m {EVIL}"] = res["checks"][1]["metrics"]["dp_difference"]
    write_outputs(compare_results(res, b, path_a=f"a {EVIL}", path_b="b"), out)
    return {"report": out / "report.html", "comparison": out / "comparison.html"}


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
                              args=ARGS)
        yield b
        b.close()


def _open(browser, path: Path):
    """Load ``path``; every request the page makes is recorded (and aborted unless it is the file itself)."""
    context = browser.new_context(java_script_enabled=True)  # on: the test is that the page runs none
    page = context.new_page()
    seen = {"requests": [], "console": [], "errors": []}
    url = path.resolve().as_uri()
    page.on("request", lambda r: seen["requests"].append(r.url))
    page.on("console", lambda m: seen["console"].append((m.type, m.text)))
    page.on("pageerror", lambda e: seen["errors"].append(str(e)))

    def gate(route):
        if route.request.url == url:
            route.continue_()
        else:
            route.abort()
    context.route("**/*", gate)
    page.goto(url, wait_until="load")
    page.wait_for_timeout(300)  # give a stray onerror or lazy image the chance to fire
    return context, page, seen, url


@pytest.mark.parametrize("which, heading", [("report", "Audit report: safety"), ("comparison", "Comparison: safety")])
def test_report_renders_runs_no_script_and_makes_no_request(browser, reports, which, heading):
    context, page, seen, url = _open(browser, reports[which])
    try:
        assert page.title().startswith("auditkit")
        assert page.locator("h1").first.inner_text().startswith(heading)
        table = page.locator("#checks")
        assert table.is_visible() and table.locator("tr").count() >= 4
        assert page.evaluate("() => typeof window.__pwned") == "undefined"
        assert page.locator("script").count() == 0
        assert page.locator("[onerror], [onload]").count() == 0
        assert not seen["errors"]
        assert not [m for m in seen["console"] if m[0] == "error"], seen["console"]
        assert seen["requests"] == [url]
        # the markup in the data is shown as text
        body = page.locator("body").inner_text()
        assert SCRIPT in body
        if which == "report":
            assert REMOTE in body and ONERROR in body
            assert page.locator("#warnings").is_visible()
            images = page.locator("img")
            assert images.count() == 2
            for i in range(images.count()):
                assert images.nth(i).get_attribute("src").startswith("data:image/svg+xml;base64,")
            # the matplotlib figure is drawn (an <img> of non-zero size), the hostile SVG runs nothing
            box = images.first.bounding_box()
            assert box and box["width"] > 100 and box["height"] > 50
    finally:
        context.close()


def test_the_harness_sees_a_script_and_a_request(browser, tmp_path):
    """Control: the same checks catch a page that does run a script and fetch a remote image."""
    page_file = tmp_path / "bad.html"
    page_file.write_text(f"<!DOCTYPE html><title>bad</title><h1>bad</h1>{SCRIPT}{REMOTE}", encoding="utf-8")
    context, page, seen, url = _open(browser, page_file)
    try:
        assert page.evaluate("() => window.__pwned") == 1
        assert page.locator("script").count() == 1
        assert "http://example.invalid/x.png" in seen["requests"]
    finally:
        context.close()
