"""The ``html`` reporter: one self-contained, offline report.html.

Warnings lead the page; status ``info`` (no gate decided) has its own card and badge and is never
counted as a pass; gates from a check's declared defaults say "(default)"; secrets are redacted
unless ``options["show_secrets"]`` (:func:`auditkit.results.redact_secrets`).

Jinja2 with autoescape on: everything a model or dataset produced is escaped, and its control and
bidi characters are shown as ``\\x1b``/``\\u202e`` rather than written raw. Inline CSS, figures
as ``data:`` SVG images (which cannot run script), a Content-Security-Policy that forbids every
network request, and no JavaScript.
"""
from __future__ import annotations

import base64
from pathlib import Path

import jinja2
import markupsafe

from auditkit.hookspecs import hookimpl
from auditkit.report.common import (CHECK_STATUSES, INFO_TEXT, ci_text, counts, fmt, for_report,
                                    gate_line, secrets_note, visible)
from auditkit.results import write_text_atomic


def _shown(value):
    """Every ``{{ ... }}`` before it is escaped: control characters (C0 but tab/LF/CR, C1), the bidi
    controls and lone surrogates written out visibly (:func:`~auditkit.report.common.visible`), so no
    raw control character lands in the page and no name reorders the text after it."""
    if isinstance(value, str) and not isinstance(value, markupsafe.Markup):
        return visible(value, keep="\t\n\r")
    return value


_ENV = jinja2.Environment(loader=jinja2.PackageLoader("auditkit.report", "templates"),
                          autoescape=True, trim_blocks=True, lstrip_blocks=True,
                          undefined=jinja2.StrictUndefined, finalize=_shown)


def _svg_uri(svg: str) -> str:
    """A ``data:`` URI for an SVG figure; characters XML forbids (a raw ESC from a group name in a label)
    are shown as ``\\x1b`` first, so the image stays well-formed even from an older results.json."""
    svg = visible(svg, keep="\t\n\r")
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode("utf-8")).decode("ascii")


def _heat(score) -> str:
    """Background style for a token score in [-1, 1] (red positive, blue negative)."""
    try:
        s = max(-1.0, min(1.0, float(score)))
    except (TypeError, ValueError):
        return ""
    color = "220,38,38" if s >= 0 else "37,99,235"
    return f"background: rgba({color},{abs(s):.3f})"


def _split_evidence(evidence: list) -> tuple[list, list]:
    """Evidence items: {'title','rows'} tables, {'kind':'tokens',...} heat maps, or plain row dicts."""
    tables, heatmaps, plain = [], [], []
    for item in evidence or []:
        if isinstance(item, dict) and item.get("kind") == "tokens":
            heatmaps.append(item)
        elif isinstance(item, dict) and "rows" in item:
            tables.append(item)
        elif isinstance(item, dict):
            plain.append(item)
        else:
            plain.append({"value": item})
    if plain:
        tables.insert(0, {"title": "Evidence", "rows": plain})
    for t in tables:
        cols: list[str] = []
        for r in t["rows"]:
            for k in r:
                if k not in cols:
                    cols.append(k)
        t["columns"] = t.get("columns") or cols
    return tables, heatmaps


_ENV.filters.update(fmt=fmt, svg_uri=_svg_uri, heat=_heat)
_ENV.globals.update(ci_text=ci_text, gate_line=gate_line, split_evidence=_split_evidence,
                    check_statuses=CHECK_STATUSES, info_text=INFO_TEXT)


def render_html(results: dict, template: str = "report.html.j2", options: dict | None = None, **extra) -> str:
    """The page for ``results`` (a run's, or a comparison's with ``template``); secrets redacted unless
    ``options["show_secrets"]``."""
    if template == "report.html.j2":
        extra.setdefault("secrets_note", secrets_note(results, options))
        results = for_report(results, options)
        extra.setdefault("counts", counts(results))
        extra.setdefault("any_default", any(g.get("default") for c in results.get("checks") or []
                                            for g in c.get("gates") or []))
    return _ENV.get_template(template).render(r=results, **extra)


def render(results: dict, out_dir: Path, options: dict) -> Path:
    return write_text_atomic(Path(out_dir) / "report.html", render_html(results, options=options))


@hookimpl
def auditkit_register_reporters(register):
    register("html", render, "report.html, self-contained and offline")
