"""The ``markdown`` reporter: summary.md, short enough for a CI job summary."""
from __future__ import annotations

from pathlib import Path

from auditkit.hookspecs import hookimpl
from auditkit.report.common import ci_text, counts, fmt, gate_line, md_cell

ICON = {"pass": "✅ PASS", "warn": "⚠️ WARN", "fail": "❌ FAIL", "error": "💥 ERROR"}


def render_markdown(results: dict) -> str:
    c = counts(results)
    model = results.get("model") or {}
    lines = [f"# auditkit: {md_cell(results['suite']['name'])} — {ICON.get(results['status'], results['status'])}", ""]
    lines.append(f"Model `{md_cell(model.get('id', '?'))}` (fingerprint `{model.get('fingerprint', '?')[:12]}`)"
                 + (f", baseline `{md_cell(results['baseline']['id'])}`" if results.get("baseline") else ""))
    lines.append("")
    lines.append("Checks: " + ", ".join(f"{v} {k}" for k, v in c["checks"].items()) +
                 " · Gates: " + ", ".join(f"{v} {k}" for k, v in c["gates"].items()))
    if results.get("error"):
        lines += ["", f"**Run error:** {md_cell(results['error'])}"]
    lines += ["", "| check | status | gates | key metrics |", "|---|---|---|---|"]
    for ch in results.get("checks", []):
        gates = "<br>".join(f"{ICON[g['status']].split()[0]} {md_cell(gate_line(g))}" for g in ch.get("gates", [])) or "–"
        mets = ", ".join(f"{md_cell(k)}={fmt(m.get('value'))}" for k, m in list(ch.get("metrics", {}).items())[:4]) or "–"
        if ch.get("error"):
            mets = f"{md_cell(ch['error']['type'])}: {md_cell(ch['error']['message'])[:200]}"
        lines.append(f"| {md_cell(ch['id'])} | {ICON[ch['status']]} | {gates} | {mets} |")
    lines.append("")
    for ch in results.get("checks", []):
        if not ch.get("metrics"):
            continue
        lines += [f"<details><summary>{md_cell(ch['id'])} metrics</summary>", "",
                  "| metric | value | 95% CI | n |", "|---|---|---|---|"]
        for k, m in ch["metrics"].items():
            lines.append(f"| {md_cell(k)} | {fmt(m.get('value'))} | {ci_text(m)} | {fmt(m.get('n'))} |")
        lines += ["", "</details>", ""]
    return "\n".join(lines) + "\n"


def render(results: dict, out_dir: Path, options: dict) -> Path:
    path = Path(out_dir) / "summary.md"
    path.write_text(render_markdown(results), encoding="utf-8")
    return path


@hookimpl
def auditkit_register_reporters(register):
    register("markdown", render, "summary.md for a CI job summary")
    register("md", render, "alias of markdown")
