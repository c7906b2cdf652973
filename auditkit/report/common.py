"""Helpers the reporters share: counts, number formatting, gate lines, Markdown escaping, secrets."""
from __future__ import annotations

import re
from collections import Counter

#: check statuses in the order the summaries list them; ``info`` (no gate decided) is never a pass
CHECK_STATUSES = ("pass", "info", "warn", "fail", "error")
GATE_STATUSES = ("pass", "warn", "fail", "error")
#: what an ``info`` check means, wherever a reporter explains it
INFO_TEXT = "no gates: nothing decided"


def counts(results: dict) -> dict:
    """Check counts per status (``info`` apart from ``pass``), plus gate counts per status."""
    checks = Counter(c["status"] for c in results.get("checks", []))
    gates = Counter(g["status"] for c in results.get("checks", []) for g in c.get("gates", []))
    return {"checks": {s: checks.get(s, 0) for s in CHECK_STATUSES},
            "gates": {s: gates.get(s, 0) for s in GATE_STATUSES}}


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


def default_mark(g: dict) -> str:
    """`` (default)`` for a gate that came from the check's declared defaults (the suite gave no ``gates:``)."""
    return " (default)" if g.get("default") else ""


def for_report(results: dict, options: dict | None) -> dict:
    """The results a reporter may show: secrets redacted unless ``options["show_secrets"]``."""
    from auditkit.results import redact_secrets
    return results if (options or {}).get("show_secrets") else redact_secrets(results)


def secrets_note(results: dict, options: dict | None) -> str | None:
    """Why ``--show-secrets`` shows nothing: the run itself was made without it, so no secret was kept."""
    if (options or {}).get("show_secrets") and not (results.get("run") or {}).get("show_secrets"):
        return ("--show-secrets: this run was made without --show-secrets, so its results hold no secrets "
                "to show; re-run the suite with --show-secrets to see them")
    return None


#: what must never reach a terminal, a page or a file raw: the C0 controls, DEL, the C1 controls, the
#: Unicode bidi embeddings/overrides/isolates (U+202A-U+202E, U+2066-U+2069: "Trojan Source" reordering),
#: the line/paragraph separators, lone surrogates (unencodable) and U+FFFE/U+FFFF (not XML)
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u2028\u2029\ud800-\udfff\ufffe\uffff]")


def _shown(ch: str) -> str:
    o = ord(ch)
    return f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}"


def visible(text, keep: str = "") -> str:
    """``text`` safe to show anywhere, literally: every character of :data:`_UNSAFE` but those in ``keep``
    (e.g. ``"\\t\\n\\r"`` for a multi-line block) written out as a visible ``\\x1b`` / ``\\u202e``, so
    text from a suite, a model or a dataset can neither drive a terminal (escape sequences, OSC titles,
    clear screen), reorder what follows it (bidi overrides), nor break an XML/SVG/HTML file. Idempotent.
    The one helper for this: the console, report.html, junit.xml, summary.md and the figures all use it."""
    return _UNSAFE.sub(lambda m: m.group() if m.group() in keep else _shown(m.group()), str(text))


# CommonMark line endings (\r\n, \r, \n) and the other C0 controls, DEL and the C1 controls
_MD_BREAKS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


def md_cell(x, limit: int | None = None) -> str:
    """Text safe inside a Markdown table cell (GFM): one line, no cell break, no raw HTML, no code span.

    Line endings and control characters become one space; backslash, ``|``, backtick and square brackets
    are backslash-escaped (GFM splits a row on unescaped pipes before inline parsing, so ``\\|`` stays
    in its cell, and an escaped backslash keeps a following pipe escaped; escaped brackets make no link or
    image, so a text cannot show one thing and point elsewhere); ``<``/``>`` become entities.
    ``limit`` cuts the text before escaping, so no escape is cut in half.
    """
    text = _MD_BREAKS.sub(" ", str(x)).strip()
    if limit is not None and len(text) > limit:
        text = text[:limit - 1] + "…"
    text = visible(text)  # bidi controls and lone surrogates shown, never applied
    return (text.replace("\\", "\\\\").replace("|", "\\|").replace("`", "\\`")
            .replace("[", "\\[").replace("]", "\\]").replace("<", "&lt;").replace(">", "&gt;"))


def md_code(x) -> str:
    """An inline code span for text from anywhere (outside tables): a backtick fence longer than any
    backtick run inside it (CommonMark 6.1), padded when the text starts or ends with a backtick, on
    one line."""
    text = visible(_MD_BREAKS.sub(" ", str(x)).strip()) or " "
    runs = [len(m) for m in re.findall(r"`+", text)]
    fence = "`" * (max(runs, default=0) + 1)
    pad = " " if text[0] == "`" or text[-1] == "`" else ""
    return f"{fence}{pad}{text}{pad}{fence}"
