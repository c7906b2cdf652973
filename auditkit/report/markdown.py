"""The ``markdown`` reporter: summary.md, short enough for a CI job summary.

Every cell goes through :func:`~auditkit.report.common.md_cell`, so text from a suite, a model or a
dataset (pipes, line breaks, backticks, markup) stays inside its cell of a valid GFM table.
"""
from __future__ import annotations

from pathlib import Path

from auditkit.hookspecs import hookimpl
from auditkit.report.common import (CHECK_STATUSES, GATE_STATUSES, INFO_TEXT, ci_text, counts, default_mark, fmt,
                                    for_report, gate_line, md_cell, md_code, secrets_note)
from auditkit.results import write_text_atomic

ICON = {"info": "ℹ️ INFO", "pass": "✅ PASS", "warn": "⚠️ WARN", "fail": "❌ FAIL", "error": "💥 ERROR"}


def _icon(status) -> str:
    return ICON.get(status, md_cell(status))


def render_markdown(results: dict, options: dict | None = None) -> str:
    note = secrets_note(results, options)
    results = for_report(results, options)
    c = counts(results)
    model = results.get("model") or {}
    lines = [f"# auditkit: {md_cell(results['suite']['name'])} — {_icon(results['status'])}", ""]
    for w in results.get("warnings") or []:
        lines += [f"> ⚠️ **Warning:** {md_cell(w)}", ""]
    fingerprint = str(model.get("fingerprint") or "?")[:12]
    lines.append(f"Model {md_code(model.get('id', '?'))} (fingerprint {md_code(fingerprint)})"
                 + (f", baseline {md_code(results['baseline'].get('id'))}" if results.get("baseline") else ""))
    lines.append("")
    lines.append("Checks: " + ", ".join(f"{c['checks'][k]} {k}" for k in CHECK_STATUSES) +
                 " · Gates: " + ", ".join(f"{c['gates'][k]} {k}" for k in GATE_STATUSES))
    if c["checks"]["info"]:
        lines += ["", f"{_icon('info')}: {INFO_TEXT} (a check without gates is never a pass)."]
    if any(g.get("default") for ch in results.get("checks", []) for g in ch.get("gates", [])):
        lines += ["", "Gates marked (default) are the check's declared defaults: the suite gave it no `gates:`."]
    if note:
        lines += ["", f"_{md_cell(note)}_"]
    if results.get("error"):
        lines += ["", f"**Run error:** {md_cell(results['error'])}"]
    lines += ["", "| check | status | gates | key metrics |", "|---|---|---|---|"]
    for ch in results.get("checks", []):
        gates = "<br>".join(f"{_icon(g['status']).split()[0]} {md_cell(gate_line(g) + default_mark(g))}"
                            for g in ch.get("gates", [])) or md_cell(INFO_TEXT)
        mets = ", ".join(f"{md_cell(k)}={md_cell(fmt(m.get('value')))}"
                         for k, m in list(ch.get("metrics", {}).items())[:4]) or "–"
        if ch.get("error"):
            mets = f"{md_cell(ch['error']['type'])}: {md_cell(ch['error']['message'], limit=200)}"
        lines.append(f"| {md_cell(ch['id'])} | {_icon(ch['status'])} | {gates} | {mets} |")
    lines.append("")
    for ch in results.get("checks", []):
        if not ch.get("metrics"):
            continue
        lines += [f"<details><summary>{md_cell(ch['id'])} metrics</summary>", "",
                  "| metric | value | 95% CI | n |", "|---|---|---|---|"]
        for k, m in ch["metrics"].items():
            lines.append(f"| {md_cell(k)} | {md_cell(fmt(m.get('value')))} | {md_cell(ci_text(m))} | "
                         f"{md_cell(fmt(m.get('n')))} |")
        lines += ["", "</details>", ""]
    return "\n".join(lines) + "\n"


def render(results: dict, out_dir: Path, options: dict) -> Path:
    return write_text_atomic(Path(out_dir) / "summary.md", render_markdown(results, options))


@hookimpl
def auditkit_register_reporters(register):
    register("markdown", render, "summary.md for a CI job summary")
    register("md", render, "alias of markdown")
