"""Helpers the reporters share: counts, number formatting, the gate table rows."""
from __future__ import annotations

from collections import Counter


def counts(results: dict) -> dict:
    """Check counts per status, plus gate counts per status."""
    checks = Counter(c["status"] for c in results.get("checks", []))
    gates = Counter(g["status"] for c in results.get("checks", []) for g in c.get("gates", []))
    return {"checks": {s: checks.get(s, 0) for s in ("pass", "warn", "fail", "error")},
            "gates": {s: gates.get(s, 0) for s in ("pass", "warn", "fail", "error")}}


def fmt(x, digits: int = 4) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5):
            return f"{x:.3g}"
        return f"{x:.{digits}f}".rstrip("0").rstrip(".") if "." in f"{x:.{digits}f}" else f"{x:.{digits}f}"
    return str(x)


def ci_text(m: dict) -> str:
    if m.get("ci_low") is None or m.get("ci_high") is None:
        return ""
    return f"[{fmt(m['ci_low'])}, {fmt(m['ci_high'])}]"


def gate_line(g: dict) -> str:
    obs = fmt(g.get("observed"))
    thr = g.get("threshold")
    text = f"{g['expr']} (observed {obs}" + (f", threshold {fmt(thr)}" if thr is not None else "") + ")"
    if g.get("reason"):
        text += f": {g['reason']}"
    return text


def md_cell(x) -> str:
    """Text safe inside a Markdown table cell: no pipe or newline breaks the row, no raw HTML tag."""
    return str(x).replace("|", "\\|").replace("\n", " ").replace("<", "&lt;").replace(">", "&gt;")
